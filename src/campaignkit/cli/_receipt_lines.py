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
from ..exceptions import CampaignKitError, ConfigError

__all__ = ["attach_receipts", "receipt_lines", "settle_receipts", "simulation_for"]

#: Providers whose sandbox fakes simulate receipts.
SIMULATED = frozenset({"sendgrid", "twilio", "telnyx", "expo"})
#: How long the end of a run waits for the fakes' callbacks.
DRAIN_SECONDS = 30.0


#: Ratios of the simulated receipts (``delivered=0.8,bounced=0.2``), or ``off``.
RATIOS_VARIABLE = "CAMPAIGNKIT_SANDBOX_RECEIPTS"


def simulation_for(configs: Sequence[PipelineConfig], env: Mapping[str, str]) -> Any:
    """Receipts to simulate in a rehearsal of these campaigns: for a campaign that takes
    receipts (its ``[receipts]`` table sets ``public_url``) whose channels' fakes have
    them, at the default ratios or those of :data:`RATIOS_VARIABLE` (``off``: none).

    Raises:
        ConfigError: :data:`RATIOS_VARIABLE` is not ratios; the sandbox extra is missing.
    """
    text = env.get(RATIOS_VARIABLE, "").strip()
    wanted = any(
        c.enabled and c.provider in SIMULATED and cfg.receipts.public_url
        for cfg in configs
        for c in cfg.channels
    )
    if not wanted or text.lower() in ("off", "0", "false", "no"):
        return None
    missing = [m for m in ("cryptography", "waitress") if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(
            f"simulating receipts needs {' and '.join(missing)}: pip install "
            f"'campaignkit[sandbox]' (or {RATIOS_VARIABLE}=off)"
        )
    from ..testing.sandbox import ReceiptSimulation

    try:
        return ReceiptSimulation.from_ratios(text)
    except ValueError as exc:
        raise ConfigError(f"{RATIOS_VARIABLE}: {exc}") from None


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
