"""A run claimed by this process for one step (the other processes' steps wait or are
refused), for :class:`RunSteps` and the orchestrators' send attempts."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from .._config import Channel
from .._ledger import LedgerError, RunInProgress
from .._states import ACTIVE_STATUSES
from ..exceptions import ConfigError
from . import _steps as steps
from ._campaign import Campaign

__all__ = ["TURN_POLL_SECONDS", "claimed", "enabled_channel", "need_ledger", "turn"]

#: how often a step waiting for its turn on a run (another process holds it) asks again
TURN_POLL_SECONDS = 0.5


def need_ledger(campaign: Campaign) -> None:
    if not campaign.execution.ledger:
        raise ConfigError(
            "a run driven step by step needs the ledger: the steps hand each other "
            "what they did through it",
            path="execution.ledger",
        )


def enabled_channel(campaign: Campaign, name: str) -> Channel:
    for channel in campaign.enabled_channels:
        if channel.name == name:
            return channel
    raise ConfigError(f"no enabled channel {name!r}", path="channels")


@contextlib.contextmanager
def turn(campaign: Campaign, run_id: str, wait: float) -> Iterator[steps.RunContext]:
    """The run claimed by this process as :func:`claimed`, once no other process
    holds it (polling for up to ``wait`` seconds); a finished run is taken up again."""
    deadline = time.monotonic() + wait
    while True:
        stack = contextlib.ExitStack()
        try:
            context = stack.enter_context(claimed(campaign, run_id, finished=True))
        except RunInProgress:
            if time.monotonic() >= deadline:
                raise
            time.sleep(min(TURN_POLL_SECONDS, max(0.0, deadline - time.monotonic())))
            continue
        with stack:  # lets the run go, whatever the body raised
            yield context
        return


@contextlib.contextmanager
def claimed(
    campaign: Campaign, run_id: str, *, finished: bool = False
) -> Iterator[steps.RunContext]:
    """The run, claimed by this process in the campaign's ledger (let go after). A
    finished run raises :class:`LedgerError`, or with ``finished`` is taken up again."""
    need_ledger(campaign)
    ledger = campaign.ledger()
    try:
        run = ledger.get_run(run_id)
        if run.pipeline != campaign.name:
            raise LedgerError(f"run {run_id!r} belongs to pipeline {run.pipeline!r}")
        if finished and run.status not in ACTIVE_STATUSES:
            ledger.claim_run(run_id)  # taken up: finish_run decides its status again
            yield steps.RunContext(campaign, ledger, run_id)
            return
        if run.status not in ACTIVE_STATUSES:
            raise LedgerError(
                f"run {run_id!r} is finished ({run.status}); reopen it (reopen_run) to "
                "send what it still owes"
            )
        ledger.claim_run(run_id, unfinished=True)  # it may have finished since
        yield steps.RunContext(campaign, ledger, run_id)
    finally:
        ledger.close()
