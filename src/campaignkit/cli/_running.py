"""Sending: ``run`` (one logical date, or what the schedule says is due)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from .._models import RunReport, RunStatus
from .._pipeline import (
    OpenedRun,
    Pipeline,
)
from .._schedule import manual_logical_date
from ._campaign import (
    LATEST,
    build_pipeline,
    find_run,
    interrupt_message,
    prepare,
    record_sandbox,
    sandbox_journal,
    sandboxed_configs,
)
from ._dry_run import dry_run_plan
from ._group import EPILOG, main
from ._options import (
    CONFIG_PATH,
    DATETIME,
    block_option,
    json_option,
    output_dir_option,
    retry_delay_option,
    sandbox_option,
    sigterm_interrupts,
)
from ._output import (
    EXIT_INPUT_ERROR,
    EXIT_OK,
    Where,
    fail,
    format_utc,
    input_errors,
    is_quiet,
    make_console,
    report_exit,
)
from ._progress import RunProgress, drive
from ._receipt_lines import attach_receipts, settle_receipts
from ._schedules import next_due_line, scheduled_dict, skipped_line
from ._summary import emit_report, print_run_summary, quiet_problems, run_doubts, run_hints

# -- run -----------------------------------------------------------------------------------


@main.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@json_option
@output_dir_option
@click.option(
    "--logical-date",
    type=DATETIME,
    help="The run's logical date, ISO 8601 (no offset: UTC). Default: the latest "
    "complete schedule interval, as a manual trigger.",
)
@click.option(
    "--force",
    is_flag=True,
    help="Start a new run even if the logical date has one (which would otherwise be "
    "reported, or resumed if unfinished, and nothing sent twice).",
)
@click.option("--run-id", help="The new run's id (default: <pipeline>__<logical date>[__<n>]).")
@click.option(
    "--scheduled",
    is_flag=True,
    help="Run whatever the schedule says is due now (catchup, lateness, "
    "max_active_runs, depends_on_past), then exit; for cron.",
)
@click.option(
    "--limit",
    type=click.IntRange(min=1),
    metavar="N",
    help="A canary: send to the first N eligible recipients of each channel only (status "
    "canary). Running the same logical date again sends the rest, never these twice.",
)
@click.option(
    "--dry-run",
    is_flag=True,
    help="Plan the run and send nothing: extraction, audience selection and rendering "
    "as a run would do them; prints per channel the eligible count, every skip reason, "
    "messages that would fail, SMS segments, the estimated cost and samples, and writes "
    "the plan as JSON. Records no run and needs no token.",
)
@click.option(
    "--samples",
    type=click.IntRange(min=0),
    metavar="N",
    help="With --dry-run: rendered messages shown (and kept in the plan) per channel (default 3).",
)
@click.option(
    "--plan-output",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="With --dry-run: write the plan there (default: <output_dir>/plan-<timestamp>.json).",
)
@sandbox_option
@retry_delay_option
@block_option
def run(
    config: Path,
    as_json: bool,
    output_dir: Path | None,
    logical_date: datetime | None,
    force: bool,
    run_id: str | None,
    scheduled: bool,
    limit: int | None,
    dry_run: bool,
    samples: int | None,
    plan_output: Path | None,
    use_sandbox: bool,
    retry_delay: float | None,
    block: tuple[str, ...],
) -> None:
    """Run the campaign CONFIG for one logical date: extract the segment into the
    ledger, decide every channel's audience, then send every enabled channel in
    parallel.

    A logical date is sent once: if the ledger already has a finished run for it, that
    run is reported and nothing is sent; an unfinished one (or a canary) is resumed.
    Ctrl-C or SIGTERM lets the requests in flight finish, records them and exits 3.
    """
    _check_run_options(
        run_id=run_id,
        scheduled=scheduled,
        force=force,
        logical_date=logical_date,
        limit=limit,
        dry_run=dry_run,
        samples=samples,
        plan_output=plan_output,
    )
    configs, pm = prepare([config], retry_delay=retry_delay, use_sandbox=use_sandbox, block=block)
    with (
        sigterm_interrupts("interrupted before sending started; nothing was sent"),
        sandboxed_configs(configs, use_sandbox, pm) as (applied, env, sandbox),
    ):
        cfg = applied[0]
        if dry_run:
            code = dry_run_plan(
                cfg,
                pm,
                env,
                config,
                as_json=as_json,
                samples=3 if samples is None else samples,
                plan_output=plan_output,
                output_dir=output_dir,
                sandboxed=use_sandbox,
            )
            raise SystemExit(code)
        pipeline = build_pipeline(cfg, pm, env, rehearsal=use_sandbox)
        if scheduled:
            code = _run_scheduled(pipeline, config, sandbox, as_json=as_json)
        else:
            code = _run_once(
                pipeline,
                config,
                sandbox,
                as_json=as_json,
                output_dir=output_dir,
                logical_date=logical_date,
                force=force,
                run_id=run_id,
                limit=limit,
            )
    raise SystemExit(code)


def _check_run_options(
    *,
    run_id: str | None,
    scheduled: bool,
    force: bool,
    logical_date: datetime | None,
    limit: int | None,
    dry_run: bool,
    samples: int | None,
    plan_output: Path | None,
) -> None:
    """The usage errors of ``run``: options that contradict each other."""
    if run_id == LATEST:
        raise click.BadParameter(
            f"{LATEST!r} is reserved: where a command takes a RUN_ID it means the newest run",
            param_hint="--run-id",
        )
    if scheduled and (force or logical_date is not None or run_id is not None or limit is not None):
        raise click.UsageError(
            "--scheduled runs what the schedule says is due; it takes no --force, "
            "--logical-date, --run-id or --limit"
        )
    if dry_run:
        clashing = [
            name
            for name, given in (
                ("--scheduled", scheduled),
                ("--force", force),
                ("--logical-date", logical_date is not None),
                ("--run-id", run_id is not None),
                ("--limit", limit is not None),
            )
            if given
        ]
        if clashing:
            raise click.UsageError(
                f"--dry-run plans a run without recording one; it takes no {', '.join(clashing)}"
            )
    else:
        for name, value in (("--samples", samples), ("--plan-output", plan_output)):
            if value is not None:
                raise click.UsageError(f"{name} needs --dry-run")


def _run_once(
    pipeline: Pipeline,
    config: Path,
    sandbox: Any,
    *,
    as_json: bool,
    output_dir: Path | None,
    logical_date: datetime | None,
    force: bool,
    run_id: str | None,
    limit: int | None = None,
) -> int:
    where = Where(config, sandbox is not None)
    with input_errors(config):
        logical = logical_date or manual_logical_date(pipeline.schedule, datetime.now(UTC))
    keeps_ledger = pipeline.execution.ledger
    if limit is not None and not keeps_ledger:
        # Without a ledger the full run could not know whom the canary messaged.
        fail(
            f"{config}: execution.ledger: --limit needs the ledger (execution.ledger = "
            f"false): the full run would message the canary's recipients again",
            EXIT_INPUT_ERROR,
        )
    out = make_console()
    progress = RunProgress(
        out,
        [c.name for c in pipeline.enabled_channels],
        show=out.is_terminal and not as_json and not is_quiet(),
    )
    receiving = attach_receipts(sandbox, pipeline)
    with sandbox_journal(sandbox, pipeline, output_dir):
        report = drive(
            lambda: pipeline.run(
                logical_date=logical,
                force=force,
                run_id=run_id,
                output_dir=output_dir,
                progress=progress,
                on_extracted=progress.on_extracted,
                limit=limit,
                on_opened=progress.on_opened,
            ),
            progress,
            config=config,
            interrupted=lambda: interrupt_message(where, find_run(pipeline, logical_date=logical)),
        )
    before = _run_once_notes(report, progress.opened, logical, limit)
    after = record_sandbox(sandbox) if sandbox else []
    if receiving:
        after += settle_receipts(sandbox, pipeline, report.run_id)
    if as_json and str(report.status) == RunStatus.CANARY.value:
        after += run_hints(report, where, logical_date=logical)[:1]  # stdout stays pure JSON
    return emit_report(
        report,
        as_json=as_json,
        where=where,
        ledger=keeps_ledger,
        before=before,
        after=after,
        logical_date=logical,
        doubts=run_doubts(pipeline, report),
    )


def _run_once_notes(
    report: RunReport, opened: OpenedRun | None, logical: datetime, limit: int | None
) -> list[str]:
    """What ``run`` says before the summary: the logical date had already run, or its
    canary or unfinished run was resumed."""
    before = []
    if report.replayed:
        before.append(
            f"Already ran: nothing was sent now. Logical date {format_utc(logical)} has run "
            f"{report.run_id} ({report.status.value}); --force starts a new run."
        )
    elif opened is not None and opened.resumed and opened.earlier_status == RunStatus.CANARY:
        before.append(
            f"Canary:    logical date {format_utc(logical)} had canary run {opened.run_id}; "
            f"its recipients were not messaged again"
            + (f", and at most {limit} more per channel were now." if limit else ".")
        )
    elif opened is not None and opened.resumed and opened.earlier_status is not None:
        before.append(
            f"Resumed:   logical date {format_utc(logical)} had an unfinished run "
            f"{opened.run_id} ({opened.earlier_status}); only what it still owed was sent."
        )
    return before


def _run_scheduled(pipeline: Pipeline, config: Path, sandbox: Any, *, as_json: bool) -> int:
    where = Where(config, sandbox is not None)
    progress = RunProgress(make_console(), [], show=False)
    with sandbox_journal(sandbox, pipeline, None):
        result = drive(
            lambda: pipeline.run_scheduled(progress=progress),
            progress,
            config=config,
            interrupted=lambda: interrupt_message(where, find_run(pipeline)),
        )
    code = max((report_exit(r) for r in result.reports), default=EXIT_OK)
    notes = []
    if sandbox is not None:
        notes = record_sandbox(sandbox)
    if as_json:
        click.echo(json.dumps(scheduled_dict(result), indent=2))
        err = make_console(stderr=True)
        for note in notes:
            err.print(note)
        return code
    out = make_console()
    if is_quiet():
        for report in result.reports:
            quiet_problems(report)
            out.print(
                f"Status: {report.status.value} (exit {report_exit(report)}): run {report.run_id}"
            )
        out.print(f"Started {len(result.reports)} run(s) (exit {code})")
        return code
    for report in result.reports:
        print_run_summary(
            out,
            report,
            where=where,
            ledger=pipeline.execution.ledger,
            doubts=run_doubts(pipeline, report),
        )
        out.print(f"Status: {report.status.value} (exit {report_exit(report)})")
        out.print()
    for interval in result.skipped:
        out.print(skipped_line(interval, pipeline.schedule))
    for blocked in result.blocked:
        out.print(f"Blocked:   logical date {format_utc(blocked.interval.start)}: {blocked.reason}")
    if not (result.reports or result.skipped or result.blocked):
        out.print("Nothing due.")
    out.print(next_due_line(pipeline, result.next_due))
    for note in notes:
        out.print(note)
    out.print(f"Started {len(result.reports)} run(s) (exit {code})")
    return code


# -- resume and retry-failed ---------------------------------------------------------------
