"""Console output, errors and formatting shared by the commands."""

from __future__ import annotations

import json
import logging
import os
import shlex
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, NoReturn

import attrs
import click
from rich.cells import cell_len
from rich.console import Console
from rich.logging import RichHandler
from rich.measure import Measurement
from rich.table import Table

from .._config import key_lines
from .._models import (
    ChannelResult,
    Message,
    Rate,
    RunReport,
    RunStatus,
)
from .._pipeline import (
    problem_line,
)
from .._redact import redact
from ..exceptions import CampaignKitError, ConfigError, Problem, TemplateError

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

#: What :class:`~campaignkit.Registry` reports as the package of built-in plugins.
BUILTIN_PACKAGE = "campaignkit (built-in)"

#: Delivery counts shown per channel; the first three always, the others when not zero.
COUNTS = ("sent", "failed", "skipped", "pending", "unknown", "deferred")


# -- output helpers ------------------------------------------------------------------------


def make_console(*, stderr: bool = False, file: IO[str] | None = None) -> Console:
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
    if not console.is_terminal and not columns_set():
        # Output to a file or pipe: no terminal width to respect, keep tables readable.
        console.width = max(console.width, 120)
    return console


def columns_set() -> bool:
    """Whether ``COLUMNS`` asks for a width (honoured even when output is not a terminal)."""
    return os.environ.get("COLUMNS", "").strip().isdigit()


def sandbox_failure(exc: Exception) -> NoReturn:
    hint = " (pip install 'campaignkit[sandbox]')" if isinstance(exc, ImportError) else ""
    fail(f"cannot start the sandbox: {type(exc).__name__}: {exc}{hint}", EXIT_FAILED)


def fail(message: str, code: int) -> NoReturn:
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


def describe_error(exc: CampaignKitError, config: Path | None) -> str:
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
def input_errors(config: Path | None = None) -> Iterator[None]:
    """Turn a :class:`CampaignKitError` into one line on stderr and exit code 2."""
    try:
        yield
    except CampaignKitError as exc:
        fail_problems(exc, config, EXIT_INPUT_ERROR)
        fail(describe_error(exc, config), EXIT_INPUT_ERROR)


def format_rate(rate: Rate | None) -> str:
    if rate is None or (rate.messages_per_second is None and rate.requests_per_second is None):
        return "unlimited"
    parts = []
    if rate.messages_per_second is not None:
        parts.append(f"{rate.messages_per_second:g} msg/s")
    if rate.requests_per_second is not None:
        parts.append(f"{rate.requests_per_second:g} req/s")
    return ", ".join(parts)


def package_label(package: str) -> str:
    return "built-in" if package == BUILTIN_PACKAGE else package


def top_counts(counts: Mapping[str, int], limit: int = 3) -> list[tuple[str, int]]:
    """The ``limit`` largest counts, largest first."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]


def format_counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{name} {n}" for name, n in top_counts(counts, len(counts)))


def format_lines(lines: Mapping[str, int]) -> str:
    """``Lines:     302 = 1 header + 290 in accepted rows + 8 in rejected rows + 3 blank``"""
    return (
        f"Lines:     {lines.get('total', 0)} = {lines.get('header', 0)} header + "
        f"{lines.get('accepted', 0)} in accepted rows + {lines.get('rejected', 0)} in "
        f"rejected rows + {lines.get('blank', 0)} blank"
    )


def format_duration(result: ChannelResult) -> str:
    seconds = result.duration_seconds
    return "-" if seconds is None else f"{seconds:.1f}s"


def shell_quote(value: object) -> str:
    """``value`` quoted for a shell command line."""
    return shlex.quote(str(value))


@attrs.frozen
class Where:
    """A campaign file (and whether the sandbox's ledger is meant), for the commands
    that hints print."""

    config: Path
    sandbox: bool = False

    def command(self, verb: str, run_id: str | None = None, flags: str = "") -> str:
        """``campaignkit VERB CONFIG [RUN_ID] [FLAGS] [--sandbox]``, shell-quoted."""
        parts = ["campaignkit", verb, shell_quote(self.config)]
        if run_id is not None:
            parts.append(shell_quote(run_id))
        if flags:
            parts.append(flags)
        if self.sandbox:
            parts.append("--sandbox")
        return " ".join(parts)


def format_utc(value: datetime | None) -> str:
    """``2024-05-01 09:30 UTC`` (seconds only when not zero); ``-`` for None."""
    if value is None:
        return "-"
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%d %H:%M:%S" if value.second else "%Y-%m-%d %H:%M") + " UTC"


def format_minute(value: datetime | None) -> str:
    """``2024-05-01 09:30`` in UTC; ``-`` for None."""
    return "-" if value is None else value.astimezone(UTC).strftime("%Y-%m-%d %H:%M")


def format_local(value: datetime, zone: str) -> str:
    """``value`` on the wall clock of ``zone`` with its abbreviation (``02:00 CEST``)."""
    local = value.astimezone(zoneinfo.ZoneInfo(zone))
    return local.strftime("%Y-%m-%d %H:%M:%S %Z" if local.second else "%Y-%m-%d %H:%M %Z")


def iso(value: datetime | None) -> str | None:
    return None if value is None else value.astimezone(UTC).isoformat()


def _exit_code(status: str) -> int:
    return _EXIT_BY_STATUS.get(str(status), EXIT_FAILED)


def report_exit(report: RunReport) -> int:
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


def configure_logging(verbose: int) -> None:
    for handler in list(log.handlers):
        if getattr(handler, "_campaignkit_cli", False):
            log.removeHandler(handler)
    if not verbose:
        return
    handler = RichHandler(console=make_console(stderr=True), show_path=False, markup=False)
    handler._campaignkit_cli = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


# -- the command group ---------------------------------------------------------------------


#: Where the command line keeps -v/-q for the command being run (the root context's meta).
_VERBOSITY = "campaignkit.verbosity"


@attrs.define
class _Verbosity:
    """-v (counted) and -q given so far, before and after the subcommand."""

    verbose: int = 0
    quiet: bool = False


def verbosity() -> _Verbosity:
    """The current command's verbosity (the default outside a command)."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return _Verbosity()
    state: _Verbosity = ctx.find_root().meta.setdefault(_VERBOSITY, _Verbosity())
    return state


def is_quiet() -> bool:
    """Whether -q was given: no progress, no tables, notes or hints from a sending command."""
    return verbosity().quiet


def fits(console: Console, table: Table) -> bool:
    """Whether ``table`` fits the console without squeezing a column: its widest
    rendering (wrapping columns at their ``max_width``) is no wider than the console."""
    options = console.options.update_width(100_000)
    return Measurement.get(console, options, table).maximum <= console.width


def brief_counts(result: ChannelResult) -> str:
    parts = [f"{result.sent} sent"]
    parts += [f"{getattr(result, c)} {c}" for c in COUNTS[1:] if getattr(result, c, 0)]
    return ", ".join(parts)


# -- validate ------------------------------------------------------------------------------


def single_line(text: str) -> str:
    return " ".join(redact(text).splitlines())


def problem_sections(problems: Sequence[Problem]) -> list[str]:
    """Problems grouped under a heading per group (``Config:``, ``Tokens:`` ...), one
    line each: ``file:line: key.path: message``."""
    lines: list[str] = []
    group = None
    for problem in problems:
        if problem.group != group:
            group = problem.group
            lines.append(f"{group.capitalize()}:")
        lines.append(f"  {single_line(str(problem))}")
    return lines


def fail_problems(exc: CampaignKitError, config: Path | None, code: int) -> None:
    """Exit with ``code`` listing every problem, grouped, when ``exc`` carries several
    (a ConfigError from checking a whole campaign); return otherwise."""
    if not isinstance(exc, ConfigError) or len(exc.problems) < 2:
        return
    problems = tuple(_as_given(p, config) for p in exc.problems)
    file = config or exc.file
    where = f"{file}: " if file else ""
    click.echo(f"campaignkit: error: {where}{len(problems)} problems", err=True)
    for line in problem_sections(problems):
        click.echo(line, err=True)
    raise SystemExit(code)


# -- preview -------------------------------------------------------------------------------


def message_dict(message: Message) -> dict[str, Any]:
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


def print_heading(console: Console, title: str) -> None:
    """A rule titled ``title``; the title alone when the rule would cut it."""
    if cell_len(title) + 6 <= console.width:
        console.rule(title)
    else:
        console.print(title)


def print_message(console: Console, message: Message, *, html: bool = True) -> None:
    """A rendered message's parts, one ``key: value`` each (multi-line values indented);
    without ``html``, only the HTML part's size."""
    for key, value in message_dict(message).items():
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
