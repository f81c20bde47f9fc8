"""The last steps of a run: sending its channels' slices, then finishing it (see
:mod:`._steps` for the whole sequence)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from datetime import UTC, datetime
from pathlib import Path

import attrs

from .._engine import ChannelPlan, ChannelRunner, ProgressCallback, result_from_ledger
from .._ledger import Slice, SliceOutcome
from .._models import ChannelResult, RunReport
from .._ratelimit import RateLimiter
from .._redact import redact
from ._reports import call_observer, run_status, stored_stats
from ._steps import RunContext, run_dir
from ._values import SendAttempt

__all__ = [
    "finish_run",
    "in_parallel",
    "send_attempt",
    "send_channels",
    "send_slice",
    "start_sending",
]

log = logging.getLogger("campaignkit")


def start_sending(context: RunContext, plans: Sequence[ChannelPlan]) -> None:
    """Tell the ``campaignkit_run_started`` observers that the channels are about to
    send; what one raises aborts the run before any send (recorded ``failed``)."""
    try:
        context.campaign.plugin_manager.hook.campaignkit_run_started(
            run_id=context.run_id,
            pipeline=context.campaign.name,
            channels=[p.channel.name for p in plans],
        )
    except BaseException as exc:
        context.fail(exc)
        raise


def send_attempt(context: RunContext, plan: ChannelPlan, part: Slice) -> SendAttempt:
    """One attempt of an orchestrator's send task (see :meth:`RunSteps.send_attempt`):
    settle what a crashed attempt left in flight, put the slice's transient failures
    back to ``pending``, send the slice once (no retry rounds: the orchestrator's
    retries are the campaign's) and count what it left for a retry."""
    ledger, run_id, name = context.ledger, context.run_id, plan.channel.name
    ledger.resolve_in_flight(run_id, name, resend=plan.notifier.supports_idempotency_keys)
    ledger.requeue(run_id, name, failed=True, unknown=False, part=part)
    once = attrs.evolve(plan, retry=attrs.evolve(plan.retry, retries=0))
    result = send_slice(context, once, part)
    left = ledger.owed(run_id, [name], failed=True, unknown=False, part=part)
    transient = left - ledger.owed(run_id, [name], failed=False, unknown=False, part=part)
    return SendAttempt(result, transient=transient, stopped=result.stopped)


def send_slice(
    context: RunContext,
    plan: ChannelPlan,
    part: Slice | None = None,
    *,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
    deadline: float | None = None,
    cancel: threading.Event | None = None,
    shards: Sequence[int] | None = None,
    limiter: RateLimiter | None = None,
    label: Slice | None = None,
) -> ChannelResult:
    """Send the channel's pending deliveries of slice ``part`` (all of them by
    default), with the channel's batching, rate limit and retries, and record what
    the send did (:class:`SliceOutcome`). Returns the channel's totals as the ledger
    has them now. Delivery problems never raise: they are recorded per recipient.
    A worker sends the ``shards`` it leased, under a ``limiter`` shared with the
    other workers, and records the outcome under ``label`` (default: ``part``).

    Args:
        limit: send at most this many messages (a canary); the rest stays pending.
        progress: called as ``progress(channel, recipients_done)``.
        deadline: a :func:`time.monotonic` time after which nothing more is sent
            (default: ``execution.timeout_seconds`` from now, if set).
        cancel: set it to stop starting batches (in-flight requests finish).
    """
    campaign, ledger = context.campaign, context.ledger
    if deadline is None and campaign.execution.timeout_seconds:
        deadline = time.monotonic() + campaign.execution.timeout_seconds
    part = part or Slice()
    runner = ChannelRunner(
        plan,
        run_id=context.run_id,
        ledger=ledger,
        sleep=campaign.sleep,
        progress=progress,
        limit=limit,
        deadline=deadline,
        cancel=cancel,
        part=part,
        shards=shards,
        limiter=limiter,
    )
    started = datetime.now(UTC)
    outcome = SliceOutcome(
        plan.channel.name, label or part, started, started, canary=limit is not None
    )
    try:
        result = runner.run()
    except BaseException as exc:
        stopped = "cancelled" if isinstance(exc, KeyboardInterrupt) else runner.stop_reason()
        # Redacted here, where the channel's token is known: the process that finishes
        # the run may never have read it, and the ledger keeps the text.
        error = (
            None if isinstance(exc, KeyboardInterrupt) else redact(f"{type(exc).__name__}: {exc}")
        )
        outcome = attrs.evolve(
            outcome,
            finished_at=datetime.now(UTC),
            requests=runner.tally.requests,
            stopped=stopped,
            error=error,
        )
        ledger.record_slice(context.run_id, outcome)
        raise
    outcome = attrs.evolve(
        outcome,
        finished_at=result.finished_at or datetime.now(UTC),
        requests=result.requests,
        retries=result.retries,
        stopped=result.stopped,
    )
    ledger.record_slice(context.run_id, outcome)
    return result


def send_channels(
    context: RunContext,
    plans: Sequence[ChannelPlan],
    *,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
) -> bool:
    """Send every channel of ``plans`` in parallel, one whole slice each, under one
    deadline; an interrupt stops starting batches and lets in-flight requests finish.
    Returns whether it was interrupted."""
    campaign = context.campaign
    timeout = campaign.execution.timeout_seconds
    deadline = time.monotonic() + timeout if timeout else None
    cancel = threading.Event()
    hook = campaign.plugin_manager.hook

    def send(plan: ChannelPlan) -> None:
        result = send_slice(
            context, plan, limit=limit, progress=progress, deadline=deadline, cancel=cancel
        )
        call_observer(hook.campaignkit_channel_finished, run_id=context.run_id, result=result)

    threads = min(len(plans), campaign.execution.max_workers or len(plans)) or 1
    return in_parallel(context, plans, send, threads=threads, cancel=cancel, name="ck-channel")


def in_parallel(
    context: RunContext,
    plans: Sequence[ChannelPlan],
    send: Callable[[ChannelPlan], None],
    *,
    threads: int,
    cancel: threading.Event,
    name: str,
) -> bool:
    """``send(plan)`` for every plan, on ``threads`` threads. An interrupt sets
    ``cancel`` (no batch is started any more) and waits for them: the requests in
    flight finish and are recorded. A channel that crashed is logged. Returns whether
    it was interrupted."""
    interrupted = False
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name) as pool:
        futures = {p.channel.name: pool.submit(send, p) for p in plans}
        try:
            futures_wait(futures.values())
        except KeyboardInterrupt:
            log.warning("%s: interrupted; finishing in-flight requests", context.run_id)
            cancel.set()
            interrupted = True
            futures_wait(futures.values())
        for channel, future in futures.items():
            if future.exception() is not None:
                log.error("channel %s crashed", channel, exc_info=future.exception())
    return interrupted


def finish_run(
    context: RunContext, *, output_dir: str | Path | None = None, interrupted: bool = False
) -> RunReport:
    """Decide the run's status from its channels' totals and its slices' outcomes,
    write its report (``report.json`` in the run directory, and in the ledger) and
    tell the ``campaignkit_run_finished`` observers. Channels not sent since the run
    was (re)opened are reported as the ledger has them.

    Raises:
        RunOwnershipLost: another process owns the run now; nothing was recorded.
    """
    campaign, ledger, run_id = context.campaign, context.ledger, context.run_id
    outcomes = ledger.slice_outcomes(run_id)
    results, errors = _channel_results(context, outcomes)
    run = ledger.get_run(run_id)
    stats = stored_stats(ledger, run)
    path = run_dir(campaign, run_id, output_dir)
    now = datetime.now(UTC)
    report = RunReport(
        run_id=run_id,
        pipeline=campaign.name,
        status=run_status(
            results, errors, interrupted=interrupted, canary=any(o.canary for o in outcomes)
        ),
        started_at=min((o.started_at for o in outcomes), default=now),
        finished_at=now,
        channels=results,
        rows_read=stats.rows_read,
        rows_rejected=stats.rejected,
        rejected_reasons=stats.rejected_reasons,
        lines=None if stats.lines is None else stats.lines.to_dict(),
        output_dir=str(path),
        errors=errors,
    )
    text = json.dumps(report.to_dict(), indent=2)
    (path / "report.json").write_text(text + "\n")
    ledger.finish_run(run_id, report.status.value, text)
    call_observer(campaign.plugin_manager.hook.campaignkit_run_finished, report=report)
    return report


def _channel_results(
    context: RunContext, outcomes: Sequence[SliceOutcome]
) -> tuple[dict[str, ChannelResult], dict[str, str]]:
    """Each channel's totals (first those sent since the run was (re)opened, with
    what their slices did; then the others as recorded) and the errors of those that
    crashed (they have no totals)."""
    ledger, run_id = context.ledger, context.run_id
    results: dict[str, ChannelResult] = {}
    errors: dict[str, str] = {}
    channels = context.campaign.enabled_channels
    sent = [c for c in channels if any(o.channel == c.name for o in outcomes)]
    for channel in sent:
        mine = [o for o in outcomes if o.channel == channel.name]
        error = next((o.error for o in mine if o.error), None)
        if error is not None:
            errors[channel.name] = error
            continue
        result = result_from_ledger(
            ledger,
            run_id,
            channel,
            retries=max(o.retries for o in mine),
            requests=sum(o.requests for o in mine),
            started=min(o.started_at for o in mine),
            stopped=next((o.stopped for o in mine if o.stopped), None),
        )
        results[channel.name] = attrs.evolve(result, finished_at=max(o.finished_at for o in mine))
    for channel in channels:
        if channel not in sent and ledger.is_planned(run_id, channel.name):
            results[channel.name] = result_from_ledger(ledger, run_id, channel)
    return results, errors
