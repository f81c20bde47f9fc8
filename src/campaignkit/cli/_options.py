"""Options, parameter types and signal handling shared by the commands."""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import attrs
import click
import pluggy

from .._config import PipelineConfig
from .._plugins import BLOCK_ENV, get_plugin_manager
from ._output import EXIT_FAILED, fail

CONFIG_PATH = click.Path(dir_okay=False, path_type=Path)


#: Builds a command's plugin manager from its ``--block`` names. The command line uses
#: :func:`~campaignkit.get_plugin_manager`; ``main(obj=factory)`` (as
#: ``CliRunner().invoke(main, args, obj=factory)``) passes another through the click
#: context, e.g. one with a test's plugins.
PluginManagerFactory = Callable[[Sequence[str]], pluggy.PluginManager]


def plugin_manager(block: Sequence[str]) -> pluggy.PluginManager:
    """The current command's plugin manager, built by the factory in the click context's
    ``obj`` (:data:`PluginManagerFactory`), if one was passed."""
    ctx = click.get_current_context(silent=True)
    factory: PluginManagerFactory | None = ctx.obj if ctx is not None else None
    if factory is None:
        return get_plugin_manager(block=block)
    return factory(block)


def with_retry_delay(config: PipelineConfig, seconds: float) -> PipelineConfig:
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


def block_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--block-plugin",
        "block",
        multiple=True,
        metavar="NAME",
        help=f"Do not load this plugin (entry-point name, or built-in module such as "
        f"campaignkit.channels.smtp). Repeatable; {BLOCK_ENV} adds more.",
    )(func)


def sandbox_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--sandbox",
        "use_sandbox",
        is_flag=True,
        envvar="CAMPAIGNKIT_SANDBOX",
        show_envvar=True,
        help="Send to loopback provider sandboxes started in-process (no real provider, "
        "no token needed). Sandbox runs have their own ledger (ledger.sandbox.db) and "
        "run directories (<output_dir>/sandbox/); recorded messages go to "
        "<run dir>/sandbox/.",
    )(func)


def sandbox_ledger_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--sandbox",
        "use_sandbox",
        is_flag=True,
        envvar="CAMPAIGNKIT_SANDBOX",
        show_envvar=True,
        help="Read the sandbox's ledger (runs made with --sandbox).",
    )(func)


def retry_delay_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--retry-delay",
        type=click.FloatRange(min=0),
        metavar="SECONDS",
        help="Override every channel's retry delay (default: the campaign's, 5 minutes).",
    )(func)


def json_option(func: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--json", "as_json", is_flag=True, help="Print only the run report as JSON."
    )(func)


def output_dir_option(func: Callable[..., Any]) -> Callable[..., Any]:
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


DATETIME = _DateTime()


# -- signals -------------------------------------------------------------------------------


@contextmanager
def sigterm_interrupts(before_sending: str | None = None) -> Iterator[None]:
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
        fail(before_sending, EXIT_FAILED)
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
