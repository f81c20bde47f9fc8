"""Continuing a run: ``resume`` and ``retry-failed``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import click

from .._ledger import (
    LedgerError,
    RunRecord,
)
from .._models import RunReport, RunStatus
from .._pipeline import (
    Pipeline,
    stored_report,
)
from ._campaign import (
    build_pipeline,
    find_run,
    get_run,
    interrupt_message,
    open_ledger,
    prepare,
    record_sandbox,
    sandbox_journal,
    sandboxed_configs,
)
from ._group import EPILOG, main
from ._options import (
    CONFIG_PATH,
    block_option,
    json_option,
    output_dir_option,
    retry_delay_option,
    sandbox_option,
    sigterm_interrupts,
)
from ._output import (
    Where,
    input_errors,
    is_quiet,
    make_console,
)
from ._progress import RunProgress, drive
from ._summary import emit_report, run_doubts


def _run_to_continue(
    pipeline: Pipeline, run_id: str, where: Where, *, sandboxed: bool
) -> tuple[RunRecord, list[str]]:
    """The run ``resume`` or ``retry-failed`` continues (``latest`` resolved), and a
    note when the campaign changed since it started; a run skipped as too late is an
    error (it has nothing to resume)."""
    before = []
    with input_errors(where.config), open_ledger(pipeline, required=True) as ledger:
        assert ledger is not None
        record = get_run(pipeline, ledger, run_id, where)
        if record.status == RunStatus.SKIPPED_LATE.value:
            late = f"--logical-date {record.logical_date.isoformat()} --force"
            raise LedgerError(
                f"run {record.run_id!r} was skipped as too late and has nothing to resume; "
                f"{where.command('run', flags=late)} sends it now"
            )
        if not sandboxed and record.fingerprint != pipeline.fingerprint():
            before.append(
                "Note:      the campaign (source, channels, options or templates) changed "
                "since the run started; what is left is sent as configured now."
            )
    return record, before


def _finished_line(run_id: str, report: RunReport, retry_failed: bool, resend_unknown: bool) -> str:
    """Said by ``resume`` and ``retry-failed`` when the run had finished: nothing was sent."""
    return (
        f"Finished:  nothing was sent now. Run {run_id} had finished "
        f"({report.status.value}) and owes nothing"
        + (" (no transient failures)" if retry_failed else "")
        + (" (no unknown deliveries)" if resend_unknown else "")
        + ("." if is_quiet() else "; its stored report follows.")
    )


def _continue_run(
    config: Path,
    run_id: str,
    *,
    resend_unknown: bool,
    retry_failed: bool,
    channels: Sequence[str],
    as_json: bool,
    output_dir: Path | None,
    use_sandbox: bool,
    retry_delay: float | None,
    block: Sequence[str],
) -> NoReturn:
    configs, pm = prepare([config], retry_delay=retry_delay, use_sandbox=use_sandbox, block=block)
    with (
        sigterm_interrupts("interrupted before sending started; nothing was sent"),
        sandboxed_configs(configs, use_sandbox, pm) as (applied, env, sandbox),
    ):
        pipeline = build_pipeline(applied[0], pm, env, rehearsal=use_sandbox)
        where = Where(config, use_sandbox)
        record, before = _run_to_continue(pipeline, run_id, where, sandboxed=sandbox is not None)
        run_id = record.run_id  # ``latest`` resolved
        if output_dir is None:
            # Keep the run's report next to its rejected rows when it was written elsewhere.
            stored = stored_report(record)
            if stored is not None and stored.output_dir:
                output_dir = Path(stored.output_dir).parent
        names = [c.name for c in pipeline.enabled_channels if not channels or c.name in channels]
        out = make_console()
        progress = RunProgress(
            out,
            names,
            show=out.is_terminal and not as_json and not is_quiet(),
            extracting=False,
        )
        with sandbox_journal(sandbox, pipeline, output_dir):
            report = drive(
                lambda: pipeline.resume(
                    run_id,
                    resend_unknown=resend_unknown,
                    retry_failed=retry_failed,
                    channels=list(channels) or None,
                    progress=progress,
                    output_dir=output_dir,
                ),
                progress,
                config=config,
                interrupted=lambda: interrupt_message(where, find_run(pipeline, run_id=run_id)),
            )
        if report.replayed:
            before.insert(0, _finished_line(run_id, report, retry_failed, resend_unknown))
            after = []
        else:
            settled = ", ".join(f"{name} {progress.done.get(name, 0)}" for name in report.channels)
            after = [f"This time: settled (sent or failed) per channel: {settled or 'none'}"]
        if sandbox is not None:
            after += record_sandbox(sandbox)
    code = emit_report(
        report,
        as_json=as_json,
        where=where,
        ledger=pipeline.execution.ledger,
        before=before,
        after=after,
        doubts=run_doubts(pipeline, report),
    )
    raise SystemExit(code)


@main.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.argument("run_id")
@click.option(
    "--resend-unknown",
    is_flag=True,
    help="Also send again the messages recorded as unknown (in flight at a crash, or in "
    "doubt after a timeout or a 5xx, to a provider without idempotency keys): they may be "
    "delivered twice.",
)
@json_option
@output_dir_option
@sandbox_option
@retry_delay_option
@block_option
def resume(
    config: Path,
    run_id: str,
    resend_unknown: bool,
    as_json: bool,
    output_dir: Path | None,
    use_sandbox: bool,
    retry_delay: float | None,
    block: tuple[str, ...],
) -> None:
    """Continue run RUN_ID of campaign CONFIG after a crash, a timeout or an interruption.

    Every pending message is sent exactly once; nothing recorded as sent is sent again.
    Messages that were in flight when the run stopped are sent again with the same
    idempotency key where the provider has one, and otherwise reported as unknown
    (--resend-unknown sends them). CONFIG is needed because tokens and templates are
    not stored in the ledger. RUN_ID may be `latest`: the campaign's newest run.
    """
    _continue_run(
        config,
        run_id,
        resend_unknown=resend_unknown,
        retry_failed=False,
        channels=(),
        as_json=as_json,
        output_dir=output_dir,
        use_sandbox=use_sandbox,
        retry_delay=retry_delay,
        block=block,
    )


@main.command("retry-failed", epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.argument("run_id")
@click.option(
    "--channel",
    "-c",
    "channels",
    multiple=True,
    metavar="NAME",
    help="Only this channel (repeatable; default: every enabled channel).",
)
@json_option
@output_dir_option
@sandbox_option
@retry_delay_option
@block_option
def retry_failed(
    config: Path,
    run_id: str,
    channels: tuple[str, ...],
    as_json: bool,
    output_dir: Path | None,
    use_sandbox: bool,
    retry_delay: float | None,
    block: tuple[str, ...],
) -> None:
    """Send again run RUN_ID's transient failures (retries exhausted, credentials
    rejected), with the usual retry rounds. Permanent failures (an invalid number, a
    refused address) are never sent again. Pending messages are sent too. RUN_ID may be
    `latest`: the campaign's newest run."""
    _continue_run(
        config,
        run_id,
        resend_unknown=False,
        retry_failed=True,
        channels=channels,
        as_json=as_json,
        output_dir=output_dir,
        use_sandbox=use_sandbox,
        retry_delay=retry_delay,
        block=block,
    )
