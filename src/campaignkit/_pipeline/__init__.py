"""The pipeline: a campaign, and its run as a sequence of explicit steps.

:class:`Pipeline` (:mod:`._pipeline`) is the campaign and composes its run in
:meth:`Pipeline.run`. The rest is by responsibility:

- :mod:`._steps`: the run's steps (open, plan a channel, send a slice, finish), each
  working on a run in the ledger and handing the next only references;
- :mod:`._run_steps`: the steps one call at a time, for runs driven from outside
  (workers, orchestrators), the dry run and the ledger's reads;
- :mod:`._checks` and :mod:`._checking`: every problem at once, and the channels'
  plans built by the checks; :mod:`._check_file` checks a campaign file;
- :mod:`._rows`: the segment's rows read as a run reads them;
- :mod:`._dry_run`: what a run would do, and previews;
- :mod:`._reports`: a run's status, its stored report, the audience guard;
- :mod:`._scheduled`: what the schedule says is due;
- :mod:`._values`: what the operations return;
- :mod:`._campaign`: what the steps need of a campaign (a protocol).
"""

from __future__ import annotations

from ._check_file import check_campaign
from ._checks import problem_line
from ._pipeline import Pipeline
from ._reports import audience_drift, stored_report
from ._values import (
    CampaignCheck,
    ChannelPlanSummary,
    OpenedRun,
    PlanReport,
    RowCheck,
    RowExample,
    ScheduledRuns,
    ValidationSummary,
)

__all__ = [
    "CampaignCheck",
    "ChannelPlanSummary",
    "OpenedRun",
    "Pipeline",
    "PlanReport",
    "RowCheck",
    "RowExample",
    "ScheduledRuns",
    "ValidationSummary",
    "audience_drift",
    "check_campaign",
    "problem_line",
    "stored_report",
]
