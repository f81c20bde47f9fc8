"""``campaignkit worker``: one worker of runs split into shards (a PostgreSQL ledger)."""

from __future__ import annotations

from pathlib import Path

import click

from .._pipeline import Pipeline
from ._campaign import build_pipeline, prepare
from ._group import EPILOG, main
from ._options import CONFIG_PATH, block_option, retry_delay_option, sigterm_interrupts
from ._output import (
    EXIT_FAILED,
    EXIT_OK,
    configure_logging,
    input_errors,
    is_quiet,
    make_console,
    verbosity,
)


@main.command(epilog=EPILOG)
@click.argument("config", type=CONFIG_PATH)
@click.option(
    "--run",
    "run_id",
    default="latest",
    show_default=True,
    help="The run to work on; `latest` is the campaign's newest running run.",
)
@click.option(
    "--channel",
    "channels",
    multiple=True,
    help="Only this channel (repeatable; default: every enabled channel).",
)
@click.option(
    "--until-idle",
    is_flag=True,
    help="Stop as soon as nothing is left to lease now, instead of waiting until every "
    "shard is done (taking over those of workers that stop).",
)
@retry_delay_option
@block_option
def worker(
    config: Path,
    run_id: str,
    channels: tuple[str, ...],
    until_idle: bool,
    retry_delay: float | None,
    block: tuple[str, ...],
) -> None:
    """Send shards of a run of campaign CONFIG, on any host sharing its PostgreSQL ledger.

        A run is split into shards when it runs with `[execution] workers` above 1 (its
        own process starts that many workers) or through Pipeline.shard_channels. The
        worker leases shards of each channel, sends their pending messages with the
        channel's batching, retries and rate limit (a budget shared by all workers), and
        lets them go; until every shard is done. A worker that stops (killed, its host
        lost) is taken over once its leases expire: what it had in flight is re-sent with
        the same idempotency key where the provider has one, else recorded unknown. Exit
        0 when nothing is left, 2 on a configuration or ledger error, 3 if interrupted.
    It logs what it leases and sends on stderr (-q: only its result).
    """
    if not is_quiet():  # a worker says what it leases and sends (-q: only its result)
        configure_logging(max(1, verbosity().verbose))
    configs, pm = prepare([config], retry_delay=retry_delay, use_sandbox=False, block=block)
    out = make_console(stderr=True)
    with sigterm_interrupts("interrupted before leasing; nothing was sent"):
        pipeline: Pipeline = build_pipeline(configs[0], pm, None, rehearsal=False)
        try:
            with input_errors(config):
                worked = pipeline.work(
                    run_id, channels=list(channels) or None, until_idle=until_idle
                )
        except KeyboardInterrupt:
            out.print("Interrupted: in-flight requests finished; leases let go.")
            raise SystemExit(EXIT_FAILED) from None
    if worked is None:
        out.print(f"No running run of {pipeline.name}: nothing to do.")
    else:
        out.print(f"Worker done: nothing left to lease in run {worked}.")
    raise SystemExit(EXIT_OK)
