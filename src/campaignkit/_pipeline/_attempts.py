"""One attempt of an orchestrator's send task (:meth:`RunSteps.send_attempt`): what a
shard of a channel still owes, sent once, the orchestrator's retries being the
campaign's; by the run's claim (tasks take turns) or, for a campaign that sends in
shards, by the shard's lease."""

from __future__ import annotations

from .._config import Channel
from .._engine import ChannelPlan, result_from_ledger
from .._ledger import LedgerError, Slice
from .._models import ChannelResult
from .._states import ACTIVE_STATUSES
from . import _sending as sending
from . import _steps as steps
from . import _workers as workers_module
from ._campaign import Campaign
from ._claim import claimed, enabled_channel, turn
from ._values import SendAttempt

__all__ = ["send_attempt"]


def send_attempt(
    campaign: Campaign, run_id: str, channel: str, part: Slice, wait: float
) -> SendAttempt:
    """See :meth:`RunSteps.send_attempt`."""
    plan = campaign.channel_plan(enabled_channel(campaign, channel), campaign.source.fields())
    if campaign.sends_in_shards:  # split into shards: leased, not claimed
        return _leased_attempt(campaign, run_id, plan, part, wait)
    settled = _settled(campaign, run_id, plan.channel, part)
    if settled is not None:
        return SendAttempt(settled)  # a finished run whose slice owes nothing
    with turn(campaign, run_id, wait) as context:
        if not context.ledger.is_planned(run_id, channel):
            raise LedgerError(f"channel {channel!r} of run {run_id!r} is not planned yet")
        return sending.send_attempt(context, plan, part)


def _settled(
    campaign: Campaign, run_id: str, channel: Channel, part: Slice
) -> ChannelResult | None:
    """The channel's totals if the run is finished and slice ``part`` owes nothing a
    retry could send (then a task's attempt has nothing to do), else ``None``."""
    ledger = campaign.ledger()
    try:
        run = ledger.get_run(run_id)
        if run.pipeline != campaign.name:
            raise LedgerError(f"run {run_id!r} belongs to pipeline {run.pipeline!r}")
        if run.status in ACTIVE_STATUSES or not ledger.is_planned(run_id, channel.name):
            return None
        if ledger.owed(run_id, [channel.name], failed=True, unknown=False, part=part):
            return None
        return result_from_ledger(ledger, run_id, channel)
    finally:
        ledger.close()


def _leased_attempt(
    campaign: Campaign, run_id: str, plan: ChannelPlan, part: Slice, wait: float
) -> SendAttempt:
    """:meth:`RunSteps.send_attempt` on a run split into shards: shard ``part.index``
    leased, not the run claimed (a finished run whose shard owes is taken up first). A
    shard beyond the run's split (made once per run, with fewer shards than the caller
    maps now) holds nothing: the attempt sends nothing."""
    name = plan.channel.name
    ledger = campaign.ledger()
    try:
        run = ledger.get_run(run_id)
        if run.pipeline != campaign.name:
            raise LedgerError(f"run {run_id!r} belongs to pipeline {run.pipeline!r}")
        if not ledger.is_planned(run_id, name):
            raise LedgerError(f"channel {name!r} of run {run_id!r} is not planned yet")
        context = steps.RunContext(campaign, ledger, run_id)
        split = sum(
            i.channel == name for i in workers_module.need_shards(context).shard_leases(run_id)
        )
        if split and part.index >= split:  # the run was split into fewer: nothing is in it
            return SendAttempt(result_from_ledger(ledger, run_id, plan.channel))
        if run.status not in ACTIVE_STATUSES:
            if not workers_module.need_shards(context).shard_failures(run_id, name, part.index):
                return SendAttempt(result_from_ledger(ledger, run_id, plan.channel))
            with claimed(campaign, run_id, finished=True):
                pass  # ``running`` again, for the shard's lease
        return workers_module.leased_attempt(context, plan, part.index, part.count, wait)
    finally:
        ledger.close()
