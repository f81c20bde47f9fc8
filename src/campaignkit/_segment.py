"""Extraction: the whole source read and validated before any channel starts."""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from ._controls import CONTROL_CHARACTER, control_detail, find_control
from ._csvio import safe_csv_writer
from ._models import Recipient, RejectedRow
from ._source import MODEL_FIELDS, Source
from ._sources import SourceLines
from .exceptions import CampaignKitError, SourceError

__all__ = ["ExtractionStats", "Rejects", "extract"]


@attrs.frozen
class ExtractionStats:
    """What extraction read: accepted recipients, rejected rows by reason, and (for
    sources that count them: CSV and JSON Lines) how every physical line of the file
    was accounted for, ``None`` otherwise."""

    rows_read: int
    recipients: int
    rejected: int
    rejected_reasons: dict[str, int]
    lines: SourceLines | None = None


class Rejects:
    """Rejected rows: written to ``rejected.csv`` (line, reason, field, detail, raw
    values...) and counted by reason. The source's rejects come first, then those the
    snapshot finds (a repeated customer id: :meth:`~campaignkit._ledger.SqliteLedger.write_snapshot`
    hands them here), so that nothing is lost and the counts add up."""

    def __init__(self, writer: Any) -> None:
        self._writer = writer
        self._reasons: collections.Counter[str] = collections.Counter()
        self.rejected = 0
        self.reading = True  # rejects come from the source (else from the snapshot)
        self.late_lines = 0  # physical lines of the rows the snapshot rejected
        self.source_lines: SourceLines | None = None  # as the source counted them

    @property
    def lines(self) -> SourceLines | None:
        """How the file's physical lines were accounted for (CSV and JSON Lines), the
        rows the snapshot rejected moved from accepted to rejected lines."""
        if self.source_lines is None:
            return None
        moved = self.late_lines
        return attrs.evolve(
            self.source_lines,
            accepted=self.source_lines.accepted - moved,
            rejected=self.source_lines.rejected + moved,
        )

    def line_counts(self) -> Mapping[str, int] | None:
        """:attr:`lines` as a mapping (what the ledger stores with the snapshot)."""
        lines = self.lines
        return None if lines is None else lines.to_dict()

    @property
    def reasons(self) -> Mapping[str, int]:
        return self._reasons

    def reject(self, row: RejectedRow) -> None:
        if not self.reading:
            self.late_lines += row.lines
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
    # A rejected row's raw values are written as read; a lone surrogate (a plugin
    # source's, say, rejected for holding it) is written escaped (\ud800) rather than
    # ending the extraction.
    with rejects.open("w", newline="", encoding="utf-8", errors="backslashreplace") as rej:
        writer = safe_csv_writer(rej)  # neutralises cells a spreadsheet runs as formulas
        writer.writerow(["line", "reason", "field", "detail", "raw"])
        sink = Rejects(writer)
        records = _plugin_errors_said(source, required)
        if not getattr(source, "rejects_control_characters", False):
            records = _screened(records, frozenset(required))

        def accepted() -> Iterator[Recipient]:
            reject = sink.reject
            for record in records:
                if type(record) is Recipient:
                    yield record
                elif isinstance(record, RejectedRow):
                    reject(record)
                else:  # a plugin's mistake: said, not an AssertionError mid-run
                    raise SourceError(
                        f"{source.describe()}: the source gave a {type(record).__name__}, "
                        f"not a Recipient or RejectedRow"
                    )
            # From here on, rejects come from the snapshot (repeated customer ids).
            sink.reading = False
            lines = getattr(source, "last_lines", None)
            sink.source_lines = lines if isinstance(lines, SourceLines) else None

        count = store(accepted(), sink)
    return ExtractionStats(
        count + sink.rejected, count, sink.rejected, dict(sink.reasons), sink.lines
    )


def _plugin_errors_said(
    source: Source, required: Collection[str]
) -> Iterator[Recipient | RejectedRow]:
    """``source.records(required)``, with an exception that is not campaignkit's (a bug
    in a plugin source, or in the function behind a ``StaticSource``) turned into a
    :class:`~campaignkit.SourceError` naming the source; the original is its cause."""
    try:
        yield from source.records(required)
    except CampaignKitError:
        raise
    except Exception as exc:
        raise SourceError(
            f"{source.describe()}: reading the source failed: {type(exc).__name__}: {exc}"
        ) from exc


def _screened(
    records: Iterable[Recipient | RejectedRow], strict: frozenset[str]
) -> Iterator[Recipient | RejectedRow]:
    """Defence in depth for sources that do not check control characters themselves (a
    plugin's): a recipient with one (see :func:`~campaignkit._sources.find_control`)
    becomes a ``control_character`` reject. Model fields and the attributes in
    ``strict`` (the channels' address fields) are strict, other attributes free text."""
    for record in records:
        if type(record) is Recipient:
            bad = _control_in_recipient(record, strict)
            if bad is not None:
                yield bad
                continue
        yield record


def _control_in_recipient(r: Recipient, strict: frozenset[str]) -> RejectedRow | None:
    model = (r.id, r.email, r.phone, r.push_token)
    found: tuple[str, str, int, str] | None = None
    for name, value in zip(MODEL_FIELDS, model, strict=True):
        hit = find_control(value, strict=True) if isinstance(value, str) else None
        if hit is not None:
            found = (name, f"field {name!r}", *hit)
            break
    else:
        for key, value in r.attributes.items():
            hit = find_control(key, strict=True)
            if hit is not None:
                found = (key, "an attribute name", *hit)
                break
            hit = find_control(value, strict=key in strict) if isinstance(value, str) else None
            if hit is not None:
                found = (key, f"attribute {key!r}", *hit)
                break
    if found is None:
        return None
    raw = (*(v or "" for v in model), *(str(v) for v in r.attributes.values()))
    field = found[0] if found[1] != "an attribute name" else None
    return RejectedRow(r.line, CONTROL_CHARACTER, control_detail(*found[1:]), field, raw)
