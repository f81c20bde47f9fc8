"""The values a pipeline's operations return: checks, dry runs, scheduled runs, openings."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import attrs

from .._models import ChannelResult, Message, RunReport
from .._schedule import Blocked, Interval
from .._segment import ExtractionStats
from ..exceptions import Problem

__all__ = [
    "CampaignCheck",
    "ChannelPlanSummary",
    "OpenedRun",
    "PlanReport",
    "RowCheck",
    "RowExample",
    "ScheduledRuns",
    "SendAttempt",
    "ValidationSummary",
]


@attrs.frozen
class ScheduledRuns:
    """What :meth:`Pipeline.run_scheduled` did."""

    reports: tuple[RunReport, ...] = ()
    skipped: tuple[Interval, ...] = ()  # recorded as skipped_late
    blocked: tuple[Blocked, ...] = ()  # due, held back (depends_on_past, max_active_runs)
    next_due: datetime | None = None


@attrs.frozen
class ChannelPlanSummary:
    """One channel of a dry run (:meth:`Pipeline.plan`)."""

    channel: str
    provider: str
    eligible: int  # would be sent now
    deferred: int  # held by quiet hours, sent later
    skipped: Mapping[str, int]  # by reason
    failures: Mapping[str, int]  # messages that would fail (render, content rules)
    sms_segments: int | None
    estimated_cost: float | None
    samples: tuple[Message, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "provider": self.provider,
            "eligible": self.eligible,
            "deferred": self.deferred,
            "skipped": dict(sorted(self.skipped.items())),
            "failures": dict(sorted(self.failures.items())),
            "sms_segments": self.sms_segments,
            "estimated_cost": self.estimated_cost,
            "samples": [attrs.asdict(m) for m in self.samples],
        }


@attrs.frozen
class PlanReport:
    """What a run would do (:meth:`Pipeline.plan`); nothing was sent."""

    pipeline: str
    created_at: datetime
    rows_read: int
    rows_rejected: int
    rejected_reasons: Mapping[str, int]
    channels: Mapping[str, ChannelPlanSummary]
    lines: Mapping[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "created_at": self.created_at.isoformat(),
            "extraction": {
                "rows_read": self.rows_read,
                "rows_rejected": self.rows_rejected,
                "rejected_reasons": dict(sorted(self.rejected_reasons.items())),
                "lines": None if self.lines is None else dict(self.lines),
            },
            "channels": {name: c.to_dict() for name, c in self.channels.items()},
        }


@attrs.frozen
class ValidationSummary:
    """What :meth:`Pipeline.validate` checked."""

    pipeline: str
    source: str
    fields: frozenset[str]
    channels: Mapping[str, str]  # enabled channel -> provider
    disabled: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "source": self.source,
            "fields": sorted(self.fields),
            "channels": dict(self.channels),
            "disabled": list(self.disabled),
        }


@attrs.frozen
class RowExample:
    """One row that a run would not message (:meth:`Pipeline.check_rows`): where it
    is and why, never the row's other values.

    Attributes:
        file: the segment (as configured).
        line: the 1-based line where the row starts.
        reason: ``malformed_row``, ``control_character``, ``duplicate_id``,
            ``invalid_address`` ...
        field: the field at fault, if one.
        detail: a human explanation (it may quote the offending field's value).
        channel: for ``invalid_address``, the channel whose address it is.
    """

    file: str
    line: int
    reason: str
    field: str | None
    detail: str
    channel: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}: "
        field = f"{self.field}: " if self.field else ""
        channel = f"[{self.channel}] " if self.channel else ""
        return f"{where}{channel}{field}{self.reason}: {self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)


@attrs.frozen
class RowCheck:
    """The whole segment read as a run reads it (:meth:`Pipeline.check_rows`);
    nothing was sent or recorded.

    Attributes:
        source: the segment's description (its path as configured).
        rows_read, accepted, rejected: rows read, recipients and rejected rows
            (``accepted + rejected == rows_read``).
        reasons: rejected rows by reason.
        examples: the first rejected rows (at most the limit asked for).
        invalid_addresses: per enabled channel, accepted recipients whose address
            for that channel is invalid (a run skips them as ``invalid_address``).
        address_examples: the first of those, across channels.
        lines: how the file's physical lines were accounted for, when the source
            counts them.
    """

    source: str
    rows_read: int
    accepted: int
    rejected: int
    reasons: Mapping[str, int]
    examples: tuple[RowExample, ...]
    invalid_addresses: Mapping[str, int]
    address_examples: tuple[RowExample, ...]
    lines: Mapping[str, int] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "rows_read": self.rows_read,
            "accepted": self.accepted,
            "rejected": self.rejected,
            "reasons": dict(self.reasons),
            "examples": [e.to_dict() for e in self.examples],
            "invalid_addresses": dict(self.invalid_addresses),
            "address_examples": [e.to_dict() for e in self.address_examples],
            "lines": None if self.lines is None else dict(self.lines),
        }


@attrs.frozen
class CampaignCheck:
    """What :func:`check_campaign` found.

    Attributes:
        problems: every problem, grouped in the order of :data:`PROBLEM_GROUPS`.
        summary: what was checked, when there is no problem.
        rows: the segment's rows, when asked for and the segment could be read.
    """

    problems: tuple[Problem, ...]
    summary: ValidationSummary | None = None
    rows: RowCheck | None = None

    @property
    def valid(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "valid": self.valid,
            "problems": [p.to_dict() for p in self.problems],
            "summary": None if self.summary is None else self.summary.to_dict(),
            "rows": None if self.rows is None else self.rows.to_dict(),
        }


@attrs.frozen
class OpenedRun:
    """What opening a run did (:meth:`Pipeline.open_run`, :meth:`Pipeline.reopen_run`).

    Attributes:
        run_id: the run, to pass to the next steps.
        resumed: an unfinished run was taken up (its audience may be decided already).
        replay: the run had finished with nothing owed: its stored report, marked as
            a replay; there is nothing to plan or send.
        extracted: the extraction this opening did (``None`` when the run's
            snapshot was there already).
        earlier_status: when the logical date had a run already, the status it had
            (``canary``, ``timed_out``... for one taken up; how it ended for a replay).
    """

    run_id: str
    resumed: bool = False
    replay: RunReport | None = None
    extracted: ExtractionStats | None = None
    earlier_status: str | None = None


@attrs.frozen
class SendAttempt:
    """What one attempt of an orchestrator's send task did (:meth:`Pipeline.send_attempt`).

    Attributes:
        result: the channel's totals as the ledger has them after the attempt.
        transient: transient failures the slice has left (the orchestrator's retry
            sends them again).
        stopped: why the send stopped before sending everything owed, if it did.
    """

    result: ChannelResult
    transient: int = 0
    stopped: str | None = None

    @property
    def complete(self) -> bool:
        """Whether the slice owes nothing that a retry could send."""
        return not self.transient and self.stopped is None
