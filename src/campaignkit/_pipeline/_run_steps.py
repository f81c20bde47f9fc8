""":class:`Pipeline`'s run steps one call at a time, for a run driven from outside:
each call opens the ledger, claims the run, does one step and lets the run go, so
the next step may run in another process (a worker, an orchestrator's task); and the
dry run and the ledger's reads."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from .._engine import ProgressCallback
from .._ledger import Ledger, LedgerError, RunRecord, Slice
from .._models import ChannelResult, DeliveryResult, RunReport
from .._schedule import manual_logical_date
from .._states import ACTIVE_STATUSES, DeliveryCounts
from . import _attempts as attempts
from . import _sending as sending
from . import _steps as steps
from . import _workers as workers_module
from ._campaign import Campaign
from ._checks import channel_plans
from ._claim import claimed, enabled_channel, need_ledger
from ._dry_run import dry_run
from ._values import OpenedRun, PlanReport, SendAttempt

__all__ = ["RunSteps"]


class RunSteps:
    """The steps of a run, one per call (a mixin of :class:`Pipeline`: see
    :class:`Campaign`). :meth:`Pipeline.run` is these steps in one process::

        opened = pipeline.open_run()                         # claim, extract, snapshot
        for channel in ("email", "sms"):
            pipeline.plan_channel(opened.run_id, channel)    # every audience first
        for channel in ("email", "sms"):
            pipeline.send_slice(opened.run_id, channel)      # or Slice(index=i, count=n)
        report = pipeline.finish_run(opened.run_id)          # status and report

    Steps need the ledger (``execution.ledger``): it is what they hand each other.
    One process works on a run at a time: a step that finds the run claimed by a
    live process raises :class:`RunInProgress`.
    """

    def open_run(
        self: Campaign,
        *,
        logical_date: datetime | None = None,
        force: bool = False,
        run_id: str | None = None,
        output_dir: str | Path | None = None,
    ) -> OpenedRun:
        """The first step: check everything, then begin the run of ``logical_date``
        (by default the latest complete schedule interval) and extract the whole
        segment into its snapshot. As :meth:`run`, a logical date runs once: its
        unfinished run is taken up (``resumed``), its finished one replayed
        (``replay``: there is nothing to do).

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: before the run begins.
            RunInProgress, MaxActiveRunsReached: as :meth:`run`.
        """
        need_ledger(self)
        plans = self.checked_plans()
        date = logical_date or manual_logical_date(self.schedule, datetime.now(UTC))
        ledger = self.ledger()
        try:
            return steps.open_run(
                self,
                ledger,
                plans,
                logical_date=date.astimezone(UTC),
                force=force,
                run_id=run_id,
                output_dir=output_dir,
            )
        finally:
            ledger.close()

    def reopen_run(
        self: Campaign,
        run_id: str,
        *,
        retry_failed: bool = False,
        resend_unknown: bool = False,
        channels: Sequence[str] | None = None,
        output_dir: str | Path | None = None,
    ) -> OpenedRun:
        """The first step of a resume (see :meth:`resume`): take up an unfinished run,
        or a finished one with ``retry_failed`` / ``resend_unknown`` deliveries owed,
        for ``channels`` (default: every enabled one).

        Raises:
            LedgerError: no such run, or it belongs to another pipeline.
            RunInProgress: a live process is running it.
        """
        need_ledger(self)
        plans = channel_plans(self, channels)
        ledger = self.ledger()
        try:
            return steps.reopen_run(
                self,
                ledger,
                plans,
                run_id,
                retry_failed=retry_failed,
                resend_unknown=resend_unknown,
                output_dir=output_dir,
            )
        finally:
            ledger.close()

    def plan_channel(self: Campaign, run_id: str, channel: str) -> DeliveryCounts:
        """Decide a channel's audience in the run (once: a channel planned before keeps
        its audience) and check its ``expected_audience``. Plan every channel before
        sending any: then a guard that fails stops the run before anything is sent.
        Returns the channel's deliveries counted by state.

        Raises:
            AudienceGuardError: the audience drifted; the run is recorded ``failed``.
            LedgerError: no such run, or it is finished.
        """
        plan = self.channel_plan(enabled_channel(self, channel), self.source.fields())
        with claimed(self, run_id) as context:
            steps.plan_channel(context, plan, datetime.now(UTC))
            return context.ledger.counts(run_id, channel)

    def send_slice(
        self: Campaign,
        run_id: str,
        channel: str,
        part: Slice | None = None,
        *,
        limit: int | None = None,
        progress: ProgressCallback | None = None,
    ) -> ChannelResult:
        """Send a planned channel's pending deliveries: all of them, or those of slice
        ``part`` (see :class:`Slice`). What was sent and what stopped the send (the
        deadline, rejected credentials) is recorded for :meth:`finish_run`. Sending
        a slice again sends what it still owes, never a message twice.

        ``execution.timeout_seconds`` counts from this call.

        Args:
            limit: a canary: at most this many messages; the rest stays pending.
            progress: called as ``progress(channel, recipients_done)``.

        Raises:
            LedgerError: no such run, it is finished, or the channel is not planned.
        """
        plan = self.channel_plan(enabled_channel(self, channel), self.source.fields())
        with claimed(self, run_id) as context:
            if not context.ledger.is_planned(run_id, channel):
                raise LedgerError(f"channel {channel!r} of run {run_id!r} is not planned yet")
            return sending.send_slice(context, plan, part, limit=limit, progress=progress)

    def send_attempt(
        self: Campaign, run_id: str, channel: str, part: Slice | None = None, *, wait: float = 0.0
    ) -> SendAttempt:
        """The send step of an orchestrator's task, which the orchestrator retries (its
        retries are the campaign's): send what slice ``part`` of the channel still owes,
        once, without campaignkit's own retry rounds. It first settles what a crashed
        attempt left in flight (the crash rules) and puts the slice's transient
        failures back to ``pending``; a finished run whose slice owes some is reopened.
        The attempt's :attr:`~SendAttempt.transient` failures are what a retry sends.

        When the campaign :attr:`sends_in_shards` (``execution.workers`` above 1 and
        a PostgreSQL ledger) the run is split into shards (:meth:`shard_channels`):
        slice ``part`` is then shard
        ``part.index``, which the attempt leases alone, so that the tasks of several
        shards send at once, fenced as workers are.

        Args:
            wait: seconds to wait for the run while another process holds it (the
                tasks of one run take turns; a shard's live lease), polling; 0 raises
                at once.

        Raises:
            RunInProgress: another process held the run for all of ``wait``.
            LedgerError: no such run, or the channel is not planned.
        """
        return attempts.send_attempt(self, run_id, channel, part or Slice(), wait)

    def shard_channels(
        self: Campaign, run_id: str, *, workers: int | None = None, shards: int | None = None
    ) -> dict[str, int]:
        """Split each enabled channel of a planned run into ``shards`` shards for
        workers (default ``execution.shards``, else one per 10,000 recipients and at
        least four per worker of ``workers``, default ``execution.workers``); once per
        run. Returns each channel's shard count. Needs a PostgreSQL ledger.

        Raises:
            ConfigError: the ledger is SQLite.
            LedgerError: no such run, or it is finished.
        """
        plans = channel_plans(self, None)
        with claimed(self, run_id) as context:
            count = workers or self.execution.workers
            workers_module.split_channels(context, plans, count, shards)
            leases = workers_module.need_shards(context).shard_leases(run_id)
        return {p.channel.name: sum(i.channel == p.channel.name for i in leases) for p in plans}

    def work(
        self: Campaign,
        run_id: str = "latest",
        *,
        channels: Sequence[str] | None = None,
        until_idle: bool = False,
        progress: ProgressCallback | None = None,
    ) -> str | None:
        """Be one worker of a run split into shards (:meth:`shard_channels`, or
        ``execution.workers``), in this process, on any host sharing the PostgreSQL
        ledger: lease shards, send them, let them go; until every shard is done (a
        worker that died is taken over once its leases expire), or with
        ``until_idle`` until nothing is left to lease now. ``run_id`` may be
        ``latest``: the campaign's newest ``running`` run. Returns the run worked on
        (``None``: no run is running).

        Raises:
            ConfigError: the ledger is SQLite; LedgerError: no such run.
            KeyboardInterrupt: interrupted (in-flight requests finished, leases let go).
        """
        need_ledger(self)
        plans = channel_plans(self, channels)
        ledger = self.ledger()
        try:
            run = _running_run(self, ledger, run_id)
            if run is None:
                return None
            context = steps.RunContext(self, ledger, run.run_id)
            if workers_module.work(context, plans, until_idle=until_idle, progress=progress):
                raise KeyboardInterrupt
            return run.run_id
        finally:
            ledger.close()

    def finish_run(
        self: Campaign, run_id: str, *, output_dir: str | Path | None = None
    ) -> RunReport:
        """The last step: decide the run's status from what its channels' slices did
        and the ledger's totals, write ``report.json`` and record the report.

        A run whose messages are still owed is not finished: an enabled channel not
        planned, pending deliveries that no slice sent since the run was (re)opened
        (no slice stopped early, crashed or was a canary), or deliveries left in
        flight by a crashed step (:meth:`reopen_run` settles them). Finishing it
        would record it ``succeeded`` and the logical date would then be replayed,
        those messages never sent.

        Raises:
            LedgerError: no such run, it is finished, or it still owes messages
                (nothing was recorded).
        """
        with claimed(self, run_id) as context:
            _nothing_unsent(context)
            return sending.finish_run(context, output_dir=output_dir)

    # -- the dry run and the ledger's reads ------------------------------------------------
    def plan(
        self: Campaign,
        *,
        samples: int = 3,
        output: str | Path | None = None,
        on_extracted: Callable[[int, Mapping[str, int]], None] | None = None,
    ) -> PlanReport:
        """A dry run: extraction and selection exactly as a run would do them (with the
        ledger's suppression list and frequency caps), every message rendered and
        checked; nothing is sent and nothing is kept in the ledger.

        Args:
            samples: rendered messages to keep per channel.
            output: also write the plan as JSON there.

        Raises:
            ConfigError, TemplateError, SourceError, PluginError: as :meth:`run`.
        """
        plans = self.checked_plans()  # every problem, before anything
        return dry_run(self, plans, samples=samples, output=output, on_extracted=on_extracted)

    def results(self: Campaign, run_id: str, channel: str | None = None) -> list[DeliveryResult]:
        """Per-recipient outcomes of a run from the ledger (one channel, or all)."""
        ledger = self.ledger()
        try:
            return list(ledger.deliveries(run_id, channel))
        finally:
            ledger.close()

    def runs(self: Campaign, limit: int = 50) -> list[RunRecord]:
        """This pipeline's runs in the ledger, newest first."""
        ledger = self.ledger()
        try:
            return ledger.list_runs(self.name, limit)
        finally:
            ledger.close()


def _nothing_unsent(context: steps.RunContext) -> None:
    """Raise :class:`LedgerError` if the run owes messages that no step tried to send
    (see :meth:`RunSteps.finish_run`)."""
    ledger, run_id = context.ledger, context.run_id
    outcomes = ledger.slice_outcomes(run_id)
    owed = []
    for channel in context.campaign.enabled_channels:
        name = channel.name
        if not ledger.is_planned(run_id, name):
            owed.append(f"{name}: not planned")
            continue
        counts = ledger.counts(run_id, name).states
        if counts.get("in_flight"):
            owed.append(
                f"{name}: {counts['in_flight']} in flight at a crash (reopen_run settles them)"
            )
            continue
        explained = any(o.stopped or o.error or o.canary for o in outcomes if o.channel == name)
        if counts.get("pending") and not explained:
            owed.append(f"{name}: {counts['pending']} pending")
    if owed:
        raise LedgerError(
            f"run {run_id!r} still owes messages ({'; '.join(owed)}): plan and send them "
            "(send_slice) before finish_run; nothing was recorded"
        )


def _running_run(campaign: Campaign, ledger: Ledger, run_id: str) -> RunRecord | None:
    """The run a worker works on: ``run_id``, or with ``latest`` the campaign's newest
    ``running`` run (``None`` if it has none)."""
    if run_id != "latest":
        run = ledger.get_run(run_id)
        if run.pipeline != campaign.name:
            raise LedgerError(f"run {run_id!r} belongs to pipeline {run.pipeline!r}")
        return run
    running = [r for r in ledger.list_runs(campaign.name) if r.status in ACTIVE_STATUSES]
    return running[0] if running else None
