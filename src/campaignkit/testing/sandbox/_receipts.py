"""Simulated delivery receipts: what happens to each message (:class:`ReceiptSimulation`)
and the one thread that posts the providers' callbacks (:class:`CallbackDispatcher`)."""

from __future__ import annotations

import enum
import hashlib
import heapq
import http.client
import itertools
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

import attrs

__all__ = [
    "LOOPBACK_HOSTS",
    "Callback",
    "CallbackDispatcher",
    "ReceiptOutcome",
    "ReceiptSimulation",
    "ReceiptStats",
    "is_loopback_url",
]

#: the only hosts callbacks are posted to
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost"})
#: seconds one callback attempt may take (connect and answer)
ATTEMPT_TIMEOUT = 5.0
#: the longest wait before a retry, however many attempts came before
MAX_RETRY_WAIT = 3600.0
_MAX_SECONDS = 86_400.0


class ReceiptOutcome(enum.StrEnum):
    """What became of a message at the recipient's end."""

    DELIVERED = "delivered"
    #: a soft, temporary failure (SendGrid ``deferred``, Twilio 30003, Telnyx 40008)
    UNDELIVERED = "undelivered"
    #: a hard failure (SendGrid ``bounce``, Twilio 30005, Telnyx 40001)
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    UNSUBSCRIBED = "unsubscribed"


def _ratio(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0.0 <= value <= 1.0:
        raise ValueError(
            f"ReceiptSimulation.{attribute.name} must be a number between 0 and 1, got {value!r}"
        )


def _seconds(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"ReceiptSimulation.{attribute.name} must be a number, got {value!r}")
    if not 0.0 <= value <= _MAX_SECONDS:
        raise ValueError(
            f"ReceiptSimulation.{attribute.name} must be between 0 and {_MAX_SECONDS:g} "
            f"seconds, got {value!r}"
        )


def _retries(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise ValueError(f"ReceiptSimulation.retries must be an integer 0 to 100, got {value!r}")


def _integer(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"ReceiptSimulation.seed must be an integer, got {value!r}")


#: the outcome ratios, in the order the draw walks them
_ORDER = (
    ReceiptOutcome.DELIVERED,
    ReceiptOutcome.UNDELIVERED,
    ReceiptOutcome.BOUNCED,
    ReceiptOutcome.COMPLAINED,
    ReceiptOutcome.UNSUBSCRIBED,
)


@attrs.frozen
class ReceiptSimulation:
    """What the sandbox's fakes report about the messages they accept.

    The ratios share one draw per message (their sum is at most 1; the rest are
    delivered). The draw is a hash of ``seed`` and the message's key: its recipient
    (address, phone number or push token), followed by ``#n`` for the n-th later
    message the same server accepts for that recipient. Provider message ids are
    random, so keying on them would change the counts from run to run; keyed on the
    recipient, the same seed gives the same outcome to the same recipients whatever
    the batching and concurrency (see :meth:`outcome`).

    Attributes:
        delivered: share delivered (the rest of the ratios are delivered too).
        undelivered: share failing softly (temporary: retried by the provider).
        bounced: share failing hard (the address or number does not exist).
        complained: share delivered then marked spam (email; delivered for SMS).
        unsubscribed: share delivered then unsubscribed (email; delivered for SMS).
        stop: SMS only: share of the delivered messages whose recipient then replies
            ``STOP`` (a second, independent draw).
        delay_seconds: seconds before an outcome callback is sent, and before an Expo
            receipt becomes available.
        seed: seed of the draws.
        retries: how many times a callback answered non-2xx (or not answered) is
            sent again before it is given up.
        retry_seconds: wait before the first retry; doubled for each next one.
    """

    delivered: float = attrs.field(default=0.9, validator=_ratio)
    undelivered: float = attrs.field(default=0.03, validator=_ratio)
    bounced: float = attrs.field(default=0.04, validator=_ratio)
    complained: float = attrs.field(default=0.02, validator=_ratio)
    unsubscribed: float = attrs.field(default=0.01, validator=_ratio)
    stop: float = attrs.field(default=0.0, validator=_ratio)
    delay_seconds: float = attrs.field(default=0.0, validator=_seconds)
    seed: int = attrs.field(default=0, validator=_integer)
    retries: int = attrs.field(default=5, validator=_retries)
    retry_seconds: float = attrs.field(default=0.5, validator=_seconds)

    def __attrs_post_init__(self) -> None:
        total = math.fsum(getattr(self, o.value) for o in _ORDER)
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"ReceiptSimulation ratios add up to {total:g}, more than 1 "
                f"(delivered, undelivered, bounced, complained, unsubscribed)"
            )

    def _draw(self, key: str, salt: str) -> float:
        digest = hashlib.sha256(f"{self.seed}\x00{salt}\x00{key}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def outcome(self, key: str) -> ReceiptOutcome:
        """The outcome of the message keyed ``key`` (deterministic)."""
        roll, edge = self._draw(key, "outcome"), 0.0
        for outcome in _ORDER:
            edge += getattr(self, outcome.value)
            if roll < edge:
                return outcome
        return ReceiptOutcome.DELIVERED

    def replies_stop(self, key: str) -> bool:
        """Whether the recipient of the delivered SMS keyed ``key`` replies STOP."""
        return self._draw(key, "stop") < self.stop

    @classmethod
    def from_ratios(cls, text: str, **kwargs: Any) -> ReceiptSimulation:
        """A simulation from ``"bounced=0.1,undelivered=0.05,stop=0.05"`` (other fields
        by keyword): the ratios not named are 0, except ``delivered``, which when not
        named is what the others leave (``1 - their sum``); empty text: the defaults.

        Raises:
            ValueError: an unknown name, a value that is not a number, or a bad ratio.
        """
        names = {o.value for o in _ORDER} | {"stop"}
        ratios: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, sep, value = part.partition("=")
            name = name.strip()
            if not sep or name not in names:
                raise ValueError(f"expected NAME=RATIO with NAME one of {', '.join(sorted(names))}")
            try:
                ratios[name] = float(value)
            except ValueError:
                raise ValueError(f"{name}: {value.strip()!r} is not a number") from None
        if not ratios:  # none named: the defaults
            return cls(**kwargs)
        given = {**dict.fromkeys(names, 0.0), **ratios}
        if "delivered" not in ratios:
            rest = math.fsum(given[o.value] for o in _ORDER[1:])
            given["delivered"] = max(0.0, 1.0 - rest)
        return cls(**{**given, **kwargs})


@attrs.frozen
class ReceiptStats:
    """Counts of a dispatcher's callbacks.

    Attributes:
        scheduled: callbacks scheduled.
        sent: HTTP attempts made (first sends and retries).
        answered: callbacks answered 2xx.
        retried: attempts that were retries.
        given_up: callbacks abandoned (retries exhausted, or not a loopback URL).
    """

    scheduled: int = 0
    sent: int = 0
    answered: int = 0
    retried: int = 0
    given_up: int = 0

    @property
    def outstanding(self) -> int:
        """Callbacks neither answered nor given up yet."""
        return self.scheduled - self.answered - self.given_up


def is_loopback_url(url: object) -> bool:
    """Whether ``url`` is an ``http(s)`` URL on 127.0.0.1 (or ``localhost``)."""
    if not isinstance(url, str):
        return False
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and parts.hostname in LOOPBACK_HOSTS


#: attempt number (1 = first send) -> the body and headers to send
Render = Callable[[int], tuple[bytes, Mapping[str, str]]]


@attrs.frozen
class Callback:
    """One callback: POSTed to ``url``, rendered afresh for each attempt (a signature
    covers the attempt's timestamp; the event itself does not change)."""

    url: str
    render: Render


class CallbackDispatcher:
    """Posts scheduled callbacks from one background thread, retrying as providers do.

    A callback answered 2xx is done; any other answer, or none (refused connection,
    timeout), is retried after ``retry_seconds``, doubled each time, ``retries``
    times, then given up. Only loopback URLs are contacted. Thread-safe.
    """

    def __init__(self, simulation: ReceiptSimulation) -> None:
        self.simulation = simulation
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, Callback, int]] = []
        self._order = itertools.count()
        self._counts = dict.fromkeys(attrs.fields_dict(ReceiptStats), 0)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def schedule(self, callback: Callback, delay: float = 0.0) -> None:
        """Send ``callback`` in ``delay`` seconds (starting the thread if needed)."""
        with self._cond:
            self._counts["scheduled"] += 1
            if self._stopping.is_set():
                self._counts["given_up"] += 1
                return
            if not is_loopback_url(callback.url):
                self._counts["given_up"] += 1
                self._cond.notify_all()
                return
            heapq.heappush(self._heap, (time.monotonic() + delay, next(self._order), callback, 1))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="sandbox-receipts", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    @property
    def stopped(self) -> bool:
        """Whether :meth:`stop` was called (a stopped dispatcher sends nothing more)."""
        return self._stopping.is_set()

    def stats(self) -> ReceiptStats:
        """The counts so far."""
        with self._cond:
            return ReceiptStats(**self._counts)

    def drain(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for every scheduled callback to be answered
        2xx or given up; returns how many are still outstanding."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                left = ReceiptStats(**self._counts).outstanding
                remaining = deadline - time.monotonic()
                if left == 0 or remaining <= 0:
                    return left
                self._cond.wait(remaining)

    def stop(self, timeout: float = ATTEMPT_TIMEOUT + 1.0) -> None:
        """Stop the thread; callbacks not sent yet are dropped (counted as given up)."""
        with self._cond:
            self._stopping.set()
            self._counts["given_up"] += len(self._heap)
            self._heap.clear()
            thread, self._thread = self._thread, None
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping.is_set():
                    now = time.monotonic()
                    if self._heap and self._heap[0][0] <= now:
                        break
                    self._cond.wait(self._heap[0][0] - now if self._heap else None)
                if self._stopping.is_set():
                    return
                _, _, callback, attempt = heapq.heappop(self._heap)
                self._counts["sent"] += 1
                if attempt > 1:
                    self._counts["retried"] += 1
            ok = _post(callback, attempt)
            with self._cond:
                if self._stopping.is_set():
                    self._counts["answered" if ok else "given_up"] += 1
                elif ok:
                    self._counts["answered"] += 1
                elif attempt <= self.simulation.retries:
                    wait = min(self.simulation.retry_seconds * 2 ** (attempt - 1), MAX_RETRY_WAIT)
                    heapq.heappush(
                        self._heap,
                        (time.monotonic() + wait, next(self._order), callback, attempt + 1),
                    )
                else:
                    self._counts["given_up"] += 1
                self._cond.notify_all()


def _post(callback: Callback, attempt: int) -> bool:
    """POST one attempt of ``callback``; whether it was answered 2xx."""
    parts = urlsplit(callback.url)
    try:
        body, headers = callback.render(attempt)
        connection_class = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        host = parts.hostname or "127.0.0.1"
        connection = connection_class(host, parts.port, timeout=ATTEMPT_TIMEOUT)
        try:
            path = parts.path or "/"
            if parts.query:
                path += "?" + parts.query
            connection.request("POST", path, body=body, headers=dict(headers))
            response = connection.getresponse()
            response.read()
            return 200 <= response.status < 300
        finally:
            connection.close()
    except (OSError, http.client.HTTPException):
        return False
