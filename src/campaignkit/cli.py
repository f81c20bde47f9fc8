"""The ``campaignkit`` command line.

Sending: ``run`` (one logical date, or ``--scheduled``; ``--limit N`` a canary,
``--dry-run`` a plan that sends nothing), ``resume``, ``retry-failed``, ``scheduler``.
Looking: ``runs``, ``report``, ``schedule``, ``validate``, ``preview``, ``channels``.
Audience: ``suppress``, ``suppressions``. Testing: ``sandbox`` (and ``--sandbox`` on the
sending and ledger commands).

Every command that touches runs takes the campaign file: provider tokens come from the
environment and templates from the campaign, neither is stored in the ledger, so a
resume rebuilds the channels from the same file.

Exit codes (also in ``campaignkit --help`` and ``docs/cli.md``):

* 0: every recipient was sent, or deliberately skipped (no consent, no address, over
  target; a scheduled run recorded as ``skipped_late``); a canary (``--limit``) or a
  run holding messages for quiet hours, without failures; a dry run; nothing was due;
* 1: the run completed (or sent its canary) but some deliveries failed or are
  ``unknown``;
* 2: an input or configuration error stopped the command before anything was sent
  (:class:`~campaignkit.ConfigError`, :class:`~campaignkit.SourceError`,
  :class:`~campaignkit.TemplateError`, :class:`~campaignkit.PluginError`,
  :class:`~campaignkit.AudienceGuardError` (``expected_audience``), a guard raising in
  ``campaignkit_run_started``, a ledger error such as an unknown run id or
  ``max_active_runs`` reached, an invalid address given to ``suppress``, a bad option);
* 3: the run failed (a channel crashed, an unexpected error once delivery started),
  timed out, or was interrupted (``cancelled``); what it did not send stays pending
  for ``campaignkit resume``.

Errors are one line on stderr; a :class:`~campaignkit.CampaignKitError` never prints a
traceback, and nothing printed here ever holds a provider token.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import sys
import threading
import time
import zoneinfo
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import IO, Any, NoReturn, TypeVar

import attrs
import click
import pluggy
from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.logging import RichHandler
from rich.measure import Measurement
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
from ._address import AddressValidator
from ._audience import channel_validator
from ._config import ENV_NAME, Channel, PipelineConfig, Schedule, key_lines, load_config
from ._content import sms_segments
from ._controls import control_detail, find_control
from ._csvio import safe_csv_writer
from ._ledger import (
    ACTIVE_STATUSES,
    RESUMABLE_STATUSES,
    LedgerError,
    RunRecord,
    SqliteLedger,
)
from ._models import (
    ChannelResult,
    DeliveryResult,
    Message,
    Rate,
    Reason,
    RunReport,
    RunStatus,
    Secret,
)
from ._notifier import ChannelSettings, Notifier
from ._pipeline import (
    CampaignCheck,
    ChannelPlanSummary,
    Pipeline,
    PlanReport,
    RowCheck,
    ScheduledRuns,
    check_campaign,
    problem_line,
)
from ._plugins import BLOCK_ENV, Registry, get_plugin_manager
from ._redact import redact
from ._rehearsal import rehearsal_execution
from ._schedule import Interval, manual_logical_date, plan_due_runs, upcoming
from ._suppression import _entries as _suppression_entries
from .exceptions import CampaignKitError, ConfigError, PluginError, Problem, TemplateError

__all__ = ["EXIT_FAILED", "EXIT_INPUT_ERROR", "EXIT_OK", "EXIT_PARTIAL", "main"]

log = logging.getLogger("campaignkit")

EXIT_OK = 0
EXIT_PARTIAL = 1
EXIT_INPUT_ERROR = 2
EXIT_FAILED = 3

#: Run status -> exit code; a status not listed here exits with EXIT_FAILED.
_EXIT_BY_STATUS: dict[str, int] = {
    RunStatus.SUCCEEDED.value: EXIT_OK,
    RunStatus.SKIPPED_LATE.value: EXIT_OK,  # a declared policy, not an error
    RunStatus.DEFERRED.value: EXIT_OK,  # quiet hours hold messages back; a resume sends them
    RunStatus.CANARY.value: EXIT_OK,  # --limit: the rest is pending for the full run
    RunStatus.PARTIAL.value: EXIT_PARTIAL,
    RunStatus.FAILED.value: EXIT_FAILED,
    RunStatus.TIMED_OUT.value: EXIT_FAILED,
    RunStatus.CANCELLED.value: EXIT_FAILED,
}

GROUP_EPILOG = """\b
Exit codes:
  0  all sent (or deliberately skipped: no consent, suppressed, filtered, over
     target, a scheduled run too late); a canary (--limit) or quiet-hours
     deferral without failures; a dry run; run --scheduled with nothing due
  1  the run completed but some deliveries failed or are unknown (a canary too)
  2  input or configuration error (unknown run id, bad option, expected_audience
     guard...); nothing was sent
  3  the run failed (a channel crashed), timed out or was interrupted;
     what it did not send stays pending: campaignkit resume CONFIG RUN_ID

\b
-v/-vv and -q work before or after the command (campaignkit -q run CONFIG, or
campaignkit run CONFIG -q). RUN_ID may be `latest`: the campaign's newest run.

\b
Provider tokens are read from the environment (EMAIL_API_TOKEN, SMS_API_TOKEN,
PUSH_API_TOKEN by default). CAMPAIGNKIT_BLOCK_PLUGINS=name,name blocks plugins.
"""

#: The epilog of every subcommand: the exit codes are in the group's help.
EPILOG = "Exit codes (0-3) and token variables: campaignkit --help."

#: What :class:`~campaignkit.Registry` reports as the package of built-in plugins.
BUILTIN_PACKAGE = "campaignkit (built-in)"

#: Delivery counts shown per channel; the first three always, the others when not zero.
_COUNTS = ("sent", "failed", "skipped", "pending", "unknown", "deferred")

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
)

_CONFIG = click.Path(dir_okay=False, path_type=Path)

_T = TypeVar("_T")


# -- output helpers ------------------------------------------------------------------------


def _console(*, stderr: bool = False, file: IO[str] | None = None) -> Console:
    """A console for human output. Markup and highlighting are off: values such as
    ``ExponentPushToken[...]`` must print verbatim."""
    console = Console(
        stderr=stderr,
        file=file,
        markup=False,
        highlight=False,
        emoji=False,
        soft_wrap=True,
    )
    if not console.is_terminal and not _columns_set():
        # Output to a file or pipe: no terminal width to respect, keep tables readable.
        console.width = max(console.width, 120)
    return console


def _columns_set() -> bool:
    """Whether ``COLUMNS`` asks for a width (honoured even when output is not a terminal)."""
    return os.environ.get("COLUMNS", "").strip().isdigit()


def _sandbox_failure(exc: Exception) -> NoReturn:
    hint = " (pip install 'campaignkit[sandbox]')" if isinstance(exc, ImportError) else ""
    _fail(f"cannot start the sandbox: {type(exc).__name__}: {exc}{hint}", EXIT_FAILED)


def _fail(message: str, code: int) -> NoReturn:
    """Print ``message`` as one line on stderr and exit with ``code``."""
    one_line = " ".join(redact(message).splitlines())
    click.echo(f"campaignkit: error: {one_line}", err=True)
    raise SystemExit(code)


def _as_given(problem: Problem, config: Path | None) -> Problem:
    """``problem`` naming the configuration file as it was given on the command line."""
    if config is None or problem.file is None or problem.file == str(config):
        return problem
    try:
        same = Path(problem.file).resolve() == config.resolve()
    except OSError:
        same = False
    return attrs.evolve(problem, file=str(config)) if same else problem


def _describe_error(exc: CampaignKitError, config: Path | None) -> str:
    """The error's message, prefixed with the configuration file when a
    :class:`ConfigError` does not name it already; one problem with a line reads as
    ``validate`` prints it (``FILE:LINE: key.path: message``)."""
    if isinstance(exc, ConfigError) and len(exc.problems) == 1:
        problem = _as_given(exc.problems[0], config)
        if problem.line is not None and problem.path is not None:
            file = problem.file or exc.file or config
            if file is not None:
                return str(attrs.evolve(problem, file=str(file)))
    if isinstance(exc, TemplateError) and exc.path is not None and config is not None:
        problem = Problem(exc.detail, path=exc.path, file=str(config), group="templates")
        try:
            lines = key_lines(config.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError):
            lines = {}
        return str(attrs.evolve(problem, line=problem_line(lines, problem)))
    if isinstance(exc, ConfigError) and exc.file is None and config is not None:
        return f"{config}: {exc}"
    return str(exc)


@contextmanager
def _input_errors(config: Path | None = None) -> Iterator[None]:
    """Turn a :class:`CampaignKitError` into one line on stderr and exit code 2."""
    try:
        yield
    except CampaignKitError as exc:
        _fail_problems(exc, config, EXIT_INPUT_ERROR)
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


def _lines(lines: Mapping[str, int]) -> str:
    """``Lines:     302 = 1 header + 290 in accepted rows + 8 in rejected rows + 3 blank``"""
    return (
        f"Lines:     {lines.get('total', 0)} = {lines.get('header', 0)} header + "
        f"{lines.get('accepted', 0)} in accepted rows + {lines.get('rejected', 0)} in "
        f"rejected rows + {lines.get('blank', 0)} blank"
    )


def _duration(result: ChannelResult) -> str:
    seconds = result.duration_seconds
    return "-" if seconds is None else f"{seconds:.1f}s"


def _q(value: object) -> str:
    """``value`` quoted for a shell command line."""
    return shlex.quote(str(value))


@attrs.frozen
class _Where:
    """A campaign file (and whether the sandbox's ledger is meant), for the commands
    that hints print."""

    config: Path
    sandbox: bool = False

    def command(self, verb: str, run_id: str | None = None, flags: str = "") -> str:
        """``campaignkit VERB CONFIG [RUN_ID] [FLAGS] [--sandbox]``, shell-quoted."""
        parts = ["campaignkit", verb, _q(self.config)]
        if run_id is not None:
            parts.append(_q(run_id))
        if flags:
            parts.append(flags)
        if self.sandbox:
            parts.append("--sandbox")
        return " ".join(parts)


def _utc(value: datetime | None) -> str:
    """``2024-05-01 09:30 UTC`` (seconds only when not zero); ``-`` for None."""
    if value is None:
        return "-"
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S" if value.second else "%Y-%m-%d %H:%M") + " UTC"


def _minute(value: datetime | None) -> str:
    """``2024-05-01 09:30`` in UTC; ``-`` for None."""
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def _local(value: datetime, zone: str) -> str:
    """``value`` on the wall clock of ``zone`` with its abbreviation (``02:00 CEST``)."""
    local = value.astimezone(zoneinfo.ZoneInfo(zone))
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if local.second else "%Y-%m-%d %H:%M %Z")


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _exit_code(status: str) -> int:
    return _EXIT_BY_STATUS.get(str(status), EXIT_FAILED)


def _report_exit(report: RunReport) -> int:
    """The exit code of a run: its status's, except that a canary or a run holding
    messages for quiet hours exits 1, as a partial run, when deliveries failed or are
    unknown (those statuses say what is still owed, not whether what went out failed)."""
    code = _exit_code(report.status)
    held = (RunStatus.CANARY.value, RunStatus.DEFERRED.value)
    if (
        code == EXIT_OK
        and str(report.status) in held
        and any(r.failed or r.unknown for r in report.channels.values())
    ):
        return EXIT_PARTIAL
    return code


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


def _sandbox_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--sandbox",
        "use_sandbox",
        is_flag=True,
        help="Send to loopback provider sandboxes started in-process (no real provider, "
        "no token needed). Sandbox runs have their own ledger (ledger.sandbox.db) and "
        "run directories (<output_dir>/sandbox/); recorded messages go to "
        "<run dir>/sandbox/.",
    )(func)


def _sandbox_ledger_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--sandbox",
        "use_sandbox",
        is_flag=True,
        help="Read the sandbox's ledger (runs made with --sandbox).",
    )(func)


def _retry_delay_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--retry-delay",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        help="Override every channel's retry delay (default: the campaign's, 5 minutes).",
    )(func)


def _json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print only the run report as JSON."
    )(func)


def _output_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--output-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Where the run directory goes (default: execution.output_dir of the campaign).",
    )(func)


class _DateTime(click.ParamType[datetime]):
    """An ISO 8601 date or date-time; without an offset it means UTC."""

    name = "ISO-8601"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, datetime):
            parsed = value
        else:
            try:
                parsed = datetime.fromisoformat(str(value))
            except ValueError:
                self.fail(f"expected an ISO 8601 date or date-time, got {value!r}", param, ctx)
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


_DATETIME = _DateTime()


# -- signals -------------------------------------------------------------------------------


@contextmanager
def _sigterm_interrupts(before_sending: str | None = None) -> Iterator[None]:
    """While active, the first SIGTERM raises :class:`KeyboardInterrupt` in the main
    thread, exactly like Ctrl-C: a run stops starting batches, lets the requests in
    flight finish, records them and ends ``cancelled``. Further SIGTERMs are ignored
    while that happens (a second Ctrl-C is not).

    With ``before_sending``, an interruption that escapes the block (one that came
    before the pipeline took over) exits 3 with that message instead of a traceback.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = False

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        nonlocal fired
        if fired:
            return
        fired = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    except KeyboardInterrupt:
        if before_sending is None:
            raise
        _fail(before_sending, EXIT_FAILED)
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


# -- the command group ---------------------------------------------------------------------


#: Where the command line keeps -v/-q for the command being run (the root context's meta).
_VERBOSITY = "campaignkit.verbosity"


@attrs.define
class _Verbosity:
    """-v (counted) and -q given so far, before and after the subcommand."""

    verbose: int = 0
    quiet: bool = False


def _verbosity() -> _Verbosity:
    """The current command's verbosity (the default outside a command)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return _Verbosity()
    state: _Verbosity = ctx.find_root().meta.setdefault(_VERBOSITY, _Verbosity())
    return state


def _quiet() -> bool:
    """Whether -q was given: no progress, no tables, notes or hints from a sending command."""
    return _verbosity().quiet


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Record -v or -q (on the group or a subcommand, the same meaning), and log as
    asked; -v with -q is a usage error."""
    if not value:
        return
    state = _verbosity()
    if param.name == "verbose":
        state.verbose += int(value)
    else:
        state.quiet = True
    if state.verbose and state.quiet:
        raise click.UsageError("-q (quiet) and -v (verbose) contradict each other", ctx=ctx)
    _configure_logging(state.verbose)


def _verbosity_params() -> list[click.Parameter]:
    """``-v/--verbose`` (counted) and ``-q/--quiet``, as the group and every subcommand
    take them."""
    return [
        click.Option(
            ["-v", "--verbose"],
            count=True,
            expose_value=False,
            is_eager=True,
            callback=_set_verbosity,
            help="Log to stderr (-v: progress of the run, -vv: debug). Also before the command.",
        ),
        click.Option(
            ["-q", "--quiet"],
            is_flag=True,
            expose_value=False,
            is_eager=True,
            callback=_set_verbosity,
            help="Quiet: no progress bars; a sending command prints only what happened to "
            "the run and its Status line (no tables, notes or hints). Errors still go to "
            "stderr. Also before the command.",
        ),
    ]


class _Group(click.Group):
    """The command group: every subcommand takes -v/-q as the group does, and points to
    the group's help for the exit codes."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        cmd.params.extend(_verbosity_params())
        if cmd.epilog is None:
            cmd.epilog = EPILOG
        super().add_command(cmd, name)


@click.group(
    cls=_Group,
    epilog=GROUP_EPILOG,
    context_settings={"help_option_names": ["-h", "--help"]},
    params=_verbosity_params(),
)
@click.version_option(__version__, prog_name="campaignkit")
def main() -> None:
    """Multi-channel marketing campaigns: one customer segment fanned out in parallel
    to email, SMS and push channels, with a durable per-recipient ledger."""
    _configure_logging(_verbosity().verbose)


# -- progress ------------------------------------------------------------------------------


class _RunDisplay:
    """Rich progress bars, one per channel, fed from channel threads.

    With ``extracting`` an "extracting" spinner comes first and the bars appear, sized
    to the segment, once it is extracted; without (a resume), the bars count up from
    the start with no total.
    """

    def __init__(self, console: Console, channels: Sequence[str], *, extracting: bool) -> None:
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
        self._extracting_first = extracting
        self._extracting: TaskID | None = None

    def __enter__(self) -> _RunDisplay:
        self.progress.start()
        if self._extracting_first:
            self._extracting = self.progress.add_task("extracting", total=None)
        else:
            self._add_channels(None)
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.stop()

    def _add_channels(self, total: int | None) -> None:
        for name in self.channels:
            if name not in self._tasks:
                self._tasks[name] = self.progress.add_task(name, total=total)

    def extracted(self, recipients: int) -> None:
        with self._lock:
            if self._extracting is not None:
                self.progress.remove_task(self._extracting)
                self._extracting = None
            self._add_channels(recipients)

    def advance(self, channel: str, done: int) -> None:
        with self._lock:
            task = self._tasks.get(channel)
            # Channel threads report totals; keep the bar monotonic.
            if task is None or done <= self._done.get(channel, 0):
                return
            self._done[channel] = done
            self.progress.update(task, completed=done)


class _Progress:
    """The progress callbacks of one sending command: bars on a terminal, whether any
    delivery was settled yet (for the exit code of an error) and how many were settled
    per channel in this session."""

    def __init__(
        self, console: Console, channels: Sequence[str], *, show: bool, extracting: bool = True
    ) -> None:
        self.display = _RunDisplay(console, channels, extracting=extracting) if show else None
        self.settled = threading.Event()
        self.done: dict[str, int] = {}
        self._lock = threading.Lock()

    def on_extracted(self, recipients: int, rejected: Mapping[str, int]) -> None:
        if self.display is not None:
            self.display.extracted(recipients)

    def __call__(self, channel: str, done: int) -> None:
        self.settled.set()
        with self._lock:
            if done > self.done.get(channel, 0):
                self.done[channel] = done
        if self.display is not None:
            self.display.advance(channel, done)


def _drive(
    action: Callable[[], _T],
    progress: _Progress,
    *,
    config: Path | None,
    interrupted: Callable[[], str],
) -> _T:
    """Run ``action`` (a pipeline operation) under the CLI's error mapping.

    A :class:`CampaignKitError` exits with code 2 while no delivery has been settled
    (nothing was sent), 3 afterwards; an interruption (Ctrl-C, SIGTERM; the pipeline
    lets in-flight requests finish first) exits 3 with ``interrupted()``'s message.
    """
    try:
        if progress.display is None:
            return action()
        with progress.display:
            return action()
    except CampaignKitError as exc:
        code = EXIT_FAILED if progress.settled.is_set() else EXIT_INPUT_ERROR
        _fail_problems(exc, config, code)
        _fail(_describe_error(exc, config), code)
    except FileExistsError as exc:
        _fail(f"run directory already exists: {exc.filename}", EXIT_INPUT_ERROR)
    except KeyboardInterrupt:
        _fail(interrupted(), EXIT_FAILED)
    except Exception as exc:
        log.debug("run failed", exc_info=True)
        _fail(f"run failed: {type(exc).__name__}: {exc} (use -vv for details)", EXIT_FAILED)


# -- ledger helpers ------------------------------------------------------------------------


@contextmanager
def _open_ledger(pipeline: Pipeline, *, required: bool) -> Iterator[SqliteLedger | None]:
    """The pipeline's ledger, or ``None`` when it does not exist yet (it is not
    created by looking). With ``required``, a missing ledger is a :class:`LedgerError`."""
    path = pipeline.state_path
    if not path.exists():
        if required:
            raise LedgerError(
                f"no ledger at {path} (execution.state_path): this campaign has no runs "
                f"yet{_sandbox_hint(pipeline)}"
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


def _get_run(pipeline: Pipeline, ledger: SqliteLedger, run_id: str, where: _Where) -> RunRecord:
    """The run ``run_id`` (``latest``: the campaign's newest), with a hint when it is
    not there (the runs command, or ``--sandbox`` when only a rehearsal has runs)."""
    try:
        if run_id == LATEST:
            newest = ledger.list_runs(pipeline.name, 1)
            if not newest:
                raise LedgerError(f"{pipeline.name} has no runs in {ledger.path}")
            return newest[0]
        return ledger.get_run(run_id)
    except LedgerError as exc:
        raise LedgerError(
            f"{exc} ({where.command('runs')} lists the runs{_sandbox_hint(pipeline)})"
        ) from None


def _sandbox_hint(pipeline: Pipeline) -> str:
    """``; ... add --sandbox`` when the rehearsals' ledger exists and this is not it."""
    if pipeline.rehearsal:
        return ""
    rehearsals = pipeline.base_dir / rehearsal_execution(pipeline.execution).state_path
    if not rehearsals.exists():
        return ""
    return f"; runs made with --sandbox are in {rehearsals}: add --sandbox"


def _find_run(
    pipeline: Pipeline, *, run_id: str | None = None, logical_date: datetime | None = None
) -> RunRecord | None:
    """A run by id, else the latest one for ``logical_date``, else the newest; ``None``
    when there is none or the ledger cannot be read."""
    try:
        with _open_ledger(pipeline, required=False) as ledger:
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


def _stored_report(run: RunRecord) -> RunReport | None:
    """The report a run stored in the ledger when it last finished, if any."""
    if not run.report:
        return None
    try:
        data = json.loads(run.report)
        if not isinstance(data, dict) or "status" not in data:
            return None
        return RunReport.from_dict(data, run)
    except (ValueError, TypeError, KeyError, StopIteration):
        return None


def _channel_results(
    ledger: SqliteLedger,
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
            counts = ledger.counts(run.run_id, name)
            old = stored.channels.get(name) if stored is not None else None
            out[name] = attrs.evolve(
                ChannelResult(
                    channel=name,
                    provider=old.provider if old is not None else providers.get(name, "?"),
                    result_key=old.result_key if old is not None else keys.get(name, ""),
                    reasons={k[7:]: v for k, v in counts.items() if k.startswith("reason:")},
                    error_codes={k[5:]: v for k, v in counts.items() if k.startswith("code:")},
                ),
                **_state_counts(counts),
            )
    return out


def _state_counts(counts: Mapping[str, int]) -> dict[str, Any]:
    """Ledger state counts as :class:`ChannelResult` fields (in flight counts as pending)."""
    out = {
        "sent": counts.get("sent", 0),
        "failed": counts.get("failed", 0),
        "skipped": counts.get("skipped", 0),
        "pending": counts.get("pending", 0) + counts.get("in_flight", 0),
        "unknown": counts.get("unknown", 0),
    }
    if "deferred" in attrs.fields_dict(ChannelResult):
        out["deferred"] = counts.get("deferred", 0)
    return out


def _status_text(run: RunRecord) -> str:
    if run.status in ACTIVE_STATUSES:
        if run.in_progress and run.owner is not None:
            return f"{run.status} ({run.owner.describe()})"
        return f"{run.status}, process gone: resume it"
    return run.status


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


def _doubts_from_counts(counts: Mapping[str, int]) -> dict[str, int]:
    """``unknown:<reason>:<code>`` ledger counts as ``{cause: n}``."""
    causes: dict[str, int] = {}
    for key, n in counts.items():
        if key.startswith("unknown:"):
            reason, _, code = key[len("unknown:") :].partition(":")
            cause = _doubt_cause(reason, code)
            causes[cause] = causes.get(cause, 0) + n
    return causes


def _doubts(ledger: SqliteLedger | None, report: RunReport) -> dict[str, dict[str, int]]:
    """Per channel with ``unknown`` deliveries, why they are in doubt, counted in the
    ledger (``{}`` without one: the summary then says less)."""
    if ledger is None:
        return {}
    out = {}
    for name, result in report.channels.items():
        if result.unknown and ledger.is_planned(report.run_id, name):
            out[name] = _doubts_from_counts(ledger.counts(report.run_id, name))
    return out


def _run_doubts(pipeline: Pipeline, report: RunReport) -> dict[str, dict[str, int]]:
    """:func:`_doubts` of a run just made (nothing when it keeps no ledger)."""
    if not any(r.unknown for r in report.channels.values()) or not pipeline.execution.ledger:
        return {}
    try:
        with _open_ledger(pipeline, required=False) as ledger:
            return _doubts(ledger, report)
    except CampaignKitError:
        return {}


#: The widest the reasons column of a summary grows before it wraps.
_REASONS_WIDTH = 40


def _fits(console: Console, table: Table) -> bool:
    """Whether ``table`` fits the console without squeezing a column: its widest
    rendering (wrapping columns at their ``max_width``) is no wider than the console."""
    options = console.options.update_width(100_000)
    return Measurement.get(console, options, table).maximum <= console.width


def _reason_notes(result: ChannelResult, doubts: Mapping[str, int] | None) -> list[str]:
    """The top reasons and codes of a channel's failures and skips, then its unknown
    deliveries with why they are in doubt (never counted as failures)."""
    failed_or_skipped = {k: v for k, v in result.reasons.items() if k not in _UNKNOWN_REASONS}
    notes = [f"{reason} {n}" for reason, n in _top(failed_or_skipped)]
    notes += [f"code {code}: {n}" for code, n in _top(result.error_codes)]
    if result.unknown:
        if not doubts:  # no ledger to ask: what the reasons say
            doubts = {
                _doubt_cause(reason, ""): n
                for reason, n in result.reasons.items()
                if reason in _UNKNOWN_REASONS
            }
        listed = _top(doubts, len(doubts)) or [("in doubt", result.unknown)]
        notes += [f"unknown {n}: {cause}; provider may have it" for cause, n in listed]
    if result.stopped:
        notes.append(f"stopped: {result.stopped}")
    return notes


def _summary(
    console: Console,
    report: RunReport,
    *,
    where: _Where | None,
    ledger: bool = True,
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
    results = list(report.channels.values())
    shown = [c for c in _COUNTS if c in _COUNTS[:3] or _any(results, c)]
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
        cells += ["\n".join(notes) or "-", str(result.retries), _duration(result)]
        table.add_row(*cells)
        counts = ", ".join(f"{getattr(result, c, 0)} {c}" for c in shown)
        head = (
            f"{name} ({result.provider}): {counts}; {result.retries} retries, {_duration(result)}"
        )
        blocks.append([head, *(f"  {note}" for note in notes)])
    if _fits(console, table):
        console.print(table)
    else:  # a narrow terminal: one block per channel, every line whole
        for block in blocks:
            for line in block:
                console.print(line)
    if report.rows_read or report.rows_rejected:
        rejected = f" ({_counts(report.rejected_reasons)})" if report.rejected_reasons else ""
        console.print(
            f"Segment:   {report.rows_read} row(s) read, {report.rows_rejected} rejected{rejected}"
        )
        if report.lines:
            console.print(_lines(report.lines))
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
        for hint in _hints(report, where, logical_date=logical_date):
            console.print(hint)


def _any(results: Iterable[ChannelResult], count: str) -> bool:
    return any(getattr(r, count, 0) for r in results)


def _hints(report: RunReport, where: _Where, *, logical_date: datetime | None = None) -> list[str]:
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
            where.command("run", flags=f"--logical-date {_q(logical_date.isoformat())}")
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


def _emit(
    report: RunReport,
    *,
    as_json: bool,
    where: _Where,
    ledger: bool,
    before: Sequence[str] = (),
    after: Sequence[str] = (),
    logical_date: datetime | None = None,
    doubts: Mapping[str, Mapping[str, int]] | None = None,
) -> int:
    """Print the run's outcome (the summary, or the report as JSON with the notes on
    stderr) and return its exit code."""
    code = _report_exit(report)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2))
        err = _console(stderr=True)
        for note in (*before, *after):
            err.print(note)
        return code
    out = _console()
    for note in before:
        out.print(note)
    if not _quiet():
        _summary(out, report, where=where, ledger=ledger, logical_date=logical_date, doubts=doubts)
        for note in after:
            out.print(note)
    else:
        _quiet_problems(report)
    out.print(f"Status: {report.status.value} (exit {code})")
    return code


def _quiet_problems(report: RunReport) -> None:
    """What ``-q`` must not hide (the summary says it otherwise): a channel that
    crashed or stopped early, and why, on stderr."""
    err = _console(stderr=True)
    for channel, error in report.errors.items():
        err.print(Text(f"Channel {channel} crashed: {error}", style="red"))
    for name, result in report.channels.items():
        if result.stopped and name not in report.errors:
            err.print(Text(f"Channel {name} stopped: {result.stopped}", style="red"))


# -- sandbox -------------------------------------------------------------------------------


def _sandbox_providers(config: PipelineConfig, pm: pluggy.PluginManager | None) -> list[str]:
    """Providers of the enabled channels; each must have a sandbox server."""
    from .testing.sandbox import sandbox_fakes

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
def _sandboxed(
    configs: Sequence[PipelineConfig], enabled: bool, pm: pluggy.PluginManager
) -> Iterator[tuple[list[PipelineConfig], dict[str, str] | None, Any]]:
    """Without ``enabled``: the configs as they are. With it: sandbox servers for their
    providers, started for the block, and the configs pointed at them (options,
    tokens in the returned environment, the sandbox ledger and run directories)."""
    if not enabled:
        yield list(configs), None, None
        return
    from .testing.sandbox import Sandbox

    providers = list(dict.fromkeys(p for cfg in configs for p in _sandbox_providers(cfg, pm)))
    sandbox = Sandbox(providers, plugins=pm)
    try:
        sandbox.start()
    except Exception as exc:  # e.g. the SMTP sandbox without aiosmtpd
        _sandbox_failure(exc)
    try:
        # apply() also isolates the state: the sandbox ledger and run directories.
        applied = [sandbox.apply(cfg) for cfg in configs]
        env = dict(os.environ)
        for cfg in applied:
            env.update(sandbox.env(cfg))
        yield applied, env, sandbox
    finally:
        sandbox.stop()


def _record_sandbox(sandbox: Any) -> list[str]:
    """What to print after a sandboxed command: the messages each server accepted and
    where they were recorded as they arrived (``<run dir>/sandbox/<provider>.jsonl``)."""
    counts = ", ".join(f"{p} {n}" for p, n in sandbox.counts().items())
    lines = [f"Sandbox:   accepted messages per provider: {counts or 'none'}"]
    for directory in sandbox.recorded_dirs:
        names = sorted(p.name for p in directory.glob("*.jsonl"))
        lines.append(f"Sandbox:   recorded messages in {directory}{os.sep} ({', '.join(names)})")
    return lines


@contextmanager
def _sandbox_journal(
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


def _prepare(
    configs: Sequence[Path],
    *,
    retry_delay: float | None,
    use_sandbox: bool,
    block: Sequence[str],
) -> tuple[list[PipelineConfig], pluggy.PluginManager]:
    """Load the campaign files and the plugins; exit 2 on any problem."""
    loaded = []
    for path in configs:
        with _input_errors(path):
            cfg = _load_or_list_all(path, use_sandbox=use_sandbox, block=block)
            if retry_delay is not None:
                cfg = _with_retry_delay(cfg, retry_delay)
            loaded.append(cfg)
    with _input_errors():
        pm = _plugin_manager(block)
    for path, cfg in zip(configs, loaded, strict=True) if use_sandbox else ():
        with _input_errors(path):
            _sandbox_providers(cfg, pm)
    return loaded, pm


def _build(
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
    with _input_errors(file):
        return Pipeline.from_config(config, plugins=pm, env=env, rehearsal=rehearsal)


def _interrupt_message(where: _Where, run: RunRecord | None) -> str:
    if run is None:
        return "interrupted before the run started; nothing was sent"
    return (
        f"interrupted: run {run.run_id} is {run.status}; requests already in flight "
        f"finished and were recorded, the rest is pending: "
        f"{where.command('resume', run.run_id)}"
    )


# -- run -----------------------------------------------------------------------------------


@main.command(epilog=EPILOG)
@click.argument("config", type=_CONFIG)
@_json_option
@_output_dir_option
@click.option(
    "--logical-date",
    type=_DATETIME,
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
@_sandbox_option
@_retry_delay_option
@_block_option
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
    configs, pm = _prepare([config], retry_delay=retry_delay, use_sandbox=use_sandbox, block=block)
    with (
        _sigterm_interrupts("interrupted before sending started; nothing was sent"),
        _sandboxed(configs, use_sandbox, pm) as (applied, env, sandbox),
    ):
        cfg = applied[0]
        if dry_run:
            code = _dry_run(
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
        pipeline = _build(cfg, pm, env, rehearsal=use_sandbox)
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
    where = _Where(config, sandbox is not None)
    with _input_errors(config):
        logical = logical_date or manual_logical_date(pipeline.schedule, datetime.now(UTC))
    keeps_ledger = pipeline.execution.ledger
    if limit is not None and not keeps_ledger:
        # Without a ledger the full run could not know whom the canary messaged.
        _fail(
            f"{config}: execution.ledger: --limit needs the ledger (execution.ledger = "
            f"false): the full run would message the canary's recipients again",
            EXIT_INPUT_ERROR,
        )
    previous = _find_run(pipeline, logical_date=logical) if keeps_ledger and not force else None
    resuming = previous is not None and (
        previous.status in ACTIVE_STATUSES or previous.status in RESUMABLE_STATUSES
    )
    already = previous is not None and not resuming
    out = _console()
    progress = _Progress(
        out,
        [c.name for c in pipeline.enabled_channels],
        show=out.is_terminal and not as_json and not already and not _quiet(),
        extracting=not resuming,
    )
    with _sandbox_journal(sandbox, pipeline, output_dir):
        report = _drive(
            lambda: pipeline.run(
                logical_date=logical,
                force=force,
                run_id=run_id,
                output_dir=output_dir,
                progress=progress,
                on_extracted=progress.on_extracted,
                limit=limit,
            ),
            progress,
            config=config,
            interrupted=lambda: _interrupt_message(
                where, _find_run(pipeline, logical_date=logical)
            ),
        )
    before = []
    if report.replayed:
        before.append(
            f"Already ran: nothing was sent now. Logical date {_utc(logical)} has run "
            f"{report.run_id} ({report.status.value}); --force starts a new run."
        )
    elif resuming and previous is not None and previous.status == RunStatus.CANARY.value:
        before.append(
            f"Canary:    logical date {_utc(logical)} had canary run {previous.run_id}; "
            f"its recipients were not messaged again"
            + (f", and at most {limit} more per channel were now." if limit else ".")
        )
    elif resuming and previous is not None:
        before.append(
            f"Resumed:   logical date {_utc(logical)} had an unfinished run "
            f"{previous.run_id} ({previous.status}); only what it still owed was sent."
        )
    after = _record_sandbox(sandbox) if sandbox else []
    if as_json and str(report.status) == RunStatus.CANARY.value:
        after += _hints(report, where, logical_date=logical)[:1]  # stdout stays pure JSON
    return _emit(
        report,
        as_json=as_json,
        where=where,
        ledger=keeps_ledger,
        before=before,
        after=after,
        logical_date=logical,
        doubts=_run_doubts(pipeline, report),
    )


# -- dry run -------------------------------------------------------------------------------

#: Skip reasons in the order selection applies them (others follow, by name).
_SELECTION_ORDER = (
    Reason.MISSING_ADDRESS.value,
    Reason.INVALID_ADDRESS.value,
    Reason.NO_CONSENT.value,
    Reason.SUPPRESSED.value,
    Reason.DUPLICATE.value,
    Reason.FILTERED.value,
    Reason.FREQUENCY_CAPPED.value,
    Reason.OVER_TARGET.value,
    Reason.DEFERRED.value,
)

#: What a failure reason of the dry run means, for the notes under the table.
_FAILURE_MEANING = {
    "too_many_segments": "the SMS would be longer than max_sms_segments",
    "payload_too_large": "the push payload would exceed the provider's size limit",
    "render_error": "the template cannot be rendered for the recipient",
    "invalid_unsubscribe_url": "the rendered unsubscribe_url is not a valid https URL",
}

#: Stands in for a missing token in a dry run, which opens no connection.
_DRY_RUN_TOKEN = "dry-run-placeholder"  # noqa: S105 - not a credential


def _in_selection_order(counts: Mapping[str, int]) -> list[tuple[str, int]]:
    rank = {reason: i for i, reason in enumerate(_SELECTION_ORDER)}
    return sorted(
        ((k, v) for k, v in counts.items() if v),
        key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]),
    )


def _dry_run_env(
    config: PipelineConfig, pm: pluggy.PluginManager, env: Mapping[str, str] | None
) -> tuple[dict[str, str], list[str]]:
    """The environment of a dry run: a placeholder for every required token that is not
    set (a dry run sends nothing), and a note for each, since a real run would stop."""
    out = dict(env if env is not None else os.environ)
    notes = []
    registry = Registry(pm)
    for channel in config.channels:
        if not channel.enabled or out.get(channel.token_variable):
            continue
        try:
            cls = registry.notifier_class(channel.provider)
        except PluginError:
            continue  # the plan reports the unknown provider
        if cls.token_required:
            out[channel.token_variable] = _DRY_RUN_TOKEN
            variable = channel.token_variable
            if not ENV_NAME.match(variable):  # maybe the token itself: never shown
                variable = f"token_env of channel {channel.name} (not a variable name)"
            notes.append(
                f"Note:      {variable} is not set: the dry run does not need "
                f"it, but a real run would stop before sending (channel {channel.name})"
            )
    return out, notes


def _plan_path(pipeline: Pipeline, output_dir: Path | None, created: datetime) -> Path:
    """``<output_dir>/plan-<timestamp>.json``, not overwriting an earlier plan."""
    root = pipeline.output_root(output_dir)
    stamp = created.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = root / f"plan-{stamp}.json"
    n = 1
    while path.exists():
        n += 1
        path = root / f"plan-{stamp}-{n}.json"
    return path


def _write_plan(path: Path, text: str) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot write the plan to {path}: {exc.strerror or exc}") from None


def _dry_run(
    config: PipelineConfig,
    pm: pluggy.PluginManager,
    env: Mapping[str, str] | None,
    path: Path,
    *,
    as_json: bool,
    samples: int,
    plan_output: Path | None,
    output_dir: Path | None,
    sandboxed: bool = False,
) -> int:
    """Plan the run (:meth:`Pipeline.plan`), print and write the plan; exit 0."""
    with _input_errors(path):
        env, notes = _dry_run_env(config, pm, env)
    pipeline = _build(config, pm, env, rehearsal=sandboxed)
    out = _console()
    progress = _Progress(out, [], show=False)

    def plan() -> PlanReport:
        if out.is_terminal and not as_json and not _quiet():
            with out.status("Dry run: extracting the segment, selecting and rendering..."):
                return pipeline.plan(samples=samples)
        return pipeline.plan(samples=samples)

    report = _drive(
        plan,
        progress,
        config=path,
        interrupted=lambda: "dry run interrupted; nothing was sent",
    )
    notes += _guard_notes(config, report)
    target = plan_output or _plan_path(pipeline, output_dir, report.created_at)
    text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False) + "\n"
    with _input_errors(path):
        _write_plan(target, text)
    if as_json:
        click.echo(text, nl=False)
        err = _console(stderr=True)
        for note in notes:
            err.print(note)
        err.print(f"Plan:      {target}")
        return EXIT_OK
    if not _quiet():
        _plan_summary(out, report, samples=samples)
        for note in notes:
            out.print(note)
    out.print(f"Plan:      {target}")
    if not _quiet():
        where = _Where(path, sandboxed)
        out.print(
            f"Nothing was sent. {where.command('run', flags='--limit N')} sends a canary "
            f"first; {where.command('run')} sends it all."
        )
    out.print(f"Status: dry run (exit {EXIT_OK})")
    return EXIT_OK


def _guard_notes(config: PipelineConfig, report: PlanReport) -> list[str]:
    """The ``expected_audience`` guards a run of this plan would trip (a dry run does not
    stop for them)."""
    notes = []
    for channel in config.channels:
        summary = report.channels.get(channel.name)
        expected = channel.expected_audience
        if summary is None or expected is None:
            continue
        # As the run counts it: every recipient selected, sent now or later.
        eligible = summary.eligible + summary.deferred + sum(summary.failures.values())
        tolerance = channel.audience_tolerance
        if abs(eligible - expected) > tolerance * expected:
            notes.append(
                f"Guard:     channels.{channel.name}: {eligible} eligible recipient(s), "
                f"expected {expected} ± {tolerance:.0%}: a run would stop before sending "
                f"(exit {EXIT_INPUT_ERROR})"
            )
    return notes


def _plan_summary(console: Console, report: PlanReport, *, samples: int) -> None:
    """The per-channel plan table, what the failures mean, and the rendered samples."""
    channels = list(report.channels.values())
    console.print(f"{report.pipeline} · dry run · nothing sent")
    table = Table(box=box.SIMPLE_HEAD)
    deferred = any(c.deferred for c in channels)
    segments = any(c.sms_segments is not None for c in channels)
    priced = any(c.estimated_cost is not None for c in channels)
    headers = ["channel", "provider", "eligible"]
    headers += ["deferred"] if deferred else []
    headers += ["skipped", "skip reasons", "would fail"]
    headers += ["SMS segments"] if segments else []
    headers += ["est. cost"] if priced else []
    numeric = {"eligible", "deferred", "skipped", "SMS segments", "est. cost"}
    for header in headers:
        table.add_column(header, justify="right" if header in numeric else "left", no_wrap=True)
    blocks = []
    for c in channels:
        reasons = [f"{reason} {n}" for reason, n in _in_selection_order(c.skipped)]
        failures = [f"{reason} {n}" for reason, n in _top(c.failures, len(c.failures))]
        cells: list[str | Text] = [c.channel, c.provider, str(c.eligible)]
        cells += [str(c.deferred)] if deferred else []
        cells += [
            str(sum(c.skipped.values())),
            "\n".join(reasons) or "-",
            Text("\n".join(failures), style="red") if failures else "-",
        ]
        segments_text = "-" if c.sms_segments is None else str(c.sms_segments)
        cost_text = "-" if c.estimated_cost is None else f"{c.estimated_cost:,.2f}"
        cells += [segments_text] if segments else []
        cells += [cost_text] if priced else []
        table.add_row(*cells)
        head = [f"{c.eligible} eligible"]
        head += [f"{c.deferred} deferred"] if deferred else []
        head += [f"{sum(c.skipped.values())} skipped"]
        head += [f"{segments_text} SMS segments"] if c.sms_segments is not None else []
        head += [f"est. cost {cost_text}"] if c.estimated_cost is not None else []
        block: list[str | Text] = [f"{c.channel} ({c.provider}): {', '.join(head)}"]
        block += [f"  skipped: {', '.join(reasons)}"] if reasons else []
        block += [Text(f"  would fail: {', '.join(failures)}", style="red")] if failures else []
        blocks.append(block)
    if _fits(console, table):
        console.print(table)
    else:  # a narrow terminal: one block per channel, every line whole
        for lines in blocks:
            for line in lines:
                console.print(line)
    rejected = f" ({_counts(report.rejected_reasons)})" if report.rejected_reasons else ""
    console.print(
        f"Segment:   {report.rows_read} row(s) read, {report.rows_rejected} rejected{rejected}"
    )
    if report.lines:
        console.print(_lines(report.lines))
    costs = [c.estimated_cost for c in channels if c.estimated_cost is not None]
    if len(costs) > 1:
        console.print(
            f"Cost:      {sum(costs):,.2f} estimated in total "
            f"(price_per_message, price_per_segment; unpriced channels not counted)"
        )
    if deferred:
        console.print(
            "Deferred:  held back by quiet hours; a run now would send them later, by a "
            "resume once the window opens"
        )
    failing = sorted({reason for c in channels for reason in c.failures})
    for reason in failing:
        meaning = _FAILURE_MEANING.get(reason, "the message breaks a content rule")
        console.print(f"Would fail: {reason}: {meaning}")
    if samples:
        for c in channels:
            _print_samples(console, c)


def _print_samples(console: Console, summary: ChannelPlanSummary) -> None:
    total = len(summary.samples)
    for i, message in enumerate(summary.samples, 1):
        _heading(
            console,
            f"{summary.channel} sample {i}/{total}: {message.recipient_id} -> {message.address}",
        )
        _print_message(console, message, html=False)
        if summary.sms_segments is not None:
            info = sms_segments(message.body)
            console.print(
                f"(SMS: {info.segments} segment(s), {info.encoding}, "
                f"{info.characters} character(s))"
            )


def _scheduled_dict(result: ScheduledRuns) -> dict[str, Any]:
    return {
        "reports": [r.to_dict() for r in result.reports],
        "skipped": [_interval_dict(i) for i in result.skipped],
        "blocked": [
            {**_interval_dict(b.interval), "cause": b.cause, "reason": b.reason}
            for b in result.blocked
        ],
        "next_due": _iso(result.next_due),
    }


def _interval_dict(interval: Interval) -> dict[str, Any]:
    return {"logical_date": _iso(interval.start), "due": _iso(interval.end)}


def _skipped_line(interval: Interval, schedule: Schedule) -> str:
    return (
        f"Skipped:   logical date {_utc(interval.start)}: due at {_utc(interval.end)}, more "
        f"than max_lateness_minutes ({schedule.max_lateness_minutes:g}) ago; recorded as "
        f"skipped_late, nothing sent"
    )


def _next_due_line(pipeline: Pipeline, next_due: datetime | None) -> str:
    schedule = pipeline.schedule
    if not schedule.enabled:
        return "Next due:  never (schedule.enabled = false)"
    if next_due is None:
        return "Next due:  none (the schedule's end_date has passed)"
    local = "" if schedule.timezone == "UTC" else f" ({_local(next_due, schedule.timezone)})"
    return f"Next due:  {_utc(next_due)}{local}"


def _run_scheduled(pipeline: Pipeline, config: Path, sandbox: Any, *, as_json: bool) -> int:
    where = _Where(config, sandbox is not None)
    progress = _Progress(_console(), [], show=False)
    with _sandbox_journal(sandbox, pipeline, None):
        result = _drive(
            lambda: pipeline.run_scheduled(progress=progress),
            progress,
            config=config,
            interrupted=lambda: _interrupt_message(where, _find_run(pipeline)),
        )
    code = max((_report_exit(r) for r in result.reports), default=EXIT_OK)
    notes = []
    if sandbox is not None:
        notes = _record_sandbox(sandbox)
    if as_json:
        click.echo(json.dumps(_scheduled_dict(result), indent=2))
        err = _console(stderr=True)
        for note in notes:
            err.print(note)
        return code
    out = _console()
    if _quiet():
        for report in result.reports:
            _quiet_problems(report)
            out.print(
                f"Status: {report.status.value} (exit {_report_exit(report)}): run {report.run_id}"
            )
        out.print(f"Started {len(result.reports)} run(s) (exit {code})")
        return code
    for report in result.reports:
        _summary(
            out,
            report,
            where=where,
            ledger=pipeline.execution.ledger,
            doubts=_run_doubts(pipeline, report),
        )
        out.print(f"Status: {report.status.value} (exit {_report_exit(report)})")
        out.print()
    for interval in result.skipped:
        out.print(_skipped_line(interval, pipeline.schedule))
    for blocked in result.blocked:
        out.print(f"Blocked:   logical date {_utc(blocked.interval.start)}: {blocked.reason}")
    if not (result.reports or result.skipped or result.blocked):
        out.print("Nothing due.")
    out.print(_next_due_line(pipeline, result.next_due))
    for note in notes:
        out.print(note)
    out.print(f"Started {len(result.reports)} run(s) (exit {code})")
    return code


# -- resume and retry-failed ---------------------------------------------------------------


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
    configs, pm = _prepare([config], retry_delay=retry_delay, use_sandbox=use_sandbox, block=block)
    with (
        _sigterm_interrupts("interrupted before sending started; nothing was sent"),
        _sandboxed(configs, use_sandbox, pm) as (applied, env, sandbox),
    ):
        pipeline = _build(applied[0], pm, env, rehearsal=use_sandbox)
        where = _Where(config, use_sandbox)
        before = []
        with _input_errors(config), _open_ledger(pipeline, required=True) as ledger:
            assert ledger is not None
            record = _get_run(pipeline, ledger, run_id, where)
            run_id = record.run_id  # ``latest`` resolved
            if record.status == RunStatus.SKIPPED_LATE.value:
                late = f"--logical-date {record.logical_date.isoformat()} --force"
                raise LedgerError(
                    f"run {run_id!r} was skipped as too late and has nothing to resume; "
                    f"{where.command('run', flags=late)} sends it now"
                )
            if sandbox is None and record.fingerprint != pipeline.fingerprint():
                before.append(
                    "Note:      the campaign (source, channels, options or templates) changed "
                    "since the run started; what is left is sent as configured now."
                )
        if output_dir is None:
            # Keep the run's report next to its rejected rows when it was written elsewhere.
            stored = _stored_report(record)
            if stored is not None and stored.output_dir:
                output_dir = Path(stored.output_dir).parent
        names = [c.name for c in pipeline.enabled_channels if not channels or c.name in channels]
        out = _console()
        progress = _Progress(
            out,
            names,
            show=out.is_terminal and not as_json and not _quiet(),
            extracting=False,
        )
        with _sandbox_journal(sandbox, pipeline, output_dir):
            report = _drive(
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
                interrupted=lambda: _interrupt_message(where, _find_run(pipeline, run_id=run_id)),
            )
        if report.replayed:
            before.insert(
                0,
                f"Finished:  nothing was sent now. Run {run_id} had finished "
                f"({report.status.value}) and owes nothing"
                + (" (no transient failures)" if retry_failed else "")
                + (" (no unknown deliveries)" if resend_unknown else "")
                + ("." if _quiet() else "; its stored report follows."),
            )
            after = []
        else:
            settled = ", ".join(f"{name} {progress.done.get(name, 0)}" for name in report.channels)
            after = [f"This time: settled (sent or failed) per channel: {settled or 'none'}"]
        if sandbox is not None:
            after += _record_sandbox(sandbox)
    code = _emit(
        report,
        as_json=as_json,
        where=where,
        ledger=pipeline.execution.ledger,
        before=before,
        after=after,
        doubts=_run_doubts(pipeline, report),
    )
    raise SystemExit(code)


@main.command(epilog=EPILOG)
@click.argument("config", type=_CONFIG)
@click.argument("run_id")
@click.option(
    "--resend-unknown",
    is_flag=True,
    help="Also send again the messages recorded as unknown (in flight at a crash, or in "
    "doubt after a timeout or a 5xx, to a provider without idempotency keys): they may be "
    "delivered twice.",
)
@_json_option
@_output_dir_option
@_sandbox_option
@_retry_delay_option
@_block_option
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
@click.argument("config", type=_CONFIG)
@click.argument("run_id")
@click.option(
    "--channel",
    "-c",
    "channels",
    multiple=True,
    metavar="NAME",
    help="Only this channel (repeatable; default: every enabled channel).",
)
@_json_option
@_output_dir_option
@_sandbox_option
@_retry_delay_option
@_block_option
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


# -- runs ----------------------------------------------------------------------------------


def _look(config: Path, use_sandbox: bool) -> Pipeline:
    """The pipeline of CONFIG for looking at its ledger (no plugins, no tokens)."""
    with _input_errors(config):
        cfg = load_config(config)
    return _build(cfg, None, None, rehearsal=use_sandbox)


def _run_dict(run: RunRecord, results: Mapping[str, ChannelResult]) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "pipeline": run.pipeline,
        "logical_date": _iso(run.logical_date),
        "status": run.status,
        "process_alive": run.in_progress if run.status in ACTIVE_STATUSES else None,
        "created_at": _iso(run.created_at),
        "finished_at": _iso(run.finished_at),
        "recipients": run.recipients,
        "channels": {
            name: {count: int(getattr(r, count, 0)) for count in _COUNTS}
            for name, r in results.items()
        },
    }


def _brief_counts(result: ChannelResult) -> str:
    parts = [f"{result.sent} sent"]
    parts += [f"{getattr(result, c)} {c}" for c in _COUNTS[1:] if getattr(result, c, 0)]
    return ", ".join(parts)


@main.command(epilog=EPILOG)
@click.argument("config", type=_CONFIG)
@click.option(
    "--limit",
    "-n",
    type=click.IntRange(min=1),
    default=20,
    show_default=True,
    help="How many runs, newest first.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as a JSON list.")
@_sandbox_ledger_option
def runs(config: Path, limit: int, as_json: bool, use_sandbox: bool) -> None:
    """List the runs of campaign CONFIG recorded in its ledger, newest first: logical
    date, status, times, recipients and per channel what was sent, failed, is pending
    or unknown."""
    pipeline = _look(config, use_sandbox)
    rows: list[tuple[RunRecord, dict[str, ChannelResult]]] = []
    with _input_errors(config), _open_ledger(pipeline, required=False) as ledger:
        if ledger is not None:
            for record in ledger.list_runs(pipeline.name, limit):
                stored = _stored_report(record)
                rows.append((record, _channel_results(ledger, record, pipeline, stored)))
    if as_json:
        click.echo(json.dumps([_run_dict(r, results) for r, results in rows], indent=2))
        return
    out = _console()
    if not rows:
        out.print(f"No runs of {pipeline.name} in {pipeline.state_path}{_sandbox_hint(pipeline)}.")
        return
    if not out.is_terminal and not _columns_set():
        out.width = max(out.width, 250)  # run ids are long; one line per run in files
    channels = list(dict.fromkeys(name for _, results in rows for name in results))
    out.print(f"Runs of {pipeline.name} ({pipeline.state_path})")
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
            _minute(record.logical_date),
            _status_text(record),
            _minute(record.created_at),
            _minute(record.finished_at),
            "-" if record.recipients is None else str(record.recipients),
        ]
        per_channel = [(n, _brief_counts(results[n])) for n in channels if n in results]
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
    if _fits(out, table):
        out.print(table)
    else:  # a narrow terminal: one block per run, its id whole on its own line
        for block in blocks:
            for line in block:
                out.print(line)


# -- report --------------------------------------------------------------------------------


def _deliveries(
    ledger: SqliteLedger, run_id: str, channels: Sequence[str | None]
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
@click.argument("config", type=_CONFIG)
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
@_sandbox_ledger_option
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
    pipeline = _look(config, use_sandbox)
    where = _Where(config, use_sandbox)
    with _input_errors(config), _open_ledger(pipeline, required=True) as ledger:
        assert ledger is not None
        record = _get_run(pipeline, ledger, run_id, where)
        run_id = record.run_id  # ``latest`` resolved
        stored = _stored_report(record)
        results = _channel_results(ledger, record, pipeline, stored)
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
                    name: _doubts_from_counts(ledger.counts(run_id, name))
                    for name, result in results.items()
                    if result.unknown and ledger.is_planned(run_id, name)
                }
                _report_table(stream, record, stored, results, where, channels, doubts)
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
    where: _Where,
    channels: Sequence[str],
    doubts: Mapping[str, Mapping[str, int]],
) -> None:
    console = _console(file=None if stream is sys.stdout else stream)
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
        f"Logical date {_utc(record.logical_date)} · created {_utc(record.created_at)} · "
        f"finished {_utc(record.finished_at)} · "
        f"{'-' if record.recipients is None else record.recipients} recipient(s)"
    )
    going = record.in_progress
    _summary(
        console,
        view,
        where=where,
        status=_status_text(record),
        results_hint=False,
        hints=not going,  # nothing to resume while its process sends it
        doubts=doubts,
    )
    if record.status == RunStatus.SKIPPED_LATE.value:
        console.print("Skipped:   due too long ago (max_lateness_minutes); nothing was sent")
    console.print(f"Per recipient: {where.command('report', record.run_id, '--format csv')}")


# -- suppress and suppressions ------------------------------------------------------------

#: Only to build a channel's notifier (for its address field); nothing is sent.
_SUPPRESS_TOKEN = "suppress-placeholder"  # noqa: S105 - not a credential


def _channel(config: PipelineConfig, name: str) -> Channel:
    for channel in config.channels:
        if channel.name == name:
            return channel
    have = ", ".join(c.name for c in config.channels)
    raise ConfigError(f"no channel named {name!r} (channels: {have})", path=f"channels.{name}")


def _address_validator(
    config: PipelineConfig, channel: Channel, pm: pluggy.PluginManager
) -> tuple[str, AddressValidator]:
    """The channel's address kind (its notifier's ``address_field``, the ledger's
    suppression kind) and the validator selection uses for it."""
    try:
        cls = Registry(pm).notifier_class(channel.provider)
    except PluginError as exc:
        raise ConfigError(str(exc), path=f"channels.{channel.name}.provider") from None
    field = str(channel.options.get("address_field") or cls.address_field)
    try:  # a notifier may take its address field from its options
        notifier: Notifier[Any] = cls(
            ChannelSettings(
                channel=channel.name,
                options=channel.options,
                token=Secret(_SUPPRESS_TOKEN) if cls.token_required else None,
                timeout=channel.timeout_seconds,
                base_dir=config.base_dir,
            )
        )
        field = notifier.address_field
    except CampaignKitError:
        pass  # e.g. an account id read from an unset variable: not needed here
    return field, channel_validator(channel, cls.name, field)


#: What an address of each kind is called in messages: (one, several).
_KIND_NOUN = {
    "email": ("e-mail address", "e-mail address(es)"),
    "phone": ("phone number", "phone number(s)"),
    "push_token": ("push token", "push token(s)"),
}


def _suppress_inputs(
    addresses: Sequence[str], files: Sequence[Path], kind: str
) -> list[tuple[str, str]]:
    """``(where, value)`` of every address given: on the command line, or in files read
    like suppression files (plain text, or CSV with an ``address`` or ``kind`` column;
    ``#`` comments)."""
    out = [("argument", a) for a in addresses]
    for file in files:
        for line, value, _ in _suppression_entries(str(file), kind, None):
            out.append((f"{file}:{line}", value))
    return out


@main.command(epilog=EPILOG)
@click.argument("config", type=_CONFIG)
@click.argument("addresses", nargs=-1)
@click.option("--channel", "-c", required=True, help="The channel whose recipients are suppressed.")
@click.option(
    "--reason",
    default="unsubscribed",
    show_default=True,
    help="Why (kept with the entry; an address already suppressed keeps its reason).",
)
@click.option(
    "--from-file",
    "files",
    multiple=True,
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE",
    help="Also read addresses from FILE, one per line or a CSV with an 'address' column "
    "(or one named like the kind: email, phone, push_token). Repeatable.",
)
@click.option(
    "--sandbox",
    "use_sandbox",
    is_flag=True,
    help="Add to the sandbox's ledger (runs made with --sandbox).",
)
@_block_option
def suppress(
    config: Path,
    addresses: tuple[str, ...],
    channel: str,
    reason: str,
    files: tuple[Path, ...],
    use_sandbox: bool,
    block: tuple[str, ...],
) -> None:
    """Add ADDRESS... to the ledger's suppression list of CHANNEL's kind of address:
    no later run (or dry run) messages them, on any channel sending to that kind of
    address; they are skipped as `suppressed`.

    Addresses are validated and normalized as selection does (e-mail syntax, phone
    numbers to E.164 with the channel's phone_region, push tokens for the provider);
    if any is invalid, none is added and the command exits 2 naming them. The list is
    per kind (email, phone, push_token), so it holds for every channel sending to that
    kind of address.
    """
    if not addresses and not files:
        raise click.UsageError("give the addresses to suppress, or --from-file FILE")
    if not reason.strip():
        raise click.BadParameter("must not be empty", param_hint="--reason")
    if (found := find_control(reason, strict=True)) is not None:
        # One line of text: no escape sequence for the terminal, no line for a report.
        raise click.BadParameter(control_detail("the reason", *found), param_hint="--reason")
    with _input_errors(config):
        cfg = load_config(config)
        if not cfg.execution.ledger:
            raise ConfigError(
                "execution.ledger = false: runs of this campaign keep no ledger, so they "
                "would never read a suppression recorded there; use the channel's "
                "suppression_files instead",
                path="execution.ledger",
            )
        target = _channel(cfg, channel)
        kind, validator = _address_validator(cfg, target, _plugin_manager(block))
        inputs = _suppress_inputs(addresses, files, validator.kind)
    keys: dict[str, str] = {}  # key -> the value as given (first time)
    invalid: list[str] = []
    for where, value in inputs:
        normalized = validator.normalize_value(value.strip())
        if normalized is None:
            invalid.append(repr(value) if where == "argument" else f"{where}: {value!r}")
        else:
            keys.setdefault(validator.key(normalized), value)
    noun, nouns = _KIND_NOUN.get(validator.kind, ("address", "address(es)"))
    if invalid:
        shown = ", ".join(invalid[:10]) + (f" and {len(invalid) - 10} more" if invalid[10:] else "")
        hint = ""
        if validator.kind == "phone" and target.phone_region is None:
            hint = f" (numbers without +country code need channels.{channel}.phone_region)"
        _fail(
            f"not a valid {noun} for channel {channel!r}: {shown}{hint}; nothing was suppressed",
            EXIT_INPUT_ERROR,
        )
    pipeline = _build(cfg, None, None, rehearsal=use_sandbox)
    with _input_errors(config):
        ledger = pipeline.ledger()
        try:
            known = {address: why for _, address, why, _ in ledger.suppressions(kind)}
            for key in keys:
                if key not in known:
                    ledger.suppress(kind, key, reason=reason, source="campaignkit suppress")
        finally:
            ledger.close()
    out = _console()
    added = [k for k in keys if k not in known]
    for key in keys if not _quiet() else ():
        state = f"already suppressed ({known[key]})" if key in known else f"added ({reason})"
        out.print(f"  {key}  {state}")
    out.print(
        f"Suppressed: {len(added)} {nouns} added, {len(keys) - len(added)} already there, "
        f"in {pipeline.state_path}; later runs skip them (suppressed) on every channel "
        f"sending to {kind}."
    )


@main.command(epilog=EPILOG)
@click.argument("config", type=_CONFIG)
@click.option("--kind", help="Only this kind of address: email, phone, push_token.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
    help="table; json: a list of {kind, address, reason, source}; csv: a header and one "
    "row per entry, safe to open in a spreadsheet.",
)
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="With --format json or csv: write to this file instead of stdout.",
)
@_sandbox_ledger_option
def suppressions(
    config: Path,
    kind: str | None,
    fmt: str,
    as_json: bool,
    output: Path | None,
    use_sandbox: bool,
) -> None:
    """List the ledger's suppression list of campaign CONFIG: the addresses added by
    `campaignkit suppress` and by providers' "stop" answers (an unsubscribed number,
    an unregistered device, a hard bounce), with why and where from.

    Channels' suppression_files are read by every run as well; they are named here but
    not listed.
    """
    if as_json:
        if fmt not in ("table", "json"):
            raise click.UsageError(f"--json and --format {fmt} contradict each other")
        fmt = "json"
    if output is not None and fmt == "table":
        raise click.UsageError("--output needs --format json or csv")
    pipeline = _look(config, use_sandbox)
    entries: list[tuple[str, str, str, str | None]] = []
    with _input_errors(config), _open_ledger(pipeline, required=False) as ledger:
        if ledger is not None:
            entries = ledger.suppressions(kind or None)
    if fmt != "table":
        with _input_errors(config):
            _export_suppressions(entries, fmt, output)
        if output is not None:
            click.echo(f"{len(entries)} suppressed address(es) written to {output}", err=True)
        return
    out = _console()
    if entries:
        out.print(f"Suppressed addresses ({pipeline.state_path})")
        table = Table(box=box.SIMPLE_HEAD)
        for header in ("kind", "address", "reason", "source"):
            table.add_column(header, no_wrap=True)
        for k, a, r, src in entries:
            table.add_row(k, a, r, src or "-")
        if _fits(out, table):
            out.print(table)
        else:  # a narrow terminal: one block per address, nothing broken or cut
            for k, a, r, src in entries:
                out.print(f"{k} {a}")
                out.print(f"  reason {r} · source {src or '-'}")
    what = f"{kind} " if kind else ""
    out.print(f"{len(entries)} suppressed {what}address(es) in the ledger.")
    for channel in pipeline.channels:
        if channel.suppression_files:
            out.print(
                f"Channel {channel.name} also skips the addresses in its suppression_files: "
                f"{', '.join(channel.suppression_files)}"
            )


_SUPPRESSION_FIELDS = ("kind", "address", "reason", "source")


def _export_suppressions(
    entries: Sequence[tuple[str, str, str, str | None]], fmt: str, output: Path | None
) -> None:
    """The suppression list as JSON or CSV (neutralised cells), to ``output`` or stdout."""
    with contextlib.ExitStack() as stack:
        stream: IO[str] = sys.stdout
        if output is not None:
            try:
                stream = stack.enter_context(output.open("w", encoding="utf-8", newline=""))
            except OSError as exc:
                raise ConfigError(f"cannot write {output}: {exc.strerror}") from None
        if fmt == "csv":
            writer = safe_csv_writer(stream)
            writer.writerow(_SUPPRESSION_FIELDS)
            writer.writerows(entries)
        else:
            rows = [dict(zip(_SUPPRESSION_FIELDS, entry, strict=True)) for entry in entries]
            stream.write(json.dumps(rows, indent=2, ensure_ascii=False) + "\n")


# -- schedule ------------------------------------------------------------------------------


def _describe_schedule(schedule: Schedule) -> str:
    parts = [f"cron {schedule.cron!r} in {schedule.timezone}"]
    parts.append(f"catchup {'on' if schedule.catchup else 'off'}")
    parts.append(f"from {_utc(schedule.start_date)}")
    if schedule.end_date is not None:
        parts.append(f"until {_utc(schedule.end_date)}")
    if schedule.max_lateness_minutes is not None:
        parts.append(f"max lateness {schedule.max_lateness_minutes:g} min")
    if not schedule.enabled:
        parts.append("DISABLED")
    return ", ".join(parts)


@main.command(epilog=EPILOG)
@click.argument("config", type=_CONFIG)
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
    type=_DATETIME,
    help="Compute as of this moment (ISO 8601, no offset: UTC) instead of now.",
)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@_sandbox_ledger_option
def schedule(
    config: Path, count: int, at: datetime | None, as_json: bool, use_sandbox: bool
) -> None:
    """Print what `campaignkit run CONFIG --scheduled` would do now, and the next
    logical dates of CONFIG's schedule with their due times in UTC and in the
    schedule's time zone. Sends nothing."""
    pipeline = _look(config, use_sandbox)
    sched = pipeline.schedule
    now = at or datetime.now(UTC)
    with _input_errors(config):
        upcoming_intervals = upcoming(sched, now, count)
        with _open_ledger(pipeline, required=False) as ledger:
            known = ledger.find_runs(pipeline.name) if ledger is not None else []
        plan = plan_due_runs(sched, pipeline.execution, now=now, runs=known)
    orphans = [r for r in known if r.status in ACTIVE_STATUSES and not r.in_progress]
    zone = sched.timezone
    if as_json:
        data = {
            "pipeline": pipeline.name,
            "now": _iso(now),
            "schedule": {
                "enabled": sched.enabled,
                "cron": sched.cron,
                "timezone": zone,
                "catchup": sched.catchup,
                "start_date": _iso(sched.start_date),
                "end_date": _iso(sched.end_date),
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
        click.echo(json.dumps(data, indent=2))
        return
    out = _console()
    out.print(f"{pipeline.name}: {_describe_schedule(sched)}")
    out.print(f"As of {_utc(now)}, campaignkit run --scheduled would:")
    lines = [f"  resume  run {r.run_id} (its process is gone)" for r in orphans]
    lines += [f"  start   logical date {_utc(i.start)} (due {_utc(i.end)})" for i in plan.start]
    lines += [
        f"  skip    logical date {_utc(i.start)} (due {_utc(i.end)}, too late)" for i in plan.skip
    ]
    lines += [f"  hold    logical date {_utc(b.interval.start)}: {b.reason}" for b in plan.blocked]
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
        local = [_local(interval.end, zone)] if zone != "UTC" else []
        table.add_row(_utc(interval.start), _utc(interval.end), *local)
    out.print(table)


# -- scheduler -----------------------------------------------------------------------------


def _stamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _say(line: str, *, err: bool = False) -> None:
    click.echo(f"[{_stamp()}] {line}", err=err)
    (sys.stderr if err else sys.stdout).flush()


def _report_line(report: RunReport) -> str:
    channels = "; ".join(f"{n} {_brief_counts(r)}" for n, r in report.channels.items())
    return f"run {report.run_id} {report.status.value}" + (f": {channels}" if channels else "")


@main.command(epilog=EPILOG)
@click.argument("configs", nargs=-1, required=True, type=_CONFIG)
@click.option(
    "--poll",
    type=click.FloatRange(min=0.05),
    default=60.0,
    show_default=True,
    metavar="SECONDS",
    help="Longest sleep between checks (blocked runs are retried this often).",
)
@_sandbox_option
@_retry_delay_option
@_block_option
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
    loaded, pm = _prepare(paths, retry_delay=retry_delay, use_sandbox=use_sandbox, block=block)
    started = datetime.now(UTC)
    pipelines: list[tuple[Path, Pipeline]] = []
    with _sigterm_interrupts(), _sandboxed(loaded, use_sandbox, pm) as (applied, env, _sandbox):
        try:
            for path, cfg in zip(paths, applied, strict=True):
                pipeline = _build(cfg, pm, env, rehearsal=use_sandbox)
                with _input_errors(path):
                    pipeline.validate()
                pipelines.append((path, pipeline))
            names = ", ".join(p.name for _, p in pipelines)
            _say(f"scheduler started for {names}; checking at least every {poll:g}s")
            _schedule_loop(pipelines, poll)
        except KeyboardInterrupt:
            _say("stopping (requests in flight, if any, finished and were recorded)")
            for path, pipeline in pipelines:
                _report_unfinished(_Where(path, use_sandbox), pipeline, since=started)
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
                _say(f"{pipeline.name}: error: {_describe_error(exc, path)}", err=True)
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
                _say(f"{pipeline.name}: {_skipped_line(interval, pipeline.schedule)}")
            held = "; ".join(f"{_utc(b.interval.start)}: {b.reason}" for b in result.blocked)
            state = f"{held}|{result.next_due}"
            if last_said.get(pipeline.name) != state:  # say it when it changes
                last_said[pipeline.name] = state
                if held:
                    _say(f"{pipeline.name}: held back: {held}")
                when = _next_due_line(pipeline, result.next_due).removeprefix("Next due:  ")
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


def _report_unfinished(where: _Where, pipeline: Pipeline, *, since: datetime) -> None:
    """Name the runs this scheduler left unfinished, with the command that resumes them."""
    try:
        with _open_ledger(pipeline, required=False) as ledger:
            recent = ledger.list_runs(pipeline.name, 20) if ledger is not None else []
    except CampaignKitError:
        return
    for run in recent:
        if run.created_at < since and (run.finished_at is None or run.finished_at < since):
            continue
        if run.status in RESUMABLE_STATUSES or run.status in ACTIVE_STATUSES:
            _say(
                f"{pipeline.name}: run {run.run_id} is {run.status}; "
                f"{where.command('resume', run.run_id)} sends the rest"
            )


# -- validate ------------------------------------------------------------------------------


def _one_line(text: str) -> str:
    return " ".join(redact(text).splitlines())


def _problem_sections(problems: Sequence[Problem]) -> list[str]:
    """Problems grouped under a heading per group (``Config:``, ``Tokens:`` ...), one
    line each: ``file:line: key.path: message``."""
    lines: list[str] = []
    group = None
    for problem in problems:
        if problem.group != group:
            group = problem.group
            lines.append(f"{group.capitalize()}:")
        lines.append(f"  {_one_line(str(problem))}")
    return lines


def _fail_problems(exc: CampaignKitError, config: Path | None, code: int) -> None:
    """Exit with ``code`` listing every problem, grouped, when ``exc`` carries several
    (a ConfigError from checking a whole campaign); return otherwise."""
    if not isinstance(exc, ConfigError) or len(exc.problems) < 2:
        return
    problems = tuple(_as_given(p, config) for p in exc.problems)
    file = config or exc.file
    where = f"{file}: " if file else ""
    click.echo(f"campaignkit: error: {where}{len(problems)} problems", err=True)
    for line in _problem_sections(problems):
        click.echo(line, err=True)
    raise SystemExit(code)


def _print_summary(out: Console, config: Path, check: CampaignCheck, cfg: PipelineConfig) -> None:
    summary = check.summary
    assert summary is not None
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
        if channel.filter:
            target += f", filter: {channel.filter}"
        out.print(f"    {name} -> {provider} (token: ${channel.token_variable}{target})")
    for name in summary.disabled:
        out.print(f"    {name} -> {by_name[name].provider} (disabled)")


def _print_rows(out: Console, rows: RowCheck) -> None:
    """The ``--rows`` report: counts by reason, then the first rows of each kind."""
    out.print(
        f"Rows: {rows.source}: {rows.rows_read} read, {rows.accepted} accepted, "
        f"{rows.rejected} rejected"
    )
    if rows.reasons:
        out.print(f"  rejected: {_counts(rows.reasons)}")
        shown = len(rows.examples)
        more = f" (first {shown} of {rows.rejected})" if shown < rows.rejected else ""
        if shown:
            out.print(f"  rejected rows{more}:")
        for example in rows.examples:
            out.print(f"    {_one_line(str(example))}")
    invalid = {k: v for k, v in rows.invalid_addresses.items() if v}
    if invalid:
        out.print(f"  invalid addresses (skipped as invalid_address): {_counts(invalid)}")
        total = sum(invalid.values())
        shown = len(rows.address_examples)
        more = f" (first {shown} of {total})" if shown < total else ""
        if shown:
            out.print(f"  invalid addresses{more}:")
        for example in rows.address_examples:
            out.print(f"    {_one_line(str(example))}")


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
        check = check_campaign(path, plugins=_plugin_manager(block))
        skipped = ("tokens", "channels") if use_sandbox else ("tokens",)
        problems = [p for p in check.problems if p.group not in skipped]
        raise ConfigError.of(problems or exc.problems, file=str(path)) from None


@main.command(epilog=EPILOG)
@click.argument("config", type=_CONFIG)
@click.option("--json", "as_json", is_flag=True, help="Print the result (problems, rows) as JSON.")
@click.option(
    "--rows",
    is_flag=True,
    help="Also read the whole segment as a run would (nothing is sent or recorded) and "
    "report the rows it would reject and the invalid addresses, with file, line and field.",
)
@click.option(
    "--examples",
    type=click.IntRange(min=0),
    metavar="N",
    help="With --rows: list at most N rejected rows and N invalid addresses (default 20).",
)
@click.option(
    "--strict",
    is_flag=True,
    help="With --rows: exit 2 when any row is rejected or any address is invalid.",
)
@_block_option
def validate(
    config: Path,
    as_json: bool,
    rows: bool,
    examples: int | None,
    strict: bool,
    block: tuple[str, ...],
) -> None:
    """Check CONFIG without sending: schema, plugins, provider options, tokens, the
    segment's header and every template; every problem is listed, grouped, with its key
    path and file:line (exit 2 when there is one).

    With --rows the whole segment is read too (as a run reads it, without sending or
    recording anything) and its rejected rows and invalid addresses are reported."""
    if (strict or examples is not None) and not rows:
        raise click.UsageError("--strict and --examples need --rows")
    with _input_errors(config):
        pm = _plugin_manager(block)
        check = check_campaign(
            config, rows=rows, examples=20 if examples is None else examples, plugins=pm
        )
    rejected = check.rows is not None and (
        check.rows.rejected > 0 or any(check.rows.invalid_addresses.values())
    )
    code = EXIT_INPUT_ERROR if check.problems or (strict and rejected) else EXIT_OK
    if as_json:
        click.echo(json.dumps(check.to_dict(), indent=2))
        raise SystemExit(code)
    out = _console()
    if check.summary is not None:
        with _input_errors(config):
            _print_summary(out, config, check, load_config(config))
    if check.rows is not None:
        _print_rows(out, check.rows)
    if len(check.problems) == 1:
        _fail(str(check.problems[0]), EXIT_INPUT_ERROR)
    if check.problems:
        click.echo(f"campaignkit: error: {config}: {len(check.problems)} problems", err=True)
        for line in _problem_sections(check.problems):
            click.echo(line, err=True)
    raise SystemExit(code)


# -- preview -------------------------------------------------------------------------------


def _message_dict(message: Message) -> dict[str, Any]:
    out: dict[str, Any] = {"recipient_id": message.recipient_id, "address": message.address}
    for part in ("subject", "title", "body", "html"):
        value = getattr(message, part)
        if value is not None and (value or part == "body"):
            out[part] = value
    if message.data:
        out["data"] = dict(message.data)
    if message.headers:
        out["headers"] = dict(message.headers)
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
        _heading(out, f"{channel} {i}/{len(messages)}: {message.recipient_id} -> {message.address}")
        _print_message(out, message)
    out.print(f"{len(messages)} message(s) rendered; nothing was sent.")


def _heading(console: Console, title: str) -> None:
    """A rule titled ``title``; the title alone when the rule would cut it."""
    if cell_len(title) + 6 <= console.width:
        console.rule(title)
    else:
        console.print(title)


def _print_message(console: Console, message: Message, *, html: bool = True) -> None:
    """A rendered message's parts, one ``key: value`` each (multi-line values indented);
    without ``html``, only the HTML part's size."""
    for key, value in _message_dict(message).items():
        if key in ("recipient_id", "address"):
            continue
        if key == "html" and not html:
            console.print(f"html: {len(value)} character(s), not shown")
            continue
        if key == "headers":
            for name, header in value.items():
                console.print(f"{name}: {header}")
            continue
        if key == "data":
            value = json.dumps(value, ensure_ascii=False)
        text = str(value)
        if "\n" in text.strip():
            console.print(f"{key}:")
            for line in text.strip("\n").splitlines():
                console.print(f"  {line}")
        else:
            console.print(f"{key}: {text}")


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
    table = Table(box=None, pad_edge=False)
    for header in (
        "provider",
        "package",
        "address",
        "batch",
        "idempotent",
        "default rate",
        "token",
    ):
        table.add_column(header, justify="right" if header == "batch" else "left", no_wrap=True)
    blocks = []
    for row in rows:
        cells = [
            row["provider"],
            _package(row["package"]),
            row["address_field"],
            str(row["max_batch_size"]),
            "yes" if row["idempotency_keys"] else "no",
            row["default_rate"],
            "required" if row["token_required"] else "optional",
        ]
        table.add_row(*cells)
        blocks.append(
            [
                f"{cells[0]} ({cells[1]})",
                f"  address {cells[2]} · batch {cells[3]} · idempotent {cells[4]}",
                f"  default rate {cells[5]} · token {cells[6]}",
            ]
        )
    out.print("Channel providers")
    if _fits(out, table):
        out.print(table)
    else:  # a narrow terminal: one block per provider, nothing cut
        for provider_lines in blocks:
            for line in provider_lines:
                out.print(line)
    sources_table = Table(box=None, pad_edge=False)
    sources_table.add_column("type", no_wrap=True)
    sources_table.add_column("package", no_wrap=True)
    for source in source_rows:
        sources_table.add_row(source["type"], _package(source["package"]))
    out.print("Source types")
    if _fits(out, sources_table):
        out.print(sources_table)
    else:
        for source in source_rows:
            out.print(f"{source['type']} ({_package(source['package'])})")


# -- sandbox -------------------------------------------------------------------------------


def _fault_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """``--error-rate``, ``--rate-limit``... : ``VALUE`` for every server or
    ``PROVIDER=VALUE``, repeatable."""
    from .testing.sandbox._settings import FAULT_SETTINGS

    helps = {
        "error_rate": "Probability that a request gets a 5xx instead of being processed.",
        "rate_limit": "Requests per second above which the server answers the provider's 429.",
        "retry_after": "Seconds announced in Retry-After with a 429 (default 1; at most a day).",
        "stall_rate": "Probability that the server waits --stall-seconds before answering.",
        "stall_seconds": "How long a stall lasts, in seconds (default 5; at most a day).",
        "drop_rate": "Probability that the connection is closed without an answer.",
        "latency": "Seconds added before every answer (at most a day).",
        "seed": "Seed of the random draws, for reproducible faults.",
    }
    for setting in reversed(FAULT_SETTINGS):
        func = click.option(
            setting.option,
            setting.field,
            multiple=True,
            metavar="[PROVIDER=]VALUE",
            help=f"{helps[setting.field]} {setting.expects.capitalize()}; for every server, "
            "or PROVIDER=VALUE for one (which wins). Repeatable.",
        )(func)
    return func


@attrs.frozen
class _SandboxSetup:
    """What ``campaignkit sandbox`` was asked to start."""

    providers: tuple[str, ...]
    server_options: Mapping[str, Mapping[str, Any]]
    #: providers whose token the user gave (``--token``): printed only on request
    given_tokens: frozenset[str]
    faults: Mapping[str, Mapping[str, float | int]]


def _sandbox_assignments(
    hint: str, values: Iterable[str], providers: Sequence[str], **kwargs: Any
) -> list[Any]:
    """``PROVIDER=VALUE`` options parsed; a bad one is a usage error naming ``hint``."""
    from .testing.sandbox._settings import SettingError, parse_assignment

    try:
        return [parse_assignment(v, providers=providers, **kwargs) for v in values]
    except SettingError as exc:
        raise click.BadParameter(str(exc), param_hint=hint) from None


def _sandbox_ports(chosen: Sequence[str], port_base: int, ports: Iterable[str]) -> dict[str, int]:
    """Provider -> fixed port, from ``--port-base`` and ``--port``; no port twice."""
    from .testing.sandbox._settings import SettingError, parse_port

    fixed = {name: port_base + i for i, name in enumerate(chosen)} if port_base else {}
    for a in _sandbox_assignments("--port", ports, chosen, provider_required=True, what="PORT"):
        try:
            fixed[a.provider] = parse_port(a.value)
        except SettingError as exc:
            raise click.BadParameter(f"{a.provider}: {exc}", param_hint="--port") from None
    taken: dict[int, str] = {}
    for name, port in fixed.items():
        if port in taken:
            raise click.BadParameter(
                f"{taken[port]} and {name} would both listen on port {port}", param_hint="--port"
            )
        taken[port] = name
    return fixed


def _sandbox_senders(chosen: Sequence[str], senders: Iterable[str]) -> dict[str, dict[str, Any]]:
    """Provider -> ``{keyword: senders}`` for its server, from ``--sender``."""
    from .testing.sandbox import SENDER_KEYWORDS, sender_keyword

    allowed: dict[str, list[str]] = {}
    for a in _sandbox_assignments(
        "--sender", senders, chosen, provider_required=True, what="SENDER"
    ):
        allowed.setdefault(a.provider, []).append(a.value)
    out = {}
    for name, values in allowed.items():
        keyword = sender_keyword(name)
        if keyword is None:
            raise click.BadParameter(
                f"the {name} sandbox accepts any sender; senders can be fixed for: "
                f"{', '.join(SENDER_KEYWORDS)}",
                param_hint="--sender",
            )
        out[name] = {keyword: tuple(dict.fromkeys(values))}
    return out


def _sandbox_faults(
    chosen: Sequence[str], given: Mapping[str, tuple[str, ...]]
) -> dict[str, dict[str, float | int]]:
    """Provider -> fault fields, from ``--error-rate`` and the others: a bare value
    for every server that has the fault, ``PROVIDER=VALUE`` for one (winning)."""
    from .testing.sandbox._settings import FAULT_SETTINGS, SettingError, fault_values

    by_setting = {
        s: _sandbox_assignments(s.option, given.get(s.field, ()), chosen, provider_required=False)
        for s in FAULT_SETTINGS
    }
    out: dict[str, dict[str, float | int]] = {}
    for name in chosen:
        values: dict[str, float | int] = {}
        for setting, assignments in by_setting.items():
            if name == "smtp" and not setting.smtp:
                if any(a.provider == name for a in assignments):
                    raise click.BadParameter(
                        "the smtp sandbox takes --latency and --stall-seconds only (its "
                        "other faults are scripted from Python)",
                        param_hint=setting.option,
                    )
                continue
            try:
                values.update(fault_values({setting: assignments}, name))
            except SettingError as exc:
                raise click.BadParameter(str(exc), param_hint=setting.option) from None
        if values:
            out[name] = values
    return out


def _sandbox_setup(
    providers: tuple[str, ...],
    *,
    port_base: int,
    ports: tuple[str, ...],
    tokens: tuple[str, ...],
    senders: tuple[str, ...],
    twilio_account_sid: str | None,
    faults: Mapping[str, tuple[str, ...]],
) -> _SandboxSetup:
    """Check every option of ``campaignkit sandbox`` (``click.BadParameter``, exit 2,
    naming the option) and turn them into the servers' constructor arguments."""
    from .testing.sandbox import PROVIDERS, Faults
    from .testing.sandbox._settings import SettingError, check_token, parse_twilio_account_sid

    for name in providers:
        if name not in PROVIDERS:
            raise click.BadParameter(
                f"no sandbox for {name!r} (have: {', '.join(PROVIDERS)})", param_hint="--provider"
            )
    chosen = tuple(dict.fromkeys(providers)) or tuple(PROVIDERS)
    options: dict[str, dict[str, Any]] = {p: {} for p in chosen}
    for name, port in _sandbox_ports(chosen, port_base, ports).items():
        options[name]["port"] = port
    given = set()
    for a in _sandbox_assignments(
        "--token", tokens, chosen, provider_required=True, secret=True, what="TOKEN"
    ):
        try:
            options[a.provider]["token"] = check_token(a.value)
        except SettingError as exc:
            raise click.BadParameter(f"{a.provider}: {exc}", param_hint="--token") from None
        given.add(a.provider)
    for name, keywords in _sandbox_senders(chosen, senders).items():
        options[name].update(keywords)
    if twilio_account_sid is not None:
        if "twilio" not in chosen:
            raise click.BadParameter(
                "the twilio sandbox is not started (add --provider twilio)",
                param_hint="--twilio-account-sid",
            )
        try:
            options["twilio"]["account_sid"] = parse_twilio_account_sid(twilio_account_sid)
        except SettingError as exc:
            raise click.BadParameter(str(exc), param_hint="--twilio-account-sid") from None
    chosen_faults = _sandbox_faults(chosen, faults)
    for name, values in chosen_faults.items():
        if name == "smtp":
            from .testing.sandbox.smtp import SmtpFaults

            options[name]["faults"] = SmtpFaults(**values)  # type: ignore[arg-type]
        else:
            options[name]["faults"] = Faults(**values)  # type: ignore[arg-type]
    return _SandboxSetup(
        providers=chosen,
        server_options=options,
        given_tokens=frozenset(given),
        faults=chosen_faults,
    )


def _sandbox_description(
    servers: Any, setup: _SandboxSetup, *, show_tokens: bool
) -> dict[str, Any]:
    """Per provider, what to point a client at: the address, the channel options, the
    credentials and the environment variables; tokens given with ``--token`` are
    ``None`` unless ``show_tokens``."""
    from .testing.sandbox import CAMPAIGN_TOKEN_VARIABLES, CREDENTIALS

    described: dict[str, Any] = {}
    for name in setup.providers:
        hidden = name in setup.given_tokens and not show_tokens
        secret = {c.name for c in CREDENTIALS[name] if c.secret}
        secret_vars = {c.variable for c in CREDENTIALS[name] if c.secret}
        secret_vars.add(CAMPAIGN_TOKEN_VARIABLES[name])
        journal = servers.journal_paths().get(name)
        described[name] = {
            "url": servers.url(name),
            "options": servers.channel_options(name),
            "token": None if hidden else servers.servers[name].token,
            "token_given": name in setup.given_tokens,
            "credentials": {
                k: (None if hidden and k in secret else v)
                for k, v in servers.credentials(name).items()
            },
            "env": {
                k: (None if hidden and k in secret_vars else v)
                for k, v in servers.provider_env(name).items()
            },
            "faults": dict(setup.faults.get(name, {})),
            "journal": str(journal) if journal is not None else None,
        }
    return described


def _print_sandbox(out: Console, described: Mapping[str, Any], env: Mapping[str, str]) -> None:
    hidden = "<given with --token; --show-tokens prints it>"
    for name, info in described.items():
        out.print(f"{name}:")
        out.print(f"  url = {json.dumps(info['url'])}")
        for key, value in info["options"].items():
            out.print(f"  options.{key} = {json.dumps(value)}")
        token = info["token"]
        out.print(f"  token = {json.dumps(token) if token is not None else hidden}")
        for key, value in info["credentials"].items():
            out.print(f"  credentials.{key} = {json.dumps(value) if value is not None else hidden}")
        for variable, value in info["env"].items():
            shown = shlex.quote(value) if value is not None else hidden
            out.print(f"  export {variable}={shown}")
        if info["faults"]:
            faults = ", ".join(f"{k} {v:g}" for k, v in info["faults"].items())
            out.print(f"  faults: {faults}")
        if info["journal"]:
            out.print(f"  recording to {info['journal']}")
    for variable, value in env.items():
        out.print(f"export {variable}={shlex.quote(value)}")


@main.command(epilog=EPILOG)
@click.option(
    "--port-base",
    type=click.IntRange(0, 65_000),
    default=0,
    show_default=True,
    help="First port; providers get consecutive ports (0: free ports chosen by the system).",
)
@click.option(
    "--port",
    "ports",
    multiple=True,
    metavar="PROVIDER=PORT",
    help="This provider's server listens on PORT (over --port-base). Repeatable.",
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
    help="Record every accepted message to DIR/<provider>.jsonl as it is accepted "
    "(added to existing files).",
)
@click.option(
    "--token",
    "tokens",
    multiple=True,
    metavar="PROVIDER=TOKEN",
    help="The token this provider's server accepts (default: sandbox-token). Not printed "
    "back unless --show-tokens. Repeatable.",
)
@click.option(
    "--show-tokens",
    is_flag=True,
    help="Print the tokens given with --token in the credentials and variables.",
)
@click.option(
    "--sender",
    "senders",
    multiple=True,
    metavar="PROVIDER=SENDER",
    help="A sender the server accepts (Twilio, Telnyx: a From number); others are "
    "refused as the provider refuses them. Repeatable.",
)
@click.option(
    "--twilio-account-sid",
    metavar="AC...",
    help="The Twilio account SID the server serves (AC and 32 hex digits; default: random).",
)
@_fault_options
@click.option("--json", "as_json", is_flag=True, help="Print the description as one line of JSON.")
def sandbox(
    port_base: int,
    ports: tuple[str, ...],
    providers: tuple[str, ...],
    dump: Path | None,
    tokens: tuple[str, ...],
    show_tokens: bool,
    senders: tuple[str, ...],
    twilio_account_sid: str | None,
    as_json: bool,
    **faults: tuple[str, ...],
) -> None:
    """Serve the loopback provider sandboxes until interrupted (Ctrl-C or SIGTERM).

    Prints, per provider, its address, the channel options and credentials to use and
    the environment variables a program would set. Point a campaign's channels at the
    printed options (or run `campaignkit run CONFIG --sandbox`, which starts its own).
    """
    from .testing.sandbox import DEFAULT_ENV, Sandbox

    setup = _sandbox_setup(
        providers,
        port_base=port_base,
        ports=ports,
        tokens=tokens,
        senders=senders,
        twilio_account_sid=twilio_account_sid,
        faults=faults,
    )
    # The tokens given are redacted from any error message while the command runs.
    given = [Secret(setup.server_options[p]["token"]) for p in sorted(setup.given_tokens)]
    servers = Sandbox(setup.providers, record_to=dump, server_options=setup.server_options)
    try:
        servers.start()
    except Exception as exc:
        servers.stop()
        _sandbox_failure(exc)
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        described = _sandbox_description(servers, setup, show_tokens=show_tokens)
        env = {
            variable: value
            for variable, value in servers.env().items()
            if show_tokens or DEFAULT_ENV[variable] not in setup.given_tokens
        }
        if as_json:
            click.echo(json.dumps({"providers": described, "env": env}))
            note = _console(stderr=True)
        else:
            note = _console()
            _print_sandbox(note, described, env)
        note.print("Sandbox ready; press Ctrl-C to stop.")
        sys.stdout.flush()
        try:
            while not stop.wait(0.2):
                pass
        except KeyboardInterrupt:
            pass
        counts = ", ".join(f"{p} {n}" for p, n in servers.counts().items())
        note.print(f"Accepted messages: {counts}")
        if dump is not None:
            note.print(f"Recorded messages in {dump}{os.sep}")
    finally:
        signal.signal(signal.SIGTERM, previous)
        servers.stop()
        del given
