"""Runs one channel: selection, rendering, batching, worker threads, rate limit, retries."""

from __future__ import annotations

import hashlib
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

from ._audience import Audience
from ._config import Channel, RetryPolicy
from ._content import html_to_text, list_unsubscribe_headers
from ._controls import CONTROL_CHARACTER, control_detail, find_control
from ._ledger import DeliveryRecord, Ledger, PlanRules, RunOwnershipLost, Slice
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
from ._states import FINAL_DELIVERY_STATES
from ._templates import CompiledTemplate
from .exceptions import DeliveryError, TemplateError

__all__ = [
    "ChannelPlan",
    "ChannelRunner",
    "counted_result",
    "idempotency_key",
    "legacy_idempotency_key",
    "result_from_ledger",
]

log = logging.getLogger("campaignkit")

#: 429 answers one batch may wait out before they count as a failed attempt.
MAX_THROTTLE_WAITS = 10
#: Wait after a 429 that did not say how long.
DEFAULT_THROTTLE_WAIT = 1.0
#: In-doubt messages handed to :meth:`Notifier.reconcile` per call.
RECONCILE_CHUNK = 50
#: A provider is asked about a message in doubt no sooner than this many times as
#: long after the request ended as the request took: a request the client gave up
#: on (a read timeout, a gateway's 504) may still be on its way and be acted on after
#: a too-early lookup said "no such message", which would then deliver the re-send as
#: a second copy. A request answered at once (a 500) waits for nothing more.
RECONCILE_SETTLE_FACTOR = 2.0

ProgressCallback = Callable[[str, int], None]

#: Checks a rendered message against the channel's content rules: an error code
#: (``too_many_segments``, ``payload_too_large``) or ``None``.
ContentCheck = Callable[[Message], str | None]


def counted_result(
    ledger: Ledger, run_id: str, channel: str, *, provider: str, result_key: str = ""
) -> ChannelResult:
    """A channel's totals as the ledger counts them: no session counters, no times."""
    counts = ledger.counts(run_id, channel)
    return ChannelResult(
        channel=channel,
        provider=provider,
        sent=counts[DeliveryStatus.SENT],
        failed=counts[DeliveryStatus.FAILED],
        skipped=counts[DeliveryStatus.SKIPPED],
        pending=counts[DeliveryStatus.PENDING] + counts[DeliveryStatus.IN_FLIGHT],
        unknown=counts[DeliveryStatus.UNKNOWN],
        deferred=counts[DeliveryStatus.DEFERRED],
        reasons=dict(counts.reasons),
        error_codes=dict(counts.error_codes),
        result_key=result_key,
    )


def result_from_ledger(
    ledger: Ledger,
    run_id: str,
    channel: Channel,
    *,
    retries: int = 0,
    requests: int = 0,
    started: datetime | None = None,
    stopped: str | None = None,
) -> ChannelResult:
    """A channel's totals as the ledger records them (this session's counters aside)."""
    counted = counted_result(
        ledger, run_id, channel.name, provider=channel.provider, result_key=channel.report_key
    )
    return attrs.evolve(
        counted,
        retries=retries,
        requests=requests,
        started_at=started,
        finished_at=datetime.now(UTC),
        stopped=stopped,
    )


#: Template parts rendered as one line (headers and notification titles).
_ONE_LINE = ("subject", "title")


def idempotency_key(run_id: str, channel: str, seq: int) -> str:
    """The deterministic key of one delivery: the same for every attempt and resume.

    A delivery is (run, channel, the recipient's position ``seq`` in the run's
    snapshot), so no two deliveries of a run share a key, whatever the customer ids:
    two rows of one customer (``rows_per_customer = "many"``) are two deliveries. The
    snapshot is written once per run, so ``seq`` (and the key) is stable across resumes.
    The parts are length-prefixed: no two different triples make the same text.
    """
    text = f"ck2:{len(run_id)}:{run_id}:{len(channel)}:{channel}:{int(seq)}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def legacy_idempotency_key(run_id: str, channel: str, recipient_id: str) -> str:
    """The key of runs snapshotted before ledger schema 4, from the recipient id: kept
    for them, so that a resume after the upgrade re-sends in-flight messages with the
    keys they first left with."""
    text = f"{run_id}\x1f{channel}\x1f{recipient_id}"
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


@attrs.frozen
class ChannelPlan:
    """Everything needed to run one channel, prepared (and validated) before extraction."""

    channel: Channel
    notifier: Notifier[Any]
    template: CompiledTemplate
    retry: RetryPolicy
    rate: Rate
    batch_size: int
    audience: Audience
    rules: PlanRules
    content: ContentCheck | None = None


@attrs.define
class Pending:
    """A message on its way, with its place in the segment and its attempts so far."""

    seq: int
    message: Message
    attempts: int = 0
    error_code: str | None = None
    error: str | None = None
    #: its last request ended in doubt; to be reconciled with the provider before a resend
    in_doubt: bool = False
    #: wall-clock time (epoch seconds) of its first attempt in this session
    since: float | None = None
    #: monotonic time its last request started (the runner's clock, ``_now``)
    sent_at: float | None = None
    #: monotonic time before which the provider is not asked about it (its request
    #: in doubt had time to settle: see :data:`RECONCILE_SETTLE_FACTOR`)
    settle_at: float | None = None
    #: its last attempt ended in doubt and nothing settled it since: if no retry is
    #: left it is ``unknown``, never ``failed`` (the provider may have delivered it,
    #: and retry-failed would re-send it, after an idempotency key's lifetime a copy)
    uncertain: bool = False


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


class ChannelRunner:
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
    ) -> None:
        self.plan = plan
        self.part = part or Slice()  # the share of the channel's deliveries it sends
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
        self.limiter = RateLimiter(plan.rate.messages_per_second, plan.rate.requests_per_second)
        # Transiently failed messages, grouped as they will be re-sent: a retried batch
        # holds the same messages every time, so providers' idempotency keys still match.
        self._retry: list[list[Pending]] = []
        self._retry_lock = threading.Lock()
        self._abort: tuple[str | None, str] | None = None  # (code, error) of a 401/403
        self._lost: str | None = None  # another process took the run over
        self._legacy_keys: bool | None = None  # decided on the first render

    # -- selection and rendering ---------------------------------------------------------
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

    def render(
        self, seq: int, recipient: Recipient, address: str, attempts: int = 0
    ) -> Pending | DeliveryRecord:
        """The message for one selected recipient, or a failed row if it cannot be
        rendered or breaks the channel's content rules."""
        try:
            parts = self.plan.template.render(recipient.context())
        except TemplateError as exc:
            return self._failed_row(seq, recipient, attempts, Reason.RENDER_ERROR, str(exc))
        for name in _ONE_LINE:
            # A subject or title is one line: a line break from a free-text field would
            # forge a header. (The values themselves were checked when extracted.)
            value = parts.get(name)
            if isinstance(value, str) and (found := find_control(value, strict=False, line=True)):
                return self._failed_row(
                    seq, recipient, attempts, CONTROL_CHARACTER, control_detail(name, *found)
                )
        html = parts.get("html")
        body = parts.get("body")
        if body is None and html is not None:
            body = html_to_text(html)  # email: a text part derived from the HTML one
        headers: dict[str, str] = {}
        if parts.get("unsubscribe_url"):
            try:
                headers = list_unsubscribe_headers(
                    parts["unsubscribe_url"], parts.get("unsubscribe_mailto") or None
                )
            except ValueError as exc:
                return self._failed_row(
                    seq, recipient, attempts, "invalid_unsubscribe_url", str(exc)
                )
        message = Message(
            recipient_id=recipient.id,
            channel=self.name,
            address=address,
            body=body or "",
            subject=parts.get("subject"),
            html=html,
            title=parts.get("title"),
            data=parts.get("data") or {},
            headers=headers,
            idempotency_key=self._key(seq, recipient),
        )
        if self.plan.content is not None:
            problem = self.plan.content(message)
            if problem is not None:
                return self._failed_row(seq, recipient, attempts, problem, problem)
        return Pending(seq, message, attempts)

    def _key(self, seq: int, recipient: Recipient) -> str:
        """The delivery's idempotency key: by snapshot position, or by recipient id for
        a run snapshotted before ledger schema 4 (it has no snapshot info)."""
        if self._legacy_keys is None:
            ledger: Ledger | None = self.ledger  # a preview renders without a ledger
            self._legacy_keys = ledger is not None and ledger.snapshot_info(self.run_id) is None
        if self._legacy_keys:
            return legacy_idempotency_key(self.run_id, self.name, recipient.id)
        return idempotency_key(self.run_id, self.name, seq)

    def _failed_row(
        self, seq: int, recipient: Recipient, attempts: int, reason: str, error: str
    ) -> DeliveryRecord:
        result = DeliveryResult(
            self.name,
            recipient.id,
            DeliveryStatus.FAILED,
            reason,
            attempts=attempts,
            error_code=reason,
            error=error,
        )
        return DeliveryRecord(seq, result, DeliveryStatus.FAILED, False)

    def messages(
        self, segment: Iterable[Recipient], now: datetime
    ) -> Iterator[Message | DeliveryResult]:
        """Rendered messages for recipients the per-recipient rules select, or the
        failed result of one that cannot be rendered or breaks a content rule (a
        preview: de-duplication, caps and targets need the whole audience and are not
        applied)."""
        for seq, recipient in enumerate(segment):
            reason, address, filtered, _ = self.plan.audience.decide(recipient, now)
            if reason is None and not filtered and address is not None:
                item = self.render(seq, recipient, address)
                yield item.message if isinstance(item, Pending) else item.result

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

    # -- messages in doubt -----------------------------------------------------------------
    def _can_reconcile(self) -> bool:
        return type(self.plan.notifier).reconcile is not Notifier.reconcile

    def _doubtful(self, batch: list[Pending]) -> list[DeliveryRecord]:
        """Rows for messages whose request ended in doubt, by the channel's policy;
        those to be re-sent (now, or after reconciling) join the retry groups."""
        notifier = self.plan.notifier
        if notifier.supports_idempotency_keys or (
            self.plan.channel.on_doubt == "retry" and not self._can_reconcile()
        ):
            # Re-sent as it was formed: the same keys (or at-least-once, by choice).
            with self._retry_lock:
                self._retry.append(batch)
            return [self._row(p, DeliveryStatus.PENDING, None) for p in batch]
        if self._can_reconcile():
            # Unknown until the provider is asked, at the next retry round, before any
            # resend (a crash meanwhile leaves it unknown, as for a message in flight).
            now = self._now()
            for p in batch:
                p.in_doubt = True
                took = now - p.sent_at if p.sent_at is not None else 0.0
                p.settle_at = now + RECONCILE_SETTLE_FACTOR * took
            with self._retry_lock:
                self._retry.append(batch)
            return [self._row(p, DeliveryStatus.UNKNOWN, Reason.IN_DOUBT) for p in batch]
        return [self._row(p, DeliveryStatus.UNKNOWN, Reason.IN_DOUBT) for p in batch]

    def _reconcile(self, groups: list[list[Pending]]) -> list[list[Pending]]:
        """Ask the provider about the in-doubt members of ``groups``: found ones are
        recorded ``sent`` and dropped, surely absent ones become ordinary retries,
        and the rest stay in doubt (re-sent anyway with ``on_doubt = "retry"``).
        Returns the groups without the settled messages."""
        doubt = [p for group in groups for p in group if p.in_doubt]
        if not doubt:
            return groups
        self._settle(doubt)
        answers: list[Outcome | None] = [None] * len(doubt)
        notifier = self.plan.notifier
        since = datetime.fromtimestamp(min(p.since or time.time() for p in doubt), UTC)
        conn: Any = None
        try:
            conn = notifier.connect()
            try:
                # In chunks, so that a deadline or an interrupt is noticed between them.
                for start in range(0, len(doubt), RECONCILE_CHUNK):
                    if self._stopped():
                        break
                    chunk = [p.message for p in doubt[start : start + RECONCILE_CHUNK]]
                    got = notifier.reconcile(conn, chunk, since)
                    if len(got) != len(chunk):
                        log.warning(
                            "%s: reconcile returned %d answer(s) for %d",
                            self.name,
                            len(got),
                            len(chunk),
                        )
                        continue
                    answers[start : start + len(chunk)] = got
            finally:
                notifier.disconnect(conn)
        except Exception as exc:  # a failed lookup settles nothing (more)
            log.warning("%s: could not reconcile %d message(s): %s", self.name, len(doubt), exc)
        settled: set[int] = set()
        rows: list[DeliveryRecord] = []
        for pending, answer in zip(doubt, answers, strict=True):
            if answer is not None and answer.ok:
                rows.append(
                    self._row(pending, DeliveryStatus.SENT, None, answer.provider_message_id)
                )
                settled.add(id(pending))
            elif answer is not None and answer.transient:
                pending.in_doubt = pending.uncertain = False  # the provider has no such message
            elif self.plan.channel.on_doubt == "retry":
                pending.in_doubt = False  # at-least-once, by the channel's choice
        self._record(rows)
        log.info(
            "%s: reconciled %d in-doubt message(s): %d found, %d to re-send, %d unknown",
            self.name,
            len(doubt),
            len(settled),
            sum(not p.in_doubt and id(p) not in settled for p in doubt),
            sum(p.in_doubt for p in doubt),
        )
        out = [[p for p in group if id(p) not in settled] for group in groups]
        return [group for group in out if group]

    def _settle(self, doubt: Sequence[Pending]) -> None:
        """Wait until these requests in doubt had time to settle (see
        :data:`RECONCILE_SETTLE_FACTOR`; the retry delay already counts): a short
        ``delay_minutes``, ``--retry-delay 0`` or ``retries = 0`` must not ask the
        provider while it may still be acting on the request."""
        until = [p.settle_at for p in doubt if p.settle_at is not None]
        if not until or self._stopped():
            return
        wait = max(until) - self._now()
        if wait <= 0:
            return
        log.info(
            "%s: waiting %.1fs before asking the provider about messages in doubt", self.name, wait
        )
        self._wait(wait)

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
        pending = self.ledger.pending(self.run_id, self.name, self.part)
        for seq, recipient, address, attempts, batch in pending:
            item = self.render(seq, recipient, address, attempts)
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
