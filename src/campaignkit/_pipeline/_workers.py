"""Sending a run with worker processes that share a PostgreSQL ledger.

With ``[execution] workers = N`` (N > 1) the process that runs the campaign extracts,
plans and reports as always, but its send step splits each channel's deliveries into
shards (:func:`split_channels`) and starts N ``campaignkit worker`` processes. Each
worker (:func:`work`, on this host or any other that shares the ledger) leases shards
of each channel, sends their pending deliveries with the channel's batching, retries
and in-doubt rules, under a rate budget shared by all workers, and lets the shards go;
until every shard is done. A worker that dies leaves leases that expire: another
worker takes the shards over and settles their ``in_flight`` deliveries by the crash
rules first. What the ledger does is in :mod:`campaignkit._ledger._postgres._leases`.
"""

from __future__ import annotations

import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

import attrs

from .._engine import ChannelPlan, ProgressCallback, result_from_ledger
from .._ledger import (
    LedgerError,
    RunInProgress,
    ShardedLedger,
    Slice,
    is_postgres_url,
    sharded,
)
from .._ratelimit import SharedRateLimiter
from .._states import ACTIVE_STATUSES, FINAL_DELIVERY_STATES
from ..exceptions import ConfigError
from ._campaign import Campaign
from ._reports import call_observer
from ._sending import in_parallel, send_channels, send_slice
from ._steps import RunContext
from ._values import SendAttempt

__all__ = ["MAX_SHARDS", "SHARD_SIZE", "default_shards", "send_run", "split_channels", "work"]

log = logging.getLogger("campaignkit")

#: Recipients per shard by default (a channel has at least four shards per worker).
SHARD_SIZE = 10_000
#: Shards per channel at most, by default.
MAX_SHARDS = 1024
#: Seconds between two looks at the ledger by a worker with nothing to lease.
POLL_SECONDS = 1.0
#: Seconds between two reads of the workers' progress by the run's process (each one
#: counts the channels' deliveries in the ledger).
PROGRESS_SECONDS = 5.0


def default_shards(audience: int, workers: int) -> int:
    """Shards for a channel of ``audience`` deliveries sent by ``workers`` workers:
    one per :data:`SHARD_SIZE` recipients, at least four per worker (so that a dead
    worker's share is taken over by several), at most :data:`MAX_SHARDS`."""
    return max(1, min(MAX_SHARDS, max(math.ceil(audience / SHARD_SIZE), 4 * workers)))


def check_workers(campaign: Campaign) -> None:
    """Refuse, before a run begins, ``execution.workers`` above 1 where workers cannot
    share the ledger.

    Raises:
        ConfigError: the ledger is SQLite (or there is none), or the campaign has no
            file for its workers to read.
    """
    if campaign.execution.workers <= 1:
        return
    if not is_postgres_url(str(campaign.ledger_location)):
        raise ConfigError(
            f"workers = {campaign.execution.workers} needs a PostgreSQL ledger (set "
            "execution.ledger or CAMPAIGNKIT_LEDGER_URL to a postgresql:// URL): with a "
            f"SQLite ledger ({campaign.ledger_shown}) one process sends a run",
            path="execution.workers",
        )
    if campaign.config_file is None:
        raise ConfigError(
            "workers re-read the campaign's file: a campaign built in Python runs its "
            "workers with Pipeline.work (one per process) instead",
            path="execution.workers",
        )


def need_shards(context: RunContext) -> ShardedLedger:
    """The run's ledger, if workers can share it.

    Raises:
        ConfigError: it is a SQLite ledger (one process sends a run).
    """
    ledger = sharded(context.ledger)
    if ledger is not None:
        ledger.lease_seconds = context.campaign.execution.lease_seconds
    else:
        raise ConfigError(
            f"several workers need a PostgreSQL ledger (set execution.ledger or "
            f"CAMPAIGNKIT_LEDGER_URL to a postgresql:// URL); {context.ledger.location} "
            "is sent by one process",
            path="execution.workers",
        )
    return ledger


def split_channels(
    context: RunContext, plans: Sequence[ChannelPlan], workers: int, shards: int | None = None
) -> None:
    """Split each channel's deliveries into shards, once per run (``shards``, else
    ``execution.shards``, else :func:`default_shards` of its audience)."""
    ledger = need_shards(context)
    for plan in plans:
        counts = ledger.counts(context.run_id, plan.channel.name)
        count = shards or context.campaign.execution.shards
        count = count or default_shards(counts.eligible, workers)
        ledger.plan_shards(context.run_id, plan.channel.name, count)


def send_run(
    context: RunContext,
    plans: Sequence[ChannelPlan],
    *,
    limit: int | None = None,
    progress: ProgressCallback | None = None,
) -> bool:
    """The send step of a run: by this process (:func:`send_channels`), or with
    ``execution.workers`` worker processes. Returns whether it was interrupted."""
    workers = context.campaign.execution.workers
    if workers <= 1 or limit is not None:  # a canary is a handful: sent here
        return send_channels(context, plans, limit=limit, progress=progress)
    split_channels(context, plans, workers)
    tick = _ledger_progress(context, plans, progress)
    interrupted = _run_workers(context, plans, workers, tick)
    if not interrupted and not all(_done(context, p) for p in plans):
        # A worker died: its leases expire, and this process takes over what is left.
        log.warning("%s: a worker stopped early; sending what is left here", context.run_id)
        work(context, plans, chunk=None)
    tick()
    hook = context.campaign.plugin_manager.hook
    for plan in plans:
        result = result_from_ledger(context.ledger, context.run_id, plan.channel)
        call_observer(hook.campaignkit_channel_finished, run_id=context.run_id, result=result)
    return interrupted


def _settled(context: RunContext, plans: Sequence[ChannelPlan]) -> dict[str, int]:
    """Each channel's deliveries in a final state (sent, failed, skipped), by the ledger."""
    ledger, run_id = context.ledger, context.run_id
    return {
        p.channel.name: sum(
            n
            for state, n in ledger.counts(run_id, p.channel.name).states.items()
            if state in FINAL_DELIVERY_STATES
        )
        for p in plans
    }


def _ledger_progress(
    context: RunContext, plans: Sequence[ChannelPlan], progress: ProgressCallback | None
) -> Callable[[], None]:
    """A ``tick()`` that tells ``progress`` what the workers settled since now, read
    from the ledger: the workers' own progress stays in their processes, and the CLI
    counts what this session sent (its summary, and whether an error came after
    sending) from these calls."""
    if progress is None:
        return lambda: None
    before = _settled(context, plans)

    def tick() -> None:
        try:
            now = _settled(context, plans)
        except Exception as exc:  # progress only: the ledger answers again next time
            log.debug("could not read the run's progress: %s", exc)
            return
        for name, done in now.items():
            if done > before[name]:
                progress(name, done - before[name])

    return tick


def _run_workers(
    context: RunContext, plans: Sequence[ChannelPlan], workers: int, tick: Callable[[], None]
) -> bool:
    """Start ``workers`` ``campaignkit worker`` processes for the run and wait for them,
    calling ``tick()`` meanwhile (an interrupt stops them: their in-flight requests
    finish). Returns whether it was interrupted."""
    config = context.campaign.config_file
    assert config is not None  # check_workers said so before the run began
    command = [sys.executable, "-m", "campaignkit", "worker", str(config), "--run", context.run_id]
    for plan in plans:
        command += ["--channel", plan.channel.name]
    # The campaign's environment (``Pipeline.from_file(env=...)``: an orchestrator's
    # tokens and ledger URL) over this process's: the workers must read what it read.
    env = {**os.environ, **context.campaign.environ}
    # In a session of their own: a Ctrl-C at the terminal reaches this process only,
    # which stops the workers once (SIGTERM), rather than each getting two interrupts.
    procs = [subprocess.Popen(command, env=env, start_new_session=True) for _ in range(workers)]
    try:
        ticked = time.monotonic()
        while any(proc.poll() is None for proc in procs):
            if time.monotonic() - ticked >= PROGRESS_SECONDS:  # counts scan the channel
                tick()
                ticked = time.monotonic()
            time.sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        log.warning("%s: interrupted; stopping the workers", context.run_id)
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        return True
    for i, proc in enumerate(procs):
        if proc.returncode:
            log.error("%s: worker %d exited with status %d", context.run_id, i, proc.returncode)
    return False


def work(
    context: RunContext,
    plans: Sequence[ChannelPlan],
    *,
    chunk: int | None = None,
    until_idle: bool = False,
    progress: ProgressCallback | None = None,
    cancel: threading.Event | None = None,
) -> bool:
    """Be a worker of the run: lease shards of each channel of ``plans`` (one thread
    per channel) and send them, until every shard is done, or with ``until_idle``
    until nothing is left to lease now. ``chunk``: shards per lease (default: the
    channel's shards shared by ``execution.workers``). An interrupt stops leasing;
    in-flight requests finish. Returns whether it was interrupted."""
    ledger = need_shards(context)
    cancel = cancel or threading.Event()
    timeout = context.campaign.execution.timeout_seconds
    deadline = time.monotonic() + timeout if timeout else None

    def one(plan: ChannelPlan) -> None:
        _work_channel(context, ledger, plan, chunk, until_idle, progress, deadline, cancel)

    threads = len(plans) or 1
    return in_parallel(context, plans, one, threads=threads, cancel=cancel, name="ck-worker")


def _work_channel(
    context: RunContext,
    ledger: ShardedLedger,
    plan: ChannelPlan,
    chunk: int | None,
    until_idle: bool,
    progress: ProgressCallback | None,
    deadline: float | None,
    cancel: threading.Event,
) -> None:
    """Lease and send the channel's shards until none is left (see :func:`work`)."""
    run_id, name = context.run_id, plan.channel.name
    total = sum(1 for info in ledger.shard_leases(run_id) if info.channel == name)
    if not total:
        log.info("%s/%s: not split into shards: nothing for a worker", run_id, name)
        return
    size = chunk or math.ceil(total / max(1, context.campaign.execution.workers))
    limiter = _shared_limiter(context, ledger, plan)
    resend = plan.notifier.supports_idempotency_keys
    while not cancel.is_set():
        shards = ledger.lease_shards(run_id, name, limit=size, resend=resend)
        if not shards:
            if until_idle or _done(context, plan):
                return
            cancel.wait(POLL_SECONDS)  # others hold the rest: take it over if they die
            continue
        log.info("%s/%s: sending shard(s) %s of %d", run_id, name, _ranges(shards), total)
        try:
            result = send_slice(
                context,
                plan,
                progress=progress,
                deadline=deadline,
                cancel=cancel,
                shards=shards,
                limiter=limiter,
                label=Slice(index=shards[0], count=total),
            )
        finally:
            ledger.release_shards(run_id, name, shards)
        if result.stopped == "ownership_lost":
            # Its leases expired (a stall longer than a lease): what it had in flight
            # is the new holder's to settle; it leases what is free again.
            log.warning("%s/%s: lost the lease on shard(s) %s", run_id, name, _ranges(shards))
            continue
        if result.stopped is not None:
            return
        if not result.requests:  # nothing it could send (deferred): do not spin
            cancel.wait(POLL_SECONDS)


def _done(context: RunContext, plan: ChannelPlan) -> bool:
    """Whether nothing is left for a worker in the channel: every shard done, or the
    run no longer ``running``."""
    ledger = need_shards(context)
    if ledger.get_run(context.run_id).status not in ACTIVE_STATUSES:
        return True
    name = plan.channel.name
    return all(info.done for info in ledger.shard_leases(context.run_id) if info.channel == name)


def _shared_limiter(
    context: RunContext, ledger: ShardedLedger, plan: ChannelPlan
) -> SharedRateLimiter | None:
    """The channel's rate limits as a budget shared by all the campaign's workers."""
    rate = plan.rate
    if not (rate.messages_per_second or rate.requests_per_second):
        return None
    name = f"{context.campaign.name}/{plan.channel.name}"
    return SharedRateLimiter(ledger, name, rate.messages_per_second, rate.requests_per_second)


def _ranges(shards: Sequence[int]) -> str:
    return ", ".join(map(str, shards)) if len(shards) <= 4 else f"{shards[0]}..{shards[-1]}"


def leased_attempt(
    context: RunContext, plan: ChannelPlan, shard: int, total: int, wait: float
) -> SendAttempt:
    """One attempt of an orchestrator's send task on a run split into shards (see
    :meth:`RunSteps.send_attempt`): lease shard ``shard`` alone (waiting up to ``wait``
    seconds while another worker's live lease holds it), put its transient failures
    back to ``pending``, send it once, fenced, and let it go."""
    ledger = need_shards(context)
    run_id, name = context.run_id, plan.channel.name
    ledger.requeue_shard(run_id, name, shard)  # leasable again if it had some
    if not _lease_one(context, plan, shard, wait):
        return SendAttempt(result_from_ledger(ledger, run_id, plan.channel))  # done
    once = attrs.evolve(plan, retry=attrs.evolve(plan.retry, retries=0))
    limiter = _shared_limiter(context, ledger, plan)
    label = Slice(index=shard, count=total)
    try:
        result = send_slice(context, once, shards=[shard], limiter=limiter, label=label)
    finally:
        ledger.release_shards(run_id, name, [shard])
    transient = ledger.shard_failures(run_id, name, shard)
    return SendAttempt(result, transient=transient, stopped=result.stopped)


def _lease_one(context: RunContext, plan: ChannelPlan, shard: int, wait: float) -> bool:
    """Lease ``shard`` of the plan's channel: ``True`` once leased, ``False`` if it is
    done (nothing owed); :class:`RunInProgress` if another worker held it all along."""
    ledger = need_shards(context)
    run_id, name = context.run_id, plan.channel.name
    resend = plan.notifier.supports_idempotency_keys
    deadline = time.monotonic() + wait
    while not ledger.lease_shards(run_id, name, limit=1, resend=resend, only=[shard]):
        info = [i for i in ledger.shard_leases(run_id) if i.channel == name and i.shard == shard]
        if not info:
            raise LedgerError(f"channel {name!r} of run {run_id!r} has no shard {shard}")
        if info[0].done:
            return False
        if time.monotonic() >= deadline:
            raise RunInProgress(
                f"shard {shard} of {name} in run {run_id!r} is leased by {info[0].owner}; "
                "nothing was done by this process"
            )
        time.sleep(POLL_SECONDS)
    return True
