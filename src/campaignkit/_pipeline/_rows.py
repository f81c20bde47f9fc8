"""Reading a whole segment as a run does, to report the rows a run would not message."""

from __future__ import annotations

import csv
import secrets
import tempfile
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path

from .._audience import build_audience
from .._csvio import restore
from .._ledger import SqliteLedger
from .._models import Recipient
from .._notifier import ChannelSettings, placeholder_token
from ..exceptions import CampaignKitError
from ._campaign import Campaign
from ._steps import extract_into
from ._values import RowCheck, RowExample

__all__ = ["check_rows"]


def check_rows(campaign: Campaign, *, examples: int = 20) -> RowCheck:
    """The segment's rows read as a run reads them (see :meth:`Pipeline.check_rows`):
    extraction into a scratch ledger, then each accepted address checked as each
    enabled channel's selection would."""
    now = datetime.now(UTC)
    run_id = f"{campaign.name}__rows__{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"
    shown = campaign.source.describe()
    with tempfile.TemporaryDirectory(prefix="campaignkit-") as scratch:
        ledger = SqliteLedger(Path(scratch) / "ledger.db", durable=False)
        try:
            ledger.begin_run(
                run_id=run_id,
                pipeline=f"{campaign.name}#rows",
                logical_date=now,
                fingerprint="",
                config_file=campaign.config_file,
                max_active_runs=None,
            )
            rejects = Path(scratch) / "rejected.csv"
            stats = extract_into(campaign, ledger, run_id, rejects)
            rejected = _rejected_examples(rejects, shown, examples)
            invalid, address_examples = _address_rows(
                campaign, ledger.snapshot(run_id), shown, examples
            )
        finally:
            ledger.close()
    return RowCheck(
        source=shown,
        rows_read=stats.rows_read,
        accepted=stats.recipients,
        rejected=stats.rejected,
        reasons=stats.rejected_reasons,
        examples=rejected,
        invalid_addresses=invalid,
        address_examples=address_examples,
        lines=None if stats.lines is None else stats.lines.to_dict(),
    )


def _address_rows(
    campaign: Campaign, snapshot: Iterable[tuple[int, Recipient]], shown: str, limit: int
) -> tuple[dict[str, int], tuple[RowExample, ...]]:
    """Recipients whose address is invalid for a channel, as its selection decides."""
    audiences = []
    for channel in campaign.enabled_channels:
        try:
            cls = campaign.registry.notifier_class(channel.provider)
            settings = ChannelSettings(
                channel=channel.name,
                options=channel.options,
                token=placeholder_token("validate"),
                timeout=channel.timeout_seconds,
                base_dir=campaign.base_dir,
                env=campaign.environ,
            )
            notifier = cls(settings)
            audience = build_audience(channel, notifier, None, campaign.base_dir)
        except CampaignKitError:
            continue  # listed as a problem of the channel
        audiences.append((channel.name, audience))
    counts = dict.fromkeys((name for name, _ in audiences), 0)
    found: list[RowExample] = []
    for _, recipient in snapshot:
        for name, audience in audiences:
            raw = recipient.address(audience.address_field)
            if not raw or audience.normalize(raw, recipient) is not None:
                continue
            counts[name] += 1
            if len(found) < limit:
                field = audience.address_field
                found.append(
                    RowExample(
                        shown,
                        recipient.line,
                        "invalid_address",
                        field,
                        f"not a valid {field.replace('_', ' ')}: {raw!r}",
                        channel=name,
                    )
                )
    return counts, tuple(found)


def _rejected_examples(rejects: Path, shown: str, limit: int) -> tuple[RowExample, ...]:
    """The first ``limit`` rows of a ``rejected.csv`` (line, reason, field, detail; the
    raw values are not read)."""
    found: list[RowExample] = []
    if limit <= 0:
        return ()
    with rejects.open(newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        next(reader, None)  # the header
        for row in reader:
            line, reason, field, detail = (restore(cell) for cell in row[:4])
            found.append(RowExample(shown, int(line), reason, field or None, detail))
            if len(found) >= limit:
                break
    return tuple(found)
