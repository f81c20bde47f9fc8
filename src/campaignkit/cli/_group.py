"""The ``campaignkit`` command group: -v/-q on every command, the exit-code epilog."""

from __future__ import annotations

from typing import Any

import click

from .. import __version__
from ._output import configure_logging, verbosity

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


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: Any) -> None:
    """Record -v or -q (on the group or a subcommand, the same meaning), and log as
    asked; -v with -q is a usage error."""
    if not value:
        return
    state = verbosity()
    if param.name == "verbose":
        state.verbose += int(value)
    else:
        state.quiet = True
    if state.verbose and state.quiet:
        raise click.UsageError("-q (quiet) and -v (verbose) contradict each other", ctx=ctx)
    configure_logging(state.verbose)


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
    configure_logging(verbosity().verbose)
