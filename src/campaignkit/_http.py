"""Shared plumbing for HTTP channel plugins: :class:`HttpNotifier`."""

from __future__ import annotations

import email.utils
import ipaddress
import re
import ssl
import time
from collections.abc import Iterator, Mapping
from typing import Any, ClassVar
from urllib.parse import SplitResult, urlsplit

import requests
import requests.adapters
import requests.utils
import urllib3.exceptions
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from ._notifier import ChannelSettings, Notifier
from ._redact import redact, token_problem
from .exceptions import ConfigError, PermanentDeliveryError, TransientDeliveryError

__all__ = [
    "HttpNotifier",
    "check_base_url",
    "is_loopback",
    "parse_retry_after",
    "request_error",
]

#: Longest wait a provider's rate-limit header can impose on us, in seconds.
MAX_RETRY_AFTER = 300.0


def is_loopback(host: str) -> bool:
    """Whether a connection to ``host`` stays on this machine.

    ``localhost`` (any case) and IP literals in ``127.0.0.0/8`` or ``::1`` (with or
    without brackets). Nothing else: not ``*.localhost`` (RFC 6761 asks resolvers to
    answer loopback, but the system resolver ``requests`` uses may ask DNS), not
    ``localhost.``, not shorthand such as ``127.1`` or ``0x7f.1``, not IPv4-mapped
    IPv6, and not names that merely start with ``127.0.0.1``.
    """
    if host.lower() == "localhost":
        return True
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not host or any(c not in "0123456789abcdefABCDEF.:" for c in host):
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _refuse(message: str, path: str) -> ConfigError:
    return ConfigError(message, path=path)


def check_base_url(url: str, *, path: str) -> str:
    """Return ``url`` without a trailing slash if it is safe to send a token to.

    The URL is read as the HTTP client reads it: ``requests`` prepares it with
    urllib3's ``parse_url`` and connects to the host ``urllib.parse`` finds in the
    prepared URL. The check requires the raw URL and the prepared one, read by both
    parsers, to agree on scheme, host and port, and refuses every form where
    readers could differ:

    * a scheme other than ``http``/``https``, or no host;
    * backslashes, whitespace, control or non-ASCII characters, ``%``-escapes in
      the host, userinfo (``user:pass@``), a query string or a fragment;
    * an empty or malformed port;
    * ``http://`` to a host that is not loopback (see :func:`is_loopback`), so that
      a token never travels in clear text to a remote host.

    Error messages never quote a URL that holds userinfo.

    Raises:
        ConfigError: naming ``path``.
    """
    _check_characters(url, path)
    raw = _split(url, path)
    _check_port_and_host(url, raw, path)
    scheme, host = _agreed_endpoint(url, path)
    if scheme == "http" and not is_loopback(host):
        raise _refuse(f"refusing clear-text http:// to remote host {host!r}; use https://", path)
    return url.rstrip("/")


def _check_characters(url: str, path: str) -> None:
    """Refuse anything but a string of printable ASCII without backslashes."""
    if not isinstance(url, str):
        raise _refuse("expected a string", path)
    if any(not (0x20 < ord(c) < 0x7F) for c in url):
        raise _refuse(
            "a base URL may not contain whitespace, control or non-ASCII characters", path
        )
    if "\\" in url:
        raise _refuse("a base URL may not contain a backslash", path)


def _split(url: str, path: str) -> SplitResult:
    """``url`` as ``urllib.parse`` splits it: an http(s) URL with a host part, refused
    when it has userinfo, a query string, a fragment or %-escapes in the host."""
    try:
        raw = urlsplit(url)
    except ValueError:  # e.g. an unbalanced "[" (an IPv6 literal)
        raise _refuse(f"not a valid URL: {url!r}", path) from None
    if raw.scheme.lower() not in ("http", "https") or not raw.netloc:
        safe = url if "@" not in url else "a URL with userinfo"
        raise _refuse(f"expected an http(s) URL, got {safe!r}", path)
    if "@" in raw.netloc or "@" in url.split("?", 1)[0].split("#", 1)[0]:
        raise _refuse(
            "a base URL may not contain userinfo ('@'); tokens come from the environment",
            path,
        )
    if "?" in url or "#" in url:
        raise _refuse(f"a base URL may not have a query string or fragment: {url!r}", path)
    if "%" in raw.netloc:
        raise _refuse(f"a base URL's host may not be %-encoded: {url!r}", path)
    return raw


def _check_port_and_host(url: str, raw: SplitResult, path: str) -> None:
    """Refuse an empty, zero or malformed port, and a host that is not a plain host
    name or IP literal."""
    try:
        raw_port = raw.port
    except ValueError:
        raise _refuse(f"not a valid port in {url!r}", path) from None
    if raw.netloc.endswith(":") or (raw_port is not None and raw_port == 0):
        raise _refuse(f"not a valid port in {url!r}", path)
    host = raw.hostname or ""
    if not host:
        raise _refuse(f"expected an http(s) URL with a host, got {url!r}", path)
    literal = raw.netloc.startswith("[")  # an IPv6 literal
    if not re.fullmatch(r"[0-9a-f:.]+" if literal else r"[a-z0-9.\-]+", host) or (
        not literal and (host.startswith(("-", ".")) or ".." in host)
    ):
        raise _refuse(f"not a valid host name in {url!r}", path)


def _agreed_endpoint(url: str, path: str) -> tuple[str, str]:
    """(scheme, host) of ``url``, which the raw URL and the one ``requests`` prepares
    from it, each read by both parsers (:func:`_endpoint`), must agree on."""
    seen = {_endpoint(url, path)}
    try:
        prepared = requests.PreparedRequest()
        prepared.prepare_url(url + "/", None)
    except requests.RequestException:
        raise _refuse(f"not a URL the HTTP client accepts: {url!r}", path) from None
    assert prepared.url is not None
    seen.add(_endpoint(prepared.url, path))
    if len(seen) != 1:
        raise _refuse(f"ambiguous URL (parsers disagree on its host): {url!r}", path)
    scheme, host, _ = seen.pop()
    return scheme, host


def _endpoint(url: str, path: str) -> tuple[str, str, int | None]:
    """(scheme, host, port) of ``url`` as urllib3 and ``urllib.parse`` read it;
    :class:`ConfigError` unless they agree."""
    try:
        parsed = parse_url(url)
        split = urlsplit(url)
        split_port = split.port
    except (LocationParseError, ValueError):
        raise _refuse(f"not a URL the HTTP client accepts: {url!r}", path) from None
    scheme = (parsed.scheme or "").lower()
    host = (parsed.host or "").lower().strip("[]")
    readings = {
        (scheme, host, parsed.port),
        (split.scheme.lower(), (split.hostname or "").lower(), split_port),
    }
    if len(readings) != 1 or parsed.auth is not None:
        raise _refuse(f"ambiguous URL (parsers disagree on its host): {url!r}", path)
    return readings.pop()


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait according to ``Retry-After`` or ``X-RateLimit-Reset``.

    ``Retry-After`` may be seconds or an HTTP date. ``X-RateLimit-Reset`` may be an
    epoch timestamp (SendGrid) or a number of seconds (Telnyx); values larger than a
    day are read as epoch seconds. The result is clamped to ``[0, MAX_RETRY_AFTER]``.
    """
    now = time.time() if now is None else now
    lowered = {k.lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after")
    seconds: float | None = None
    if value:
        try:
            seconds = float(value)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value) if value else None
            if parsed is not None:
                seconds = parsed.timestamp() - now
    if seconds is None:
        reset = lowered.get("x-ratelimit-reset")
        if reset:
            try:
                number = float(reset)
            except ValueError:
                number = None
            if number is not None:
                seconds = number - now if number > 86_400 else number
    if seconds is None:
        return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class _Session(requests.Session):
    """A ``requests.Session`` whose request-building errors never carry a credential.

    ``requests`` quotes a header value it refuses (``InvalidHeader: ... 'Bearer
    <token>\\n'``); such errors are raised again, same type, with redacted text and
    without the original in their context.
    """

    secrets: tuple[str, ...] = ()

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        try:
            return super().request(*args, **kwargs)
        except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL) as exc:
            error: Exception = exc
        text = redact(str(error), self.secrets)
        raise type(error)(text)


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it wraps: ``requests`` and ``urllib3`` nest them in
    ``args`` (``ConnectionError(MaxRetryError(...))``), ``reason`` and the chain."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        nested = [getattr(current, "reason", None), current.__cause__, current.__context__]
        nested += list(current.args)
        todo += [e for e in nested if isinstance(e, BaseException)]


def _in_tunnel_setup(causes: list[BaseException]) -> bool:
    """Whether the failure happened while a proxy was asked for a tunnel (``CONNECT``,
    before TLS to the provider): no byte of the request can have reached it."""
    for cause in causes:
        tb = cause.__traceback__
        while tb is not None:
            if tb.tb_frame.f_code.co_name == "_tunnel":
                return True
            tb = tb.tb_next
    return False


def request_error(exc: requests.RequestException, timeout: float) -> TransientDeliveryError:
    """Map a ``requests`` failure to a transient error, telling "surely not sent" from
    "in doubt" (:attr:`~campaignkit.DeliveryError.in_doubt`).

    Surely not sent (``in_doubt=False``): the connection was never established, so no
    byte of the request left: a connect timeout (``connect_timeout``), a refused or
    failed connection or a DNS failure (``connect_error``: urllib3's
    ``NewConnectionError``/``NameResolutionError``), a proxy that failed before
    forwarding, including one that closes the connection on the tunnel's ``CONNECT``
    (``proxy_error``), a TLS certificate that does not verify
    (``tls_error``, during the handshake).

    In doubt: everything after the connection was made, because the request may have
    been written and acted on: a read timeout (``timeout``), a connection reset or
    closed without an answer, including a stale kept-alive connection
    (``connection_error``: ``RemoteDisconnected``/``ProtocolError``; requests cannot
    say whether the body had left), a broken chunked or compressed answer
    (``response_error``), other TLS errors.
    """
    causes = list(_causes(exc))
    if isinstance(exc, requests.ConnectTimeout):
        return TransientDeliveryError(
            f"connect timeout after {timeout}s", code="connect_timeout", in_doubt=False
        )
    if isinstance(exc, requests.exceptions.ProxyError):
        return TransientDeliveryError("proxy error", code="proxy_error", in_doubt=False)
    if isinstance(exc, requests.exceptions.SSLError):
        verify = any(
            isinstance(c, ssl.SSLCertVerificationError | ssl.CertificateError) for c in causes
        )
        return TransientDeliveryError(
            f"TLS error: {type(exc).__name__}", code="tls_error", in_doubt=not verify
        )
    if isinstance(exc, requests.Timeout):
        return TransientDeliveryError(f"timeout after {timeout}s", code="timeout", in_doubt=True)
    if isinstance(exc, requests.ConnectionError):
        before = any(
            isinstance(
                c, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
            )
            for c in causes
        )
        if before:
            return TransientDeliveryError(
                "could not connect: " + type(exc).__name__, code="connect_error", in_doubt=False
            )
        if _in_tunnel_setup(causes):
            return TransientDeliveryError(
                "proxy error: no tunnel to the provider", code="proxy_error", in_doubt=False
            )
        return TransientDeliveryError(
            f"connection error: {type(exc).__name__}", code="connection_error", in_doubt=True
        )
    return TransientDeliveryError(
        f"error reading the response: {type(exc).__name__}", code="response_error", in_doubt=True
    )


class HttpNotifier(Notifier[requests.Session]):
    """A :class:`~campaignkit.Notifier` that talks HTTP with ``requests``.

    One ``requests.Session`` per worker thread (from :meth:`connect`). Environment
    settings (proxies, CA bundle) are resolved once per session rather than on every
    request, which saves about a quarter of ``requests``' per-call CPU.

    Subclasses set :attr:`default_base_url`, read :attr:`base_url`, and call
    :meth:`post`, which turns network errors, 429 and 5xx into
    :class:`~campaignkit.TransientDeliveryError` and other 4xx into
    :class:`~campaignkit.PermanentDeliveryError`, with the code from
    :meth:`error_code`.

    Transient errors say whether the provider may have acted on the request
    (:attr:`~campaignkit.DeliveryError.in_doubt`): network failures as
    :func:`request_error` classifies them; a status in :attr:`not_processed_statuses`
    or a code in :attr:`not_processed_codes` is surely not processed; any other 5xx
    (500, a gateway's 502/504, 503 unless the provider documents it) is in doubt.
    """

    default_base_url: ClassVar[str]
    #: Statuses that mean the provider did not act on the request (retried freely):
    #: 408 (the request was not received in time) and 429 (rate limited).
    not_processed_statuses: ClassVar[frozenset[int]] = frozenset({408, 429})
    #: Provider error codes (from :meth:`error_code`) documented as "not processed,
    #: safe to retry" whatever the status.
    not_processed_codes: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, settings: ChannelSettings) -> None:
        super().__init__(settings)
        raw = settings.options.get("base_url", self.default_base_url)
        if not isinstance(raw, str):
            raise ConfigError(
                "expected a string", path=f"channels.{settings.channel}.options.base_url"
            )
        self.base_url = check_base_url(raw, path=f"channels.{settings.channel}.options.base_url")
        self.timeout = settings.timeout
        token = settings.token.reveal() if settings.token else ""
        problem = token_problem(token) if token else None
        if problem is not None:  # never quote the value
            raise ConfigError(
                f"the channel's token {problem}", path=f"channels.{settings.channel}.token_env"
            )

    def redact(self, text: str) -> str:
        """``text`` without this channel's token or any other credential."""
        token = self.settings.token
        return redact(text, (token.reveal(),) if token else ())

    def connect(self) -> requests.Session:
        """A new session for one worker thread.

        Proxies and the CA bundle come from the environment (``HTTPS_PROXY``,
        ``NO_PROXY``, ``REQUESTS_CA_BUNDLE``...), except that a clear-text ``http://``
        base URL (only ever loopback) never goes through a proxy: the proxy would
        receive the token in clear text.
        """
        session = _Session()
        token = self.settings.token
        session.secrets = (token.reveal(),) if token else ()
        env = session.merge_environment_settings(self.base_url, {}, None, None, None)
        if not self.base_url.lower().startswith("http://"):
            session.proxies.update(env.get("proxies") or {})
        session.verify = env.get("verify", True)
        session.trust_env = False
        adapter = requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=2, max_retries=0)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        session.headers["User-Agent"] = "campaignkit"
        return session

    def disconnect(self, conn: requests.Session) -> None:
        conn.close()

    def error_code(self, response: requests.Response) -> str | None:
        """The provider's error code in an error response; the HTTP status by default."""
        return str(response.status_code)

    def error_message(self, response: requests.Response) -> str:
        """A short description of an error response, without echoing credentials."""
        text = self.redact(response.text)[:300].strip()
        return f"HTTP {response.status_code}" + (f": {text}" if text else "")

    def post(self, conn: requests.Session, path: str, **kwargs: Any) -> requests.Response:
        """POST to ``base_url + path``; return the response if it is 2xx.

        Raises:
            TransientDeliveryError: timeout, connection error, 408, 429 or 5xx, with
                ``in_doubt`` set when the provider may have acted on the request
                (see the class docstring).
            PermanentDeliveryError: any other non-2xx status.
        """
        url = self.base_url + path
        try:
            response = conn.post(url, timeout=self.timeout, **kwargs)
        except (
            requests.Timeout,
            requests.ConnectionError,
            requests.exceptions.ChunkedEncodingError,
            requests.exceptions.ContentDecodingError,
        ) as exc:
            raise request_error(exc, self.timeout) from exc
        status = response.status_code
        if status < 300:
            return response
        code = self.error_code(response)
        message = self.error_message(response)
        if status in (408, 429) or status >= 500:
            retry_after = parse_retry_after(response.headers) if status in (429, 503) else None
            in_doubt = (
                status not in self.not_processed_statuses and code not in self.not_processed_codes
            )
            raise TransientDeliveryError(
                message,
                code=code,
                retry_after=retry_after,
                status_code=status,
                in_doubt=in_doubt,
            )
        raise PermanentDeliveryError(message, code=code, status_code=status)

    def get(self, conn: requests.Session, path: str, **kwargs: Any) -> requests.Response:
        """GET ``base_url + path`` (a lookup, e.g. for :meth:`Notifier.reconcile`);
        return the response if it is 2xx.

        Raises:
            TransientDeliveryError: timeout, connection error, 408, 429 or 5xx.
            PermanentDeliveryError: any other non-2xx status.
        """
        try:
            response = conn.get(self.base_url + path, timeout=self.timeout, **kwargs)
        except requests.RequestException as exc:
            raise TransientDeliveryError(
                f"lookup failed: {type(exc).__name__}", code="lookup_error"
            ) from exc
        status = response.status_code
        if status < 300:
            return response
        error = (
            TransientDeliveryError
            if status in (408, 429) or status >= 500
            else PermanentDeliveryError
        )
        raise error(
            self.error_message(response), code=self.error_code(response), status_code=status
        )
