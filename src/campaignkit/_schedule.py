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

Cron syntax: five fields ``minute hour day-of-month month day-of-week`` with ``*``,
numbers, ranges ``a-b``, steps ``*/n``, ``a-b/n`` and ``a/n``, lists ``a,b``, month
and weekday names (``jan``, ``mon``; case-insensitive), ``?`` for ``*`` in the day
fields, Sunday as 0 or 7; and the macros ``@hourly``, ``@daily``, ``@midnight``,
``@weekly``, ``@monthly``, ``@yearly``, ``@annually``. As in Vixie cron, when both the
day-of-month and the day-of-week field are restricted (neither starts with ``*`` or
``?``), a day matches if *either* matches; otherwise both must.
"""

from __future__ import annotations

import functools
import zoneinfo
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING, Literal, Protocol

import attrs

from .exceptions import ConfigError

if TYPE_CHECKING:
    from ._config import Execution, Schedule

__all__ = [
    "ACTIVE_STATUSES",
    "RUNNING",
    "SKIPPED_LATE",
    "SUCCEEDED",
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

#: Run statuses the planner understands (the ledger's vocabulary).
RUNNING = "running"
SUCCEEDED = "succeeded"
SKIPPED_LATE = "skipped_late"
#: Runs in these statuses count against ``max_active_runs``.
ACTIVE_STATUSES = frozenset({RUNNING})

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND = timedelta(seconds=1)
_MINUTE = timedelta(minutes=1)
_HOUR = timedelta(hours=1)
_DAY = timedelta(days=1)
_TICK = timedelta(microseconds=1)
# A cron that fires at all fires within 8 years (29 February); searching farther is a bug.
_SEARCH_YEARS = 30

_MACROS = {
    "@hourly": "0 * * * *",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@weekly": "0 0 * * 0",
    "@monthly": "0 0 1 * *",
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
}
_MONTH_NAMES = {
    name: i + 1
    for i, name in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
_DOW_NAMES = {name: i for i, name in enumerate(("sun", "mon", "tue", "wed", "thu", "fri", "sat"))}
# (name, lowest, highest, names)
_FIELDS: tuple[tuple[str, int, int, dict[str, int]], ...] = (
    ("minute", 0, 59, {}),
    ("hour", 0, 23, {}),
    ("day of month", 1, 31, {}),
    ("month", 1, 12, _MONTH_NAMES),
    ("day of week", 0, 7, _DOW_NAMES),
)


# -- cron ----------------------------------------------------------------------------------


def _utc(value: datetime, what: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be a timezone-aware datetime, got {value!r}")
    return value.astimezone(UTC)


def _floor_seconds(value: datetime) -> int:
    return (value - _EPOCH) // _SECOND


def _ceil_seconds(value: datetime) -> int:
    return -((_EPOCH - value) // _SECOND)


def _parse_field(text: str, index: int, expression: str) -> tuple[int, ...]:
    name, low, high, names = _FIELDS[index]

    def fail(why: str) -> ConfigError:
        return ConfigError(f"invalid cron expression {expression!r}: {name} field {text!r} {why}")

    def number(token: str) -> int:
        if token.lower() in names:
            return names[token.lower()]
        if not token.isdigit():
            raise fail(f"has {token!r}, expected a number from {low} to {high}")
        value = int(token)
        if not low <= value <= high:
            raise fail(f"has {value}, outside {low}-{high}")
        return value

    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise fail("has an empty list item")
        if any(c in item for c in "LW#"):
            raise fail("uses L, W or #, which are not supported")
        body, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise fail(f"has step {step_text!r}, expected a positive number")
            step = int(step_text)
        if body == "*" or (body == "?" and index in (2, 4)):
            first, last = low, high
        elif "-" in body:
            a, _, b = body.partition("-")
            first, last = number(a), number(b)
            if first > last:
                hint = " (Sunday may be written 7: 'fri-7')" if index == 4 else ""
                raise fail(f"has range {body!r} running backwards{hint}")
        else:
            first = number(body)
            last = high if slash else first
        values.update(range(first, last + 1, step))
    if index == 4 and 7 in values:  # Sunday is 0 or 7
        values.discard(7)
        values.add(0)
    return tuple(sorted(values))


@attrs.frozen
class Cron:
    """A parsed cron expression read in a time zone; build it with :func:`parse_cron`.

    The fire times form a set ``S`` of instants (see the module docstring for the DST
    rules). :meth:`next_fire` and :meth:`prev_fire` walk it; both accept any aware
    datetime and return aware UTC datetimes.

    Attributes:
        expression: the expression as given (macros unexpanded).
        timezone: the zone the expression is read in.
        every_hour: whether the hour field covers all 24 hours (elapsed-time DST rule).
    """

    expression: str
    timezone: tzinfo
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]  # 0 = Sunday
    day_star: bool  # day-of-month field starts with * or ?
    weekday_star: bool

    @property
    def every_hour(self) -> bool:
        return len(self.hours) == 24

    # naive (wall-clock) matching

    def _day_matches(self, t: datetime) -> bool:
        day_ok = t.day in self.days
        weekday_ok = t.isoweekday() % 7 in self.weekdays
        if self.day_star or self.weekday_star:
            return day_ok and weekday_ok
        return day_ok or weekday_ok

    def _next_naive(self, wall: datetime, *, strict: bool) -> datetime:
        """The first matching wall-clock minute after ``wall`` (at or after it if not strict)."""
        t = wall.replace(second=0, microsecond=0, fold=0)  # astimezone() may have set fold
        if strict or t != wall:
            t += _MINUTE
        limit = t.year + _SEARCH_YEARS
        while t.year <= limit:
            if t.month not in self.months:
                i = bisect_left(self.months, t.month)
                t = (
                    datetime(t.year, self.months[i], 1)
                    if i < len(self.months)
                    else datetime(t.year + 1, self.months[0], 1)
                )
            elif not self._day_matches(t):
                t = datetime(t.year, t.month, t.day) + _DAY
            elif t.hour not in self.hours:
                i = bisect_left(self.hours, t.hour)
                t = (
                    t.replace(hour=self.hours[i], minute=0)
                    if i < len(self.hours)
                    else datetime(t.year, t.month, t.day) + _DAY
                )
            elif t.minute not in self.minutes:
                i = bisect_left(self.minutes, t.minute)
                t = (
                    t.replace(minute=self.minutes[i])
                    if i < len(self.minutes)
                    else t.replace(minute=0) + _HOUR
                )
            else:
                return t
        raise RuntimeError(f"cron {self.expression!r} does not fire after {wall}")  # unreachable

    # time-zone arithmetic

    def _offset_at(self, seconds: int) -> timedelta | None:
        return datetime.fromtimestamp(seconds, self.timezone).utcoffset()

    def _transition(self, before: datetime, after: datetime) -> datetime:
        """The first instant in ``(before, after]`` whose UTC offset differs from ``before``'s.

        Requires the offsets at ``before`` and ``after`` to differ, with a single
        transition in between (tz transitions are whole seconds, and days apart).
        """
        reference = before.astimezone(self.timezone).utcoffset()
        lo, hi = _floor_seconds(before), _ceil_seconds(after)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self._offset_at(mid) == reference:
                lo = mid
            else:
                hi = mid
        return _EPOCH + hi * _SECOND

    def _first_reaching(self, wall: datetime) -> datetime:
        """The first instant at which the local clock reads ``wall`` or later."""
        first = wall.replace(tzinfo=self.timezone, fold=0).astimezone(UTC)  # earlier occurrence
        if first.astimezone(self.timezone).replace(tzinfo=None) == wall:
            return first
        # ``wall`` falls in a gap: fold=0 maps it past the jump, fold=1 before it.
        before = wall.replace(tzinfo=self.timezone, fold=1).astimezone(UTC)
        return self._transition(before, first) if before < first else first

    def _next_fixed(self, after: datetime) -> datetime:
        # _first_reaching is monotonic in the wall time, and every wall time before
        # after's own maps to an instant <= after: start the scan there.
        wall = after.astimezone(self.timezone).replace(tzinfo=None)
        candidate = self._next_naive(wall, strict=False)
        while True:
            instant = self._first_reaching(candidate)
            if instant > after:
                return instant
            candidate = self._next_naive(candidate, strict=True)

    def _next_elapsed(self, after: datetime) -> datetime:
        t, strict = after, True
        while True:
            local = t.astimezone(self.timezone)
            wall = local.replace(tzinfo=None)
            step = self._next_naive(wall, strict=strict) - wall
            # Walls move linearly with real time until a transition; chunks of at most
            # one day hold at most one transition.
            hit = step <= _DAY
            target = t + (step if hit else _DAY)
            if target.astimezone(self.timezone).utcoffset() == local.utcoffset():
                if hit:
                    return target
                t, strict = target, True
            else:
                t, strict = self._transition(t, target), False

    def next_fire(self, after: datetime) -> datetime:
        """The first fire time strictly after ``after`` (aware), in UTC."""
        after = _utc(after, "after")
        return self._next_elapsed(after) if self.every_hour else self._next_fixed(after)

    def prev_fire(self, before: datetime) -> datetime:
        """The last fire time strictly before ``before`` (aware), in UTC."""
        before = _utc(before, "before")
        window = _MINUTE
        limit = timedelta(days=366 * _SEARCH_YEARS)
        while window <= limit:
            fire = self.next_fire(before - window)
            if fire < before:
                while (following := self.next_fire(fire)) < before:
                    fire = following
                return fire
            window *= 2
        raise RuntimeError(f"cron {self.expression!r} does not fire before {before}")

    def fires_at(self, instant: datetime) -> bool:
        """Whether ``instant`` (aware) is a fire time."""
        instant = _utc(instant, "instant")
        return self.next_fire(instant - _TICK) == instant


def parse_cron(expression: str, timezone: str | tzinfo = "UTC") -> Cron:
    """Parse a five-field cron expression or macro, read in ``timezone``.

    Args:
        expression: e.g. ``"30 9 * * mon-fri"`` or ``"@daily"``.
        timezone: an IANA zone name (``"Europe/Berlin"``) or a ``tzinfo``.

    Raises:
        ConfigError: the expression is malformed, out of range, uses unsupported syntax
            (``L``, ``W``, ``#``, a seconds field), or can never fire (``0 0 30 2 *``);
            or the zone is unknown. The message quotes the expression; the caller adds
            the key path (``schedule.cron``).
    """
    if not isinstance(expression, str):
        raise ConfigError(f"expected a cron expression string, got {type(expression).__name__}")
    if isinstance(timezone, str):
        try:
            zone: tzinfo = zoneinfo.ZoneInfo(timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError(f"unknown time zone {timezone!r}") from None
    else:
        zone = timezone
    return _parse(expression, zone)


@functools.lru_cache(maxsize=128)
def _parse(expression: str, zone: tzinfo) -> Cron:
    text = expression.strip()
    if text.startswith("@"):
        if text.lower() not in _MACROS:
            raise ConfigError(
                f"unknown cron macro {text!r} (expected one of {', '.join(sorted(_MACROS))})"
            )
        text = _MACROS[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        raise ConfigError(
            f"invalid cron expression {expression!r}: expected 5 fields "
            f"(minute hour day-of-month month day-of-week), got {len(parts)}"
        )
    fields = [_parse_field(part, i, expression) for i, part in enumerate(parts)]
    cron = Cron(
        expression=expression,
        timezone=zone,
        minutes=fields[0],
        hours=fields[1],
        days=fields[2],
        months=fields[3],
        weekdays=fields[4],
        day_star=parts[2][0] in "*?",
        weekday_star=parts[4][0] in "*?",
    )
    # The calendar repeats every 28 years between 1901 and 2099; a day pattern that
    # matches nowhere in 28 years never matches.
    day = datetime(2000, 1, 1)
    while day.year < 2028 and not (day.month in cron.months and cron._day_matches(day)):
        day += _DAY
    if day.year >= 2028:
        raise ConfigError(
            f"cron expression {expression!r} never fires: no date matches its "
            "day-of-month, month and day-of-week fields"
        )
    return cron


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
    dates = [d for d, status in by_date.items() if d < before and status != SKIPPED_LATE]
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
    by_date: dict[datetime, str] = {}
    active = 0
    for run in runs:
        by_date[_utc(run.logical_date, "run logical_date")] = run.status
        active += run.status in ACTIVE_STATUSES
    if not schedule.enabled:
        return Plan(active=active)
    cron = _cron(schedule)
    latest = max(by_date, default=None)
    candidates: list[Interval]
    if schedule.catchup:
        candidates = list(intervals(schedule, after=latest, until=now))
    else:
        last = _latest_due(schedule, cron, now)
        candidates = [last] if last is not None and (latest is None or last.start > latest) else []

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
        if execution.depends_on_past and previous is not None and previous[1] != SUCCEEDED:
            date, status = previous
            if status == "":
                why = f"the previous logical date {date.isoformat()} has not run yet"
            elif status in ACTIVE_STATUSES:
                why = f"the previous run (logical date {date.isoformat()}) is still {status}"
            else:
                why = f"the previous run (logical date {date.isoformat()}) ended {status!r}"
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
        previous = (interval.start, RUNNING)
    return Plan(
        start=tuple(start),
        skip=tuple(skip),
        blocked=tuple(blocked),
        active=active,
        next_due=_pending_end(schedule, cron, now),
    )


def _pending_end(schedule: Schedule, cron: Cron, now: datetime) -> datetime | None:
    pending = _pending(schedule, cron, now)
    return None if pending is None else pending.end
