"""The steps of a run: open it, plan each channel, send slices, finish it.

Each step works on a run in the ledger and hands the next one only references (the
run id, a channel's name, a :class:`Slice`): what a step decides is in the ledger
before it returns, so the steps of one run may run in different processes, one after
another, given the same campaign. :meth:`Pipeline.run` composes them in one process.

- :func:`open_run` begins the run of a logical date: claims it and extracts the whole
  segment into its snapshot (or takes up the date's unfinished run, or replays its
  finished one). :func:`reopen_run` takes up an unfinished run (a resume).
- :func:`plan_channel` decides a channel's audience once per run: one ledger row per
  recipient, ``pending`` or ``skipped`` with its reason; then the guard.
- :func:`~._sending.send_slice` sends a slice of a channel's pending deliveries and
  records what it did (requests, retries, why it stopped early, what crashed).
- :func:`~._sending.finish_run` reads the channels' totals and the slices' outcomes
  from the ledger, decides the run's status and writes its report.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
from collections.abc import Iterator, Sequence
from datetime import datetime
from pathlib import Path

import attrs

from .._engine import ChannelPlan, ChannelRunner
from .._ledger import Ledger, LedgerError, RunInProgress, RunRecord, SqliteLedger
from .._segment import ExtractionStats, extract
from .._states import UNFINISHED_STATUSES, DeliveryStatus, RunStatus
from ..exceptions import ConfigError
from ._campaign import Campaign
from ._reports import check_guard, replay
from ._values import OpenedRun

__all__ = [
    "RunContext",
    "decide_audience",
    "extract_into",
    "open_run",
    "plan_channel",
    "reopen_run",
    "run_dir",
    "run_ledger",
]

log = logging.getLogger("campaignkit")


@attrs.frozen
class RunContext:
    """A run being worked on in this process: its campaign, and the ledger in which
    this process owns it."""

    campaign: Campaign
    ledger: Ledger
    run_id: str

    def fail(self, exc: BaseException) -> None:
        """Record the run as ``failed`` by ``exc`` (before anything was sent)."""
        self.ledger.finish_run(self.run_id, RunStatus.FAILED.value, json.dumps({"error": str(exc)}))


@contextlib.contextmanager
def run_ledger(campaign: Campaign, *, canary: bool = False) -> Iterator[Ledger]:
    """The campaign's ledger, or without one (``execution.ledger = false``) a
    throwaway ledger: the same selection and sending, nothing kept.

    Raises:
        ConfigError: a ``canary`` run without the ledger.
    """
    if canary and not campaign.execution.ledger:
        raise ConfigError(
            "a canary (limit) needs the ledger: without it the full run would message "
            "the canary's recipients again",
            path="execution.ledger",
        )
    scratch = None
    if campaign.execution.ledger:
        ledger = campaign.ledger()
    else:
        scratch = tempfile.TemporaryDirectory(prefix="campaignkit-")
        ledger = SqliteLedger(Path(scratch.name) / "ledger.db", durable=False)
    try:
        yield ledger
    finally:
        ledger.close()
        if scratch is not None:
            scratch.cleanup()


def run_dir(campaign: Campaign, run_id: str, output_dir: str | Path | None) -> Path:
    """The run's directory (its report and rejected rows), created if need be."""
    path = campaign.output_root(output_dir) / run_id
    path.mkdir(parents=True, exist_ok=True)
    return path


def extract_into(campaign: Campaign, ledger: Ledger, run_id: str, rejects: Path) -> ExtractionStats:
    """Read the whole source into the run's snapshot (with its counts, durably);
    rejected rows, repeated customer ids included, go to ``rejects``."""
    return extract(
        campaign.source,
        required=campaign.required_fields(),
        rejects=rejects,
        store=lambda recipients, rejected: ledger.write_snapshot(
            run_id, recipients, rows_per_customer=campaign.rows_per_customer, rejects=rejected
        ),
    )


def open_run(
    campaign: Campaign,
    ledger: Ledger,
    plans: Sequence[ChannelPlan],
    logical_date: datetime,
    force: bool = False,
    run_id: str | None = None,
    output_dir: str | Path | None = None,
) -> OpenedRun:
    """Begin the run of ``logical_date``: claim it, then extract the segment into its
    snapshot. A logical date is run once: its finished run is replayed (nothing to
    send), its unfinished one is taken up (:func:`reopen_run`); ``force`` begins a
    new one deliberately.

    Raises:
        RunInProgress: a live process is running the logical date.
        MaxActiveRunsReached: the pipeline has ``max_active_runs`` runs going.
        LedgerError: ``run_id`` exists, or cannot name a directory.
        SourceError: extraction failed (the run is recorded ``failed``).
    """
    if run_id is not None:
        _check_run_id(run_id)
    earlier, run = _begin(campaign, ledger, logical_date, force, run_id)
    if earlier is not None:  # the logical date has a run: take it up, or replay it
        if earlier.status in UNFINISHED_STATUSES:
            log.info("%s: resuming run %s", campaign.name, earlier.run_id)
            opened = reopen_run(campaign, ledger, plans, earlier.run_id, output_dir=output_dir)
            return attrs.evolve(opened, earlier_status=earlier.status)
        log.info(
            "%s: %s already ran (%s); nothing was sent now",
            campaign.name,
            logical_date.isoformat(),
            earlier.run_id,
        )
        return OpenedRun(earlier.run_id, replay=replay(earlier), earlier_status=earlier.status)
    assert run is not None
    context = RunContext(campaign, ledger, run.run_id)
    try:
        rejects = run_dir(campaign, run.run_id, output_dir) / "rejected.csv"
        stats = extract_into(campaign, ledger, run.run_id, rejects)
    except BaseException as exc:
        context.fail(exc)
        raise
    log.info(
        "%s: extracted %d recipient(s), rejected %d row(s)",
        run.run_id,
        stats.recipients,
        stats.rejected,
    )
    return OpenedRun(run.run_id, extracted=stats)


def _check_run_id(run_id: str) -> None:
    """A run id names the run's directory under the output directory: one path
    component, so that its report and rejects cannot land elsewhere (``../x``).

    Raises:
        LedgerError: it is empty, ``.`` or ``..``, or holds a path separator or NUL.
    """
    if run_id in ("", ".", "..") or any(c in run_id for c in "/\\\0"):
        raise LedgerError(
            f"run id {run_id!r} cannot name the run's directory: it must not be empty, "
            "'.' or '..', nor hold '/', '\\' or NUL"
        )


def _begin(
    campaign: Campaign,
    ledger: Ledger,
    logical_date: datetime,
    force: bool,
    run_id: str | None,
) -> tuple[RunRecord | None, RunRecord | None]:
    """``(earlier, None)``: the logical date's last run; or ``(None, run)``: its new
    run, begun and claimed by this process."""
    while True:
        previous = ledger.find_runs(campaign.name, logical_date)
        if previous and not force:
            return previous[-1], None
        new_id = run_id
        if new_id is None:
            new_id = f"{campaign.name}__{logical_date:%Y%m%dT%H%M%SZ}"
            if previous:
                new_id += f"__{len(previous) + 1}"
        try:
            run = ledger.begin_run(
                run_id=new_id,
                pipeline=campaign.name,
                logical_date=logical_date,
                fingerprint=campaign.fingerprint(),
                config_file=campaign.config_file,
                max_active_runs=campaign.execution.max_active_runs,
            )
        except RunInProgress:
            raise
        except LedgerError:
            # Another process began this run (and let go of it) since we looked:
            # decide again from what the ledger says now.
            if (
                run_id is not None
                or force
                or new_id not in {r.run_id for r in ledger.find_runs(campaign.name, logical_date)}
            ):
                raise
            continue
        return None, run


def reopen_run(
    campaign: Campaign,
    ledger: Ledger,
    plans: Sequence[ChannelPlan],
    run_id: str,
    *,
    retry_failed: bool = False,
    resend_unknown: bool = False,
    output_dir: str | Path | None = None,
) -> OpenedRun:
    """Take up an unfinished run (a resume) for the channels of ``plans``: claim it,
    settle what a crash left ``in_flight`` (re-sent under the same idempotency keys
    where the provider has them, else ``unknown``), and put back to ``pending`` the
    transient failures (``retry_failed``) and ``unknown`` deliveries
    (``resend_unknown``). A run that crashed during extraction is extracted again.
    A finished run with nothing owed is replayed.

    Raises:
        LedgerError: no such run, it belongs to another pipeline, or it was skipped
            as too late.
        RunInProgress: a live process is running it.
    """
    previous = ledger.get_run(run_id)
    if previous.status == RunStatus.SKIPPED_LATE:
        raise LedgerError(
            f"run {run_id!r} was skipped as too late; start the logical date again "
            "deliberately (run with force) if it should still be sent"
        )
    finished = previous.status not in UNFINISHED_STATUSES
    names = [p.channel.name for p in plans]
    if finished and not ledger.owed(run_id, names, failed=retry_failed, unknown=resend_unknown):
        log.info("%s: finished (%s); nothing was sent now", run_id, previous.status)
        return OpenedRun(run_id, resumed=True, replay=replay(previous))
    run = ledger.claim_run(run_id)
    if run.pipeline != campaign.name:
        raise LedgerError(f"run {run_id!r} belongs to pipeline {run.pipeline!r}")
    if run.fingerprint != campaign.fingerprint():
        log.warning("%s: the configuration changed since the run started", run_id)
    ledger.clear_slices(run_id)
    path = run_dir(campaign, run_id, output_dir)
    extracted = None
    if not ledger.has_snapshot(run_id):  # crashed during extraction: extract again
        extracted = extract_into(campaign, ledger, run_id, path / "rejected.csv")
    for plan in plans:
        if ledger.is_planned(run_id, plan.channel.name):
            _take_up(ledger, run_id, plan, retry_failed=retry_failed, resend_unknown=resend_unknown)
    return OpenedRun(run_id, resumed=True, extracted=extracted)


def _take_up(
    ledger: Ledger,
    run_id: str,
    plan: ChannelPlan,
    *,
    retry_failed: bool,
    resend_unknown: bool,
) -> None:
    """Make a planned channel's owed deliveries ``pending`` again for a resume."""
    resend = plan.notifier.supports_idempotency_keys
    n = ledger.resolve_in_flight(run_id, plan.channel.name, resend=resend)
    if n:
        log.warning(
            "%s/%s: %d message(s) were in flight at the crash; %s",
            run_id,
            plan.channel.name,
            n,
            "re-sending with the same idempotency keys" if resend else "recorded as unknown",
        )
    ledger.requeue(run_id, plan.channel.name, failed=retry_failed, unknown=resend_unknown)


def plan_channel(context: RunContext, plan: ChannelPlan, now: datetime) -> bool:
    """Decide the channel's audience, once per run: every recipient of the snapshot
    as ``pending`` or ``skipped`` with its reason; then check its ``expected_audience``
    while the channel has sent nothing (a run taken up after its guard failed is
    checked again, against the configuration as it is now). Returns whether it
    decided now (``False``: decided before, by an earlier step or run).

    Raises:
        AudienceGuardError: the audience drifted; the run is recorded ``failed`` and
            nothing was sent.
    """
    try:
        fresh = decide_audience(context, plan, now)
        if fresh or _nothing_sent(context, plan.channel.name):
            check_guard(context.ledger, context.run_id, plan.channel)
    except BaseException as exc:
        context.fail(exc)
        raise
    return fresh


def _nothing_sent(context: RunContext, channel: str) -> bool:
    """Whether no delivery of the channel has been handed to its provider yet."""
    counts = context.ledger.counts(context.run_id, channel)
    sent = (DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.UNKNOWN)
    return not any(counts[state] for state in (*sent, DeliveryStatus.IN_FLIGHT))


def decide_audience(context: RunContext, plan: ChannelPlan, now: datetime) -> bool:
    """Record the channel's audience in the ledger, once per run (see
    :func:`plan_channel`, which also checks the guard); returns whether it did now."""
    runner = ChannelRunner(plan, run_id=context.run_id, ledger=context.ledger)
    return runner.plan_audience(context.ledger.snapshot(context.run_id), now)
