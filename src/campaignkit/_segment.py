"""The extracted segment: validated recipients spooled to disk, streamed by every channel."""

from __future__ import annotations

import collections
import csv
import marshal
import struct
from collections.abc import Collection, Iterator
from pathlib import Path

import attrs

from ._models import Recipient, RejectedRow
from ._source import Source

__all__ = ["ExtractionStats", "Segment", "extract"]

_CHUNK = 1000
_LEN = struct.Struct("<I")  # spool framing: byte length of the next chunk


@attrs.frozen
class ExtractionStats:
    """What extraction read: accepted recipients, rejected rows by reason."""

    rows_read: int
    recipients: int
    rejected: int
    rejected_reasons: dict[str, int]


@attrs.frozen
class Segment:
    """A spool of accepted recipients in source order; iterate it as often as needed.

    The spool is a private file of length-prefixed ``marshal`` chunks (plain tuples,
    dicts and strings) written by :func:`extract` in this process; it is never read
    from anywhere else.
    """

    path: Path
    count: int

    def __iter__(self) -> Iterator[Recipient]:
        with self.path.open("rb") as f:
            while header := f.read(_LEN.size):
                (size,) = _LEN.unpack(header)
                chunk = marshal.loads(f.read(size))  # noqa: S302 - our own spool, see above
                for id_, email, phone, token, attributes, consent, line in chunk:
                    yield Recipient(id_, email, phone, token, attributes, consent, line)


def extract(
    source: Source, *, required: Collection[str], spool: Path, rejects: Path
) -> tuple[Segment, ExtractionStats]:
    """Read the whole source, spooling recipients and writing rejected rows.

    Rejected rows go to ``rejects`` (CSV: line, reason, field, detail, raw values...),
    so that nothing is lost. The stream must be read to its end before any channel
    starts: a file-level :class:`~campaignkit.SourceError` may come at the last line.

    Raises:
        SourceError: a file-level problem; nothing was sent.
    """
    reasons: collections.Counter[str] = collections.Counter()
    count = rejected = 0
    chunk: list[tuple[object, ...]] = []
    with spool.open("wb") as out, rejects.open("w", newline="", encoding="utf-8") as rej:

        def dump(rows: list[tuple[object, ...]]) -> None:
            data = marshal.dumps(rows)
            out.write(_LEN.pack(len(data)))
            out.write(data)

        rej_writer = csv.writer(rej)
        rej_writer.writerow(["line", "reason", "field", "detail", "raw"])
        for record in source.records(required):
            if type(record) is Recipient:
                chunk.append(
                    (
                        record.id,
                        record.email,
                        record.phone,
                        record.push_token,
                        record.attributes,
                        record.consent,
                        record.line,
                    )
                )
                if len(chunk) >= _CHUNK:
                    dump(chunk)
                    count += len(chunk)
                    chunk = []
            else:
                assert isinstance(record, RejectedRow)
                rejected += 1
                reasons[record.reason] += 1
                rej_writer.writerow(
                    [record.line, record.reason, record.field or "", record.detail, *record.raw]
                )
        if chunk:
            dump(chunk)
            count += len(chunk)
    stats = ExtractionStats(count + rejected, count, rejected, dict(reasons))
    return Segment(spool, count), stats
