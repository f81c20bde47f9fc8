"""The ``campaignkit`` command line: ``run``, ``validate``, ``preview``, ``channels``, ``sandbox``.

Exit codes (also in ``campaignkit --help`` and ``docs/cli.md``):

* 0: every recipient was sent, or deliberately skipped (no consent, no address, over target);
* 1: the run completed but some deliveries failed;
* 2: an input or configuration error stopped the command before anything was sent
  (:class:`~campaignkit.ConfigError`, :class:`~campaignkit.SourceError`,
  :class:`~campaignkit.TemplateError`, :class:`~campaignkit.PluginError`, a guard
  raising in ``campaignkit_run_started``, a bad option);
* 3: the run failed (a channel crashed, an unexpected error once delivery started),
  timed out, or was interrupted.

Errors are one line on stderr; a :class:`~campaignkit.CampaignKitError` never prints a
traceback, and nothing printed here ever holds a provider token.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import attrs
import click
import pluggy
from rich import box
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text

from . import __version__
from ._config import PipelineConfig, load_config
from ._models import ChannelResult, Message, Rate, RunReport, RunStatus
from ._pipeline import Pipeline
from ._plugins import BLOCK_ENV, Registry, get_plugin_manager
from .exceptions import CampaignKitError, ConfigError

__all__ = ["EXIT_FAILED", "EXIT_INPUT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "main"]

log = logging.getLogger("campaignkit")

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_INPUT_ERROR = 2
EXIT_FAILED = 3

_EXIT_BY_STATUS = {
    RunStatus.SUCCEEDED: EXIT_OK,
    RunStatus.PARTIAL: EXIT_PARTIAL,
    RunStatus.FAILED: EXIT_FAILED,
    RunStatus.TIMED_OUT: EXIT_FAILED,
}

EPILOG = """\b
Exit codes:
  0  all sent (or deliberately skipped: no consent, no address, over target)
  1  the run completed but some deliveries failed
  2  input or configuration error; nothing was sent
  3  the run failed (a channel crashed), timed out or was interrupted

\b
Provider tokens are read from the environment (EMAIL_API_TOKEN, SMS_API_TOKEN,
PUSH_API_TOKEN by default). CAMPAIGNKIT_BLOCK_PLUGINS=name,name blocks plugins.
"""

#: What :class:`~campaignkit.Registry` reports as the package of built-in plugins.
BUILTIN_PACKAGE = "campaignkit (built-in)"

_CONFIG = click.Path(dir_okay=False, path_type=Path)


# -- output helpers ------------------------------------------------------------------------


def _console(*, stderr: bool = False) -> Console:
    """A console for human output. Markup and highlighting are off: values such as
    ``ExponentPushToken[...]`` must print verbatim."""
    console = Console(stderr=stderr, markup=False, highlight=False, emoji=False, soft_wrap=True)
    if not console.is_terminal:
        # Output to a file or pipe: no terminal width to respect, keep tables readable.
        console.width = max(console.width, 120)
    return console


def _sandbox_failure(exc: Exception) -> NoReturn:
    hint = " (pip install 'campaignkit[sandbox]')" if isinstance(exc, ImportError) else ""
    _fail(f"cannot start the sandbox: {type(exc).__name__}: {exc}{hint}", EXIT_FAILED)


def _fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as one line on stderr and exit with ``code``."""
    one_line = " ".join(message.splitlines())
    click.echo(f"campaignkit: error: {one_line}", err=True)
    raise SystemExit(code)


def _describe_error(exc: CampaignKitError, config: Path | None) -> str:
    """The error's message, prefixed with the configuration file when a
    :class:`ConfigError` does not name it already."""
    if isinstance(exc, ConfigError) and exc.file is None and config is not None:
        return f"{config}: {exc}"
    return str(exc)


@contextmanager
def _input_errors(config: Path | None = None) -> Iterator[None]:
    """Turn a :class:`CampaignKitError` into one line on stderr and exit code 2."""
    try:
        yield
    except CampaignKitError as exc:
        _fail(_describe_error(exc, config), EXIT_INPUT_ERROR)


def _plugin_manager(block: Sequence[str]) -> pluggy.PluginManager:
    """The built-ins and installed plugins, less ``block`` (and CAMPAIGNKIT_BLOCK_PLUGINS)."""
    return get_plugin_manager(block=block)


def _format_rate(rate: Rate | None) -> str:
    if rate is None or (rate.messages_per_second is None and rate.requests_per_second is None):
        return "unlimited"
    parts = []
    if rate.messages_per_second is not None:
        parts.append(f"{rate.messages_per_second:g} msg/s")
    if rate.requests_per_second is not None:
        parts.append(f"{rate.requests_per_second:g} req/s")
    return ", ".join(parts)


def _package(package: str) -> str:
    return "built-in" if package == BUILTIN_PACKAGE else package


def _top(counts: Mapping[str, int], limit: int = 3) -> list[tuple[str, int]]:
    """The ``limit`` largest counts, largest first."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in _top(counts, len(counts)))


def _duration(result: ChannelResult) -> str:
    seconds = result.duration_seconds
    return "-" if seconds is None else f"{seconds:.1f}s"


def _with_retry_delay(config: PipelineConfig, seconds: float) -> PipelineConfig:
    """``config`` with every retry delay (execution default and per channel) set to
    ``seconds``; jitter and retry counts are kept."""
    minutes = seconds / 60.0
    execution = attrs.evolve(
        config.execution, retry=attrs.evolve(config.execution.retry, delay_minutes=minutes)
    )
    channels = tuple(
        attrs.evolve(c, retry=attrs.evolve(c.retry, delay_minutes=minutes))
        if c.retry is not None
        else c
        for c in config.channels
    )
    return attrs.evolve(config, execution=execution, channels=channels)


def _configure_logging(verbose: int) -> None:
    for handler in list(log.handlers):
        if getattr(handler, "_campaignkit_cli", False):
            log.removeHandler(handler)
    if not verbose:
        return
    handler = RichHandler(console=_console(stderr=True), show_path=False, markup=False)
    handler._campaignkit_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


def _block_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--block-plugin",
        "block",
        multiple=True,
        metavar="NAME",
        help=f"Do not load this plugin (entry-point name, or built-in module such as "
        f"campaignkit.channels.smtp). Repeatable; {BLOCK_ENV} adds more.",
    )(func)


# -- the command group ---------------------------------------------------------------------


@click.group(epilog=EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v", "--verbose", count=True, help="Log to stderr (-v: progress of the run, -vv: debug)."
)
@click.version_option(__version__, prog_name="campaignkit")
def main(verbose: int) -> None:
    """Multi-channel marketing campaigns: one customer segment fanned out in parallel
    to email, SMS and push channels."""
    _configure_logging(verbose)


# -- run -----------------------------------------------------------------------------------


class _RunDisplay:
    """Rich progress bars, one per channel, fed from channel threads."""

    def __init__(self, console: Console, channels: Sequence[str]) -> None:
        self.channels = tuple(channels)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description:<12}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
        )
        self._lock = threading.Lock()
        self._tasks: dict[str, TaskID] = {}
        self._done: dict[str, int] = {}
        self._extracting: TaskID | None = None

    def __enter__(self) -> _RunDisplay:
        self.progress.start()
        self._extracting = self.progress.add_task("extracting", total=None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def extracted(self, recipients: int, rejected: Mapping[str, int]) -> None:
        with self._lock:
            if self._extracting is not None:
                self.progress.remove_task(self._extracting)
                self._extracting = None
            for name in self.channels:
                self._tasks[name] = self.progress.add_task(name, total=recipients)

    def advance(self, channel: str, done: int) -> None:
        with self._lock:
            task = self._tasks.get(channel)
            # Channel threads report totals; keep the bar monotonic.
            if task is None or done <= self._done.get(channel, 0):
                return
            self._done[channel] = done
            self.progress.update(task, completed=done)


def _summary(console: Console, report: RunReport) -> None:
    table = Table(
        title=f"{report.pipeline} · run {report.run_id} · {report.status.value}",
        box=box.SIMPLE_HEAD,
    )
    for header in (
        "channel",
        "provider",
        "sent",
        "failed",
        "skipped",
        "top reasons / codes",
        "retries",
        "duration",
    ):
        numeric = header in ("sent", "failed", "skipped", "retries", "duration")
        table.add_column(header, justify="right" if numeric else "left", no_wrap=numeric)
    for name, result in report.channels.items():
        notes = [f"{reason} {n}" for reason, n in _top(result.reasons)]
        notes += [f"code {code}: {n}" for code, n in _top(result.error_codes)]
        table.add_row(
            name,
            result.provider,
            str(result.sent),
            Text(str(result.failed), style="red" if result.failed else ""),
            str(result.skipped),
            "\n".join(notes) or "-",
            str(result.retries),
            _duration(result),
        )
    console.print(table)
    rejected = f" ({_counts(report.rejected_reasons)})" if report.rejected_reasons else ""
    console.print(
        f"Segment:   {report.rows_read} row(s) read, {report.rows_rejected} rejected{rejected}"
    )
    for channel, error in report.errors.items():
        console.print(Text(f"Channel {channel} crashed: {error}", style="red"))
    if report.output_dir:
        out = Path(report.output_dir)
        files = ", ".join(f"{name}.jsonl" for name in report.channels)
        console.print(f"Report:    {out / 'report.json'}")
        if files:
            console.print(f"Results:   {out}{os.sep} {files} (one line per recipient)")
        if report.rows_rejected:
            console.print(f"Rejected:  {out / 'rejected.csv'}")


def _sandbox_providers(config: PipelineConfig) -> list[str]:
    """Providers of the enabled channels; each must have a sandbox server."""
    from .testing.sandbox import PROVIDERS

    providers: list[str] = []
    for channel in config.channels:
        if not channel.enabled:
            continue
        if channel.provider not in PROVIDERS:
            raise ConfigError(
                f"--sandbox has no server for provider {channel.provider!r} (sandboxed: "
                f"{', '.join(PROVIDERS)}); disable the channel or run without --sandbox",
                path=f"channels.{channel.name}.provider",
                file=config.file,
            )
        if channel.provider not in providers:
            providers.append(channel.provider)
    return providers


@main.command(epilog=EPILOG)
@click.argument("config", type=_CONFIG)
@click.option("--json", "as_json", is_flag=True, help="Print only the run report as JSON.")
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the run directory goes (default: execution.output_dir of the campaign).",
)
@click.option("--run-id", help="The run's id (default: a new time-ordered id).")
@click.option(
    "--sandbox",
    "use_sandbox",
    is_flag=True,
    help="Send to loopback provider sandboxes started in-process (no real provider, "
    "no token needed); recorded messages go to <run dir>/sandbox/.",
)
@click.option(
    "--retry-delay",
    type=click.FloatRange(min=0),
    metavar="SECONDS",
    help="Override every channel's retry delay (default: the campaign's, 5 minutes).",
)
@_block_option
def run(
    config: Path,
    as_json: bool,
    output_dir: Path | None,
    run_id: str | None,
    use_sandbox: bool,
    retry_delay: float | None,
    block: tuple[str, ...],
) -> None:
    """Run the campaign CONFIG: extract the segment, then send every enabled channel
    in parallel."""
    out = _console()
    err = _console(stderr=True)
    with _input_errors(config):
        cfg = load_config(config)
        if retry_delay is not None:
            cfg = _with_retry_delay(cfg, retry_delay)
        providers = _sandbox_providers(cfg) if use_sandbox else []
        pm = _plugin_manager(block)
    sandbox = None
    env: dict[str, str] | None = None
    if use_sandbox:
        from .testing.sandbox import Sandbox

        sandbox = Sandbox(providers)
        try:
            sandbox.start()
        except Exception as exc:  # e.g. the SMTP sandbox without aiosmtpd
            _sandbox_failure(exc)
        cfg = sandbox.apply(cfg)
        env = {**os.environ, **sandbox.env(cfg)}
    notes: list[str] = []
    try:
        report = _run(cfg, pm, env, as_json, output_dir, run_id, out)
        if sandbox is not None:
            notes = _dump_sandbox(sandbox, report)
    finally:
        if sandbox is not None:
            sandbox.stop()
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
    else:
        _summary(out, report)
    for note in notes:
        (err if as_json else out).print(note)
    code = _EXIT_BY_STATUS[report.status]
    if not as_json:
        out.print(f"Status: {report.status.value} (exit {code})")
    raise SystemExit(code)


def _run(
    config: PipelineConfig,
    pm: pluggy.PluginManager,
    env: dict[str, str] | None,
    as_json: bool,
    output_dir: Path | None,
    run_id: str | None,
    out: Console,
) -> RunReport:
    """Run the pipeline. A :class:`CampaignKitError` exits with code 2 while no
    delivery has been settled (nothing was sent), 3 afterwards."""
    file = Path(config.file) if config.file else None
    with _input_errors(file):
        pipeline = Pipeline.from_config(config, plugins=pm, env=env)
        channels = [c.name for c in pipeline.enabled_channels]
    display = _RunDisplay(out, channels) if out.is_terminal and not as_json else None
    settled = threading.Event()  # set once any recipient has a result on any channel

    def on_extracted(recipients: int, rejected: Mapping[str, int]) -> None:
        if display is not None:
            display.extracted(recipients, rejected)

    def progress(channel: str, done: int) -> None:
        settled.set()
        if display is not None:
            display.advance(channel, done)

    def run() -> RunReport:
        return pipeline.run(
            run_id=run_id, output_dir=output_dir, on_extracted=on_extracted, progress=progress
        )

    try:
        if display is None:
            return run()
        with display:
            return run()
    except CampaignKitError as exc:
        _fail(_describe_error(exc, file), EXIT_FAILED if settled.is_set() else EXIT_INPUT_ERROR)
    except FileExistsError as exc:
        _fail(f"run directory already exists: {exc.filename}", EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        # Pipeline.run lets the channels that had started finish before this arrives.
        _fail("interrupted before the run finished", EXIT_FAILED)
    except Exception as exc:
        log.debug("run failed", exc_info=True)
        _fail(f"run failed: {type(exc).__name__}: {exc} (use -vv for details)", EXIT_FAILED)


def _dump_sandbox(sandbox: Any, report: RunReport) -> list[str]:
    """Write the sandbox's recorded messages into the run directory; return what to print."""
    counts = ", ".join(f"{p} {n}" for p, n in sandbox.counts().items())
    lines = [f"Sandbox:   accepted messages per provider: {counts or 'none'}"]
    if report.output_dir is not None:
        directory = Path(report.output_dir) / "sandbox"
        written = sandbox.dump(directory)
        files = ", ".join(path.name for path in written.values())
        lines.append(f"Sandbox:   recorded messages in {directory}{os.sep} ({files})")
    return lines


# -- validate ------------------------------------------------------------------------------


@main.command(epilog=EPILOG)
@click.argument("config", type=_CONFIG)
@_block_option
def validate(config: Path, block: tuple[str, ...]) -> None:
    """Check CONFIG without sending: schema, plugins, provider options, tokens, the
    segment's header and every template."""
    out = _console()
    with _input_errors(config):
        cfg = load_config(config)
        pipeline = Pipeline.from_config(cfg, plugins=_plugin_manager(block))
        summary = pipeline.validate()
    by_name = {c.name: c for c in cfg.channels}
    out.print(f"{config}: valid")
    out.print(f"  pipeline: {summary.pipeline}")
    out.print(f"  source:   {cfg.source.type} {summary.source}")
    out.print(f"  fields:   {', '.join(sorted(summary.fields))}")
    out.print("  channels:")
    for name, provider in summary.channels.items():
        channel = by_name[name]
        target = (
            f", at most {channel.target_customers} recipients"
            if channel.target_customers is not None
            else ""
        )
        out.print(f"    {name} -> {provider} (token: ${channel.token_variable}{target})")
    for name in summary.disabled:
        out.print(f"    {name} -> {by_name[name].provider} (disabled)")


# -- preview -------------------------------------------------------------------------------


def _message_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"recipient_id": message.recipient_id, "address": message.address}
    for part in ("subject", "title", "body", "html"):
        value = getattr(message, part)
        if value is not None and (value or part == "body"):
            out[part] = value
    if message.data:
        out["data"] = dict(message.data)
    return out


@main.command(epilog=EPILOG)
@click.argument("config", type=_CONFIG)
@click.option("--channel", "-c", required=True, help="The channel to render (email, sms, ...).")
@click.option(
    "-n",
    "count",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="How many recipients.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the messages as a JSON list.")
@_block_option
def preview(config: Path, channel: str, count: int, as_json: bool, block: tuple[str, ...]) -> None:
    """Render CHANNEL's messages for the first eligible recipients of CONFIG.

    Sends nothing and needs no token.
    """
    with _input_errors(config):
        pipeline = Pipeline.from_file(config, plugins=_plugin_manager(block))
        messages = pipeline.preview(channel, count)
    if as_json:
        click.echo(json.dumps([_message_dict(m) for m in messages], indent=2, ensure_ascii=False))
        return
    out = _console()
    if not messages:
        out.print(f"No eligible recipient for channel {channel!r}.")
        return
    for i, message in enumerate(messages, 1):
        out.rule(f"{channel} {i}/{len(messages)}: {message.recipient_id} -> {message.address}")
        for key, value in _message_dict(message).items():
            if key in ("recipient_id", "address"):
                continue
            if key == "data":
                value = json.dumps(value, ensure_ascii=False)
            text = str(value)
            if "\n" in text.strip():
                out.print(f"{key}:")
                for line in text.strip("\n").splitlines():
                    out.print(f"  {line}")
            else:
                out.print(f"{key}: {text}")
    out.print(f"{len(messages)} message(s) rendered; nothing was sent.")


# -- channels ------------------------------------------------------------------------------


@main.command(epilog=EPILOG)
@click.option("--json", "as_json", is_flag=True, help="Print the providers as JSON.")
@_block_option
def channels(as_json: bool, block: tuple[str, ...]) -> None:
    """List the channel providers and source types that are installed."""
    with _input_errors():
        registry = Registry(_plugin_manager(block))
        providers = dict(sorted(registry.channels.items()))
        sources = dict(sorted(registry.sources.items()))
    rows = []
    for name, info in providers.items():
        cls = info.factory
        rows.append(
            {
                "provider": name,
                "package": info.package,
                "address_field": cls.address_field,
                "max_batch_size": cls.max_batch_size,
                "idempotency_keys": bool(cls.supports_idempotency_keys),
                "default_rate": _format_rate(cls.default_rate),
                "token_required": bool(cls.token_required),
            }
        )
    source_rows = [{"type": n, "package": i.package} for n, i in sources.items()]
    if as_json:
        click.echo(json.dumps({"channels": rows, "sources": source_rows}, indent=2))
        return
    out = _console()
    table = Table(title="Channel providers", box=None, pad_edge=False)
    for header in (
        "provider",
        "package",
        "address",
        "batch",
        "idempotent",
        "default rate",
        "token",
    ):
        table.add_column(
            header,
            justify="right" if header == "batch" else "left",
            no_wrap=header != "package",
            min_width=8 if header == "package" else None,
        )
    for row in rows:
        table.add_row(
            row["provider"],
            _package(row["package"]),
            row["address_field"],
            str(row["max_batch_size"]),
            "yes" if row["idempotency_keys"] else "no",
            row["default_rate"],
            "required" if row["token_required"] else "optional",
        )
    out.print(table)
    sources_table = Table(title="Source types", box=None, pad_edge=False)
    sources_table.add_column("type")
    sources_table.add_column("package")
    for source in source_rows:
        sources_table.add_row(source["type"], _package(source["package"]))
    out.print(sources_table)


# -- sandbox -------------------------------------------------------------------------------


@main.command(epilog=EPILOG)
@click.option(
    "--port-base",
    type=click.IntRange(0, 65_000),
    default=0,
    show_default=True,
    help="First port; providers get consecutive ports (0: free ports chosen by the system).",
)
@click.option(
    "--provider",
    "providers",
    multiple=True,
    metavar="NAME",
    help="Start only this provider's server. Repeatable (default: all).",
)
@click.option(
    "--dump",
    type=click.Path(file_okay=False, path_type=Path),
    help="On exit, write each provider's recorded messages to DIR/<provider>.jsonl.",
)
def sandbox(port_base: int, providers: tuple[str, ...], dump: Path | None) -> None:
    """Serve the loopback provider sandboxes until interrupted (Ctrl-C or SIGTERM).

    Point a campaign's channels at the printed options (or run
    `campaignkit run CONFIG --sandbox`, which starts its own).
    """
    from .testing.sandbox import PROVIDERS, Sandbox, server_class

    for name in providers:
        if name not in PROVIDERS:
            raise click.BadParameter(
                f"no sandbox for {name!r} (have: {', '.join(PROVIDERS)})", param_hint="--provider"
            )
    servers = Sandbox(tuple(dict.fromkeys(providers)) or None)
    try:
        if port_base:
            # Sandbox picks free ports; fixed ports need the servers built here.
            for i, name in enumerate(servers.providers):
                server = server_class(name)(port=port_base + i)
                servers.servers[name] = server
                server.start()
        else:
            servers.start()
    except Exception as exc:
        servers.stop()
        _sandbox_failure(exc)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        out = _console()
        for name, info in servers.describe().items():
            out.print(f"{name}:")
            for key, value in info["options"].items():
                out.print(f"  options.{key} = {json.dumps(value)}")
            out.print(f"  token = {json.dumps(info['token'])}")
        for variable, value in servers.env().items():
            out.print(f"export {variable}={value}")
        out.print("Sandbox ready; press Ctrl-C to stop.")
        sys.stdout.flush()
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
        counts = ", ".join(f"{p} {n}" for p, n in servers.counts().items())
        out.print(f"Accepted messages: {counts}")
        if dump is not None:
            servers.dump(dump)
            out.print(f"Recorded messages written to {dump}{os.sep}")
    finally:
        signal.signal(signal.SIGTERM, previous)
        servers.stop()
