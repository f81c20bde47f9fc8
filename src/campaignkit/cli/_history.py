"""History and reports: ``runs``, ``report``."""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Generator, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, NoReturn

import attrs
import click
from rich import box
from rich.table import Table

from .._csvio import safe_csv_writer
from .._ledger import (
    Ledger,
    LedgerError,
    RunRecord,
)
from .._models import (
    ChannelResult,
    DeliveryResult,
    RunReport,
    RunStatus,
)
from .._pipeline import stored_report
from .._states import ACTIVE_STATUSES
from ..exceptions import ConfigError
from ._campaign import (
    channel_results,
    get_run,
    look,
    open_ledger,
    sandbox_hint,
    status_text,
)
from ._group import EPILOG, main
from ._options import CONFIG_PATH, sandbox_ledger_option
from ._output import (
    COUNTS,
    EXIT_OK,
    Where,
    brief_counts,
    columns_set,
    fits,
    format_minute,
    format_utc,
    input_errors,
    iso,
    make_console,
)
from ._receipt_lines import receipt_lines
from ._summary import doubts_from_counts, print_run_summary

_CSV_FIELDS = (
    "run_id",
    "channel",
    "recipient_id",
    "line",
    "address",
    "status",
    "reason",
    "provider_message_id",
    "attempts",
    "error_code",
    "error",
    "receipt",
)


def _run_dict(run: RunRecord, results: Mapping[str, ChannelResult]) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "logical_date": iso(run.logical_date),
        "status": run.status,
        "process_alive": run.in_progress if run.status in ACTIVE_STATUSES else None,
        "created_at": iso(run.created_at),
        "finished_at": iso(run.finished_at),
        "recipients": run.recipients,
        "channels": {
            name: {count: int(getattr(r, count, 0)) for count in COUNTS}
            for name, r in results.items()
        },
    }


@main.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many runs, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON list.")
@sandbox_ledger_option
def runs(config: Path, limit: int, as_json: bool, use_sandbox: bool) -> None:
    """List the runs of campaign CONFIG recorded in its ledger, newest first: logical
    date, status, times, recipients and per channel what was sent, failed, is pending
    or unknown."""
    pipeline = look(config, use_sandbox)
    rows: list[tuple[RunRecord, dict[str, ChannelResult]]] = []
    with input_errors(config), open_ledger(pipeline, required=False) as ledger:
        if ledger is not None:
            for record in ledger.list_runs(pipeline.name, limit):
                stored = stored_report(record)
                rows.append((record, channel_results(ledger, record, pipeline, stored)))
    if as_json:
        click.echo(json.dumps([_run_dict(r, results) for r, results in rows], indent=2))
        return
    out = make_console()
    if not rows:
        out.print(f"No runs of {pipeline.name} in {pipeline.ledger_shown}{sandbox_hint(pipeline)}.")
        return
    if not out.is_terminal and not columns_set():
        out.width = max(out.width, 250)  # run ids are long; one line per run in files
    channels = list(dict.fromkeys(name for _, results in rows for name in results))
    out.print(f"Runs of {pipeline.name} ({pipeline.ledger_shown})")
    table = Table(box=box.SIMPLE_HEAD)
    table.add_column("run id", no_wrap=True)
    for header in ("logical date (UTC)", "status", "created (UTC)", "finished (UTC)"):
        table.add_column(header, no_wrap=True)
    table.add_column("recipients", justify="right", no_wrap=True)
    for name in channels:
        table.add_column(name, no_wrap=True)
    blocks = []
    for record, results in rows:
        cells = [
            record.run_id,
            format_minute(record.logical_date),
            status_text(record),
            format_minute(record.created_at),
            format_minute(record.finished_at),
            "-" if record.recipients is None else str(record.recipients),
        ]
        per_channel = [(n, brief_counts(results[n])) for n in channels if n in results]
        table.add_row(*cells, *(dict(per_channel).get(n, "-") for n in channels))
        recipients = "-" if record.recipients is None else record.recipients
        blocks.append(
            [
                record.run_id,
                f"  logical date {cells[1]} UTC · {cells[2]} · created {cells[3]} · "
                f"finished {cells[4]} · {recipients} recipient(s)",
                *(f"  {name}: {counts}" for name, counts in per_channel),
            ]
        )
    if fits(out, table):
        out.print(table)
    else:  # a narrow terminal: one block per run, its id whole on its own line
        for block in blocks:
            for line in block:
                out.print(line)


# -- report --------------------------------------------------------------------------------


def _deliveries(
    ledger: Ledger, run_id: str, channels: Sequence[str | None]
) -> Generator[DeliveryResult, None, None]:
    """Per-recipient outcomes of ``channels`` (``None``: all), streamed; each ledger
    cursor is closed when its channel is done or the stream is abandoned."""
    for channel in channels:
        results = ledger.deliveries(run_id, channel)
        try:
            yield from results
        finally:
            close = getattr(results, "close", None)
            if close is not None:
                close()


def _stdout_gone() -> NoReturn:
    """The reader of stdout went away (``| head``): stop quietly, as Unix tools do."""
    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush goes here
    raise SystemExit(EXIT_OK)


def _delivery_dict(run_id: str, result: DeliveryResult) -> dict[str, Any]:
    return {"run_id": run_id, **result.to_dict()}


def _write_deliveries(
    stream: IO[str], fmt: str, run_id: str, rows: Iterable[DeliveryResult]
) -> int:
    """Stream per-recipient outcomes as ``json`` (an array), ``jsonl`` or ``csv``;
    return how many were written."""
    n = 0
    if fmt == "csv":
        writer = safe_csv_writer(stream)  # cells a spreadsheet would run are neutralised
        writer.writerow(_CSV_FIELDS)
        for result in rows:
            data = _delivery_dict(run_id, result)
            writer.writerow([data[field] for field in _CSV_FIELDS])
            n += 1
        return n
    if fmt == "jsonl":
        for result in rows:
            stream.write(json.dumps(_delivery_dict(run_id, result), ensure_ascii=False) + "\n")
            n += 1
        return n
    stream.write("[")
    for result in rows:
        stream.write(",\n  " if n else "\n  ")
        stream.write(json.dumps(_delivery_dict(run_id, result), ensure_ascii=False))
        n += 1
    stream.write("\n]\n" if n else "]\n")
    return n


@main.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.argument("run_id")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "jsonl", "csv"]),
    default="table",
    show_default=True,
    help="table: per-channel summary; json (an array), jsonl, csv: one record per "
    "recipient and channel, streamed from the ledger.",
)
@click.option(
    "--channel",
    "-c",
    "channels",
    multiple=True,
    metavar="NAME",
    help="Only this channel (repeatable).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write to this file instead of stdout.",
)
@sandbox_ledger_option
def report(
    config: Path,
    run_id: str,
    fmt: str,
    channels: tuple[str, ...],
    output: Path | None,
    use_sandbox: bool,
) -> None:
    """Show run RUN_ID of campaign CONFIG from the ledger: the per-channel table, or
    every recipient's outcome (status, reason, provider message id, attempts, error
    code and error) as JSON or CSV. CSV cells are safe to open in a spreadsheet. RUN_ID
    may be `latest`: the campaign's newest run."""
    pipeline = look(config, use_sandbox)
    where = Where(config, use_sandbox)
    with input_errors(config), open_ledger(pipeline, required=True) as ledger:
        assert ledger is not None
        record = get_run(pipeline, ledger, run_id, where)
        run_id = record.run_id  # ``latest`` resolved
        stored = stored_report(record)
        results = channel_results(ledger, record, pipeline, stored)
        for name in channels:
            if name not in results:
                have = ", ".join(results) or "none"
                raise LedgerError(f"run {run_id!r} has no channel {name!r} (channels: {have})")
        with contextlib.ExitStack() as stack:
            stream: IO[str]
            if output is not None:
                try:
                    stream = stack.enter_context(
                        output.open("w", encoding="utf-8", newline="" if fmt == "csv" else None)
                    )
                except OSError as exc:
                    raise ConfigError(f"cannot write {output}: {exc.strerror}") from None
            else:
                stream = sys.stdout
            if fmt == "table":
                if stored is None:  # crashed or still going: its extraction's counts
                    info = ledger.snapshot_info(run_id)
                    if info is not None:
                        stored = RunReport(
                            run_id=record.run_id,
                            pipeline=record.pipeline,
                            status=RunStatus.FAILED,  # placeholder: the ledger's is shown
                            started_at=record.created_at,
                            finished_at=record.finished_at or record.created_at,
                            rows_read=info.rows_read,
                            rows_rejected=info.rejected,
                            rejected_reasons=info.rejected_reasons,
                        )
                doubts = {
                    name: doubts_from_counts(ledger.counts(run_id, name))
                    for name, result in results.items()
                    if result.unknown and ledger.is_planned(run_id, name)
                }
                _report_table(stream, record, stored, results, where, channels, doubts)
                receipts: dict[str, dict[str, int]] = {}
                for name in results:
                    if (not channels or name in channels) and ledger.is_planned(run_id, name):
                        got = ledger.counts(run_id, name)
                        receipts[name] = {**got.receipts, "awaiting": got.awaiting_receipt}
                told = any(sum(r.values()) - r["awaiting"] for r in receipts.values())
                if not (told or pipeline.receipts.public_url):
                    receipts = {}  # a campaign that does not take receipts
                for line in receipt_lines(receipts):
                    print(line, file=stream)
                return
            rows = stack.enter_context(
                contextlib.closing(_deliveries(ledger, run_id, list(channels) or [None]))
            )
            try:
                n = _write_deliveries(stream, fmt, run_id, rows)
            except BrokenPipeError:
                _stdout_gone()
    if output is not None:
        click.echo(f"{n} record(s) written to {output}", err=True)


def _report_table(
    stream: IO[str],
    record: RunRecord,
    stored: RunReport | None,
    results: Mapping[str, ChannelResult],
    where: Where,
    channels: Sequence[str],
    doubts: Mapping[str, Mapping[str, int]],
) -> None:
    console = make_console(file=None if stream is sys.stdout else stream)
    shown = {n: r for n, r in results.items() if not channels or n in channels}
    base = stored or RunReport(
        run_id=record.run_id,
        pipeline=record.pipeline,
        status=RunStatus.FAILED,  # placeholder: the status shown is the ledger's
        started_at=record.created_at,
        finished_at=record.finished_at or record.created_at,
    )
    view = attrs.evolve(base, channels=shown)
    console.print(
        f"Logical date {format_utc(record.logical_date)} · "
        f"created {format_utc(record.created_at)} · "
        f"finished {format_utc(record.finished_at)} · "
        f"{'-' if record.recipients is None else record.recipients} recipient(s)"
    )
    going = record.in_progress
    print_run_summary(
        console,
        view,
        where=where,
        status=status_text(record),
        results_hint=False,
        hints=not going,  # nothing to resume while its process sends it
        doubts=doubts,
    )
    if record.status == RunStatus.SKIPPED_LATE.value:
        console.print("Skipped:   due too long ago (max_lateness_minutes); nothing was sent")
    console.print(f"Per recipient: {where.command('report', record.run_id, '--format csv')}")
