"""Loading a campaign (and its sandbox) for a command, and reading its runs from the ledger."""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import pluggy

from .._config import PipelineConfig, load_config
from .._engine import counted_result
from .._ledger import (
    Ledger,
    LedgerError,
    RunRecord,
)
from .._models import (
    ChannelResult,
    RunReport,
)
from .._pipeline import (
    Pipeline,
    check_campaign,
)
from .._rehearsal import rehearsal_execution
from .._states import ACTIVE_STATUSES
from ..exceptions import ConfigError
from ._options import plugin_manager, with_retry_delay
from ._output import Where, input_errors, sandbox_failure
from ._receipt_lines import simulation_for

# -- ledger helpers ------------------------------------------------------------------------


@contextmanager
def open_ledger(pipeline: Pipeline, *, required: bool) -> Iterator[Ledger | None]:
    """The pipeline's ledger, or ``None`` when it does not exist yet (it is not
    created by looking). With ``required``, a missing ledger is a :class:`LedgerError`."""
    location = pipeline.ledger_location
    if isinstance(location, Path) and not location.exists():
        if required:
            raise LedgerError(
                f"no ledger at {location} (execution.state_path): this campaign has no runs "
                f"yet{sandbox_hint(pipeline)}"
            )
        yield None
        return
    ledger = pipeline.ledger()
    try:
        yield ledger
    finally:
        ledger.close()


#: What a RUN_ID argument may say instead of an id: the campaign's newest run.
LATEST = "latest"


def get_run(pipeline: Pipeline, ledger: Ledger, run_id: str, where: Where) -> RunRecord:
    """The run ``run_id`` (``latest``: the campaign's newest), with a hint when it is
    not there (the runs command, or ``--sandbox`` when only a rehearsal has runs)."""
    try:
        if run_id == LATEST:
            newest = ledger.list_runs(pipeline.name, 1)
            if not newest:
                raise LedgerError(f"{pipeline.name} has no runs in {ledger.location}")
            return newest[0]
        return ledger.get_run(run_id)
    except LedgerError as exc:
        raise LedgerError(
            f"{exc} ({where.command('runs')} lists the runs{sandbox_hint(pipeline)})"
        ) from None


def sandbox_hint(pipeline: Pipeline) -> str:
    """``; ... add --sandbox`` when the rehearsals' ledger exists and this is not it."""
    if pipeline.rehearsal:
        return ""
    rehearsals = pipeline.base_dir / rehearsal_execution(pipeline.execution).state_path
    if not rehearsals.exists():
        return ""
    return f"; runs made with --sandbox are in {rehearsals}: add --sandbox"


def find_run(
    pipeline: Pipeline, *, run_id: str | None = None, logical_date: datetime | None = None
) -> RunRecord | None:
    """A run by id, else the latest one for ``logical_date``, else the newest; ``None``
    when there is none or the ledger cannot be read."""
    try:
        with open_ledger(pipeline, required=False) as ledger:
            if ledger is None:
                return None
            if run_id is not None:
                return ledger.get_run(run_id)
            if logical_date is not None:
                found = ledger.find_runs(pipeline.name, logical_date)
                return found[-1] if found else None
            newest = ledger.list_runs(pipeline.name, 1)
            return newest[0] if newest else None
    except LedgerError:
        return None


def channel_results(
    ledger: Ledger,
    run: RunRecord,
    pipeline: Pipeline,
    stored: RunReport | None,
    only: Sequence[str] = (),
) -> dict[str, ChannelResult]:
    """Per channel of ``run``, its totals: from the stored report while it is current
    (the run is not running and the report has the channel), else counted in the ledger
    (a run that is going or crashed, or a channel a partial resume left out)."""
    names = [c.name for c in pipeline.channels]
    providers = {c.name: c.provider for c in pipeline.channels}
    keys = {c.name: c.report_key for c in pipeline.channels}
    if stored is not None:
        names += [n for n in stored.channels if n not in names]
    current = stored is not None and run.status not in ACTIVE_STATUSES
    out: dict[str, ChannelResult] = {}
    for name in names:
        if only and name not in only:
            continue
        if current and stored is not None and name in stored.channels:
            out[name] = stored.channels[name]
        elif ledger.is_planned(run.run_id, name):
            old = stored.channels.get(name) if stored is not None else None
            out[name] = counted_result(
                ledger,
                run.run_id,
                name,
                provider=old.provider if old is not None else providers.get(name, "?"),
                result_key=old.result_key if old is not None else keys.get(name, ""),
            )
    return out


def status_text(run: RunRecord) -> str:
    if run.status in ACTIVE_STATUSES:
        if run.in_progress and run.owner is not None:
            return f"{run.status} ({run.owner.describe()})"
        return f"{run.status}, process gone: resume it"
    return run.status


# -- sandbox -------------------------------------------------------------------------------


def _sandbox_providers(config: PipelineConfig, pm: pluggy.PluginManager | None) -> list[str]:
    """Providers of the enabled channels; each must have a sandbox server."""
    from ..testing.sandbox import sandbox_fakes

    fakes = sandbox_fakes(pm)

    providers: list[str] = []
    for channel in config.channels:
        if not channel.enabled:
            continue
        if channel.provider not in fakes:
            raise ConfigError(
                f"--sandbox has no server for provider {channel.provider!r} (sandboxed: "
                f"{', '.join(fakes)}); disable the channel or run without --sandbox",
                path=f"channels.{channel.name}.provider",
                file=config.file,
            )
        if channel.provider not in providers:
            providers.append(channel.provider)
    return providers


@contextmanager
def sandboxed_configs(
    configs: Sequence[PipelineConfig], enabled: bool, pm: pluggy.PluginManager
) -> Iterator[tuple[list[PipelineConfig], dict[str, str] | None, Any]]:
    """Without ``enabled``: the configs as they are. With it: sandbox servers for their
    providers, started for the block, and the configs pointed at them (options,
    tokens in the returned environment, the sandbox ledger and run directories)."""
    if not enabled:
        yield list(configs), None, None
        return
    from ..testing.sandbox import Sandbox

    providers = list(dict.fromkeys(p for cfg in configs for p in _sandbox_providers(cfg, pm)))
    with input_errors():
        simulation = simulation_for(configs, os.environ)
    sandbox = Sandbox(providers, plugins=pm, receipts=simulation)
    try:
        sandbox.start()
        if sandbox.receipts is not None:  # the fakes call back a receiver of its own
            sandbox.open_receipts_endpoint()
    except Exception as exc:  # e.g. the SMTP sandbox without aiosmtpd
        sandbox.stop()
        sandbox_failure(exc)
    try:
        # apply() also isolates the state: the sandbox ledger and run directories.
        applied = [sandbox.apply(cfg) for cfg in configs]
        env = dict(os.environ)
        for cfg in applied:
            env.update(sandbox.env(cfg))
        yield applied, env, sandbox
    finally:
        sandbox.stop()


def record_sandbox(sandbox: Any) -> list[str]:
    """What to print after a sandboxed command: the messages each server accepted and
    where they were recorded as they arrived (``<run dir>/sandbox/<provider>.jsonl``)."""
    counts = ", ".join(f"{p} {n}" for p, n in sandbox.counts().items())
    lines = [f"Sandbox:   accepted messages per provider: {counts or 'none'}"]
    for directory in sandbox.recorded_dirs:
        names = sorted(p.name for p in directory.glob("*.jsonl"))
        lines.append(f"Sandbox:   recorded messages in {directory}{os.sep} ({', '.join(names)})")
    return lines


@contextmanager
def sandbox_journal(
    sandbox: Any, pipeline: Pipeline, output_dir: str | Path | None
) -> Iterator[None]:
    """While a sandboxed command sends: each run records what the servers accept to
    ``<run dir>/sandbox/<provider>.jsonl`` as it is accepted (a resume adds to it)."""
    if sandbox is None:
        yield
        return
    with sandbox.record_runs(pipeline, output_dir=output_dir):
        yield


# -- setup shared by the sending commands --------------------------------------------------


def prepare(
    configs: Sequence[Path],
    *,
    retry_delay: float | None,
    use_sandbox: bool,
    block: Sequence[str],
) -> tuple[list[PipelineConfig], pluggy.PluginManager]:
    """Load the campaign files and the plugins; exit 2 on any problem."""
    loaded = []
    for path in configs:
        with input_errors(path):
            cfg = _load_or_list_all(path, use_sandbox=use_sandbox, block=block)
            if retry_delay is not None:
                cfg = with_retry_delay(cfg, retry_delay)
            loaded.append(cfg)
    with input_errors():
        pm = plugin_manager(block)
    for path, cfg in zip(configs, loaded, strict=True) if use_sandbox else ():
        with input_errors(path):
            _sandbox_providers(cfg, pm)
    return loaded, pm


def build_pipeline(
    config: PipelineConfig,
    pm: pluggy.PluginManager | None,
    env: Mapping[str, str] | None,
    *,
    rehearsal: bool,
) -> Pipeline:
    """The pipeline of ``config``; a rehearsal (``--sandbox``) has the sandbox's own
    ledger and run directories, anything else the campaign's, whatever its channels
    point at."""
    file = Path(config.file) if config.file else None
    with input_errors(file):
        return Pipeline.from_config(config, plugins=pm, env=env, rehearsal=rehearsal)


def interrupt_message(where: Where, run: RunRecord | None) -> str:
    if run is None:
        return "interrupted before the run started; nothing was sent"
    return (
        f"interrupted: run {run.run_id} is {run.status}; requests already in flight "
        f"finished and were recorded, the rest is pending: "
        f"{where.command('resume', run.run_id)}"
    )


# -- runs ----------------------------------------------------------------------------------


def look(config: Path, use_sandbox: bool) -> Pipeline:
    """The pipeline of CONFIG for looking at its ledger (no plugins, no tokens)."""
    with input_errors(config):
        cfg = load_config(config)
    return build_pipeline(cfg, None, None, rehearsal=use_sandbox)


def _load_or_list_all(path: Path, *, use_sandbox: bool, block: Sequence[str]) -> PipelineConfig:
    """``load_config(path)``; when the file has problems, raise one ConfigError with
    every problem ``validate`` finds, so that one try lists them all. Tokens are left
    out (a dry run needs none; a run checks them with everything else before it
    sends), and so are provider options for a ``--sandbox`` run (the sandbox sets them)."""
    try:
        return load_config(path)
    except ConfigError as exc:
        if exc.problems and exc.problems[0].line is None and exc.problems[0].path is None:
            raise  # unreadable, or not TOML: nothing else can be checked
        check = check_campaign(path, plugins=plugin_manager(block))
        skipped = ("tokens", "channels") if use_sandbox else ("tokens",)
        problems = [p for p in check.problems if p.group not in skipped]
        raise ConfigError.of(problems or exc.problems, file=str(path)) from None
