"""The framework-neutral receiver: one request in, one response out, never an exception.

``POST /receipts/<channel>`` with the provider's signed body. What it answers:

- **200**: the events are durable in the ledger (or were already: a retry, a replay).
- **401**: not signed by the provider, forged, or signed outside the time tolerance:
  nothing recorded.
- **400**: signed, but not the provider's shape: nothing recorded.
- **404** unknown channel, **405** not a POST, **413** body over ``max_body_bytes``.
- **503** (``Retry-After``): the ledger could not take them now; nothing recorded,
  the provider sends them again (every provider here retries a non-2xx).
- **500**: a bug; logged with its type only.

Logs name the channel, the answer and the counts, never a header, a body, a key or a
signature.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import attrs

from campaignkit._config import ReceiptsConfig
from campaignkit._ledger import LedgerError, ReceiptBook

from ._parsers import ReceiptParseError
from ._routes import Refused, Route

__all__ = ["ReceiptReceiver", "ReceiptRequest", "ReceiptResponse", "ReceiverStats"]

log = logging.getLogger("campaignkit.receipts")

_TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response></Response>'
ROUTE_PREFIX = "/receipts/"
UNVERIFIED_WARNING = (
    "RECEIPT SIGNATURES ARE NOT VERIFIED: anyone who can reach this receiver can forge "
    "receipts and put addresses on the suppression list. Use this for local tests only."
)


def _lower(headers: Mapping[str, str] | Iterable[tuple[str, str]]) -> dict[str, str]:
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {str(k).lower(): str(v) for k, v in items}


@attrs.frozen
class ReceiptRequest:
    """A request as the receiver sees it.

    Attributes:
        method: the HTTP method.
        path: the path below where the receiver is mounted (``/receipts/sms``).
        headers: the headers (names in any case; lower-cased here).
        body: the raw body, byte for byte (signatures cover it).
        query: the raw query string, without ``?`` (Twilio signs the URL with it).
    """

    method: str
    path: str
    headers: Mapping[str, str] = attrs.field(converter=_lower, repr=False)
    body: bytes = attrs.field(default=b"", repr=False)
    query: str = ""


@attrs.frozen
class ReceiptResponse:
    """What to answer: a status, a body, its content type and extra headers."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@attrs.define
class ReceiverStats:
    """Counts since the receiver started (thread-safe snapshots via ``stats()``)."""

    requests: int = 0
    refused: int = 0
    invalid: int = 0
    failed: int = 0
    events: int = 0
    recorded: int = 0
    duplicates: int = 0
    unmatched: int = 0
    suppressed: int = 0
    ignored: int = 0


def _text(status: int, message: str, **kw: Any) -> ReceiptResponse:
    return ReceiptResponse(status, (message + "\n").encode("utf-8"), **kw)


class ReceiptReceiver:
    """Authenticates, parses and records receipts into a :class:`ReceiptBook`.

    Build it from a campaign with :func:`campaignkit.receipts.receiver` (which reads
    the keys and tokens), or from routes. :meth:`handle` is safe to call from many
    threads at once.
    """

    def __init__(
        self,
        routes: Iterable[Route],
        book: ReceiptBook,
        config: ReceiptsConfig | None = None,
        *,
        polled: Iterable[str] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.routes = {route.channel: route for route in routes}
        self.polled = frozenset(polled)
        self.book = book
        self.config = config or ReceiptsConfig()
        self._clock = clock
        self._stats = ReceiverStats()
        self._lock = threading.Lock()
        self.verified = all(route.verified for route in self.routes.values())
        if not self.verified:
            log.warning(UNVERIFIED_WARNING)

    def __repr__(self) -> str:
        return f"<ReceiptReceiver channels={sorted(self.routes)} ledger={self.book.location!r}>"

    def stats(self) -> ReceiverStats:
        """A copy of the counts so far."""
        with self._lock:
            return attrs.evolve(self._stats)

    def _count(self, **changes: int) -> None:
        with self._lock:
            for name, n in changes.items():
                setattr(self._stats, name, getattr(self._stats, name) + n)

    def handle(self, request: ReceiptRequest) -> ReceiptResponse:
        """Answer one request (see the module docstring); never raises."""
        self._count(requests=1)
        try:
            return self._handle(request)
        except Exception as exc:  # a bug: logged without the request's content
            self._count(failed=1)
            log.error("receipts: internal error (%s)", type(exc).__name__)
            return _text(500, "internal error")

    def _handle(self, request: ReceiptRequest) -> ReceiptResponse:
        path = request.path.rstrip("/")
        if not path.startswith(ROUTE_PREFIX):
            return _text(404, "not found")
        channel = path[len(ROUTE_PREFIX) :]
        route = self.routes.get(channel)
        if route is None:
            if channel in self.polled:
                return _text(404, f"{channel}: its receipts are polled, not posted")
            return _text(404, "no such channel")
        if request.method.upper() != "POST":
            return _text(405, "POST only", headers=(("Allow", "POST"),))
        if len(request.body) > self.config.max_body_bytes:
            self._count(invalid=1)
            return _text(413, "body too large")
        now = self._clock()
        try:
            route.authenticate(request.headers, request.body, request.query, now)
        except Refused as why:
            self._count(refused=1)
            log.warning("receipts %s: refused (%s)", channel, why)
            return _text(401, "refused")
        try:
            parsed = route.parse(request.body, request.query, now)
        except ReceiptParseError as exc:
            self._count(invalid=1)
            log.warning("receipts %s: not the provider's shape (%s)", channel, exc)
            return _text(400, "invalid receipt payload")
        try:
            tally = self.book.record(channel, parsed.events) if parsed.events else None
        except LedgerError as exc:
            self._count(failed=1)
            log.warning("receipts %s: the ledger could not take them now (%s)", channel, exc)
            return _text(503, "try again", headers=(("Retry-After", "5"),))
        if tally is not None:
            self._count(
                events=tally.received,
                recorded=tally.recorded,
                duplicates=tally.duplicates,
                unmatched=tally.unmatched,
                suppressed=tally.suppressed,
            )
            log.debug(
                "receipts %s: %d event(s), %d new, %d unmatched, %d suppressed",
                channel,
                tally.received,
                tally.recorded,
                tally.unmatched,
                tally.suppressed,
            )
        self._count(ignored=parsed.ignored)
        if route.provider == "twilio":
            return ReceiptResponse(200, _TWIML, "text/xml; charset=utf-8")
        return _text(200, "ok")
