"""A run's summary: per-channel table, reasons, unknown deliveries, hints."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path

import click
from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .._ledger import (
    Ledger,
)
from .._models import (
    ChannelResult,
    Reason,
    RunReport,
    RunStatus,
)
from .._pipeline import (
    Pipeline,
)
from .._states import DeliveryCounts
from ..exceptions import CampaignKitError
from ._campaign import open_ledger
from ._output import (
    COUNTS,
    Where,
    fits,
    format_counts,
    format_duration,
    format_lines,
    is_quiet,
    make_console,
    report_exit,
    shell_quote,
    top_counts,
)

# -- summaries -----------------------------------------------------------------------------


#: The reasons an ``unknown`` delivery records: it is in doubt, not failed.
_UNKNOWN_REASONS = frozenset({Reason.IN_DOUBT.value, "in_flight_at_crash"})

#: Why a delivery is in doubt, by the transient code its last attempt ended with.
_DOUBT_BY_CODE = {
    "timeout": "timed out after sending",
    "connection_error": "connection lost after sending",
    "response_error": "answer cut off after sending",
    "tls_error": "connection broke after sending",
}


def _doubt_cause(reason: str, code: str) -> str:
    """Why a delivery is ``unknown``, in words (``timed out after sending``), from its
    reason and the error code of its last attempt."""
    if reason == "in_flight_at_crash":
        return "in flight when the run stopped"
    if code in _DOUBT_BY_CODE:
        return _DOUBT_BY_CODE[code]
    if code.isdigit():
        return f"provider answered {code}"
    return f"no answer after sending ({code})" if code else "no answer after sending"


def doubts_from_counts(counts: DeliveryCounts) -> dict[str, int]:
    """The ledger's ``unknown`` deliveries as ``{cause in words: n}``."""
    causes: dict[str, int] = {}
    for doubt, n in counts.doubts.items():
        cause = _doubt_cause(doubt.reason, doubt.code)
        causes[cause] = causes.get(cause, 0) + n
    return causes


def _doubts(ledger: Ledger | None, report: RunReport) -> dict[str, dict[str, int]]:
    """Per channel with ``unknown`` deliveries, why they are in doubt, counted in the
    ledger (``{}`` without one: the summary then says less)."""
    if ledger is None:
        return {}
    out = {}
    for name, result in report.channels.items():
        if result.unknown and ledger.is_planned(report.run_id, name):
            out[name] = doubts_from_counts(ledger.counts(report.run_id, name))
    return out


def run_doubts(pipeline: Pipeline, report: RunReport) -> dict[str, dict[str, int]]:
    """:func:`_doubts` of a run just made (nothing when it keeps no ledger)."""
    if not any(r.unknown for r in report.channels.values()) or not pipeline.execution.ledger:
        return {}
    try:
        with open_ledger(pipeline, required=False) as ledger:
            return _doubts(ledger, report)
    except CampaignKitError:
        return {}


#: The widest the reasons column of a summary grows before it wraps.
_REASONS_WIDTH = 40


def _reason_notes(result: ChannelResult, doubts: Mapping[str, int] | None) -> list[str]:
    """The top reasons and codes of a channel's failures and skips, then its unknown
    deliveries with why they are in doubt (never counted as failures)."""
    failed_or_skipped = {k: v for k, v in result.reasons.items() if k not in _UNKNOWN_REASONS}
    notes = [f"{reason} {n}" for reason, n in top_counts(failed_or_skipped)]
    notes += [f"code {code}: {n}" for code, n in top_counts(result.error_codes)]
    if result.unknown:
        if not doubts:  # no ledger to ask: what the reasons say
            doubts = {
                _doubt_cause(reason, ""): n
                for reason, n in result.reasons.items()
                if reason in _UNKNOWN_REASONS
            }
        listed = top_counts(doubts, len(doubts)) or [("in doubt", result.unknown)]
        notes += [f"unknown {n}: {cause}; provider may have it" for cause, n in listed]
    if result.stopped:
        notes.append(f"stopped: {result.stopped}")
    return notes


def _channel_table(
    report: RunReport, doubts: Mapping[str, Mapping[str, int]] | None
) -> tuple[Table, list[list[str]]]:
    """The per-channel table of a summary, and the same as one block of lines per
    channel (for a terminal too narrow for the table)."""
    results = list(report.channels.values())
    shown = [c for c in COUNTS if c in COUNTS[:3] or _any(results, c)]
    headers = ["channel", "provider", *shown, "top reasons / codes", "retries", "duration"]
    table = Table(box=box.SIMPLE_HEAD)
    for header in headers:
        reasons = header.startswith("top reasons")
        table.add_column(
            header,
            justify="left" if header in ("channel", "provider") or reasons else "right",
            no_wrap=not reasons,
            overflow="fold",  # a code longer than the column breaks, never "…"
            max_width=_REASONS_WIDTH if reasons else None,
        )
    blocks = []
    for name, result in report.channels.items():
        notes = _reason_notes(result, (doubts or {}).get(name))
        cells: list[str | Text] = [name, result.provider]
        for count in shown:
            value = int(getattr(result, count, 0))
            style = "red" if value and count in ("failed", "unknown") else ""
            cells.append(Text(str(value), style=style))
        cells += ["\n".join(notes) or "-", str(result.retries), format_duration(result)]
        table.add_row(*cells)
        counts = ", ".join(f"{getattr(result, c, 0)} {c}" for c in shown)
        head = (
            f"{name} ({result.provider}): {counts}; "
            f"{result.retries} retries, {format_duration(result)}"
        )
        blocks.append([head, *(f"  {note}" for note in notes)])
    return table, blocks


def print_run_summary(
    console: Console,
    report: RunReport,
    *,
    where: Where | None,
    ledger: bool | str = True,
    status: str | None = None,
    results_hint: bool = True,
    hints: bool = True,
    logical_date: datetime | None = None,
    doubts: Mapping[str, Mapping[str, int]] | None = None,
) -> None:
    """The per-channel table, where things were written, and what to do next.

    The run id is printed above the table, never inside it, so that it stays whole on
    one line at any width; the reasons column wraps (and folds a long code) rather
    than cutting.
    """
    console.print(f"{report.pipeline} · run {report.run_id} · {status or report.status.value}")
    table, blocks = _channel_table(report, doubts)
    if fits(console, table):
        console.print(table)
    else:  # a narrow terminal: one block per channel, every line whole
        for block in blocks:
            for line in block:
                console.print(line)
    if report.rows_read or report.rows_rejected:
        rejected = f" ({format_counts(report.rejected_reasons)})" if report.rejected_reasons else ""
        console.print(
            f"Segment:   {report.rows_read} row(s) read, {report.rows_rejected} rejected{rejected}"
        )
        if report.lines:
            console.print(format_lines(report.lines))
    for channel, error in report.errors.items():
        console.print(Text(f"Channel {channel} crashed: {error}", style="red"))
    out = Path(report.output_dir) if report.output_dir else None
    if out is not None:
        console.print(f"Report:    {out / 'report.json'}")
    if results_hint:
        if not ledger:
            console.print("Results:   not kept per recipient (execution.ledger = false)")
        elif where is not None:
            console.print(
                f"Results:   per recipient in the ledger: "
                f"{where.command('report', report.run_id, '--format csv')}"
            )
    if out is not None and report.rows_rejected:
        console.print(f"Rejected:  {out / 'rejected.csv'}")
    if hints and ledger and where is not None:
        for hint in run_hints(report, where, logical_date=logical_date):
            console.print(hint)


def _any(results: Iterable[ChannelResult], count: str) -> bool:
    return any(getattr(r, count, 0) for r in results)


def run_hints(
    report: RunReport, where: Where, *, logical_date: datetime | None = None
) -> list[str]:
    """What to run next: resume what is pending or unknown, retry transient failures;
    after a canary, the command that sends the rest (the same logical date again)."""
    resume = where.command("resume", report.run_id)
    results = list(report.channels.values())
    pending = sum(r.pending for r in results)
    unknown = sum(r.unknown for r in results)
    deferred = sum(int(getattr(r, "deferred", 0)) for r in results)
    exhausted = sum(r.reasons.get("retries_exhausted", 0) for r in results)
    credentials = [r.channel for r in results if (r.stopped or "").startswith("credentials")]
    lines = []
    if pending and str(report.status) == RunStatus.CANARY.value:
        again = (
            where.command("run", flags=f"--logical-date {shell_quote(logical_date.isoformat())}")
            if logical_date is not None
            else resume
        )
        lines.append(
            f"Canary:    {pending} message(s) held back for the full run. Running the same "
            f"logical date again sends them, and never again to the canary's recipients: "
            f"{again}"
        )
    elif pending:
        lines.append(f"Pending:   {pending} message(s) not sent yet: {resume}")
    if unknown:
        lines.append(
            f"Unknown:   {unknown} message(s) were in flight without an answer (a run "
            f"stopped, or a timeout, a lost connection or a 5xx left them in doubt), to a "
            f"provider without idempotency keys: they may have been delivered. "
            f"{where.command('resume', report.run_id, '--resend-unknown')} sends them again"
        )
    if deferred:
        lines.append(
            f"Deferred:  {deferred} message(s) held back by quiet hours: "
            f"{resume} sends them once they are due"
        )
    if exhausted or credentials:
        why = f"{exhausted} transient failure(s)" if exhausted else "rejected credentials"
        lines.append(f"Retry:     {why}: {where.command('retry-failed', report.run_id)}")
    return lines


def emit_report(
    report: RunReport,
    *,
    as_json: bool,
    where: Where,
    ledger: bool | str,
    before: Sequence[str] = (),
    after: Sequence[str] = (),
    logical_date: datetime | None = None,
    doubts: Mapping[str, Mapping[str, int]] | None = None,
) -> int:
    """Print the run's outcome (the summary, or the report as JSON with the notes on
    stderr) and return its exit code."""
    code = report_exit(report)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        err = make_console(stderr=True)
        for note in (*before, *after):
            err.print(note)
        return code
    out = make_console()
    for note in before:
        out.print(note)
    if not is_quiet():
        print_run_summary(
            out, report, where=where, ledger=ledger, logical_date=logical_date, doubts=doubts
        )
        for note in after:
            out.print(note)
    else:
        quiet_problems(report)
    out.print(f"Status: {report.status.value} (exit {code})")
    return code


def quiet_problems(report: RunReport) -> None:
    """What ``-q`` must not hide (the summary says it otherwise): a channel that
    crashed or stopped early, and why, on stderr."""
    err = make_console(stderr=True)
    for channel, error in report.errors.items():
        err.print(Text(f"Channel {channel} crashed: {error}", style="red"))
    for name, result in report.channels.items():
        if result.stopped and name not in report.errors:
            err.print(Text(f"Channel {name} stopped: {result.stopped}", style="red"))
