"""Airflow-style schedule arithmetic: cron fire times, data intervals and due-run planning.

Everything here is pure: no clock is read and no state is kept; callers pass ``now`` and
what the ledger knows of past runs. All datetimes taken must be timezone-aware (a
schedule's naive ``start_date``/``end_date`` mean UTC, as in the configuration file);
all datetimes returned are in UTC.

Semantics (Airflow's):

* The cron expression is read in the schedule's time zone: ``@daily`` in
  ``Europe/Berlin`` fires at local midnight. Its fire times split time into *data
  intervals* ``[start, end)`` between consecutive fire times. A run's **logical date**
  is its interval's ``start``; the run becomes **due** at the interval's ``end``.
* Logical dates are the fire times at or after ``start_date`` (the first one is
  ``start_date`` itself when it is a fire time, else the next one) and at or before
  ``end_date``: ``end_date`` is inclusive of logical dates, so the last interval may end
  after ``end_date``.

Daylight-saving time. Cron fields describe local wall-clock times; two rules keep the
fire times well defined and free of duplicates:

* **Every-hour schedules** (the hour field covers all 24 hours: ``*``, ``*/1``,
  ``0-23``; e.g. ``@hourly``, ``*/15 * * * *``) fire at every real instant whose local
  wall clock matches. They follow elapsed time: an hourly schedule fires every 60 real
  minutes across both transitions; no UTC instant is repeated or missed. (Wall-clock
  minutes that do not exist are not fired; a repeated local hour fires twice.)
* **Fixed-time schedules** (any other hour field; ``@daily``, ``30 2 * * *``) fire at
  the first instant the local clock reads the scheduled time *or later*. So each
  scheduled local time fires exactly once: an ambiguous time (the repeated hour when
  clocks go back: 02:30 on the last Sunday of October in Berlin, 01:30 on the first
  Sunday of November in New York) fires at its first occurrence only; a time that does
  not exist (02:30 on the last Sunday of March in Berlin, the day clocks jump from 02:00
  to 03:00) fires at the moment of the jump (03:00 CEST). Several skipped times of one
  day collapse into that one fire time.

Cron syntax: see :mod:`campaignkit._cron`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Literal, Protocol

import attrs

from ._cron import Cron, parse_cron
from ._cron import aware_utc as _utc
from ._states import ACTIVE_STATUSES, RunStatus

if TYPE_CHECKING:
    from ._config import Execution, Schedule

__all__ = [
    "ACTIVE_STATUSES",
    "Blocked",
    "Cron",
    "Interval",
    "Plan",
    "RunState",
    "intervals",
    "manual_interval",
    "manual_logical_date",
    "next_due",
    "parse_cron",
    "plan_due_runs",
    "upcoming",
]

_TICK = timedelta(microseconds=1)


def _cron(schedule: Schedule) -> Cron:
    return parse_cron(schedule.cron, schedule.timezone)


# -- intervals -----------------------------------------------------------------------------


@attrs.frozen(order=True)
class Interval:
    """A data interval ``[start, end)`` of a schedule, in UTC.

    ``start`` is the run's logical date; the run is due at ``end``.
    """

    start: datetime
    end: datetime

    @property
    def logical_date(self) -> datetime:
        return self.start

    @property
    def due(self) -> datetime:
        return self.end


def _bound(value: datetime) -> datetime:
    # A schedule's naive date means UTC, as in the configuration file.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _first_start(schedule: Schedule, cron: Cron) -> datetime:
    return cron.next_fire(_bound(schedule.start_date) - _TICK)


def _past_end(schedule: Schedule, start: datetime) -> bool:
    return schedule.end_date is not None and start > _bound(schedule.end_date)


def intervals(
    schedule: Schedule, *, after: datetime | None = None, until: datetime
) -> Iterator[Interval]:
    """The schedule's data intervals due by ``until``, oldest first.

    Yields every interval whose logical date is a fire time at or after
    ``schedule.start_date``, strictly after ``after`` (when given), at or before
    ``schedule.end_date`` (when set), and whose end is at or before ``until``. The
    intervals are contiguous (each ends where the next starts). ``schedule.enabled`` is
    not consulted.

    Raises:
        ValueError: ``after`` or ``until`` is naive.
        ConfigError: the schedule's cron or time zone is invalid.
    """
    cron = _cron(schedule)
    until = _utc(until, "until")
    start = _first_start(schedule, cron)
    if after is not None and _utc(after, "after") >= start:
        start = cron.next_fire(after)
    return _walk(schedule, cron, start, until)


def _walk(schedule: Schedule, cron: Cron, start: datetime, until: datetime) -> Iterator[Interval]:
    while not _past_end(schedule, start):
        end = cron.next_fire(start)
        if end > until:
            return
        yield Interval(start, end)
        start = end


def _pending(schedule: Schedule, cron: Cron, now: datetime) -> Interval | None:
    """The first interval (within the schedule's bounds) that is not yet due at ``now``."""
    start = max(cron.prev_fire(now + _TICK), _first_start(schedule, cron))
    if _past_end(schedule, start):
        return None
    return Interval(start, cron.next_fire(start))


def next_due(schedule: Schedule, now: datetime) -> datetime | None:
    """When the next interval becomes due: the first interval end strictly after ``now``.

    ``None`` when no interval is left (``end_date`` is past). ``schedule.enabled`` is
    not consulted.
    """
    pending = _pending(schedule, _cron(schedule), _utc(now, "now"))
    return None if pending is None else pending.end


def upcoming(schedule: Schedule, now: datetime, n: int) -> list[Interval]:
    """The next ``n`` intervals not yet due at ``now`` (end after ``now``), oldest first.

    The first one is in progress (or, before ``start_date``, the first interval); fewer
    than ``n`` are returned when ``end_date`` comes first. For ``campaignkit schedule``.
    """
    cron = _cron(schedule)
    pending = _pending(schedule, cron, _utc(now, "now"))
    out: list[Interval] = []
    start = None if pending is None else pending.start
    while start is not None and len(out) < n and not _past_end(schedule, start):
        end = cron.next_fire(start)
        out.append(Interval(start, end))
        start = end
    return out


def _latest_due(schedule: Schedule, cron: Cron, now: datetime) -> Interval | None:
    """The latest interval (within the schedule's bounds) whose end is at or before ``now``."""
    end = cron.prev_fire(now + _TICK)
    start = cron.prev_fire(end)
    if schedule.end_date is not None:
        last = cron.prev_fire(_bound(schedule.end_date) + _TICK)
        if start > last:
            start, end = last, cron.next_fire(last)
    if start < _first_start(schedule, cron):
        return None
    return Interval(start, end)


def manual_interval(schedule: Schedule, now: datetime) -> Interval:
    """The data interval of a manual (unscheduled) run started at ``now``.

    As an Airflow manual trigger: the latest complete interval of the cron, i.e. the
    one whose end is the last fire time at or before ``now``. ``start_date``,
    ``end_date`` and ``enabled`` are not consulted, so a manual run is always possible.
    A manual run therefore shares its logical date with the scheduled run that was due
    last: whichever runs first, the other does not send again.
    """
    cron = _cron(schedule)
    end = cron.prev_fire(_utc(now, "now") + _TICK)
    return Interval(cron.prev_fire(end), end)


def manual_logical_date(schedule: Schedule, now: datetime) -> datetime:
    """The logical date of a manual run started at ``now``: ``manual_interval(...).start``."""
    return manual_interval(schedule, now).start


# -- planning ------------------------------------------------------------------------------


class _RunLike(Protocol):
    @property
    def logical_date(self) -> datetime: ...

    @property
    def status(self) -> str: ...


@attrs.frozen
class RunState:
    """What the ledger knows of one past or current run of the pipeline.

    Any object with ``logical_date`` (aware) and ``status`` attributes will do (the
    ledger's ``RunRecord`` does).
    """

    logical_date: datetime
    status: str


@attrs.frozen
class Blocked:
    """A due interval that is not started now, and why.

    Attributes:
        interval: the interval.
        cause: ``"depends_on_past"`` or ``"max_active_runs"``.
        reason: a sentence for people.
    """

    interval: Interval
    cause: Literal["depends_on_past", "max_active_runs"]
    reason: str


@attrs.frozen
class Plan:
    """What a scheduled invocation should do at ``now``.

    Attributes:
        start: intervals to run now, oldest first (record each as running, atomically
            with a fresh check of ``max_active_runs``, then send).
        skip: intervals to record as ``skipped_late`` without sending, oldest first.
        blocked: due intervals left for a later invocation (nothing is recorded).
        active: runs counted as active (``ACTIVE_STATUSES``) in the runs given.
        next_due: when the next interval becomes due (:func:`next_due`), or ``None``.
    """

    start: tuple[Interval, ...] = ()
    skip: tuple[Interval, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    active: int = 0
    next_due: datetime | None = None


def _latest_past_run(by_date: dict[datetime, str], before: datetime) -> tuple[datetime, str] | None:
    dates = [d for d, status in by_date.items() if d < before and status != RunStatus.SKIPPED_LATE]
    if not dates:
        return None
    latest = max(dates)
    return latest, by_date[latest]


def plan_due_runs(
    schedule: Schedule, execution: Execution, *, now: datetime, runs: Sequence[_RunLike]
) -> Plan:
    """Decide which intervals to start, skip or hold back at ``now``.

    Args:
        schedule: the pipeline's schedule.
        execution: supplies ``max_active_runs`` and ``depends_on_past``.
        now: the current time (aware); nothing else reads a clock.
        runs: every run of this pipeline the ledger knows (any status, manual runs
            included), oldest first; when several share a logical date the last one's
            status counts.

    Returns:
        The :class:`Plan`. Contract:

        * A disabled schedule plans nothing.
        * Never a logical date that already has a run (any status), nor one at or
          before the latest logical date that has a run: scheduled runs only move
          forward, and gaps before the latest run are not back-filled.
        * Candidates are the due intervals (end <= ``now``) after that: with
          ``catchup`` every one, oldest first; without, only the latest due interval
          (older missed ones are neither started nor recorded).
        * Lateness first: a candidate due more than ``max_lateness_minutes`` before
          ``now`` is in ``skip`` (even if it would be blocked), never in ``start``.
        * ``depends_on_past``: a candidate starts only if the latest earlier run —
          ``skipped_late`` runs are passed over, runs started in this plan count as
          running, a candidate held back in this plan as not run — succeeded. With no
          earlier run (the first ever) it starts.
        * ``max_active_runs``: at most ``max_active_runs - active`` start, oldest first;
          the rest are blocked.
    """
    now = _utc(now, "now")
    by_date, active = _runs_by_date(runs)
    if not schedule.enabled:
        return Plan(active=active)
    cron = _cron(schedule)
    candidates = _candidates(schedule, cron, now, latest=max(by_date, default=None))
    start, skip, blocked = _triage(candidates, schedule, execution, now, by_date, active)
    return Plan(
        start=tuple(start),
        skip=tuple(skip),
        blocked=tuple(blocked),
        active=active,
        next_due=_pending_end(schedule, cron, now),
    )


def _runs_by_date(runs: Sequence[_RunLike]) -> tuple[dict[datetime, str], int]:
    """The status of each logical date (the last run's of a date) and how many runs
    are active."""
    by_date: dict[datetime, str] = {}
    active = 0
    for run in runs:
        by_date[_utc(run.logical_date, "run logical_date")] = run.status
        active += run.status in ACTIVE_STATUSES
    return by_date, active


def _candidates(
    schedule: Schedule, cron: Cron, now: datetime, *, latest: datetime | None
) -> list[Interval]:
    """The due intervals after the ``latest`` logical date with a run: every one with
    ``catchup``, else only the latest due one."""
    if schedule.catchup:
        return list(intervals(schedule, after=latest, until=now))
    last = _latest_due(schedule, cron, now)
    return [last] if last is not None and (latest is None or last.start > latest) else []


def _triage(
    candidates: list[Interval],
    schedule: Schedule,
    execution: Execution,
    now: datetime,
    by_date: dict[datetime, str],
    active: int,
) -> tuple[list[Interval], list[Interval], list[Blocked]]:
    """Sort the candidates, oldest first, into those to start, to skip as late and
    blocked (the rules of :func:`plan_due_runs`)."""
    lateness = (
        None
        if schedule.max_lateness_minutes is None
        else timedelta(minutes=schedule.max_lateness_minutes)
    )
    limit = execution.max_active_runs
    slots = None if limit is None else max(0, limit - active)
    start: list[Interval] = []
    skip: list[Interval] = []
    blocked: list[Blocked] = []
    previous = _latest_past_run(by_date, candidates[0].start) if candidates else None
    for interval in candidates:
        if lateness is not None and now - interval.end > lateness:
            skip.append(interval)
            continue
        if execution.depends_on_past and previous and previous[1] != RunStatus.SUCCEEDED:
            why = _not_succeeded(*previous)
            blocked.append(Blocked(interval, "depends_on_past", f"depends_on_past: {why}"))
            previous = (interval.start, "")
            continue
        if slots is not None and slots <= len(start):
            blocked.append(
                Blocked(
                    interval,
                    "max_active_runs",
                    f"max_active_runs={limit} reached ({active} active, {len(start)} started now)",
                )
            )
            previous = (interval.start, "")
            continue
        start.append(interval)
        previous = (interval.start, RunStatus.RUNNING)
    return start, skip, blocked


def _not_succeeded(date: datetime, status: str) -> str:
    """Why the previous logical date blocks ``depends_on_past`` (``status`` is ``""``
    when it has not run)."""
    if status == "":
        return f"the previous logical date {date.isoformat()} has not run yet"
    if status in ACTIVE_STATUSES:
        return f"the previous run (logical date {date.isoformat()}) is still {status}"
    return f"the previous run (logical date {date.isoformat()}) ended {status!r}"


def _pending_end(schedule: Schedule, cron: Cron, now: datetime) -> datetime | None:
    pending = _pending(schedule, cron, now)
    return None if pending is None else pending.end
