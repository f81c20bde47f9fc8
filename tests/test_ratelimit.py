"""The token bucket, with a fake clock."""

from __future__ import annotations

from campaignkit._ratelimit import RateLimiter, TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_bucket_spaces_requests_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, clock=clock, sleep=clock.sleep)
    start = clock.now
    for _ in range(21):
        bucket.acquire()
    # 21 tokens at 10/s with a burst of 1: the last one goes out at t+2.0 s.
    assert abs((clock.now - start) - 2.0) < 1e-9


def test_large_batch_is_paid_by_later_callers() -> None:
    clock = FakeClock()
    bucket = TokenBucket(100.0, clock=clock, sleep=clock.sleep)
    assert bucket.acquire(500) == 0  # goes out now ...
    waited = bucket.acquire(1)  # ... and the next one waits for the 500 tokens
    assert abs(waited - 5.0) < 1e-9


def test_throttle_pauses_and_slows_then_recovers() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, 10.0, clock=clock, sleep=clock.sleep)
    limiter.acquire(1)
    limiter.throttled(3.0)
    before = clock.now
    limiter.acquire(1)
    assert clock.now - before >= 3.0
    assert limiter.requests is not None and limiter.requests.rate == 5.0
    clock.now += 10
    limiter.acquire(1)
    assert limiter.requests.rate == 10.0


def test_unlimited_limiter_still_honours_retry_after() -> None:
    clock = FakeClock()
    limiter = RateLimiter(None, None, clock=clock, sleep=clock.sleep)
    limiter.throttled(2.5)
    before = clock.now
    limiter.acquire(10)
    assert clock.now - before == 2.5
