"""The dry run: extraction and selection exactly as a run's, every message rendered
and checked; nothing sent, nothing kept."""

from __future__ import annotations

import json
import secrets
import tempfile
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from .._content import sms_segments
from .._engine import ChannelPlan, Renderer
from .._ledger import DeliveryRecord, scratch_ledger
from .._models import DeliveryResult, Message, Recipient
from .._schedule import manual_logical_date
from .._states import DeliveryStatus
from ..exceptions import ConfigError, TemplateError
from ._campaign import Campaign
from ._checks import prepare_channel
from ._steps import RunContext, decide_audience, extract_into
from ._values import ChannelPlanSummary, PlanReport

__all__ = ["dry_run", "preview"]


def dry_run(
    campaign: Campaign,
    plans: Sequence[ChannelPlan],
    *,
    samples: int = 3,
    output: str | Path | None = None,
    on_extracted: Callable[[int, Mapping[str, int]], None] | None = None,
) -> PlanReport:
    """What a run would do (see :meth:`Pipeline.plan`), for the channels of ``plans``."""
    now = datetime.now(UTC)
    run_id = f"{campaign.name}__dryrun__{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    real = campaign.ledger_location if campaign.execution.ledger else None
    # Planned in a scratch ledger of the same backend that reads the real one's
    # suppression list and send history: a dry run never writes to (or waits for)
    # the real ledger, and counts exactly as the run would.
    with (
        tempfile.TemporaryDirectory(prefix="campaignkit-") as scratch,
        scratch_ledger(real, Path(scratch)) as ledger,
    ):
        ledger.begin_run(
            run_id=run_id,
            pipeline=f"{campaign.name}#dry-run",
            logical_date=manual_logical_date(campaign.schedule, now),
            fingerprint=campaign.fingerprint(),
            config_file=campaign.config_file,
            max_active_runs=None,
        )
        stats = extract_into(campaign, ledger, run_id, Path(scratch) / "rejected.csv")
        if on_extracted is not None:
            on_extracted(stats.recipients, stats.rejected_reasons)
        context = RunContext(campaign, ledger, run_id)
        channels = {plan.channel.name: _summary(context, plan, now, samples) for plan in plans}
    report = PlanReport(
        pipeline=campaign.name,
        created_at=now,
        rows_read=stats.rows_read,
        rows_rejected=stats.rejected,
        rejected_reasons=stats.rejected_reasons,
        channels=channels,
        lines=None if stats.lines is None else stats.lines.to_dict(),
    )
    if output is not None:
        Path(output).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    return report


def _summary(
    context: RunContext, plan: ChannelPlan, now: datetime, samples: int
) -> ChannelPlanSummary:
    """One channel of a dry run: its audience decided as a run's, every message
    rendered and checked."""
    ledger, run_id = context.ledger, context.run_id
    decide_audience(context, plan, now)
    renderer = Renderer(plan, run_id=run_id, ledger=ledger)
    counts = ledger.counts(run_id, plan.channel.name)
    reasons = counts.reasons
    rendered = segments = 0
    failures: dict[str, int] = {}
    kept: list[Message] = []
    for seq, recipient, address, _, _ in ledger.pending(run_id, plan.channel.name):
        item = renderer.render(seq, recipient, address)
        if isinstance(item, DeliveryRecord):  # it would fail: render or content rule
            reason = str(item.result.reason)
            failures[reason] = failures.get(reason, 0) + 1
            continue
        rendered += 1
        if plan.notifier.address_field == "phone":
            segments += sms_segments(item.message.body).segments
        if len(kept) < samples:
            kept.append(item.message)
    channel = plan.channel
    cost = None
    if channel.price_per_message is not None or channel.price_per_segment is not None:
        cost = rendered * (channel.price_per_message or 0.0) + segments * (
            channel.price_per_segment or 0.0
        )
    deferred = counts[DeliveryStatus.DEFERRED]
    return ChannelPlanSummary(
        channel=channel.name,
        provider=channel.provider,
        eligible=rendered,
        deferred=deferred,
        skipped={k: v for k, v in reasons.items() if k != "deferred"},
        failures=failures,
        sms_segments=segments if plan.notifier.address_field == "phone" else None,
        estimated_cost=cost,
        samples=tuple(kept),
    )


def preview(campaign: Campaign, channel: str, n: int = 3) -> list[Message]:
    """The messages of the first ``n`` eligible recipients (see :meth:`Pipeline.preview`)."""
    matches = [c for c in campaign.channels if c.name == channel]
    if not matches:
        raise ConfigError(f"no channel named {channel!r}", path=f"channels.{channel}")
    plan = prepare_channel(campaign, matches[0], campaign.source.fields(), preview=True)
    # A preview decides per recipient only (no ledger: no de-duplication or caps).
    renderer = Renderer(plan, run_id="preview", ledger=None)
    out: list[Message] = []
    failed: list[DeliveryResult] = []
    records = campaign.source.records(campaign.required_fields())
    recipients = (r for r in records if isinstance(r, Recipient))
    for item in renderer.messages(recipients, datetime.now(UTC)):
        if isinstance(item, Message):
            out.append(item)
        else:
            failed.append(item)
        if len(out) >= n or (not out and len(failed) >= n):
            break
    if failed and not out:
        first = failed[0]
        raise TemplateError(
            f"no message could be rendered: {len(failed)} eligible recipient(s) "
            f"failed, the first ({first.recipient_id}) with {first.reason}: {first.error}",
            channel=channel,
        )
    return out
