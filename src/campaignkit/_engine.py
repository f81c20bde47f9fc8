"""Runs one channel: selection, rendering, batching, worker threads, rate limit, retries."""

from __future__ import annotations

import collections
import hashlib
import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import attrs
import backoff

from ._config import Channel, RetryPolicy
from ._models import (
    ChannelResult,
    DeliveryResult,
    DeliveryStatus,
    Message,
    Outcome,
    Rate,
    Reason,
    Recipient,
)
from ._notifier import Notifier
from ._ratelimit import RateLimiter
from ._templates import CompiledTemplate
from .exceptions import DeliveryError, TemplateError

__all__ = ["ChannelPlan", "ChannelRunner", "ResultWriter", "idempotency_key"]

log = logging.getLogger("campaignkit")

#: 429 answers one batch may wait out before they count as a failed attempt.
MAX_THROTTLE_WAITS = 10
#: Wait after a 429 that did not say how long.
DEFAULT_THROTTLE_WAIT = 1.0

ProgressCallback = Callable[[str, int], None]


def idempotency_key(run_id: str, channel: str, recipient_id: str) -> str:
    """The deterministic key of one delivery: the same for every attempt and resume."""
    digest = hashlib.sha256(f"{run_id}\x1f{channel}\x1f{recipient_id}".encode()).hexdigest()
    return digest[:32]


class ResultWriter:
    """Appends per-recipient results as JSON lines to ``path`` (``None``: discards them);
    thread-safe."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._file: IO[str] | None = path.open("a", encoding="utf-8") if path else None
        self._lock = threading.Lock()

    def write(self, results: Sequence[DeliveryResult]) -> None:
        if self._file is None:
            return
        lines = "".join(json.dumps(r.to_dict()) + "\n" for r in results)
        with self._lock:
            self._file.write(lines)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()


@attrs.frozen
class ChannelPlan:
    """Everything needed to run one channel, prepared (and validated) before extraction."""

    channel: Channel
    notifier: Notifier[Any]
    template: CompiledTemplate
    retry: RetryPolicy
    rate: Rate
    batch_size: int


@attrs.define
class _Pending:
    message: Message
    attempts: int = 0
    error_code: str | None = None
    error: str | None = None


class _Tally:
    """Thread-safe counters for a channel's result."""

    def __init__(self, channel: str, progress: ProgressCallback | None) -> None:
        self.channel = channel
        self.lock = threading.Lock()
        self.status: collections.Counter[str] = collections.Counter()
        self.reasons: collections.Counter[str] = collections.Counter()
        self.codes: collections.Counter[str] = collections.Counter()
        self.requests = 0
        self._progress = progress

    def add(self, results: Sequence[DeliveryResult]) -> None:
        with self.lock:
            for r in results:
                self.status[str(r.status)] += 1
                if r.reason:
                    self.reasons[str(r.reason)] += 1
                if r.error_code:
                    self.codes[r.error_code] += 1
            done = sum(self.status.values())
        if self._progress is not None:
            self._progress(self.channel, done)


class ChannelRunner:
    """Sends one channel of a run.

    The calling thread streams the segment, selects and renders; ``concurrency``
    worker threads send batches, each with its own connection from
    :meth:`Notifier.connect`. Transient failures are re-sent in retry rounds spaced
    by ``backoff.constant`` (plus optional jitter); only the failed messages are
    re-sent. A 429 pauses the channel's rate limiter for the announced time and
    re-sends the batch without spending an attempt.
    """

    def __init__(
        self,
        plan: ChannelPlan,
        *,
        run_id: str,
        writer: ResultWriter,
        sleep: Callable[[float], None] = time.sleep,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> None:
        self.plan = plan
        self.cancel = cancel or threading.Event()
        self.name = plan.channel.name
        self.run_id = run_id
        self.writer = writer
        self.sleep = sleep
        self.deadline = deadline
        self.clock = clock
        self.tally = _Tally(self.name, progress)
        self.limiter = RateLimiter(plan.rate.messages_per_second, plan.rate.requests_per_second)
        # Transiently failed messages, grouped as they will be re-sent: a retried batch
        # holds the same messages every time, so providers' idempotency keys still match.
        self._retry: list[list[_Pending]] = []
        self._retry_lock = threading.Lock()
        self._abort: tuple[str, str | None, str] | None = None  # (reason, code, error)

    # -- selection and rendering ---------------------------------------------------------
    def messages(self, segment: Iterable[Recipient]) -> Iterator[Message | DeliveryResult]:
        """Select and render: a message per eligible recipient, else a skip result."""
        channel = self.plan.channel
        field = self.plan.notifier.address_field
        target = channel.target_customers
        selected = 0
        for recipient in segment:
            reason: str | None = None
            address = recipient.address(field)
            if not address:
                reason = Reason.MISSING_ADDRESS
            elif channel.require_consent and recipient.consent.get(self.name) is not True:
                reason = Reason.NO_CONSENT
            elif target is not None and selected >= target:
                reason = Reason.OVER_TARGET
            if reason is not None:
                yield DeliveryResult(self.name, recipient.id, DeliveryStatus.SKIPPED, reason)
                continue
            assert address is not None
            try:
                parts = self.plan.template.render(recipient.context())
            except TemplateError as exc:
                yield DeliveryResult(
                    self.name,
                    recipient.id,
                    DeliveryStatus.FAILED,
                    Reason.RENDER_ERROR,
                    error=str(exc),
                )
                continue
            selected += 1
            yield Message(
                recipient_id=recipient.id,
                channel=self.name,
                address=address,
                body=parts.get("body") or "",
                subject=parts.get("subject"),
                html=parts.get("html"),
                title=parts.get("title"),
                data=parts.get("data") or {},
                idempotency_key=idempotency_key(self.run_id, self.name, recipient.id),
            )

    # -- the run -------------------------------------------------------------------------
    def run(self, segment: Iterable[Recipient]) -> ChannelResult:
        """Send the channel to ``segment``; returns its totals. Never raises for
        delivery problems: they are recorded per recipient."""
        started = datetime.now(UTC)
        first = (_Pending(m) if isinstance(m, Message) else m for m in self.messages(segment))
        self._pass(first)
        rounds = 0
        waits = backoff.constant(interval=[self.plan.retry.delay_seconds] * self.plan.retry.retries)
        next(waits)  # prime the generator, as backoff's decorators do
        while self._retry and rounds < self.plan.retry.retries and not self._stopped():
            rounds += 1
            groups, self._retry = self._retry, []
            delay = next(waits) + random.uniform(0, self.plan.retry.jitter_seconds)
            log.info(
                "%s: retry round %d for %d message(s) in %.0fs",
                self.name,
                rounds,
                sum(map(len, groups)),
                delay,
            )
            self.sleep(delay)
            self._pass(iter(groups))
        leftover = [p for group in self._retry for p in group]
        self._retry = []
        timed_out = self.deadline is not None and self.clock() >= self.deadline
        if self.cancel.is_set():
            self._finish(leftover, Reason.CANCELLED)
        else:
            self._finish(leftover, Reason.TIMED_OUT if timed_out else Reason.RETRIES_EXHAUSTED)
        t = self.tally
        return ChannelResult(
            channel=self.name,
            provider=self.plan.channel.provider,
            sent=t.status[DeliveryStatus.SENT],
            failed=t.status[DeliveryStatus.FAILED],
            skipped=t.status[DeliveryStatus.SKIPPED],
            reasons=dict(t.reasons),
            error_codes=dict(t.codes),
            retries=rounds,
            requests=t.requests,
            started_at=started,
            finished_at=datetime.now(UTC),
            result_key=self.plan.channel.report_key,
        )

    def _stopped(self) -> bool:
        return (
            self._abort is not None
            or self.cancel.is_set()
            or (self.deadline is not None and self.clock() >= self.deadline)
        )

    def _pass(self, items: Iterator[_Pending | DeliveryResult | list[_Pending]]) -> None:
        """One pass: batch ``items`` and let the workers send them; a list is a batch
        already formed (a retry)."""
        workers = self.plan.channel.concurrency
        batches: queue.Queue[list[_Pending] | None] = queue.Queue(maxsize=workers * 2)
        threads = [
            threading.Thread(
                target=self._worker, args=(batches,), name=f"ck-{self.name}-{i}", daemon=True
            )
            for i in range(workers)
        ]
        for t in threads:
            t.start()
        try:
            batch: list[_Pending] = []
            skipped: list[DeliveryResult] = []
            for item in items:
                if isinstance(item, list):
                    batches.put(item)
                    continue
                if isinstance(item, DeliveryResult):
                    skipped.append(item)
                    if len(skipped) >= 500:
                        self._record(skipped)
                        skipped = []
                    continue
                batch.append(item)
                if len(batch) >= self.plan.batch_size:
                    batches.put(batch)
                    batch = []
            if batch:
                batches.put(batch)
            if skipped:
                self._record(skipped)
        finally:
            for _ in threads:
                batches.put(None)
            for t in threads:
                t.join()

    def _worker(self, batches: queue.Queue[list[_Pending] | None]) -> None:
        notifier = self.plan.notifier
        conn: Any = None
        connected = False
        try:
            while (batch := batches.get()) is not None:
                if self._stopped():
                    self._settle_stopped(batch)
                    continue
                if not connected:
                    try:
                        conn = notifier.connect()
                        connected = True
                    except DeliveryError as exc:
                        self._failed_batch(batch, exc)
                        continue
                self._send(conn, batch)
        finally:
            if connected:
                try:
                    notifier.disconnect(conn)
                except Exception:  # closing must not lose results
                    log.exception("%s: error closing a connection", self.name)

    def _send(self, conn: Any, batch: list[_Pending]) -> None:
        messages = [p.message for p in batch]
        throttle_waits = 0
        outcomes: Sequence[Outcome] = ()
        while True:
            self.limiter.acquire(len(messages))
            with self.tally.lock:
                self.tally.requests += 1
            try:
                outcomes = self.plan.notifier.send_batch(conn, messages)
            except DeliveryError as exc:
                if exc.status_code == 429 and throttle_waits < MAX_THROTTLE_WAITS:
                    throttle_waits += 1
                    wait = exc.retry_after if exc.retry_after is not None else DEFAULT_THROTTLE_WAIT
                    log.warning("%s: provider throttled us; waiting %.1fs", self.name, wait)
                    self.limiter.throttled(wait)
                    continue
                self._failed_batch(batch, exc)
                return
            except Exception as exc:  # a plugin bug must not kill the worker or lose results
                log.exception("%s: notifier %r raised", self.name, self.plan.notifier.name)
                self._failed_batch(batch, exc)
                return
            break
        if len(outcomes) != len(batch):
            error = f"notifier returned {len(outcomes)} outcome(s) for {len(batch)} message(s)"
            outcomes = [Outcome.failed(error, code="plugin_error")] * len(batch)
        done: list[DeliveryResult] = []
        again: list[_Pending] = []
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.attempts += 1
            if outcome.ok:
                done.append(
                    self._result(pending, DeliveryStatus.SENT, None, outcome.provider_message_id)
                )
            elif outcome.transient:
                pending.error_code, pending.error = outcome.error_code, outcome.error
                again.append(pending)
            else:
                pending.error_code, pending.error = outcome.error_code, outcome.error
                done.append(self._result(pending, DeliveryStatus.FAILED, Reason.PERMANENT_ERROR))
        if again:
            with self._retry_lock:
                self._retry.append(again)
        self._record(done)

    def _failed_batch(self, batch: list[_Pending], exc: BaseException) -> None:
        code = getattr(exc, "code", None) or type(exc).__name__
        error = str(exc)
        for pending in batch:
            pending.attempts += 1
            pending.error_code, pending.error = code, error
        if isinstance(exc, DeliveryError) and exc.transient:
            with self._retry_lock:
                self._retry.append(batch)
            return
        if isinstance(exc, DeliveryError) and exc.status_code in (401, 403):
            # Credentials are wrong: every further request would fail the same way.
            self._abort = (Reason.PERMANENT_ERROR, code, error)
        self._record(
            [self._result(p, DeliveryStatus.FAILED, Reason.PERMANENT_ERROR) for p in batch]
        )

    def _settle_stopped(self, batch: list[_Pending]) -> None:
        if self._abort is not None:
            reason, code, error = self._abort
            for p in batch:
                p.error_code, p.error = code, f"not sent: {error}"
            self._record([self._result(p, DeliveryStatus.FAILED, reason) for p in batch])
        else:
            reason = Reason.CANCELLED if self.cancel.is_set() else Reason.TIMED_OUT
            self._record([self._result(p, DeliveryStatus.SKIPPED, reason) for p in batch])

    def _finish(self, leftover: list[_Pending], reason: str) -> None:
        if self._abort is not None:
            self._settle_stopped(leftover)
            return
        stopped = reason in (Reason.TIMED_OUT, Reason.CANCELLED)
        status = DeliveryStatus.SKIPPED if stopped else DeliveryStatus.FAILED
        self._record([self._result(p, status, reason) for p in leftover])

    def _result(
        self,
        pending: _Pending,
        status: DeliveryStatus,
        reason: str | None,
        provider_id: str | None = None,
    ) -> DeliveryResult:
        return DeliveryResult(
            channel=self.name,
            recipient_id=pending.message.recipient_id,
            status=status,
            reason=reason,
            provider_message_id=provider_id,
            attempts=pending.attempts,
            error_code=None if status == DeliveryStatus.SENT else pending.error_code,
            error=None if status == DeliveryStatus.SENT else pending.error,
        )

    def _record(self, results: Sequence[DeliveryResult]) -> None:
        if results:
            self.writer.write(results)
            self.tally.add(results)
