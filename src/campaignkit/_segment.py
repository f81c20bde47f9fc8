"""Extraction: the whole source read and validated before any channel starts."""

from __future__ import annotations

import collections
import csv
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from ._models import Recipient, RejectedRow
from ._source import Source

__all__ = ["ExtractionStats", "Rejects", "extract"]


@attrs.frozen
class ExtractionStats:
    """What extraction read: accepted recipients, rejected rows by reason."""

    rows_read: int
    recipients: int
    rejected: int
    rejected_reasons: dict[str, int]


class Rejects:
    """Rejected rows: written to ``rejected.csv`` (line, reason, field, detail, raw
    values...) and counted by reason. The source's rejects come first, then those the
    snapshot finds (a repeated customer id: :meth:`~campaignkit._ledger.SqliteLedger.write_snapshot`
    hands them here), so that nothing is lost and the counts add up."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._reasons: collections.Counter[str] = collections.Counter()
        self.rejected = 0

    @property
    def reasons(self) -> Mapping[str, int]:
        return self._reasons

    def reject(self, row: RejectedRow) -> None:
        self.rejected += 1
        self._reasons[row.reason] += 1
        self._writer.writerow([row.line, row.reason, row.field or "", row.detail, *row.raw])


def extract(
    source: Source,
    *,
    required: Collection[str],
    rejects: Path,
    store: Callable[[Iterable[Recipient], Rejects], int],
) -> ExtractionStats:
    """Read the whole source: accepted recipients go to ``store`` (which consumes the
    iterable and returns how many it stored), rejected rows to ``rejects`` (CSV: line,
    reason, field, detail, raw values...), so that nothing is lost. ``store`` gets the
    :class:`Rejects` too: it may reject rows itself (a repeated customer id) and records
    the counts with what it stores.

    The stream must be read to its end before any channel starts: a file-level
    :class:`~campaignkit.SourceError` may come at the last line. ``store`` must
    then keep nothing (the ledger writes its snapshot in one transaction).

    Raises:
        SourceError: a file-level problem; nothing was sent.
    """
    with rejects.open("w", newline="", encoding="utf-8") as rej:
        writer = csv.writer(rej)
        writer.writerow(["line", "reason", "field", "detail", "raw"])
        sink = Rejects(writer)

        def accepted() -> Iterator[Recipient]:
            reject = sink.reject
            for record in source.records(required):
                if type(record) is Recipient:
                    yield record
                else:
                    assert isinstance(record, RejectedRow)
                    reject(record)

        count = store(accepted(), sink)
    return ExtractionStats(count + sink.rejected, count, sink.rejected, dict(sink.reasons))
