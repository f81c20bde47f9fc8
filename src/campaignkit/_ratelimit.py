"""A thread-safe token bucket with adaptive slow-down, shared by a channel's workers;
and :class:`SharedRateLimiter`, a channel's limits shared by worker processes."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

__all__ = ["RateLimiter", "SharedBudget", "SharedRateLimiter", "TokenBucket"]


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


class SharedBudget(Protocol):
    """Where the workers of a campaign keep a shared rate budget (the ledger)."""

    def reserve_budget(self, name: str, cost: float) -> float:
        """Reserve ``cost`` seconds of budget ``name``; returns how far ahead of now
        the reservation starts."""
        ...

    def hold_budget(self, name: str, seconds: float) -> None:
        """Hold budget ``name`` for ``seconds`` (a provider's 429), for everyone."""
        ...


class SharedRateLimiter(RateLimiter):
    """A channel's limits held by all the workers of a campaign together, on any hosts:
    a provider's limit is per account, not per process.

    Every request reserves its share of two budgets kept in the ledger (``name`` +
    ``:requests``, one request's worth; ``name`` + ``:messages``, its messages' worth),
    each a theoretical arrival time advanced by the database server's clock (GCRA),
    and waits until its reservation begins. So N workers together send at most the
    configured rate, plus one request's messages at the start of any window; a 429
    holds the budgets for everyone. The local buckets still slow this worker down
    after a 429 (as :class:`RateLimiter`).
    """

    def __init__(
        self,
        budget: SharedBudget,
        name: str,
        messages_per_second: float | None,
        requests_per_second: float | None,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(messages_per_second, requests_per_second, sleep=sleep)
        self.budget, self.name = budget, name
        self._mps, self._rps = messages_per_second, requests_per_second

    def acquire(self, messages: int) -> None:
        super().acquire(messages)
        ahead = 0.0
        if self._rps:
            ahead = max(ahead, self.budget.reserve_budget(self.name + ":requests", 1 / self._rps))
        if self._mps and messages:
            cost = messages / self._mps
            ahead = max(ahead, self.budget.reserve_budget(self.name + ":messages", cost))
        if ahead > 0:
            self._sleep(ahead)

    def throttled(self, retry_after: float) -> None:
        super().throttled(retry_after)
        for kind, rate in ((":requests", self._rps), (":messages", self._mps)):
            if rate:
                self.budget.hold_budget(self.name + kind, retry_after)
