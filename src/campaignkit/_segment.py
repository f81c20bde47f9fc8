"""Extraction: the whole source read and validated before any channel starts."""

from __future__ import annotations

import collections
import csv
import marshal
import struct
from collections.abc import Callable, Collection, Iterable, Iterator
from pathlib import Path
from typing import Any

import attrs

from ._models import Recipient, RejectedRow
from ._source import Source

__all__ = ["ExtractionStats", "Spool", "extract"]

_CHUNK = 1000
_LEN = struct.Struct("<I")  # spool framing: byte length of the next chunk


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
        writer = csv.writer(rej)
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


class Spool:
    """Accepted recipients in a private file, for runs without a ledger.

    Length-prefixed ``marshal`` chunks (plain tuples, dicts and strings) written and
    read by this process only; iterate as often as needed.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.count = 0

    def store(self, recipients: Iterable[Recipient]) -> int:
        chunk: list[Any] = []
        n = 0
        with self.path.open("wb") as out:

            def dump() -> None:
                data = marshal.dumps(chunk)
                out.write(_LEN.pack(len(data)))
                out.write(data)

            for r in recipients:
                chunk.append(
                    (r.id, r.email, r.phone, r.push_token, r.attributes, r.consent, r.line)
                )
                if len(chunk) >= _CHUNK:
                    dump()
                    n += len(chunk)
                    chunk = []
            if chunk:
                dump()
                n += len(chunk)
        self.count = n
        return n

    def __iter__(self) -> Iterator[tuple[int, Recipient]]:
        seq = 0
        with self.path.open("rb") as f:
            while header := f.read(_LEN.size):
                (size,) = _LEN.unpack(header)
                chunk = marshal.loads(f.read(size))  # noqa: S302 - our own spool, see above
                for id_, email, phone, token, attributes, consent, line in chunk:
                    yield seq, Recipient(id_, email, phone, token, attributes, consent, line)
                    seq += 1
