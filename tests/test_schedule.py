"""Schedule arithmetic and due-run planning, with explicit ``now`` values as a fake clock."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit._config import Execution, Schedule
from campaignkit._schedule import (
    ACTIVE_STATUSES,
    Interval,
    Plan,
    RunState,
    intervals,
    manual_interval,
    manual_logical_date,
    next_due,
    parse_cron,
    plan_due_runs,
    upcoming,
)
from campaignkit.exceptions import ConfigError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")
H = timedelta(hours=1)
D = timedelta(days=1)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def sched(**kw: object) -> Schedule:
    kw.setdefault("start_date", utc(2024, 1, 1))
    return Schedule(**kw)


def starts(items: tuple[Interval, ...] | list[Interval]) -> list[datetime]:
    return [i.start for i in items]


def days(*numbers: int, month: int = 1) -> list[datetime]:
    return [utc(2024, month, n) for n in numbers]


def fires(expr: str, tz: str, after: datetime, n: int) -> list[datetime]:
    cron = parse_cron(expr, tz)
    out = []
    for _ in range(n):
        after = cron.next_fire(after)
        out.append(after)
    return out


# -- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("macro", "expansion"),
    [
        ("@hourly", "0 * * * *"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@weekly", "0 0 * * 0"),
        ("@monthly", "0 0 1 * *"),
        ("@yearly", "0 0 1 1 *"),
        ("@ANNUALLY", "0 0 1 1 *"),
    ],
)
def test_macros_fire_like_their_expansion(macro: str, expansion: str) -> None:
    start = utc(2023, 12, 30, 17, 3)
    assert fires(macro, "Europe/Berlin", start, 30) == fires(expansion, "Europe/Berlin", start, 30)


def test_five_field_syntax() -> None:
    # Names, ranges, steps, lists; Sunday as 0 or 7; ``?`` in a day field.
    assert fires("*/20 9-10 ? jan,feb MON-fri", "UTC", utc(2024, 1, 5, 10, 30), 4) == [
        utc(2024, 1, 5, 10, 40),
        utc(2024, 1, 8, 9, 0),  # Friday -> Monday
        utc(2024, 1, 8, 9, 20),
        utc(2024, 1, 8, 9, 40),
    ]
    assert fires("0 0 * * 7", "UTC", utc(2024, 1, 1), 2) == fires(
        "0 0 * * sun", "UTC", utc(2024, 1, 1), 2
    )
    assert fires("5/20 0 1 1 *", "UTC", utc(2024, 1, 1), 3) == [
        utc(2024, 1, 1, 0, 5),
        utc(2024, 1, 1, 0, 25),
        utc(2024, 1, 1, 0, 45),
    ]


def test_day_of_month_and_weekday_or_when_both_restricted() -> None:
    # Vixie cron: both restricted -> either matches; one starting with '*' -> both must.
    either = fires("0 0 13 * fri", "UTC", utc(2024, 9, 1), 4)
    assert either == [utc(2024, 9, 6), utc(2024, 9, 13), utc(2024, 9, 20), utc(2024, 9, 27)]
    both = fires("0 0 */13 * fri", "UTC", utc(2024, 1, 1), 3)  # days 1, 14, 27 that are Fridays
    assert both == [utc(2024, 3, 1), utc(2024, 6, 14), utc(2024, 9, 27)]


@pytest.mark.parametrize(
    ("expr", "fragment"),
    [
        ("61 * * * *", "minute field '61' has 61, outside 0-59"),
        ("0 24 * * *", "hour field '24' has 24, outside 0-23"),
        ("0 0 0 * *", "outside 1-31"),
        ("0 0 * 13 *", "outside 1-12"),
        ("0 0 * * 8", "outside 0-7"),
        ("* * *", "expected 5 fields"),
        ("0 0 * * * *", "expected 5 fields"),
        ("@often", "unknown cron macro '@often'"),
        ("0 0 L * *", "not supported"),
        ("0 0 * * 5#3", "not supported"),
        ("*/0 * * * *", "positive number"),
        ("5-2 * * * *", "running backwards"),
        ("0 0 * * fri-sun", "fri-7"),
        ("a * * * *", "expected a number"),
        ("1,,2 * * * *", "empty list item"),
        ("0 ? * * *", "expected a number"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
    ],
)
def test_parse_cron_rejects_with_a_clear_message(expr: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_cron(expr, "UTC")
    assert fragment in str(info.value)
    assert info.value.path is None  # the config loader adds "schedule.cron"


def test_parse_cron_accepts_rare_days_and_rejects_unknown_zones() -> None:
    assert fires("0 0 29 2 *", "UTC", utc(2024, 3, 1), 1) == [utc(2028, 2, 29)]
    with pytest.raises(ConfigError, match="unknown time zone 'Mars/Olympus'"):
        parse_cron("@daily", "Mars/Olympus")


# -- intervals -----------------------------------------------------------------------------


def test_daily_intervals_are_contiguous_and_due_at_their_end() -> None:
    got = list(intervals(sched(cron="@daily"), until=utc(2024, 1, 4, 23, 59)))
    assert got == [
        Interval(utc(2024, 1, 1), utc(2024, 1, 2)),
        Interval(utc(2024, 1, 2), utc(2024, 1, 3)),
        Interval(utc(2024, 1, 3), utc(2024, 1, 4)),
    ]
    assert got[0].logical_date == utc(2024, 1, 1)
    assert got[0].due == utc(2024, 1, 2)
    # The end is inclusive: an interval is due at exactly its end.
    assert len(list(intervals(sched(cron="@daily"), until=utc(2024, 1, 5)))) == 4


def test_hourly_and_five_field_intervals() -> None:
    hourly = list(intervals(sched(cron="@hourly"), until=utc(2024, 1, 1, 3, 30)))
    assert starts(hourly) == [utc(2024, 1, 1, 0), utc(2024, 1, 1, 1), utc(2024, 1, 1, 2)]
    weekdays = list(intervals(sched(cron="30 9 * * 1-5"), until=utc(2024, 1, 9, 9, 30)))
    # 2024-01-01 is a Monday; the Friday interval runs to Monday.
    assert weekdays[-2] == Interval(utc(2024, 1, 5, 9, 30), utc(2024, 1, 8, 9, 30))
    assert weekdays[-1].end == utc(2024, 1, 9, 9, 30)
    assert starts(weekdays) == [utc(2024, 1, d, 9, 30) for d in (1, 2, 3, 4, 5, 8)]


def test_intervals_after_a_logical_date() -> None:
    s = sched(cron="@daily")
    got = list(intervals(s, after=utc(2024, 1, 2), until=utc(2024, 1, 5)))
    assert starts(got) == days(3, 4)
    # ``after`` need not be a fire time.
    assert starts(intervals(s, after=utc(2024, 1, 2, 5), until=utc(2024, 1, 5))) == days(3, 4)
    # ``after`` before start_date changes nothing.
    assert starts(intervals(s, after=utc(2023, 6, 1), until=utc(2024, 1, 3))) == days(1, 2)


def test_unaligned_start_date_aligns_to_the_next_fire_time() -> None:
    s = sched(cron="@daily", start_date=utc(2024, 1, 1, 6))
    assert starts(intervals(s, until=utc(2024, 1, 4))) == days(2, 3)


def test_start_date_in_the_future_means_nothing_is_due() -> None:
    s = sched(cron="@daily", start_date=utc(2024, 6, 1), catchup=True)
    now = utc(2024, 5, 20, 12)
    assert list(intervals(s, until=now)) == []
    assert plan_due_runs(s, Execution(), now=now, runs=[]).start == ()
    no_catchup = sched(cron="@daily", start_date=utc(2024, 6, 1))
    assert plan_due_runs(no_catchup, Execution(), now=now, runs=[]) == Plan(
        next_due=utc(2024, 6, 2)
    )
    assert next_due(s, now) == utc(2024, 6, 2)
    assert upcoming(s, now, 2) == [
        Interval(utc(2024, 6, 1), utc(2024, 6, 2)),
        Interval(utc(2024, 6, 2), utc(2024, 6, 3)),
    ]


def test_end_date_is_the_last_logical_date() -> None:
    s = sched(cron="@daily", end_date=utc(2024, 1, 3), catchup=True)
    later = utc(2024, 2, 1)
    assert starts(intervals(s, until=later)) == days(1, 2, 3)  # the last one ends Jan 4
    assert next_due(s, later) is None
    assert upcoming(s, later, 5) == []
    assert starts(upcoming(s, utc(2024, 1, 2, 12), 5)) == days(2, 3)
    plan = plan_due_runs(s, Execution(), now=later, runs=[RunState(utc(2024, 1, 3), "succeeded")])
    assert plan == Plan(next_due=None)
    # Without catchup the latest due interval is the last one, never one past end_date.
    off = sched(cron="@daily", end_date=utc(2024, 1, 3, 12))
    assert starts(plan_due_runs(off, Execution(), now=later, runs=[]).start) == days(3)


def test_next_due_and_upcoming() -> None:
    s = sched(cron="0 9 * * *")
    assert next_due(s, utc(2024, 3, 1, 8)) == utc(2024, 3, 1, 9)
    assert next_due(s, utc(2024, 3, 1, 9)) == utc(2024, 3, 2, 9)  # due now is not "next"
    assert upcoming(s, utc(2024, 3, 1, 10), 3) == [
        Interval(utc(2024, 3, 1, 9), utc(2024, 3, 2, 9)),
        Interval(utc(2024, 3, 2, 9), utc(2024, 3, 3, 9)),
        Interval(utc(2024, 3, 3, 9), utc(2024, 3, 4, 9)),
    ]


def test_naive_datetimes_are_refused() -> None:
    s = sched()
    with pytest.raises(ValueError, match="timezone-aware"):
        next_due(s, datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        intervals(s, until=datetime(2024, 1, 1))
    with pytest.raises(ValueError, match="timezone-aware"):
        plan_due_runs(
            s, Execution(), now=utc(2024, 1, 3), runs=[RunState(datetime(2024, 1, 1), "failed")]
        )


# -- time zones and DST --------------------------------------------------------------------


def test_daily_at_nine_in_berlin_is_eight_utc_in_winter_and_seven_in_summer() -> None:
    s = sched(cron="0 9 * * *", timezone="Europe/Berlin")
    assert manual_logical_date(s, utc(2024, 1, 16, 12)) == utc(2024, 1, 15, 8)
    assert manual_logical_date(s, utc(2024, 7, 16, 12)) == utc(2024, 7, 15, 7)
    assert [i.end for i in upcoming(s, utc(2024, 3, 29, 12), 3)] == [
        utc(2024, 3, 30, 8),
        utc(2024, 3, 31, 7),  # the day clocks go forward
        utc(2024, 4, 1, 7),
    ]


def test_daily_in_a_time_zone_fires_at_local_midnight_and_dst_days_last_23_or_25_hours() -> None:
    s = sched(cron="@daily", timezone="Europe/Berlin")
    spring = upcoming(s, utc(2024, 3, 30, 12), 2)
    assert spring[0] == Interval(utc(2024, 3, 29, 23), utc(2024, 3, 30, 23))
    assert spring[1] == Interval(utc(2024, 3, 30, 23), utc(2024, 3, 31, 22))  # 23 hours
    autumn = upcoming(s, utc(2024, 10, 27, 12), 1)
    assert autumn == [Interval(utc(2024, 10, 26, 22), utc(2024, 10, 27, 23))]  # 25 hours
    for interval in spring + autumn:
        assert interval.start.astimezone(BERLIN).time().isoformat() == "00:00:00"


def test_nonexistent_local_time_fires_when_the_clocks_jump() -> None:
    # 02:30 does not exist in Berlin on 2024-03-31 (02:00 CET -> 03:00 CEST).
    got = fires("30 2 * * *", "Europe/Berlin", utc(2024, 3, 29, 12), 3)
    assert [t.astimezone(BERLIN).isoformat() for t in got] == [
        "2024-03-30T02:30:00+01:00",
        "2024-03-31T03:00:00+02:00",
        "2024-04-01T02:30:00+02:00",
    ]
    # New York, 2024-03-10 (02:00 EST -> 03:00 EDT).
    got = fires("30 2 * * *", "America/New_York", utc(2024, 3, 9, 12), 2)
    assert got == [utc(2024, 3, 10, 7), utc(2024, 3, 11, 6, 30)]
    # Several skipped times of one day collapse into the one jump.
    got = fires("0,30 2 * * *", "Europe/Berlin", utc(2024, 3, 30, 12), 3)
    assert got == [utc(2024, 3, 31, 1), utc(2024, 4, 1, 0), utc(2024, 4, 1, 0, 30)]


def test_ambiguous_local_time_fires_once_at_its_first_occurrence() -> None:
    # Berlin 2024-10-27: 03:00 CEST -> 02:00 CET, so 02:30 happens twice.
    got = fires("30 2 * * *", "Europe/Berlin", utc(2024, 10, 26, 12), 2)
    assert [t.astimezone(BERLIN).isoformat() for t in got] == [
        "2024-10-27T02:30:00+02:00",
        "2024-10-28T02:30:00+01:00",
    ]
    # New York 2024-11-03: 02:00 EDT -> 01:00 EST, so 01:30 happens twice.
    got = fires("30 1 * * *", "America/New_York", utc(2024, 11, 2, 12), 2)
    assert got == [utc(2024, 11, 3, 5, 30), utc(2024, 11, 4, 6, 30)]


@pytest.mark.parametrize(
    ("tz", "day", "hours"),
    [
        ("Europe/Berlin", datetime(2024, 3, 31), 23),
        ("Europe/Berlin", datetime(2024, 10, 27), 25),
        ("America/New_York", datetime(2024, 3, 10), 23),
        ("America/New_York", datetime(2024, 11, 3), 25),
    ],
)
def test_hourly_across_dst_fires_every_real_hour(tz: str, day: datetime, hours: int) -> None:
    zone = ZoneInfo(tz)
    begin = day.replace(tzinfo=zone).astimezone(UTC)
    finish = (day + D).replace(tzinfo=zone).astimezone(UTC)
    s = sched(cron="@hourly", timezone=tz, catchup=True)
    got = list(intervals(s, after=begin - timedelta(seconds=1), until=finish))
    assert len(got) == hours
    assert starts(got) == [begin + k * H for k in range(hours)]  # no UTC instant twice or missing
    assert all(i.end - i.start == H for i in got)
    # A quarter-hourly schedule: 4 per real hour.
    quarter = sched(cron="*/15 * * * *", timezone=tz)
    assert (
        len(list(intervals(quarter, after=begin - timedelta(seconds=1), until=finish))) == 4 * hours
    )


def test_midnight_dst_transition() -> None:
    # Santiago: 2024-09-08 00:00 does not exist (24:00 -04 -> 01:00 -03); 2024-04-07 has
    # 23:00-24:00 twice (24:00 -03 -> 23:00 -04).
    santiago = ZoneInfo("America/Santiago")
    got = fires("@daily", "America/Santiago", utc(2024, 9, 6, 12), 3)
    assert [t.astimezone(santiago).isoformat() for t in got] == [
        "2024-09-07T00:00:00-04:00",
        "2024-09-08T01:00:00-03:00",
        "2024-09-09T00:00:00-03:00",
    ]
    got = fires("30 23 * * *", "America/Santiago", utc(2024, 4, 5, 12), 3)
    assert [t.astimezone(santiago).isoformat() for t in got] == [
        "2024-04-05T23:30:00-03:00",
        "2024-04-06T23:30:00-03:00",  # first occurrence only
        "2024-04-07T23:30:00-04:00",
    ]


def test_fixed_time_fires_from_inside_a_repeated_hour() -> None:
    # 06:36Z is 01:36 EST, the second pass of New York's repeated hour; the 01:40 of that
    # night fired at its first occurrence (05:40Z), so the next fire is 02:00 EST.
    cron = parse_cron("*/20 1-3 * * *", "America/New_York")
    assert cron.next_fire(utc(2024, 11, 3, 6, 36)) == utc(2024, 11, 3, 7)
    assert cron.prev_fire(utc(2024, 11, 3, 7)) == utc(2024, 11, 3, 5, 40)
    assert cron.next_fire(utc(2024, 11, 3, 5, 36)) == utc(2024, 11, 3, 5, 40)


def test_prev_fire_is_the_inverse_of_next_fire() -> None:
    cron = parse_cron("30 2 * * *", "Europe/Berlin")
    assert cron.prev_fire(utc(2024, 3, 31, 1)) == utc(2024, 3, 30, 1, 30)
    assert cron.prev_fire(utc(2024, 3, 31, 1, 0, 1)) == utc(2024, 3, 31, 1)
    assert cron.fires_at(utc(2024, 3, 31, 1))
    assert not cron.fires_at(utc(2024, 3, 31, 0, 30))
    yearly = parse_cron("@yearly", "Asia/Kolkata")
    assert yearly.prev_fire(utc(2024, 6, 1)) == utc(2023, 12, 31, 18, 30)


# -- manual runs ---------------------------------------------------------------------------


def test_manual_run_uses_the_latest_complete_interval() -> None:
    s = sched(cron="@daily")
    assert manual_interval(s, utc(2024, 1, 5, 10)) == Interval(utc(2024, 1, 4), utc(2024, 1, 5))
    assert manual_logical_date(s, utc(2024, 1, 5)) == utc(2024, 1, 4)  # just due
    # Bounds and ``enabled`` do not matter for a manual run.
    bounded = sched(cron="@daily", start_date=utc(2025, 1, 1), enabled=False)
    assert manual_logical_date(bounded, utc(2024, 1, 5, 10)) == utc(2024, 1, 4)
    berlin = sched(cron="@daily", timezone="Europe/Berlin")
    assert manual_interval(berlin, utc(2024, 7, 2, 10)) == Interval(
        utc(2024, 6, 30, 22), utc(2024, 7, 1, 22)
    )


# -- planning ------------------------------------------------------------------------------

NOW = utc(2024, 1, 5, 10)  # Jan 1-4 are due under @daily from Jan 1


def plan(
    runs: list[tuple[datetime, str]] | None = None,
    *,
    now: datetime = NOW,
    execution: Execution | None = None,
    **schedule: object,
) -> Plan:
    schedule.setdefault("cron", "@daily")
    return plan_due_runs(
        sched(**schedule),
        execution or Execution(),
        now=now,
        runs=[RunState(d, s) for d, s in runs or []],
    )


def test_catchup_off_starts_only_the_latest_due_interval() -> None:
    p = plan(catchup=False)
    assert p.start == (Interval(utc(2024, 1, 4), utc(2024, 1, 5)),)
    assert p.skip == () and p.blocked == ()  # older missed ones are not recorded
    assert p.next_due == utc(2024, 1, 6)


def test_catchup_on_starts_every_missed_interval_oldest_first() -> None:
    assert starts(plan(catchup=True).start) == days(1, 2, 3, 4)
    # ... after the latest run.
    assert starts(plan([(utc(2024, 1, 2), "succeeded")], catchup=True).start) == days(3, 4)


def test_nothing_due_between_intervals() -> None:
    assert plan([(utc(2024, 1, 4), "succeeded")], catchup=True).start == ()
    assert plan([(utc(2024, 1, 4), "succeeded")], catchup=False).start == ()


@pytest.mark.parametrize(
    "status", ["running", "succeeded", "partial", "failed", "timed_out", "skipped_late"]
)
@pytest.mark.parametrize("catchup", [False, True])
def test_a_logical_date_with_a_run_is_never_started_again(status: str, catchup: bool) -> None:
    p = plan([(utc(2024, 1, 4), status)], catchup=catchup)
    assert p.start == () and p.skip == () and p.blocked == ()


def test_gaps_before_the_latest_run_are_not_backfilled() -> None:
    p = plan([(utc(2024, 1, 1), "failed"), (utc(2024, 1, 3), "succeeded")], catchup=True)
    assert starts(p.start) == days(4)


def test_max_active_runs_limit_one_with_one_running_starts_nothing() -> None:
    runs = [(utc(2024, 1, 1), "running")]
    p = plan(runs, catchup=True, execution=Execution(max_active_runs=1))
    assert p.start == ()
    assert p.active == 1
    assert starts([b.interval for b in p.blocked]) == days(2, 3, 4)
    assert {b.cause for b in p.blocked} == {"max_active_runs"}
    assert "max_active_runs=1" in p.blocked[0].reason
    # The same without catchup: the latest interval waits.
    p = plan(runs, catchup=False, execution=Execution(max_active_runs=1))
    assert p.start == () and starts([b.interval for b in p.blocked]) == days(4)


def test_max_active_runs_three_with_catchup_starts_two_more_oldest_first() -> None:
    p = plan([(utc(2024, 1, 1), "running")], catchup=True, execution=Execution(max_active_runs=3))
    assert starts(p.start) == days(2, 3)
    assert [(b.interval.start, b.cause) for b in p.blocked] == [
        (utc(2024, 1, 4), "max_active_runs")
    ]


def test_max_active_runs_counts_only_active_statuses() -> None:
    runs = [(utc(2023, 12, 30), "failed"), (utc(2023, 12, 31), "succeeded")]
    assert "failed" not in ACTIVE_STATUSES
    p = plan(runs, catchup=True, execution=Execution(max_active_runs=2))
    assert p.active == 0 and starts(p.start) == days(1, 2)


def test_depends_on_past_blocks_after_a_failure() -> None:
    dop = Execution(depends_on_past=True)
    p = plan([(utc(2024, 1, 3), "failed")], execution=dop)
    assert p.start == ()
    [blocked] = p.blocked
    assert blocked.interval.start == utc(2024, 1, 4)
    assert blocked.cause == "depends_on_past"
    assert "2024-01-03T00:00:00+00:00" in blocked.reason and "'failed'" in blocked.reason
    assert starts(plan([(utc(2024, 1, 3), "succeeded")], execution=dop).start) == days(4)
    assert "still running" in plan([(utc(2024, 1, 3), "running")], execution=dop).blocked[0].reason
    assert plan([(utc(2024, 1, 3), "partial")], execution=dop).start == ()


def test_depends_on_past_lets_the_first_run_ever_start() -> None:
    assert starts(plan([], execution=Execution(depends_on_past=True)).start) == days(4)
    assert starts(plan([], catchup=True, execution=Execution(depends_on_past=True)).start) == days(
        1
    )


def test_depends_on_past_with_catchup_runs_one_at_a_time() -> None:
    p = plan(
        [(utc(2024, 1, 1), "succeeded")], catchup=True, execution=Execution(depends_on_past=True)
    )
    assert starts(p.start) == days(2)
    assert [b.cause for b in p.blocked] == ["depends_on_past", "depends_on_past"]
    assert "2024-01-02T00:00:00+00:00) is still running" in p.blocked[0].reason
    assert "2024-01-03T00:00:00+00:00 has not run yet" in p.blocked[1].reason


def test_depends_on_past_looks_through_runs_skipped_as_late() -> None:
    dop = Execution(depends_on_past=True)
    ok = plan([(utc(2024, 1, 2), "succeeded"), (utc(2024, 1, 3), "skipped_late")], execution=dop)
    assert starts(ok.start) == days(4)
    bad = plan([(utc(2024, 1, 2), "failed"), (utc(2024, 1, 3), "skipped_late")], execution=dop)
    assert bad.start == () and "2024-01-02" in bad.blocked[0].reason


def test_depends_on_past_uses_the_last_run_of_a_logical_date() -> None:
    # A failed run resumed to success: the last one counts.
    runs = [(utc(2024, 1, 3), "failed"), (utc(2024, 1, 3), "succeeded")]
    assert starts(plan(runs, execution=Execution(depends_on_past=True)).start) == days(4)


def test_lateness_skips_runs_due_too_long_ago() -> None:
    # Jan 4's interval is due at Jan 5 00:00.
    assert starts(plan(now=utc(2024, 1, 5, 0, 30), max_lateness_minutes=60).start) == days(4)
    assert starts(plan(now=utc(2024, 1, 5, 1), max_lateness_minutes=60).start) == days(
        4
    )  # at the limit
    late = plan(now=utc(2024, 1, 5, 1, 0, 1), max_lateness_minutes=60)
    assert late.start == () and starts(late.skip) == days(4)


def test_lateness_with_catchup_skips_the_old_ones_and_runs_the_recent() -> None:
    p = plan(now=utc(2024, 1, 5, 0, 30), catchup=True, max_lateness_minutes=60)
    assert starts(p.skip) == days(1, 2, 3)
    assert starts(p.start) == days(4)


def test_lateness_wins_over_blocking() -> None:
    runs = [(utc(2024, 1, 1), "failed")]
    p = plan(
        runs,
        now=utc(2024, 1, 4, 0, 30),
        catchup=True,
        max_lateness_minutes=60,
        execution=Execution(depends_on_past=True, max_active_runs=1),
    )
    assert starts(p.skip) == days(2)
    assert starts([b.interval for b in p.blocked]) == days(3)


def test_disabled_schedule_plans_nothing() -> None:
    p = plan(enabled=False, catchup=True)
    assert p == Plan()


def test_run_states_in_any_time_zone_are_compared_as_instants() -> None:
    s = sched(cron="@daily", timezone="Europe/Berlin")
    local = datetime(2024, 1, 4, tzinfo=BERLIN)  # == 2024-01-03T23:00Z, the latest due
    p = plan_due_runs(
        s, Execution(), now=utc(2024, 1, 4, 23, 30), runs=[RunState(local, "succeeded")]
    )
    assert p.start == ()


class FakeLedger:
    """Runs of one pipeline; the simulated scheduler applies plans to it."""

    def __init__(self) -> None:
        self.runs: list[RunState] = []
        self.started_at: dict[datetime, datetime] = {}

    def apply(self, p: Plan, now: datetime, outcome: Callable[[datetime], str]) -> None:
        self.runs += [RunState(i.start, "skipped_late") for i in p.skip]
        for interval in p.start:
            self.started_at[interval.start] = now
            self.runs.append(RunState(interval.start, outcome(interval.start)))


@pytest.mark.parametrize("tz", ["UTC", "Europe/Berlin", "America/New_York"])
def test_cron_driven_scheduler_runs_each_interval_once_across_dst(tz: str) -> None:
    # `campaignkit run --scheduled` every 7 minutes for 3 days around the autumn change.
    s = sched(cron="@hourly", timezone=tz, start_date=utc(2024, 10, 26), max_lateness_minutes=30)
    ledger = FakeLedger()
    now = utc(2024, 10, 26, 0, 3)
    while now < utc(2024, 11, 5):
        p = plan_due_runs(s, Execution(max_active_runs=1), now=now, runs=ledger.runs)
        assert len(p.start) <= 1 and p.skip == ()
        ledger.apply(p, now, lambda _: "succeeded")
        now += timedelta(minutes=7)
    ran = [r.logical_date for r in ledger.runs]
    assert ran == sorted(set(ran))
    expected = starts(intervals(s, until=now))
    assert ran == expected[: len(ran)] and len(expected) - len(ran) <= 1
    assert all(
        ledger.started_at[i.start] - i.end < timedelta(minutes=7)
        for i in intervals(s, until=now)
        if i.start in ledger.started_at
    )


def test_scheduler_after_downtime_with_catchup_and_lateness() -> None:
    s = sched(cron="0 */6 * * *", catchup=True, max_lateness_minutes=180)
    ledger = FakeLedger()
    ledger.apply(
        plan_due_runs(s, Execution(), now=utc(2024, 1, 1, 6, 1), runs=[]),
        utc(2024, 1, 1, 6, 1),
        lambda _: "succeeded",
    )
    # Down until Jan 2 02:00: the intervals due at 12:00 and 18:00 on Jan 1 are past the
    # limit; the one due at midnight is 2 hours late, within it.
    now = utc(2024, 1, 2, 2)
    p = plan_due_runs(s, Execution(), now=now, runs=ledger.runs)
    assert starts(p.skip) == [utc(2024, 1, 1, 6), utc(2024, 1, 1, 12)]
    assert starts(p.start) == [utc(2024, 1, 1, 18)]
    ledger.apply(p, now, lambda _: "succeeded")
    assert plan_due_runs(s, Execution(), now=now, runs=ledger.runs) == Plan(
        next_due=utc(2024, 1, 2, 6)
    )


# -- properties ----------------------------------------------------------------------------

# expression -> (wall-clock predicate, hour field covers every hour)
ORACLE: dict[str, tuple[Callable[[datetime], bool], bool]] = {
    "@hourly": (lambda n: n.minute == 0, True),
    "*/15 * * * *": (lambda n: n.minute % 15 == 0, True),
    "30 * * 3,4,9,10,11 *": (lambda n: n.minute == 30 and n.month in (3, 4, 9, 10, 11), True),
    "10 * * * 0": (lambda n: n.minute == 10 and n.isoweekday() == 7, True),
    "@daily": (lambda n: (n.hour, n.minute) == (0, 0), False),
    "30 2 * * *": (lambda n: (n.hour, n.minute) == (2, 30), False),
    "30 1 * * *": (lambda n: (n.hour, n.minute) == (1, 30), False),
    "15,45 2,3 * * *": (lambda n: n.hour in (2, 3) and n.minute in (15, 45), False),
    "0 */2 * * *": (lambda n: n.minute == 0 and n.hour % 2 == 0, False),
    "*/20 1-3 * * *": (lambda n: 1 <= n.hour <= 3 and n.minute % 20 == 0, False),
    "0 9 * * 1-5": (lambda n: (n.hour, n.minute) == (9, 0) and n.weekday() < 5, False),
    "0 0 1,15 * 5": (
        lambda n: (n.hour, n.minute) == (0, 0) and (n.day in (1, 15) or n.weekday() == 4),
        False,
    ),
    "45 23 * * *": (lambda n: (n.hour, n.minute) == (23, 45), False),
}
# Zones with their 2024 transitions (approximate; examples land within a day or two).
ZONES = {
    "UTC": [utc(2024, 6, 1)],
    "Asia/Kolkata": [utc(2024, 6, 1)],
    "Europe/Berlin": [utc(2024, 3, 31, 1), utc(2024, 10, 27, 1)],
    "America/New_York": [utc(2024, 3, 10, 7), utc(2024, 11, 3, 6)],
    "America/Santiago": [utc(2024, 4, 7, 3), utc(2024, 9, 8, 4)],
    "Australia/Lord_Howe": [utc(2024, 4, 6, 15), utc(2024, 10, 5, 15, 30)],
    "Pacific/Chatham": [utc(2024, 4, 6, 14), utc(2024, 9, 28, 14)],
}
zone_and_anchor = st.sampled_from(sorted(ZONES)).flatmap(
    lambda tz: st.tuples(
        st.just(tz),
        st.sampled_from(ZONES[tz]),
        st.timedeltas(min_value=-2 * D, max_value=timedelta(0)),
    )
)


def brute_force(expr: str, tz: str, a: datetime, b: datetime) -> list[datetime]:
    """The definition, minute by minute in UTC (every zone here moves in whole minutes)."""
    matches, every_hour = ORACLE[expr]
    zone = ZoneInfo(tz)
    out = []
    u = a - 2 * D
    reached = u.astimezone(zone).replace(tzinfo=None)  # the latest wall time shown so far
    while u < b:
        u += timedelta(minutes=1)
        wall = u.astimezone(zone).replace(tzinfo=None)
        if every_hour:
            fire = matches(wall)
        else:  # fires when the clock first reads a matching time or later
            fire = False
            n = wall
            while n > reached:
                fire = fire or matches(n)
                n -= timedelta(minutes=1)
        reached = max(reached, wall)
        if fire and a <= u < b:
            out.append(u)
    return out


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(sorted(ORACLE)), zone_and_anchor)
def test_fire_times_match_the_definition_around_dst(
    expr: str, zone: tuple[str, datetime, timedelta]
) -> None:
    tz, anchor, shift = zone
    a = (anchor + shift).replace(second=0, microsecond=0)
    b = a + 2 * D
    cron = parse_cron(expr, tz)
    assert cron.every_hour == ORACLE[expr][1]
    got = []
    t = cron.next_fire(a - timedelta(microseconds=1))
    while t < b:
        got.append(t)
        t = cron.next_fire(t)
    assert got == brute_force(expr, tz, a, b)
    for earlier, later in itertools.pairwise(got):
        assert cron.prev_fire(later) == earlier
    if got:
        assert cron.prev_fire(got[0]) < a
        assert cron.prev_fire(b) == got[-1]
    # From any instant near the transition (not only fire times), next and prev agree
    # with the definition.
    for k in range(-17, 18):  # every 7m13.5s for two hours either side of the anchor
        x = anchor + k * timedelta(minutes=7, seconds=13, microseconds=500_000)
        if not a <= x < b:
            continue
        following = [t for t in got if t > x]
        if following:
            assert cron.next_fire(x) == following[0]
        preceding = [t for t in got if t < x]
        if preceding:
            assert cron.prev_fire(x) == preceding[-1]


instants = st.datetimes(
    min_value=datetime(2023, 1, 1), max_value=datetime(2026, 1, 1), timezones=st.just(UTC)
)


@st.composite
def schedules(draw: st.DrawFn) -> Schedule:
    tz, anchor, shift = draw(zone_and_anchor)
    start = anchor + shift - draw(st.timedeltas(min_value=timedelta(0), max_value=3 * D))
    end = draw(st.none() | st.timedeltas(min_value=timedelta(minutes=1), max_value=8 * D))
    return Schedule(
        cron=draw(st.sampled_from(sorted(ORACLE))),
        timezone=tz,
        start_date=start,
        end_date=None if end is None else start + end,
        catchup=draw(st.booleans()),
        max_lateness_minutes=draw(st.none() | st.integers(1, 3000)),
    )


@settings(max_examples=150, deadline=None)
@given(
    schedules(), st.timedeltas(min_value=-D, max_value=6 * D), st.none() | st.timedeltas(-D, 6 * D)
)
def test_intervals_properties(
    s: Schedule, until_shift: timedelta, after_shift: timedelta | None
) -> None:
    until = s.start_date + until_shift
    after = None if after_shift is None else s.start_date + after_shift
    got = list(intervals(s, after=after, until=until))
    cron = parse_cron(s.cron, s.timezone)
    for prev, cur in itertools.pairwise(got):
        assert prev.end == cur.start  # contiguous
    for i in got:
        assert i.start < i.end <= until
        assert i.start >= s.start_date
        assert s.end_date is None or i.start <= s.end_date
        assert after is None or i.start > after
        assert cron.fires_at(i.start) and cron.next_fire(i.start) == i.end
    # Complete: nothing left out at either end.
    tick = timedelta(microseconds=1)
    first = cron.next_fire(
        max(s.start_date - tick, after if after is not None else s.start_date - tick)
    )
    if got:
        assert got[0].start == first
    following = got[-1].end if got else first
    assert cron.next_fire(following) > until or (s.end_date is not None and following > s.end_date)


STATUSES = ["running", "succeeded", "partial", "failed", "timed_out", "skipped_late"]


@settings(max_examples=150, deadline=None)
@given(
    schedules(),
    st.timedeltas(min_value=-D, max_value=6 * D),
    st.data(),
    st.none() | st.integers(1, 4),
    st.booleans(),
)
def test_plan_properties(
    s: Schedule, now_shift: timedelta, data: st.DataObject, limit: int | None, depends: bool
) -> None:
    now = s.start_date + now_shift
    due = list(intervals(s, until=now))
    recorded = data.draw(st.lists(st.sampled_from(due), unique=True)) if due else []
    runs = [RunState(i.start, data.draw(st.sampled_from(STATUSES))) for i in sorted(recorded)]
    execution = Execution(max_active_runs=limit, depends_on_past=depends)
    p = plan_due_runs(s, execution, now=now, runs=runs)
    have = {r.logical_date for r in runs}
    planned = [*p.start, *p.skip, *(b.interval for b in p.blocked)]
    assert len(planned) == len({i.start for i in planned})
    for i in planned:
        assert i in due  # a real due interval of the schedule
        assert i.start not in have
        assert not have or i.start > max(have)
    active = sum(r.status in ACTIVE_STATUSES for r in runs)
    assert p.active == active
    if limit is not None:
        assert len(p.start) <= max(0, limit - active)
    assert list(p.start) == sorted(p.start) and list(p.skip) == sorted(p.skip)
    if not s.catchup:
        assert len(planned) <= 1
        if planned:
            assert planned[0] == due[-1]
    if s.max_lateness_minutes is not None:
        limit_late = timedelta(minutes=s.max_lateness_minutes)
        assert all(now - i.end > limit_late for i in p.skip)
        assert all(now - i.end <= limit_late for i in p.start)
    else:
        assert p.skip == ()
    assert p.next_due == next_due(s, now)
