"""Extraction: the whole source read and validated before any channel starts."""

from __future__ import annotations

import collections
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path

import attrs

from ._csvio import safe_csv_writer
from ._models import Recipient, RejectedRow
from ._source import MODEL_FIELDS, Source
from ._sources import (
    CONTROL_CHARACTER,
    SourceLines,
    _FileSource,
    control_detail,
    find_control,
)

__all__ = ["ExtractionStats", "extract"]


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
        records = source.records(required)
        if not isinstance(source, _FileSource):  # the built-in sources check themselves
            records = _screened(records, frozenset(required))

        def accepted() -> Iterator[Recipient]:
            nonlocal rejected
            for record in records:
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
    lines = getattr(source, "last_lines", None)
    if not isinstance(lines, SourceLines):
        lines = None
    return ExtractionStats(count + rejected, count, rejected, dict(reasons), lines)


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
