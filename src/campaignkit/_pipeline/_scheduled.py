"""What a campaign's schedule says is due now, as recorded in its ledger."""

from __future__ import annotations

import json
import logging
from datetime import datetime

import attrs

from .._ledger import RunRecord
from .._schedule import Plan, plan_due_runs
from .._states import ACTIVE_STATUSES, RunStatus
from ._campaign import Campaign

__all__ = ["Due", "due_runs"]

log = logging.getLogger("campaignkit")


@attrs.frozen
class Due:
    """What is due: runs to continue, and the schedule's plan (runs to start, held back
    or skipped as too late)."""

    resume: tuple[RunRecord, ...]
    plan: Plan


def due_runs(campaign: Campaign, now: datetime) -> Due:
    """What is due at ``now`` (see :func:`~campaignkit._schedule.plan_due_runs`); the
    runs due too long ago are recorded as ``skipped_late`` here. Runs to continue are
    those whose process died, and deferred ones whose quiet hours are over."""
    ledger = campaign.ledger()
    try:
        runs = ledger.find_runs(campaign.name)
        plan = plan_due_runs(campaign.schedule, campaign.execution, now=now, runs=runs)
        for interval in plan.skip:
            ledger.record_run(
                run_id=f"{campaign.name}__{interval.start:%Y%m%dT%H%M%SZ}",
                pipeline=campaign.name,
                logical_date=interval.start,
                status=RunStatus.SKIPPED_LATE.value,
                fingerprint=campaign.fingerprint(),
                report=json.dumps(
                    {
                        "reason": f"due at {interval.end.isoformat()}, "
                        f"more than max_lateness_minutes ago"
                    }
                ),
            )
            log.warning("%s: %s skipped: due too long ago", campaign.name, interval.start)
        orphans = [r for r in runs if r.status in ACTIVE_STATUSES and not r.in_progress]
        for r in runs:
            if r.status == RunStatus.DEFERRED:
                due = ledger.next_deferred(r.run_id)
                if due is not None and due <= now.timestamp():
                    orphans.append(r)
    finally:
        ledger.close()
    return Due(tuple(orphans), plan)
