"""A thread-safe token bucket with adaptive slow-down, shared by a channel's workers."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

__all__ = ["RateLimiter", "TokenBucket"]


class TokenBucket:
    """Generic cell rate algorithm: ``rate`` tokens per second, bursts of ``burst``.

    :meth:`acquire` blocks until the tokens are available. After :meth:`slow_down`
    the rate is halved and climbs back by 10% of the configured rate for every
    second of clean traffic (additive increase, multiplicative decrease).
    """

    def __init__(
        self,
        rate: float,
        *,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.configured_rate = rate
        self.rate = rate
        self.burst = max(burst, 1.0)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tat = clock()  # theoretical arrival time of the next token
        self._paused_until = 0.0
        self._last_change = clock()

    def acquire(self, tokens: float = 1.0) -> float:
        """Take ``tokens``, sleeping as long as needed; returns the seconds slept."""
        with self._lock:
            now = self._clock()
            self._recover(now)
            start = max(self._tat, now, self._paused_until)
            # A request larger than the burst is allowed, then paid for by later callers.
            wait = max(start - now - (self.burst - 1.0) / self.rate, self._paused_until - now, 0.0)
            self._tat = start + tokens / self.rate
        if wait > 0:
            self._sleep(wait)
        return wait

    def pause(self, seconds: float) -> None:
        """Hold every caller for ``seconds`` (a provider said ``Retry-After``)."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + seconds)

    def slow_down(self, hold: float = 0.0) -> None:
        """Halve the rate (down to 1% of the configured one); recovery starts after
        ``hold`` seconds."""
        with self._lock:
            self.rate = max(self.rate / 2.0, self.configured_rate / 100.0)
            self._last_change = self._clock() + hold

    def _recover(self, now: float) -> None:
        if self.rate < self.configured_rate:
            elapsed = now - self._last_change
            if elapsed >= 1.0:
                self.rate = min(
                    self.configured_rate, self.rate + 0.1 * self.configured_rate * int(elapsed)
                )
                self._last_change = now


class RateLimiter:
    """A channel's two buckets: messages per second and requests per second.

    Either may be ``None`` (unlimited).
    """

    def __init__(
        self,
        messages_per_second: float | None,
        requests_per_second: float | None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.messages = (
            TokenBucket(messages_per_second, clock=clock, sleep=sleep)
            if messages_per_second
            else None
        )
        self.requests = (
            TokenBucket(requests_per_second, clock=clock, sleep=sleep)
            if requests_per_second
            else None
        )
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._paused_until = 0.0

    def acquire(self, messages: int) -> None:
        """Wait until one request carrying ``messages`` messages may be sent."""
        with self._lock:
            pause = self._paused_until - self._clock()
        if pause > 0:
            self._sleep(pause)
        if self.requests is not None:
            self.requests.acquire(1.0)
        if self.messages is not None:
            self.messages.acquire(float(messages))

    def throttled(self, retry_after: float) -> None:
        """The provider answered 429: slow down and hold everyone for ``retry_after``."""
        with self._lock:
            self._paused_until = max(self._paused_until, self._clock() + retry_after)
        for bucket in (self.requests, self.messages):
            if bucket is not None:
                bucket.slow_down(hold=retry_after)
