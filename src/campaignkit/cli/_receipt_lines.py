"""Receipts as the CLI shows them, and in a ``--sandbox`` run.


A rehearsal whose channels' fakes simulate receipts (SendGrid, Twilio, Telnyx post
signed callbacks, Expo answers receipt polls) gets a receiver on 127.0.0.1 before it
sends; after it, the callbacks are awaited, Expo is polled, and the receipts counted.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from typing import Any

from .._config import PipelineConfig
from .._pipeline import Pipeline
from .._states import ReceiptStatus
from ..exceptions import CampaignKitError

__all__ = ["attach_receipts", "receipt_lines", "settle_receipts", "simulation_for"]

#: Providers whose sandbox fakes simulate receipts.
SIMULATED = frozenset({"sendgrid", "twilio", "telnyx", "expo"})
#: How long the end of a run waits for the fakes' callbacks.
DRAIN_SECONDS = 30.0


def simulation_for(configs: Sequence[PipelineConfig]) -> Any:
    """Receipts to simulate for these campaigns (``None``: no channel's fake has any,
    or the ``sandbox`` extra's cryptography and waitress are missing)."""
    wanted = any(c.enabled and c.provider in SIMULATED for cfg in configs for c in cfg.channels)
    if not wanted or any(importlib.util.find_spec(m) is None for m in ("cryptography", "waitress")):
        return None
    from ..testing.sandbox import ReceiptSimulation

    return ReceiptSimulation()


def attach_receipts(sandbox: Any, pipeline: Pipeline) -> bool:
    """Record the receipts arriving for ``pipeline`` (a rehearsal) in its ledger."""
    if sandbox is None or sandbox.receipts is None or sandbox.receipts_url is None:
        return False
    if not pipeline.execution.ledger:
        return False
    sandbox.receive_receipts(pipeline)
    return True


def settle_receipts(sandbox: Any, pipeline: Pipeline, run_id: str | None) -> list[str]:
    """Wait for the callbacks, poll Expo, and say what the receipts were."""
    from ..receipts import open_receipts, poll_receipts

    left = sandbox.drain_receipts(DRAIN_SECONDS)
    try:
        poll_receipts(pipeline)
    except CampaignKitError as exc:
        return [f"Receipts:  could not poll: {exc}"]
    if run_id is None:
        return []
    with open_receipts(pipeline) as book:
        book.rematch()
        per_channel = book.run_counts(run_id)
    lines = receipt_lines(per_channel)
    if left:
        lines.append(f"Receipts:  {left} callback(s) still on their way")
    return lines


def receipt_lines(per_channel: Mapping[str, Mapping[str, int]]) -> list[str]:
    """``Receipts:  email: delivered 59 · bounced 2 · awaiting 5``, a line per channel
    that sent something."""
    order = [ReceiptStatus.DELIVERED.value] + [
        s.value for s in ReceiptStatus if s is not ReceiptStatus.DELIVERED
    ]
    lines = []
    for channel, found in per_channel.items():
        shown = " · ".join(f"{k} {found[k]}" for k in [*order, "awaiting"] if found.get(k))
        if shown:
            lines.append(f"Receipts:  {channel}: {shown}")
    return lines
