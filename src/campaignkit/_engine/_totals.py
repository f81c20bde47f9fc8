"""A channel's totals as the ledger counts them."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs

from .._config import Channel
from .._ledger import Ledger
from .._models import ChannelResult
from .._states import DeliveryStatus

__all__ = ["counted_result", "result_from_ledger"]


def counted_result(
    ledger: Ledger, run_id: str, channel: str, *, provider: str, result_key: str = ""
) -> ChannelResult:
    """A channel's totals as the ledger counts them: no session counters, no times."""
    counts = ledger.counts(run_id, channel)
    return ChannelResult(
        channel=channel,
        provider=provider,
        sent=counts[DeliveryStatus.SENT],
        failed=counts[DeliveryStatus.FAILED],
        skipped=counts[DeliveryStatus.SKIPPED],
        pending=counts[DeliveryStatus.PENDING] + counts[DeliveryStatus.IN_FLIGHT],
        unknown=counts[DeliveryStatus.UNKNOWN],
        deferred=counts[DeliveryStatus.DEFERRED],
        reasons=dict(counts.reasons),
        error_codes=dict(counts.error_codes),
        result_key=result_key,
    )


def result_from_ledger(
    ledger: Ledger,
    run_id: str,
    channel: Channel,
    *,
    retries: int = 0,
    requests: int = 0,
    started: datetime | None = None,
    stopped: str | None = None,
) -> ChannelResult:
    """A channel's totals as the ledger records them (this session's counters aside)."""
    counted = counted_result(
        ledger, run_id, channel.name, provider=channel.provider, result_key=channel.report_key
    )
    return attrs.evolve(
        counted,
        retries=retries,
        requests=requests,
        started_at=started,
        finished_at=datetime.now(UTC),
        stopped=stopped,
    )
