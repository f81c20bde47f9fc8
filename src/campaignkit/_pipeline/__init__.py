"""The pipeline: a campaign's run, as explicit steps, and what checks and reports it."""

from __future__ import annotations

from ._pipeline import (
    CampaignCheck,
    ChannelPlanSummary,
    Pipeline,
    PlanReport,
    RowCheck,
    RowExample,
    ScheduledRuns,
    ValidationSummary,
    audience_drift,
    check_campaign,
    problem_line,
    stored_report,
)

__all__ = [
    "CampaignCheck",
    "ChannelPlanSummary",
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
