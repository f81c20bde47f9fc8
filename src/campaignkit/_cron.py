"""Cron expressions: parsing, and their fire times in a time zone.

Cron syntax: five fields ``minute hour day-of-month month day-of-week`` with ``*``,
numbers, ranges ``a-b``, steps ``*/n``, ``a-b/n`` and ``a/n``, lists ``a,b``, month
and weekday names (``jan``, ``mon``; case-insensitive), ``?`` for ``*`` in the day
fields, Sunday as 0 or 7; and the macros ``@hourly``, ``@daily``, ``@midnight``,
``@weekly``, ``@monthly``, ``@yearly``, ``@annually``. As in Vixie cron, when both the
day-of-month and the day-of-week field are restricted (neither starts with ``*`` or
``?``), a day matches if *either* matches; otherwise both must.

Daylight-saving rules for fire times are described in :mod:`campaignkit._schedule`.
"""

from __future__ import annotations

import functools
import zoneinfo
from bisect import bisect_left
from datetime import UTC, datetime, timedelta, tzinfo

import attrs

from .exceptions import ConfigError

__all__ = ["Cron", "aware_utc", "parse_cron"]

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


def aware_utc(value: datetime, what: str) -> datetime:
    """``value`` in UTC; ``ValueError`` naming ``what`` if it is naive."""
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
        after = aware_utc(after, "after")
        return self._next_elapsed(after) if self.every_hour else self._next_fixed(after)

    def prev_fire(self, before: datetime) -> datetime:
        """The last fire time strictly before ``before`` (aware), in UTC."""
        before = aware_utc(before, "before")
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
        instant = aware_utc(instant, "instant")
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
