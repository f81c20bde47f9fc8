"""Runs one channel: batching, worker threads, rate limit, retries, messages in doubt."""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs
import backoff

from .._ledger import DeliveryRecord, Ledger, RunOwnershipLost, Slice
from .._models import ChannelResult, DeliveryResult, DeliveryStatus, Outcome, Reason, Recipient
from .._ratelimit import RateLimiter
from .._states import FINAL_DELIVERY_STATES
from ..exceptions import DeliveryError
from ._doubt import InDoubt
from ._plan import ChannelPlan, ProgressCallback
from ._render import Pending, Renderer
from ._totals import result_from_ledger

__all__ = ["Batch", "ChannelRunner"]

log = logging.getLogger("campaignkit")

#: 429 answers one batch may wait out before they count as a failed attempt.
MAX_THROTTLE_WAITS = 10
#: Wait after a 429 that did not say how long.
DEFAULT_THROTTLE_WAIT = 1.0


@attrs.frozen
class Batch:
    """Messages sent together before (a crash, a transient failure): re-sent as the
    same batch, so that a provider's idempotency key for the request still matches."""

    members: list[Pending]


class _Tally:
    """Thread-safe counts of this session: requests made, and deliveries settled
    (sent, failed or skipped) for progress."""

    def __init__(self, channel: str, progress: ProgressCallback | None) -> None:
        self.channel = channel
        self.lock = threading.Lock()
        self.requests = 0
        self.done = 0
        self._progress = progress

    def add(self, rows: Sequence[DeliveryRecord]) -> None:
        with self.lock:
            self.done += sum(row.state in FINAL_DELIVERY_STATES for row in rows)
            done = self.done
        if self._progress is not None:
            self._progress(self.channel, done)


class ChannelRunner(InDoubt):
    """Sends one channel of a run.

    :meth:`plan_audience` records one ledger row per recipient (``pending``, or
    ``skipped`` with its reason); :meth:`run` then streams the ``pending`` rows, so a
    resumed run continues exactly where the last one stopped.

    The calling thread renders and batches; ``concurrency`` worker threads send,
    each with its own connection from :meth:`Notifier.connect`. Before a batch is
    sent its rows are durably marked ``in_flight``. Transient failures go back to
    ``pending`` and are re-sent in retry rounds spaced by ``backoff.constant`` (plus
    optional jitter), in the same batches; only failed messages are re-sent. A 429
    pauses the channel's rate limiter for the announced time and re-sends the batch
    without spending an attempt. When the run stops early (deadline, interrupt,
    rejected credentials) unsent messages stay ``pending`` for a resume.

    A failure *in doubt* (the provider may have acted: a read timeout, a connection
    lost after the request, a 5xx; :attr:`DeliveryError.in_doubt`) is re-sent only
    when that cannot deliver twice: the provider has idempotency keys (same batch,
    same keys), or :meth:`Notifier.reconcile` says the provider has no such message
    (asked at the next retry round, and once more at the end; found means ``sent``).
    Otherwise the message is recorded ``unknown`` (reason ``in_doubt``), unless the
    channel opts into at-least-once with ``on_doubt = "retry"``.
    """

    def __init__(
        self,
        plan: ChannelPlan,
        *,
        run_id: str,
        ledger: Ledger,
        sleep: Callable[[float], None] | None = None,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        progress: ProgressCallback | None = None,
        cancel: threading.Event | None = None,
        limit: int | None = None,
        part: Slice | None = None,
        shards: Sequence[int] | None = None,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.plan = plan
        self.part = part or Slice()  # the share of the channel's deliveries it sends
        self.shards = shards  # only these shards' deliveries (leased by a worker)
        self.limit = limit  # send at most this many messages (a canary)
        self._handed = 0
        self.name = plan.channel.name
        self.run_id = run_id
        self.ledger = ledger
        self.sleep = sleep
        # Seconds an injected ``sleep`` (tests, instant retries) stood for: the engine's
        # own waits count them as elapsed, as a real sleep would be.
        self._slept = 0.0
        self.deadline = deadline
        self.clock = clock
        self.cancel = cancel or threading.Event()
        self.tally = _Tally(self.name, progress)
        self.limiter = limiter or RateLimiter(
            plan.rate.messages_per_second, plan.rate.requests_per_second
        )
        # Transiently failed messages, grouped as they will be re-sent: a retried batch
        # holds the same messages every time, so providers' idempotency keys still match.
        self._retry: list[list[Pending]] = []
        self._retry_lock = threading.Lock()
        self._abort: tuple[str | None, str] | None = None  # (code, error) of a 401/403
        self._lost: str | None = None  # another process took the run over
        self.renderer = Renderer(plan, run_id=run_id, ledger=ledger)

    # -- selection -----------------------------------------------------------------------
    def plan_audience(self, segment: Iterable[tuple[int, Recipient]], now: datetime) -> bool:
        """Record this channel's audience in the ledger (once per run): every recipient
        of ``segment`` as ``pending`` or ``skipped`` with its reason. Returns whether
        it did (``False``: a resume, the audience was decided before)."""
        if self.ledger.is_planned(self.run_id, self.name):
            return False
        decide = self.plan.audience.decide

        def rows() -> Iterator[tuple[int, str | None, str | None, bool, float | None]]:
            for seq, recipient in segment:
                yield (seq, *decide(recipient, now))

        self.ledger.plan(self.run_id, self.name, rows(), self.plan.rules)
        return True

    # -- the run -------------------------------------------------------------------------
    def run(self) -> ChannelResult:
        """Send the channel's ``pending`` deliveries (after :meth:`plan_audience`);
        returns its totals. Never raises for delivery problems: they are recorded per
        recipient. On a resume the same call sends what is still owed."""
        started = datetime.now(UTC)
        ledger = self.ledger
        ledger.release_deferred(self.run_id, self.name)
        self._pass(self._owed())
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
            self._wait(delay)
            groups = self._reconcile(groups)
            # Messages still in doubt (the lookup could not tell) wait for the next round.
            ready = [[p for p in group if not p.in_doubt] for group in groups]
            waiting = [[p for p in group if p.in_doubt] for group in groups]
            with self._retry_lock:
                self._retry.extend(group for group in waiting if group)
            self._pass(Batch(group) for group in ready if group)
        leftover = [p for group in self._retry for p in group]
        self._retry = []
        if self._stopped():
            doubt = [p for p in leftover if p.in_doubt]
            self._record([self._row(p, DeliveryStatus.UNKNOWN, Reason.IN_DOUBT) for p in doubt])
            self._leave_pending([p for p in leftover if not p.in_doubt])
        else:
            if any(p.in_doubt for p in leftover):
                leftover = [p for group in self._reconcile([leftover]) for p in group]
            self._record(
                [
                    self._row(p, DeliveryStatus.UNKNOWN, Reason.IN_DOUBT)
                    if p.in_doubt or p.uncertain
                    else self._row(
                        p, DeliveryStatus.FAILED, Reason.RETRIES_EXHAUSTED, transient=True
                    )
                    for p in leftover
                ]
            )
        return self._result(started, rounds)

    def _now(self) -> float:
        """Monotonic time, with what injected sleeps stood for counted as elapsed."""
        return time.monotonic() + self._slept

    def _wait(self, seconds: float) -> None:
        if self.sleep is None:  # a real wait: cut short by an interrupt
            self.cancel.wait(seconds)
        else:
            self.sleep(seconds)
            self._slept += seconds

    def _owed(self) -> Iterator[Pending | DeliveryRecord | Batch]:
        """The pending deliveries, rendered; those that were sent together before (a
        crash or a transient failure) come as the same batch again."""
        group: list[Pending] = []
        group_id: int | None = None
        if self.shards is None:
            pending = self.ledger.pending(self.run_id, self.name, self.part)
        else:
            pending = self.ledger.pending(self.run_id, self.name, self.part, shards=self.shards)
        for seq, recipient, address, attempts, batch in pending:
            item = self.renderer.render(seq, recipient, address, attempts)
            if batch is not None and batch == group_id and isinstance(item, Pending):
                group.append(item)
                continue
            if group:
                yield Batch(group)
            group, group_id = [], None
            if batch is not None and isinstance(item, Pending):
                group, group_id = [item], batch
            else:
                yield item
        if group:
            yield Batch(group)

    def _result(self, started: datetime, rounds: int) -> ChannelResult:
        return result_from_ledger(
            self.ledger,
            self.run_id,
            self.plan.channel,
            retries=rounds,
            requests=self.tally.requests,
            started=started,
            stopped=self.stop_reason(),
        )

    def stop_reason(self) -> str | None:
        if self._lost is not None:
            return "ownership_lost"
        if self._abort is not None:
            return f"credentials rejected ({self._abort[0]})"
        if self.cancel.is_set():
            return "cancelled"
        if self.deadline is not None and self.clock() >= self.deadline:
            return "timed_out"
        return None

    def _stopped(self) -> bool:
        return self.stop_reason() is not None

    def _pass(self, items: Iterator[Pending | DeliveryRecord | Batch]) -> None:
        """One pass: batch ``items`` and let the workers send them; a :class:`Batch`
        is one formed before (a retry), a :class:`DeliveryRecord` an outcome to record
        as it is (a message that cannot be rendered)."""
        workers = self.plan.channel.concurrency
        batches: queue.Queue[list[Pending] | None] = queue.Queue(maxsize=workers * 2)
        threads = [
            threading.Thread(
                target=self._worker, args=(batches,), name=f"ck-{self.name}-{i}", daemon=True
            )
            for i in range(workers)
        ]
        for t in threads:
            t.start()
        try:
            batch: list[Pending] = []
            rows: list[DeliveryRecord] = []
            for item in items:
                if isinstance(item, Batch):
                    batches.put(item.members)
                elif isinstance(item, DeliveryRecord):
                    rows.append(item)
                    if len(rows) >= 500:
                        self._record(rows)
                        rows = []
                else:
                    if self.limit is not None:
                        if self._handed >= self.limit:
                            break  # a canary: the rest stays pending for the full run
                        self._handed += 1
                    batch.append(item)
                    if len(batch) >= self.plan.batch_size:
                        batches.put(batch)
                        batch = []
                if self._stopped():
                    break  # the rest stays pending for a resume
            if batch:
                batches.put(batch)
            if rows:
                self._record(rows)
        finally:
            for _ in threads:
                batches.put(None)
            for t in threads:
                t.join()

    def _worker(self, batches: queue.Queue[list[Pending] | None]) -> None:
        notifier = self.plan.notifier
        conn: Any = None
        connected = False
        try:
            while (batch := batches.get()) is not None:
                if self._stopped():
                    self._leave_pending(batch)
                    continue
                if not connected:
                    try:
                        conn = notifier.connect()
                        connected = True
                    except Exception as exc:  # a plugin bug too: this batch fails
                        if not isinstance(exc, DeliveryError):
                            log.exception(
                                "%s: notifier %r cannot connect", self.name, notifier.name
                            )
                        self._failed_batch(batch, exc)
                        continue
                try:
                    self._send(conn, batch)
                except Exception as exc:  # never a dead worker: the producer would wait forever
                    log.exception("%s: sending a batch failed", self.name)
                    self._failed_batch(batch, exc)
        finally:
            if connected:
                try:
                    notifier.disconnect(conn)
                except Exception:  # closing must not lose results
                    log.exception("%s: error closing a connection", self.name)

    def _send(self, conn: Any, batch: list[Pending]) -> None:
        messages = [p.message for p in batch]
        throttle_waits = 0
        outcomes: Sequence[Outcome] = ()
        marked = False
        while True:
            self.limiter.acquire(len(messages))
            if not marked:  # after the rate-limit wait: in flight means really on its way
                try:
                    self.ledger.mark_in_flight(self.run_id, self.name, [p.seq for p in batch])
                except RunOwnershipLost as exc:
                    # Another process owns the run now: send and record nothing more.
                    log.error("%s: %s", self.name, exc)
                    self._lost = str(exc)
                    return
                marked = True
                now = time.time()
                for p in batch:
                    if p.since is None:
                        p.since = now
            with self.tally.lock:
                self.tally.requests += 1
            started = self._now()
            for p in batch:
                p.sent_at = started
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
        self._outcomes(batch, outcomes)

    def _outcomes(self, batch: list[Pending], outcomes: Sequence[Outcome]) -> None:
        """Record a batch's outcomes: sent, failed (a provider's stop code suppresses
        the address), or to be retried (the retry groups), in doubt by the policy."""
        if not isinstance(outcomes, list | tuple):  # a plugin bug: whatever it returned
            outcomes = list(outcomes) if isinstance(outcomes, Iterable) else []
        if len(outcomes) != len(batch):
            error = f"notifier returned {len(outcomes)} outcome(s) for {len(batch)} message(s)"
            outcomes = [Outcome.failed(error, code="plugin_error")] * len(batch)
        rows: list[DeliveryRecord] = []
        again: list[Pending] = []
        doubt: list[Pending] = []
        for pending, outcome in zip(batch, outcomes, strict=True):
            pending.attempts += 1
            if outcome.ok:
                rows.append(
                    self._row(pending, DeliveryStatus.SENT, None, outcome.provider_message_id)
                )
                continue
            pending.error_code, pending.error = outcome.error_code, outcome.error
            pending.uncertain = outcome.transient and outcome.in_doubt
            if outcome.transient and outcome.in_doubt:
                doubt.append(pending)
            elif outcome.transient:
                again.append(pending)
                rows.append(self._row(pending, DeliveryStatus.PENDING, None))
            else:
                rows.append(self._row(pending, DeliveryStatus.FAILED, Reason.PERMANENT_ERROR))
                if outcome.error_code in self.plan.notifier.stop_codes:
                    kind = self.plan.notifier.address_field
                    address = pending.message.address
                    self.ledger.suppress(
                        kind,
                        address.lower() if kind == "email" else address,
                        reason=outcome.error_code or "",
                        source=f"{self.plan.channel.provider} run {self.run_id}",
                    )
        if again:
            with self._retry_lock:
                self._retry.append(again)
        if doubt:
            rows += self._doubtful(doubt)
        self._record(rows)

    def _failed_batch(self, batch: list[Pending], exc: BaseException) -> None:
        code = getattr(exc, "code", None) or type(exc).__name__
        error = str(exc)
        doubtful = isinstance(exc, DeliveryError) and exc.transient and exc.in_doubt
        for pending in batch:
            pending.attempts += 1
            pending.error_code, pending.error = code, error
            pending.uncertain = doubtful
        if doubtful:
            self._record(self._doubtful(batch))
            return
        if isinstance(exc, DeliveryError) and exc.transient:
            with self._retry_lock:
                self._retry.append(batch)
            self._record([self._row(p, DeliveryStatus.PENDING, None) for p in batch])
            return
        if isinstance(exc, DeliveryError) and exc.status_code in (401, 403):
            # Credentials are wrong: every further request would fail the same way.
            # Stop the channel; this batch can be re-driven by retry-failed once fixed.
            self._abort = (code, error)
            self._record(
                [
                    self._row(p, DeliveryStatus.FAILED, Reason.PERMANENT_ERROR, transient=True)
                    for p in batch
                ]
            )
            return
        self._record([self._row(p, DeliveryStatus.FAILED, Reason.PERMANENT_ERROR) for p in batch])

    def _leave_pending(self, batch: Sequence[Pending]) -> None:
        """The run stopped before these were sent: they stay pending for a resume
        (recorded only while this process owns the run: the new owner decides)."""
        if batch and self._lost is None:
            self._record([self._row(p, DeliveryStatus.PENDING, None) for p in batch])

    def _row(
        self,
        pending: Pending,
        state: str,
        reason: str | None,
        provider_id: str | None = None,
        *,
        transient: bool = False,
    ) -> DeliveryRecord:
        sent = state == DeliveryStatus.SENT
        result = DeliveryResult(
            channel=self.name,
            recipient_id=pending.message.recipient_id,
            status=DeliveryStatus(state),
            reason=reason,
            provider_message_id=provider_id,
            attempts=pending.attempts,
            error_code=None if sent else pending.error_code,
            error=None if sent else pending.error,
        )
        return DeliveryRecord(pending.seq, result, state, transient)

    def _record(self, rows: Sequence[DeliveryRecord]) -> None:
        if rows:
            self.ledger.record(self.run_id, self.name, rows)
            self.tally.add(rows)
