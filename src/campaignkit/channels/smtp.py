"""Email through any SMTP server with :mod:`smtplib` (``provider = "smtp"``).

Options (``[channels.email.options]``):

``host`` (required), ``port``
    The server. ``port`` defaults to 587 for ``starttls``, 465 for ``tls`` and 25
    for ``none``.
``security``
    ``"starttls"`` (default: plain connection upgraded with STARTTLS, never
    falling back to clear text), ``"tls"`` (implicit TLS, ``SMTP_SSL``) or
    ``"none"`` (clear text, only allowed to a loopback host, as for ``http://``
    base URLs).
``username``
    Login name; when absent it is read from the environment variable named by
    ``username_env`` (default ``SMTP_USERNAME``). The password is the channel
    token (``EMAIL_API_TOKEN``); without a token the client does not log in (a
    relay that needs no AUTH).
``from_email`` (required), ``from_name``, ``reply_to``
    Sender and reply address.
``timeout``
    Seconds for each SMTP command (default: the channel's timeout).
``ca_file``
    A PEM bundle to verify the server's certificate with, instead of the system's
    (relative to the configuration file).
``local_hostname``
    The name sent in EHLO (default: this machine's FQDN).

Each worker thread keeps one SMTP session (:meth:`SmtpNotifier.connect` returns
its holder; the session is opened, and authenticated, on first use). A batch is
sent over it one transaction (``MAIL``, ``RCPT``, ``DATA``) per message, each a
MIME message built with :class:`email.message.EmailMessage`: text and HTML as
``multipart/alternative``, ``Message.headers`` added, ``Message-ID`` made from the
idempotency key (``<key@sender-domain>``), which is also the provider message id.

Answers:

* a 4xx reply to ``MAIL``, ``RCPT`` or ``DATA``: that message fails transiently
  (the SMTP code is its error code); a 5xx reply: permanently. This is what
  ``SMTPRecipientsRefused`` and the refused-recipients dict of ``sendmail`` report,
  per recipient.
* The connection lost (or a 421 reply) before ``DATA`` was sent: nothing was
  committed, so the client reconnects and sends the message again at once (twice
  per batch at most). A 421 reply to ``DATA`` or to the end of the data is a
  refusal (the server answered): the same. Lost or timed out during ``DATA``
  (after the ``DATA`` command, before the final reply): the message is *in doubt*
  (the server may have queued it): a transient failure with ``in_doubt``, which the
  core records ``unknown`` unless the channel sets ``on_doubt = "retry"``. A
  timeout closes the session; the rest of the batch then fails transiently (not in
  doubt: never sent).
* The session cannot be opened: 535 (``SMTPAuthenticationError``), a server
  without STARTTLS or AUTH, a certificate that does not verify, a 5xx greeting:
  :class:`~campaignkit.PermanentDeliveryError`; refused or lost connections,
  timeouts and 4xx greetings: :class:`~campaignkit.TransientDeliveryError`. Raised
  when nothing of the batch was settled yet, otherwise the unsent messages get
  that outcome.

SMTP has no idempotency key: a message whose ``DATA`` was lost may arrive twice.
"""

from __future__ import annotations

import contextlib
import email.policy
import email.utils
import re
import smtplib
import socket
import ssl
from collections.abc import Sequence
from email.headerregistry import Address
from email.message import EmailMessage
from typing import Any, ClassVar, Literal

import attrs

from .._http import is_loopback
from .._models import Message, Outcome, Secret
from .._notifier import ChannelSettings, Notifier
from ..exceptions import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from ..hookspecs import hookimpl
from ..options import between, check, email_address

__all__ = ["SmtpConnection", "SmtpNotifier", "SmtpOptions"]

#: Default port for each ``security`` mode.
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
#: New connections a batch may open after losing one.
MAX_RECONNECTS = 2

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_MSGID_UNSAFE = re.compile(r"[^A-Za-z0-9!#$%&'*+\-/=?^_`{|}~.]")
# Headers the notifier writes itself: a Message may not set them.
_OWN_HEADERS = frozenset(
    {
        "from",
        "to",
        "cc",
        "bcc",
        "subject",
        "date",
        "message-id",
        "mime-version",
        "content-type",
        "content-transfer-encoding",
    }
)
# Build bodies as 7-bit (quoted-printable or base64) so that no server needs 8BITMIME;
# a non-ASCII address needs SMTPUTF8, which comes with 8BITMIME (RFC 6531).
# Lines up to RFC 5322's 998: long List-Unsubscribe values stay unfolded (folding can
# break DKIM and some policies re-encode them as encoded-words).
_POLICY = email.policy.SMTP.clone(cte_type="7bit", max_line_length=998)
_UTF8_POLICY = email.policy.SMTPUTF8.clone(max_line_length=998)


@attrs.frozen
class SmtpOptions:
    """The ``options`` table of an SMTP channel (see the module docstring)."""

    host: str
    from_email: str = attrs.field(validator=email_address)
    port: int | None = attrs.field(
        default=None, validator=between(1, 65535, "not a port number: {value}")
    )
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = None
    username_env: str = "SMTP_USERNAME"
    from_name: str | None = None
    reply_to: str | None = attrs.field(default=None, validator=email_address)
    timeout: float | None = attrs.field(
        default=None, validator=check(lambda v: v > 0, "expected a positive number")
    )
    ca_file: str | None = None
    local_hostname: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.security == "none" and not is_loopback(self.host):
            raise ConfigError(
                f"refusing clear-text SMTP to remote host {self.host!r}; "
                "use security = 'starttls' or 'tls'",
                path="security",
            )


class SmtpConnection:
    """A worker thread's SMTP session: opened on first use, reopened when lost."""

    def __init__(self) -> None:
        self.client: smtplib.SMTP | None = None

    def close(self) -> None:
        """Drop the session without ``QUIT`` (after an error)."""
        if self.client is not None:
            try:
                self.client.close()
            finally:
                self.client = None

    def __repr__(self) -> str:
        return f"<SmtpConnection open={self.client is not None}>"


class _Lost(Exception):
    """The session broke mid-transaction; ``committed`` if ``DATA`` had been sent."""

    def __init__(self, reason: str, *, code: str, committed: bool) -> None:
        super().__init__(reason)
        self.code = code
        self.committed = committed


class SmtpNotifier(Notifier[SmtpConnection]):
    """Sends email over SMTP, up to 50 messages per batch on the thread's session.

    Raises:
        ConfigError: from the constructor, for invalid options (a clear-text
            ``security = "none"`` to a remote host, a username without a password).
    """

    name: ClassVar[str] = "smtp"
    address_field: ClassVar[str] = "email"
    max_batch_size: ClassVar[int] = 50
    stop_codes: ClassVar[frozenset[str]] = frozenset({"550", "551", "553"})
    supports_idempotency_keys: ClassVar[bool] = False
    token_required: ClassVar[bool] = False

    options_class: ClassVar[type[SmtpOptions]] = SmtpOptions
    options: SmtpOptions

    def __init__(self, settings: ChannelSettings) -> None:
        super().__init__(settings)
        opts = self.options
        self.port = opts.port if opts.port is not None else DEFAULT_PORTS[opts.security]
        self.timeout = opts.timeout if opts.timeout is not None else settings.timeout
        self._password: Secret | None = settings.token if settings.token else None
        self.username = opts.username or settings.env.get(opts.username_env) or None
        if self._password is not None and self.username is None:
            raise ConfigError(
                f"a password (the channel token) is set but no username; set username "
                f"or the {opts.username_env} environment variable",
                path=f"{settings.path}.username",
            )
        if self._password is None and opts.username is not None:
            raise ConfigError(
                "a username is set but no password: set the channel's token environment variable",
                path=f"{settings.path}.username",
            )
        self.domain = opts.from_email.rpartition("@")[2]
        self._sender = (
            str(Address(display_name=opts.from_name, addr_spec=opts.from_email))
            if opts.from_name
            else opts.from_email
        )
        self._local_hostname: str | None = opts.local_hostname
        self._context: ssl.SSLContext | None = None
        if opts.security != "none":
            cafile = str(settings.base_dir / opts.ca_file) if opts.ca_file else None
            try:
                self._context = ssl.create_default_context(cafile=cafile)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"cannot load CA file {cafile!r}: {exc}", path=f"{settings.path}.ca_file"
                ) from None

    # -- connection -------------------------------------------------------------------
    def connect(self) -> SmtpConnection:
        """This thread's session holder; the SMTP session opens on first use."""
        return SmtpConnection()

    def disconnect(self, conn: SmtpConnection) -> None:
        """End the session politely (``QUIT``), or just close it."""
        client, conn.client = conn.client, None
        if client is None:
            return
        try:
            client.quit()
        except (OSError, smtplib.SMTPException):
            client.close()

    def _open(self) -> smtplib.SMTP:
        """Open, secure and authenticate a session.

        Raises:
            PermanentDeliveryError, TransientDeliveryError: see the module docstring.
        """
        if self._local_hostname is None:
            self._local_hostname = socket.getfqdn()
        host, context = self.options.host, self._context
        client: smtplib.SMTP
        try:  # smtplib closes the socket itself when connecting fails
            if self.options.security == "tls":
                client = smtplib.SMTP_SSL(
                    host,
                    self.port,
                    local_hostname=self._local_hostname,
                    timeout=self.timeout,
                    context=context,
                )
            else:
                client = smtplib.SMTP(
                    host, self.port, local_hostname=self._local_hostname, timeout=self.timeout
                )
        except (OSError, smtplib.SMTPException) as exc:
            raise self._session_error(exc) from None
        try:
            client.ehlo_or_helo_if_needed()
            if self.options.security == "starttls":
                if not client.has_extn("starttls"):
                    raise PermanentDeliveryError(
                        f"{self.options.host} does not offer STARTTLS",
                        code="starttls_unsupported",
                    )
                client.starttls(context=context)
                client.ehlo_or_helo_if_needed()
            if self._password is not None:
                assert self.username is not None
                client.login(self.username, self._password.reveal())
        except BaseException as exc:
            client.close()
            if isinstance(exc, DeliveryError):
                raise
            if isinstance(exc, (OSError, smtplib.SMTPException)):
                raise self._session_error(exc) from None
            raise
        return client

    def _session_error(self, exc: OSError) -> DeliveryError:
        """Map an error met while opening a session."""
        where = f"SMTP {self.options.host}:{self.port}"
        if isinstance(exc, smtplib.SMTPAuthenticationError):
            return PermanentDeliveryError(
                f"{where}: authentication failed ({exc.smtp_code} {self._scrub(exc.smtp_error)})",
                code=str(exc.smtp_code),
            )
        if isinstance(exc, smtplib.SMTPNotSupportedError):
            return PermanentDeliveryError(f"{where}: {exc}", code="not_supported")
        if isinstance(exc, smtplib.SMTPResponseException):
            error = TransientDeliveryError if exc.smtp_code < 500 else PermanentDeliveryError
            return error(
                f"{where}: {exc.smtp_code} {self._scrub(exc.smtp_error)}", code=str(exc.smtp_code)
            )
        if isinstance(exc, ssl.SSLCertVerificationError):
            return PermanentDeliveryError(
                f"{where}: certificate verification failed: {exc.verify_message}",
                code="tls_verify",
            )
        if _timed_out(exc):
            return TransientDeliveryError(f"{where}: timeout after {self.timeout}s", code="timeout")
        if isinstance(exc, smtplib.SMTPServerDisconnected | ConnectionError | ssl.SSLError):
            return TransientDeliveryError(
                f"{where}: connection lost: {type(exc).__name__}", code="connection_error"
            )
        if isinstance(exc, smtplib.SMTPException):  # e.g. no suitable AUTH mechanism
            return PermanentDeliveryError(f"{where}: {self._scrub(str(exc))}", code="smtp_error")
        return TransientDeliveryError(
            f"{where}: connection error: {type(exc).__name__}", code="connection_error"
        )

    def _scrub(self, text: bytes | str) -> str:
        """Server text, decoded, shortened, without the password."""
        value = text.decode("utf-8", "replace") if isinstance(text, bytes) else str(text)
        if self._password is not None and self._password.reveal():
            value = value.replace(self._password.reveal(), "***")
        return value[:200]

    # -- sending ----------------------------------------------------------------------
    def send_batch(self, conn: SmtpConnection, messages: Sequence[Message]) -> Sequence[Outcome]:
        """Send each message in its own SMTP transaction over ``conn``'s session.

        Returns one outcome per message, in order.

        Raises:
            TransientDeliveryError, PermanentDeliveryError: the session could not be
                (re)opened before any message of the batch was settled.
        """
        outcomes: list[Outcome] = []
        reconnects = 0
        while len(outcomes) < len(messages):
            message = messages[len(outcomes)]
            built = self._build(message)
            if isinstance(built, Outcome):
                outcomes.append(built)
                continue
            try:
                if conn.client is None:
                    conn.client = self._open()
                outcome = self._transaction(conn.client, message, *built)
            except DeliveryError as exc:  # the session could not be opened
                return _abort(outcomes, len(messages), exc)
            except _Lost as lost:
                conn.close()
                if lost.committed:  # the server may have queued it: never re-sent here
                    outcomes.append(
                        Outcome.failed(str(lost), code=lost.code, transient=True, in_doubt=True)
                    )
                if lost.code == "timeout":  # a slow server: do not insist
                    error = TransientDeliveryError(str(lost), code="timeout")
                    return _abort(outcomes, len(messages), error)
                if reconnects >= MAX_RECONNECTS:
                    error = TransientDeliveryError(
                        f"{lost} (lost the connection {reconnects + 1} times in one batch)",
                        code=lost.code,
                    )
                    return _abort(outcomes, len(messages), error)
                reconnects += 1
                continue  # uncommitted: send it again on a new session; else the next
            outcomes.append(outcome)
        return outcomes

    def _transaction(
        self,
        client: smtplib.SMTP,
        message: Message,
        payload: bytes,
        message_id: str,
        utf8: bool,
    ) -> Outcome:
        """One ``MAIL``/``RCPT``/``DATA`` exchange.

        Raises:
            _Lost: the session broke (or the server said 421, closing it).
        """
        if utf8 and not client.has_extn("smtputf8"):
            return Outcome.failed(
                "the server does not support SMTPUTF8, needed for a non-ASCII address",
                code="smtputf8_unsupported",
            )
        stage = "MAIL"
        code: int
        reply: bytes | str
        try:
            options = ["SMTPUTF8", "BODY=8BITMIME"] if utf8 else []
            code, reply = client.mail(self.options.from_email, options)
            if code == 250:
                stage = "RCPT"
                code, reply = client.rcpt(message.address.strip())
                if code in (250, 251):
                    stage = "DATA"
                    try:
                        code, reply = client.data(payload)
                    except smtplib.SMTPDataError as exc:  # the reply to DATA itself
                        code, reply = exc.smtp_code, exc.smtp_error
                    if code == 250:
                        return Outcome.sent(message_id)
        except (OSError, smtplib.SMTPException) as exc:
            if _timed_out(exc):
                raise _Lost(
                    f"SMTP timeout after {self.timeout}s at {stage}",
                    code="timeout",
                    committed=stage == "DATA",
                ) from None
            raise _Lost(
                f"SMTP connection lost at {stage}: {type(exc).__name__}",
                code="connection_lost",
                committed=stage == "DATA",
            ) from None
        finally:
            client.command_encoding = "ascii"
        text = f"SMTP {code} at {stage}: {self._scrub(reply)}"
        if code == 421:  # the server is closing the session; it answered: not accepted
            raise _Lost(text, code="421", committed=False)
        self._reset(client)
        return Outcome.failed(text, code=str(code), transient=code < 500)

    @staticmethod
    def _reset(client: smtplib.SMTP) -> None:
        """Abort the transaction; a broken session shows up at the next command."""
        with contextlib.suppress(OSError, smtplib.SMTPException):
            client.rset()

    def _build(self, message: Message) -> tuple[bytes, str, bool] | Outcome:
        """``(payload, message_id, needs_smtputf8)``, or a failed outcome if the
        message cannot be expressed as email."""
        address = message.address.strip()
        if not _EMAIL.fullmatch(address) or any(c in address for c in '<>,;"()[]\\'):
            return Outcome.failed(f"not an email address: {address!r}", code="invalid_address")
        utf8 = not (address.isascii() and self.options.from_email.isascii())
        key = _MSGID_UNSAFE.sub("-", message.idempotency_key)
        message_id = (
            f"{key}@{self.domain}"
            if key
            else email.utils.make_msgid(domain=self.domain).strip("<>")
        )
        try:
            policy = _UTF8_POLICY if utf8 else _POLICY
            mime = EmailMessage(policy=policy)
            mime["From"] = self._sender
            local, _, domain = address.rpartition("@")
            mime["To"] = Address(display_name=message.name or "", username=local, domain=domain)
            if self.options.reply_to:
                mime["Reply-To"] = self.options.reply_to
            mime["Subject"] = message.subject or ""
            mime["Date"] = email.utils.formatdate(usegmt=True)
            mime["Message-ID"] = f"<{message_id}>"
            for name, value in message.headers.items():
                if name.lower() in _OWN_HEADERS:
                    return Outcome.failed(
                        f"header {name!r} is set by campaignkit", code="invalid_message"
                    )
                del mime[name]
                mime[name] = value
            if message.body:
                mime.set_content(message.body)
                if message.html:
                    mime.add_alternative(message.html, subtype="html")
            elif message.html:
                mime.set_content(message.html, subtype="html")
            else:
                return Outcome.failed("an email needs a text or HTML body", code="invalid_message")
            payload = mime.as_bytes(policy=policy)
        except (ValueError, TypeError, IndexError) as exc:
            return Outcome.failed(f"cannot build the email: {exc}", code="invalid_message")
        return payload, message_id, utf8


def _timed_out(exc: BaseException) -> bool:
    """Whether ``exc`` is a timeout (smtplib reports one as ``SMTPServerDisconnected``)."""
    return isinstance(exc, TimeoutError) or isinstance(exc.__context__, TimeoutError)


def _abort(outcomes: list[Outcome], total: int, error: DeliveryError) -> list[Outcome]:
    """Stop a batch: raise ``error`` if nothing was settled, else give it to the rest."""
    if not outcomes:
        raise error
    failed = Outcome.failed(str(error), code=error.code, transient=error.transient)
    return outcomes + [failed] * (total - len(outcomes))


@hookimpl
def campaignkit_register_channels(register: Any) -> None:
    """Register :class:`SmtpNotifier`."""
    register(SmtpNotifier)
