"""A run's report: its final status from what its channels did, its stored form, and
the ``expected_audience`` guard."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import attrs

from .._config import Channel
from .._ledger import Ledger, RunRecord
from .._models import ChannelResult, RunReport
from .._segment import ExtractionStats
from .._sources import SourceLines
from .._states import RunStatus
from ..exceptions import AudienceGuardError

__all__ = [
    "audience_drift",
    "call_observer",
    "check_guard",
    "replay",
    "run_status",
    "stored_report",
    "stored_stats",
]

log = logging.getLogger("campaignkit")


def run_status(
    results: Mapping[str, ChannelResult],
    errors: Mapping[str, str],
    *,
    interrupted: bool = False,
    canary: bool = False,
) -> RunStatus:
    """How a run ended, from its channels' results and the errors of those that crashed.

    The first that applies: a crash or rejected credentials (``failed``), an interrupt
    (``cancelled``), the deadline (``timed_out``), a canary that left messages owed
    (``canary``), quiet hours holding messages back (``deferred``), failed or unknown
    deliveries (``partial``), else ``succeeded``.
    """
    stops = {r.stopped for r in results.values() if r.stopped}
    if errors or any(s.startswith("credentials") for s in stops):
        return RunStatus.FAILED
    if interrupted or "cancelled" in stops:
        return RunStatus.CANCELLED
    if "timed_out" in stops:
        return RunStatus.TIMED_OUT
    if canary and any(r.pending for r in results.values()):
        return RunStatus.CANARY
    if any(r.deferred for r in results.values()):
        return RunStatus.DEFERRED
    if any(r.failed or r.unknown for r in results.values()):
        return RunStatus.PARTIAL
    return RunStatus.SUCCEEDED


def audience_drift(channel: Channel, eligible: int) -> str | None:
    """``expected_audience``: what is wrong when ``eligible`` recipients drift from the
    channel's expected audience further than its tolerance, else ``None``."""
    expected = channel.expected_audience
    if expected is None:
        return None
    tolerance = channel.audience_tolerance
    if abs(eligible - expected) <= tolerance * expected:
        return None
    return (
        f"channels.{channel.name}: {eligible} eligible recipient(s), expected "
        f"{expected} ± {tolerance:.0%}"
    )


def check_guard(ledger: Ledger, run_id: str, channel: Channel) -> None:
    """``expected_audience``: abort before any send when the channel's eligible count
    drifts further than the tolerance.

    Raises:
        AudienceGuardError: it drifted; nothing was sent.
    """
    drift = audience_drift(channel, ledger.counts(run_id, channel.name).eligible)
    if drift is not None:
        raise AudienceGuardError(f"{drift}; nothing was sent")


def stored_report(run: RunRecord) -> RunReport | None:
    """The report a run stored in the ledger when it last finished, if any: ``None``
    when it has none or it cannot be read (a run that is going or crashed)."""
    if not run.report:
        return None
    try:
        data = json.loads(run.report)
        if not isinstance(data, dict) or "status" not in data:
            return None
        return RunReport.from_dict(data, run)
    except (ValueError, TypeError, KeyError, StopIteration):
        return None


def replay(run: RunRecord) -> RunReport:
    """The report of a finished run, marked as a replay: nothing was sent now. (Made
    from the ledger's record of the run when it stored no readable report.)"""
    report = stored_report(run) or RunReport.from_dict({}, run)
    return attrs.evolve(report, replayed=True)


def stored_stats(ledger: Ledger, run: RunRecord) -> ExtractionStats:
    """The counts of the run's extraction, as its snapshot recorded them (a run
    snapshotted before ledger schema 4: as its last report had them)."""
    info = ledger.snapshot_info(run.run_id)
    if info is not None:
        return ExtractionStats(
            info.rows_read,
            info.recipients,
            info.rejected,
            dict(info.rejected_reasons),
            None if info.lines is None else SourceLines(**info.lines),
        )
    data = json.loads(run.report or "{}").get("extraction") or {}
    recipients = run.recipients or 0
    rejected = int(data.get("rows_rejected", 0))
    try:
        lines: SourceLines | None = SourceLines(**data["lines"])
    except (KeyError, TypeError):  # a report without line counts
        lines = None
    return ExtractionStats(
        recipients + rejected, recipients, rejected, dict(data.get("rejected_reasons", {})), lines
    )


def call_observer(hook: Any, **kwargs: Any) -> None:
    """Call an observer hook; what it raises is logged and ignored (messages were sent)."""
    try:
        hook(**kwargs)
    except Exception:
        log.exception("an observer hook raised; ignored")
