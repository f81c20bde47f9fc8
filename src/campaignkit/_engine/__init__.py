"""The engine: runs one channel of a run.

- :mod:`._plan`: :class:`ChannelPlan`, what running a channel needs;
- :mod:`._render`: a channel's messages rendered and checked, with the deliveries'
  idempotency keys (:class:`Renderer`);
- :mod:`._runner`: :class:`ChannelRunner` sends a channel's pending deliveries
  (batches, worker threads, rate limit, retries, messages in doubt);
- :mod:`._totals`: a channel's totals as the ledger counts them.
"""

from __future__ import annotations

from ._plan import ChannelPlan, ContentCheck, ProgressCallback
from ._render import Pending, Renderer, idempotency_key, legacy_idempotency_key
from ._runner import Batch, ChannelRunner
from ._totals import counted_result, result_from_ledger

__all__ = [
    "Batch",
    "ChannelPlan",
    "ChannelRunner",
    "ContentCheck",
    "Pending",
    "ProgressCallback",
    "Renderer",
    "counted_result",
    "idempotency_key",
    "legacy_idempotency_key",
    "result_from_ledger",
]
