"""``schedule`` and ``scheduler``: the campaign's schedule and the long-running loop."""

from __future__ import annotations

import json
import sys
import time
import zoneinfo
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich import box
from rich.table import Table

from .._config import Schedule
from .._ledger import (
    RunRecord,
)
from .._models import (
    RunReport,
)
from .._pipeline import (
    Pipeline,
    ScheduledRuns,
)
from .._redact import redact
from .._schedule import Interval, Plan, plan_due_runs, upcoming
from .._states import ACTIVE_STATUSES, UNFINISHED_STATUSES
from ..exceptions import CampaignKitError
from ._campaign import build_pipeline, look, open_ledger, prepare, sandboxed_configs
from ._group import EPILOG, main
from ._options import (
    CONFIG_PATH,
    DATETIME,
    block_option,
    retry_delay_option,
    sandbox_ledger_option,
    sandbox_option,
    sigterm_interrupts,
)
from ._output import (
    EXIT_OK,
    Where,
    brief_counts,
    describe_error,
    format_local,
    format_utc,
    input_errors,
    iso,
    log,
    make_console,
)


def scheduled_dict(result: ScheduledRuns) -> dict[str, Any]:
    return {
        "reports": [r.to_dict() for r in result.reports],
        "skipped": [_interval_dict(i) for i in result.skipped],
        "blocked": [
            {**_interval_dict(b.interval), "cause": b.cause, "reason": b.reason}
            for b in result.blocked
        ],
        "next_due": iso(result.next_due),
    }


def _interval_dict(interval: Interval) -> dict[str, Any]:
    return {"logical_date": iso(interval.start), "due": iso(interval.end)}


def skipped_line(interval: Interval, schedule: Schedule) -> str:
    return (
        f"Skipped:   logical date {format_utc(interval.start)}: "
        f"due at {format_utc(interval.end)}, more "
        f"than max_lateness_minutes ({schedule.max_lateness_minutes:g}) ago; recorded as "
        f"skipped_late, nothing sent"
    )


def next_due_line(pipeline: Pipeline, next_due: datetime | None) -> str:
    schedule = pipeline.schedule
    if not schedule.enabled:
        return "Next due:  never (schedule.enabled = false)"
    if next_due is None:
        return "Next due:  none (the schedule's end_date has passed)"
    local = "" if schedule.timezone == "UTC" else f" ({format_local(next_due, schedule.timezone)})"
    return f"Next due:  {format_utc(next_due)}{local}"


# -- schedule ------------------------------------------------------------------------------


def _describe_schedule(schedule: Schedule) -> str:
    parts = [f"cron {schedule.cron!r} in {schedule.timezone}"]
    parts.append(f"catchup {'on' if schedule.catchup else 'off'}")
    parts.append(f"from {format_utc(schedule.start_date)}")
    if schedule.end_date is not None:
        parts.append(f"until {format_utc(schedule.end_date)}")
    if schedule.max_lateness_minutes is not None:
        parts.append(f"max lateness {schedule.max_lateness_minutes:g} min")
    if not schedule.enabled:
        parts.append("DISABLED")
    return ", ".join(parts)


def _schedule_dict(
    pipeline: Pipeline,
    now: datetime,
    plan: Plan,
    orphans: Sequence[RunRecord],
    upcoming_intervals: Sequence[Interval],
) -> dict[str, Any]:
    """``schedule --json``: the schedule, what is due now, the upcoming logical dates."""
    sched = pipeline.schedule
    zone = sched.timezone
    return {
        "pipeline": pipeline.name,
        "now": iso(now),
        "schedule": {
            "enabled": sched.enabled,
            "cron": sched.cron,
            "timezone": zone,
            "catchup": sched.catchup,
            "start_date": iso(sched.start_date),
            "end_date": iso(sched.end_date),
            "max_lateness_minutes": sched.max_lateness_minutes,
        },
        "due_now": {
            "resume": [r.run_id for r in orphans],
            "start": [_interval_dict(i) for i in plan.start],
            "skip": [_interval_dict(i) for i in plan.skip],
            "blocked": [
                {**_interval_dict(b.interval), "cause": b.cause, "reason": b.reason}
                for b in plan.blocked
            ],
        },
        "upcoming": [
            {
                **_interval_dict(i),
                "due_local": i.end.astimezone(zoneinfo.ZoneInfo(zone)).isoformat(),
            }
            for i in upcoming_intervals
        ],
    }


@main.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1, max=1000),
    default=5,
    show_default=True,
    help="How many upcoming logical dates.",
)
@click.option(
    "--at",
    type=DATETIME,
    help="Compute as of this moment (ISO 8601, no offset: UTC) instead of now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@sandbox_ledger_option
def schedule(
    config: Path, count: int, at: datetime | None, as_json: bool, use_sandbox: bool
) -> None:
    """Print what `campaignkit run CONFIG --scheduled` would do now, and the next
    logical dates of CONFIG's schedule with their due times in UTC and in the
    schedule's time zone. Sends nothing."""
    pipeline = look(config, use_sandbox)
    sched = pipeline.schedule
    now = at or datetime.now(UTC)
    with input_errors(config):
        upcoming_intervals = upcoming(sched, now, count)
        with open_ledger(pipeline, required=False) as ledger:
            known = ledger.find_runs(pipeline.name) if ledger is not None else []
        plan = plan_due_runs(sched, pipeline.execution, now=now, runs=known)
    orphans = [r for r in known if r.status in ACTIVE_STATUSES and not r.in_progress]
    zone = sched.timezone
    if as_json:
        data = _schedule_dict(pipeline, now, plan, orphans, upcoming_intervals)
        click.echo(json.dumps(data, indent=2))
        return
    out = make_console()
    out.print(f"{pipeline.name}: {_describe_schedule(sched)}")
    out.print(f"As of {format_utc(now)}, campaignkit run --scheduled would:")
    lines = [f"  resume  run {r.run_id} (its process is gone)" for r in orphans]
    lines += [
        f"  start   logical date {format_utc(i.start)} (due {format_utc(i.end)})"
        for i in plan.start
    ]
    lines += [
        f"  skip    logical date {format_utc(i.start)} (due {format_utc(i.end)}, too late)"
        for i in plan.skip
    ]
    lines += [
        f"  hold    logical date {format_utc(b.interval.start)}: {b.reason}" for b in plan.blocked
    ]
    for line in lines or ["  nothing (no interval is due that has not run)"]:
        out.print(line)
    if not upcoming_intervals:
        out.print("No upcoming logical date (the schedule's end_date has passed).")
        return
    table = Table(title="Upcoming", box=box.SIMPLE_HEAD)
    table.add_column("logical date (UTC)")
    table.add_column("due (UTC)")
    if zone != "UTC":
        table.add_column(f"due ({zone})")
    for interval in upcoming_intervals:
        local = [format_local(interval.end, zone)] if zone != "UTC" else []
        table.add_row(format_utc(interval.start), format_utc(interval.end), *local)
    out.print(table)


# -- scheduler -----------------------------------------------------------------------------


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _say(line: str, *, err: bool = False) -> None:
    click.echo(f"[{_stamp()}] {line}", err=err)
    (sys.stderr if err else sys.stdout).flush()


def _report_line(report: RunReport) -> str:
    channels = "; ".join(f"{n} {brief_counts(r)}" for n, r in report.channels.items())
    return f"run {report.run_id} {report.status.value}" + (f": {channels}" if channels else "")


@main.command(epilog=EPILOG)
@click.argument("configs", nargs=-1, required=True, type=CONFIG_PATH)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.05),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest sleep between checks (blocked runs are retried this often).",
)
@sandbox_option
@retry_delay_option
@block_option
def scheduler(
    configs: tuple[Path, ...],
    poll: float,
    use_sandbox: bool,
    retry_delay: float | None,
    block: tuple[str, ...],
) -> None:
    """Run the schedules of one or more campaigns until stopped: sleep until the next
    run is due, run what is due (as `run --scheduled`), repeat.

    SIGTERM or Ctrl-C lets the requests in flight finish, records them and exits 0; a
    run stopped that way is cancelled and can be resumed. Exits when no schedule has a
    logical date left.
    """
    paths = list({p.resolve(): p for p in configs}.values())
    loaded, pm = prepare(paths, retry_delay=retry_delay, use_sandbox=use_sandbox, block=block)
    started = datetime.now(UTC)
    pipelines: list[tuple[Path, Pipeline]] = []
    with (
        sigterm_interrupts(),
        sandboxed_configs(loaded, use_sandbox, pm) as (applied, env, _sandbox),
    ):
        try:
            for path, cfg in zip(paths, applied, strict=True):
                pipeline = build_pipeline(cfg, pm, env, rehearsal=use_sandbox)
                with input_errors(path):
                    pipeline.validate()
                pipelines.append((path, pipeline))
            names = ", ".join(p.name for _, p in pipelines)
            _say(f"scheduler started for {names}; checking at least every {poll:g}s")
            _schedule_loop(pipelines, poll)
        except KeyboardInterrupt:
            _say("stopping (requests in flight, if any, finished and were recorded)")
            for path, pipeline in pipelines:
                _report_unfinished(Where(path, use_sandbox), pipeline, since=started)
    _say("scheduler stopped")
    raise SystemExit(EXIT_OK)


def _schedule_loop(pipelines: Sequence[tuple[Path, Pipeline]], poll: float) -> None:
    """Check every pipeline, then sleep until the earliest next due time (at most
    ``poll``); return when no schedule has anything left."""
    last_said: dict[str, str] = {}
    while True:
        dues: list[datetime] = []
        live = False
        for path, pipeline in pipelines:
            try:
                result = pipeline.run_scheduled()
            except CampaignKitError as exc:
                _say(f"{pipeline.name}: error: {describe_error(exc, path)}", err=True)
                live = True
                continue
            except Exception as exc:
                log.debug("scheduled run failed", exc_info=True)
                _say(f"{pipeline.name}: error: {type(exc).__name__}: {redact(str(exc))}", err=True)
                live = True
                continue
            for report in result.reports:
                _say(f"{pipeline.name}: {_report_line(report)}")
            for interval in result.skipped:
                _say(f"{pipeline.name}: {skipped_line(interval, pipeline.schedule)}")
            held = "; ".join(f"{format_utc(b.interval.start)}: {b.reason}" for b in result.blocked)
            state = f"{held}|{result.next_due}"
            if last_said.get(pipeline.name) != state:  # say it when it changes
                last_said[pipeline.name] = state
                if held:
                    _say(f"{pipeline.name}: held back: {held}")
                when = next_due_line(pipeline, result.next_due).removeprefix("Next due:  ")
                _say(f"{pipeline.name}: next run due {when}")
            if result.next_due is not None:
                dues.append(result.next_due)
                live = True
            elif result.blocked:
                live = True
        if not live:
            _say("no schedule has a logical date left")
            return
        wait = poll
        if dues:
            until = (min(dues) - datetime.now(UTC)).total_seconds()
            wait = min(poll, max(until, 0.0) + 0.05)  # wake just after the due time
        time.sleep(wait)


def _report_unfinished(where: Where, pipeline: Pipeline, *, since: datetime) -> None:
    """Name the runs this scheduler left unfinished, with the command that resumes them."""
    try:
        with open_ledger(pipeline, required=False) as ledger:
            recent = ledger.list_runs(pipeline.name, 20) if ledger is not None else []
    except CampaignKitError:
        return
    for run in recent:
        if run.created_at < since and (run.finished_at is None or run.finished_at < since):
            continue
        if run.status in UNFINISHED_STATUSES:
            _say(
                f"{pipeline.name}: run {run.run_id} is {run.status}; "
                f"{where.command('resume', run.run_id)} sends the rest"
            )
