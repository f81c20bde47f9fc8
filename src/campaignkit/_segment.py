"""Extraction: the whole source read and validated before any channel starts."""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

import attrs

from ._csvio import safe_csv_writer
from ._models import Recipient, RejectedRow
from ._source import Source

__all__ = ["ExtractionStats", "extract"]


@attrs.frozen
class ExtractionStats:
    """What extraction read: accepted recipients, rejected rows by reason."""

    rows_read: int
    recipients: int
    rejected: int
    rejected_reasons: dict[str, int]


def extract(
    source: Source,
    *,
    required: Collection[str],
    rejects: Path,
    store: Callable[[Iterable[Recipient]], int],
) -> ExtractionStats:
    """Read the whole source: accepted recipients go to ``store`` (which consumes the
    iterable and returns how many it stored), rejected rows to ``rejects`` (CSV: line,
    reason, field, detail, raw values...), so that nothing is lost.

    The stream must be read to its end before any channel starts: a file-level
    :class:`~campaignkit.SourceError` may come at the last line. ``store`` must
    then keep nothing (the ledger writes its snapshot in one transaction).

    Raises:
        SourceError: a file-level problem; nothing was sent.
    """
    reasons: collections.Counter[str] = collections.Counter()
    rejected = 0
    with rejects.open("w", newline="", encoding="utf-8") as rej:
        writer = safe_csv_writer(rej)  # neutralises cells a spreadsheet runs as formulas
        writer.writerow(["line", "reason", "field", "detail", "raw"])

        def accepted() -> Iterator[Recipient]:
            nonlocal rejected
            for record in source.records(required):
                if type(record) is Recipient:
                    yield record
                else:
                    assert isinstance(record, RejectedRow)
                    rejected += 1
                    reasons[record.reason] += 1
                    writer.writerow(
                        [record.line, record.reason, record.field or "", record.detail, *record.raw]
                    )

        count = store(accepted())
    return ExtractionStats(count + rejected, count, rejected, dict(reasons))
