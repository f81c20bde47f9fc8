"""A loopback SMTP server (aiosmtpd) with AUTH and scripted faults: :class:`SmtpServer`.

Needs the ``sandbox`` extra (``pip install 'campaignkit[sandbox]'``) for aiosmtpd.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import email.policy
import fnmatch
import hmac
import logging
import secrets
import socket
import ssl
import sys
import threading
import time
from collections.abc import Iterable
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any, ClassVar, Self, cast

import attrs

try:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "the SMTP sandbox needs aiosmtpd: pip install 'campaignkit[sandbox]'"
    ) from exc

from ..._rehearsal import sandbox_started, sandbox_stopped
from ._journal import JournalError
from ._server import ProviderServer

__all__ = ["SmtpFaults", "SmtpServer"]

_STAGES = ("mail", "rcpt", "data")


def _not_login_data_notice(record: logging.LogRecord) -> bool:
    # aiosmtpd 1.4 logs a deprecation warning of its own on every successful AUTH.
    return "login_data is deprecated" not in record.getMessage()


if _not_login_data_notice not in logging.getLogger("mail.log").filters:
    logging.getLogger("mail.log").addFilter(_not_login_data_notice)


@attrs.define
class SmtpFaults:
    """Fault injection for :class:`SmtpServer`; change fields at any time.

    Scripted faults are consumed in order, one per command of their stage
    (``"mail"``, ``"rcpt"`` or ``"data"``, the last answering after the message
    content was received). A fault is a reply code (``451``, ``452``, ``550``,
    ``554``...; ``421`` also closes the connection after the reply), ``"drop"``
    (close the connection without a reply), ``"stall"`` (wait
    :attr:`stall_seconds`, then answer normally) or ``"pass"`` (answer normally,
    to fail a later command: ``fail_next("pass", 451)``). At the ``"data"`` stage,
    ``"late"`` accepts and records the message, then waits :attr:`stall_seconds`
    before the ``250`` (past the client's timeout), and ``"lost"`` accepts and
    records it, then closes the connection without a reply: the client cannot
    know that the message was queued.

    Attributes:
        latency: seconds added before answering ``MAIL``, ``RCPT`` and ``DATA``.
        stall_seconds: see ``"stall"``.
    """

    latency: float = 0.0
    stall_seconds: float = 5.0
    scripts: dict[str, collections.deque[int | str]] = attrs.field(
        factory=lambda: {stage: collections.deque() for stage in _STAGES}
    )

    def fail_next(self, *faults: int | str, stage: str = "rcpt") -> None:
        """Queue faults for the next commands of ``stage``: ``fail_next(451, "drop")``."""
        if stage not in _STAGES:
            raise ValueError(f"stage must be one of {_STAGES}, got {stage!r}")
        self.scripts[stage].extend(faults)

    def take(self, stage: str) -> int | str | None:
        script = self.scripts[stage]
        return script.popleft() if script else None


class SmtpServer:
    """A real SMTP server on 127.0.0.1 (aiosmtpd), for the ``smtp`` channel.

    * ``AUTH PLAIN`` or ``LOGIN`` with :attr:`username` and :attr:`token` (offered
      without TLS, on loopback only); ``MAIL`` before a successful login gets
      ``530 5.7.0 Authentication required`` unless ``require_auth`` is false;
      wrong credentials get ``535 5.7.8``.
    * ``RCPT`` for an address in :attr:`invalid` or matching
      :attr:`invalid_patterns` (default ``*@invalid.example``) gets
      ``550 5.1.1`` (permanent); one in :attr:`deferred` or matching
      :attr:`deferred_patterns` (default ``*@greylist.example``) gets
      ``451 4.7.1`` (transient).
    * With ``tls_cert`` (``(certfile, keyfile)``, PEM) it offers STARTTLS and
      requires it before AUTH and MAIL, as a submission server on port 587 does.
    * :attr:`faults` scripts replies, dropped connections and stalls.
    * Every accepted message is parsed and appended to :attr:`messages`, once per
      envelope recipient, as a dict with ``id`` (the ``Message-ID`` without angle
      brackets), ``to`` (the envelope recipient), ``name`` (the display name in
      ``To``), ``mail_from``, ``from``, ``subject``, ``text``, ``html`` (decoded,
      line endings as ``\\n``, without the final newline MIME adds), ``headers``
      (name -> value) and ``queue_id``.

    Use as a context manager, or call :meth:`start` and :meth:`stop`.
    """

    provider: ClassVar[str] = "smtp"
    DEFAULT_TOKEN: ClassVar[str] = ProviderServer.DEFAULT_TOKEN
    DEFAULT_USERNAME: ClassVar[str] = "sandbox"
    #: the sender address :meth:`channel_options` configures
    FROM_EMAIL: ClassVar[str] = "campaigns@sandbox.example"
    HOST: ClassVar[str] = "127.0.0.1"

    def __init__(
        self,
        *,
        token: str = DEFAULT_TOKEN,
        username: str = DEFAULT_USERNAME,
        port: int = 0,
        faults: SmtpFaults | None = None,
        require_auth: bool = True,
        invalid: Iterable[str] = (),
        invalid_patterns: Iterable[str] = ("*@invalid.example",),
        deferred: Iterable[str] = (),
        deferred_patterns: Iterable[str] = ("*@greylist.example",),
        idle_timeout: float = 300.0,
        tls_cert: tuple[str, str] | None = None,
    ) -> None:
        self.token = token
        self.username = username
        self.faults = faults if faults is not None else SmtpFaults()
        self.require_auth = require_auth
        self.invalid: set[str] = {a.lower() for a in invalid}
        self.invalid_patterns: list[str] = list(invalid_patterns)
        self.deferred: set[str] = {a.lower() for a in deferred}
        self.deferred_patterns: list[str] = list(deferred_patterns)
        self.idle_timeout = idle_timeout
        self.tls_cert = tls_cert
        self.lock = threading.Lock()
        self.messages: list[dict[str, Any]] = []
        #: monotonic times of the accepted transactions
        self.request_times: list[float] = []
        #: connections accepted, successful and failed logins since start
        self.connections = 0
        self.logins = 0
        self.auth_failures = 0
        self._port = port
        self._open: set[_Smtp] = set()
        self._controller: _Controller | None = None

    # -- lifecycle --------------------------------------------------------------------
    def start(self) -> Self:
        controller = _Controller(
            self,
            _Handler(self),
            hostname=self.HOST,
            port=self._port,
            server_hostname="sandbox.smtp.example",
            authenticator=self._authenticate,
            auth_require_tls=False,
            timeout=self.idle_timeout,
            **self._tls_kwargs(),
        )
        try:
            controller.start()
        except BaseException:
            # aiosmtpd leaves its event loop open when it cannot bind (the port is
            # taken): closed here, not at exit with a traceback on stderr.
            with contextlib.suppress(Exception):
                controller.stop(no_assert=True)
            with contextlib.suppress(Exception):
                controller.loop.close()
            raise
        self._controller = controller
        sandbox_started(self.port)  # pipelines sending here are rehearsals
        with self.lock:  # forget the controller's own start-up probe
            self.connections = 0
        return self

    def _tls_kwargs(self) -> dict[str, Any]:
        if self.tls_cert is None:
            return {}
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*self.tls_cert)
        return {"tls_context": context, "require_starttls": True}

    def stop(self) -> None:
        controller, self._controller = self._controller, None
        if controller is not None:
            self._close_all(controller)
            controller.stop()
            sandbox_stopped(int(controller.port))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        assert self._controller is not None, "server not started"
        return int(self._controller.port)

    def channel_options(self) -> dict[str, Any]:
        """Options that point an ``smtp`` channel at this server (``security`` is
        ``"starttls"``, with the certificate as ``ca_file``, when it has one)."""
        security = {"security": "none"}
        if self.tls_cert is not None:
            security = {"security": "starttls", "ca_file": self.tls_cert[0]}
        return {
            "host": self.HOST,
            "port": self.port,
            **security,
            "username": self.username,
            "from_email": self.FROM_EMAIL,
        }

    def drop_connections(self) -> int:
        """Close every open connection without a word, as an idle server would.

        Returns:
            How many connections were closed.
        """
        assert self._controller is not None, "server not started"
        return self._close_all(self._controller)

    def requests_per_second(self) -> float:
        """Highest number of transactions seen in any one-second window so far."""
        with self.lock:
            times = sorted(self.request_times)
        best, start = 0, 0
        for end, t in enumerate(times):
            while t - times[start] >= 1.0:
                start += 1
            best = max(best, end - start + 1)
        return float(best)

    # -- rules --------------------------------------------------------------------------
    def rcpt_reply(self, address: str) -> str | None:
        """The refusal for ``address`` at ``RCPT``, or ``None`` to accept it."""
        lowered = address.lower()
        if lowered in self.invalid or _matches(lowered, self.invalid_patterns):
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if lowered in self.deferred or _matches(lowered, self.deferred_patterns):
            return f"451 4.7.1 <{address}>: Recipient address rejected: Greylisted, try again later"
        return None

    # -- internals ----------------------------------------------------------------------
    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        ok = (
            isinstance(auth_data, LoginPassword)
            and hmac.compare_digest(auth_data.login, self.username.encode())
            and hmac.compare_digest(auth_data.password, self.token.encode())
        )
        with self.lock:
            if ok:
                self.logins += 1
            else:
                self.auth_failures += 1
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    def _opened(self, protocol: _Smtp) -> None:
        with self.lock:
            self.connections += 1
        self._open.add(protocol)  # only touched from the event loop's thread

    def _closed(self, protocol: _Smtp) -> None:
        self._open.discard(protocol)

    def _close_all(self, controller: _Controller) -> int:
        done = threading.Event()
        closed: list[int] = []

        def close() -> None:
            count = 0
            for protocol in list(self._open):
                if protocol.transport is not None and not protocol.transport.is_closing():
                    protocol.transport.close()
                    count += 1
            closed.append(count)
            done.set()

        controller.loop.call_soon_threadsafe(close)
        done.wait(5.0)
        return closed[0] if closed else 0

    def _record(self, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
        queue_id = secrets.token_hex(5).upper()
        message_id = str(parsed.get("Message-ID", "")).strip().strip("<>")
        to_header = parsed.get("To")
        addresses = getattr(to_header, "addresses", ())
        name = addresses[0].display_name if addresses else None
        record = {
            "id": message_id,
            "name": name or None,
            "mail_from": envelope.mail_from,
            "from": str(parsed.get("From", "")),
            "subject": str(parsed.get("Subject", "")),
            "text": _part(parsed, "plain"),
            "html": _part(parsed, "html"),
            "headers": {k: str(v) for k, v in parsed.items()},
            "queue_id": queue_id,
        }
        with self.lock:
            self.request_times.append(time.monotonic())
            self.messages.extend({"to": rcpt, **record} for rcpt in envelope.rcpt_tos)
        return queue_id


class _Smtp(SMTP):
    """aiosmtpd's protocol, reporting its connections to the sandbox."""

    def __init__(self, sandbox: SmtpServer, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._sandbox = sandbox

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        upgrade = self._original_transport is not None  # the STARTTLS handshake
        super().connection_made(transport)
        if not upgrade:
            self._sandbox._opened(self)

    def connection_lost(self, error: Exception | None) -> None:
        self._sandbox._closed(self)
        super().connection_lost(error)


class _Controller(Controller):
    """aiosmtpd's threaded controller, on an ephemeral port when ``port`` is 0."""

    def __init__(self, sandbox: SmtpServer, handler: Any, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._sandbox = sandbox

    def factory(self) -> SMTP:
        return _Smtp(self._sandbox, self.handler, **self.SMTP_kwargs)

    def _trigger_server(self) -> None:
        # Learn the bound port, then make aiosmtpd build its protocol once (as upstream).
        server = cast(asyncio.Server, self.server)
        self.port = server.sockets[0].getsockname()[1]
        with socket.create_connection((self.hostname, self.port), 1.0) as probe:
            probe.recv(1024)


class _Handler:
    """aiosmtpd hooks: auth check, recipient rules, faults and recording."""

    def __init__(self, sandbox: SmtpServer) -> None:
        self.sandbox = sandbox

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        if self.sandbox.require_auth and not session.authenticated:
            return "530 5.7.0 Authentication required"
        fault = await self._fault("mail", server)
        if fault is not None:
            return fault
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        fault = await self._fault("rcpt", server)
        if fault is not None:
            return fault
        refusal = self.sandbox.rcpt_reply(address)
        if refusal is not None:
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        faults = self.sandbox.faults
        script = faults.scripts["data"]
        if script and script[0] in ("late", "lost"):
            kind = script.popleft()
            queue_id = self.sandbox._record(envelope)  # accepted...
            if kind == "lost":  # ...and the connection is closed without a reply
                if server.transport is not None:
                    server.transport.close()
                await asyncio.Event().wait()  # cancelled when the connection is lost
            await asyncio.sleep(faults.stall_seconds)  # ...and answered too late
            return f"250 2.0.0 Ok: queued as {queue_id}"
        fault = await self._fault("data", server)
        if fault is not None:
            return fault
        try:
            queue_id = self.sandbox._record(envelope)
        except JournalError as exc:  # not recorded, so not accepted: a transient refusal
            print(f"sandbox smtp: {exc.strerror}; answered 451", file=sys.stderr)
            return "451 4.3.0 Cannot record the message; try again later"
        return f"250 2.0.0 Ok: queued as {queue_id}"

    async def _fault(self, stage: str, server: SMTP) -> str | None:
        faults = self.sandbox.faults
        fault = faults.take(stage)
        if faults.latency:
            await asyncio.sleep(faults.latency)
        if fault is None or fault == "pass":
            return None
        if fault == "stall":
            await asyncio.sleep(faults.stall_seconds)
            return None
        transport = server.transport
        if fault == "drop":
            if transport is not None:
                transport.close()
            await asyncio.Event().wait()  # cancelled when the connection is lost
            return None
        code = int(fault)
        if code == 421:
            if transport is not None:
                asyncio.get_running_loop().call_soon(transport.close)  # after the reply
            return "421 4.3.2 Service not available, closing transmission channel"
        detail = "4.3.0 Temporary failure" if code < 500 else "5.3.0 Permanent failure"
        return f"{code} {detail} (sandbox fault)"


def _matches(address: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(address, p.lower()) for p in patterns)


def _part(message: EmailMessage, subtype: str) -> str | None:
    part = message.get_body(preferencelist=(subtype,))
    if part is None or part.get_content_subtype() != subtype:
        return None
    text = str(part.get_content()).replace("\r\n", "\n")
    return text.removesuffix("\n")
