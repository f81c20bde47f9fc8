"""Line accounting: :class:`SourceLines`, line breaks counted as the readers count them,
and the physical line of a file's first undecodable byte."""

from __future__ import annotations

import codecs
from pathlib import Path

import attrs

__all__ = ["SourceLines", "line_breaks", "locate_undecodable"]


@attrs.frozen
class SourceLines:
    """How the physical lines of a file were accounted for by one complete read.

    ``total`` = ``header`` + ``blank`` + ``accepted`` + ``rejected``: the header's lines
    (with blank lines before it), blank lines after it, the lines of the records that
    became recipients and of the rejected records (a record spans several lines when a
    quoted field holds line breaks).
    """

    total: int
    header: int
    blank: int
    accepted: int
    rejected: int

    def adds_up(self) -> bool:
        return self.total == self.header + self.blank + self.accepted + self.rejected

    def to_dict(self) -> dict[str, int]:
        return attrs.asdict(self)


def locate_undecodable(path: Path, encoding: str) -> tuple[int | None, int | None]:
    """Return (1-based line, byte offset) of the first byte ``encoding`` cannot decode."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    breaks = 0
    fed = 0
    last_cr = False
    try:
        with open(path, "rb") as f:
            while chunk := f.read(1 << 16):
                try:
                    text = decoder.decode(chunk)
                except UnicodeDecodeError as exc:
                    data = bytes(exc.object)
                    text = data[: exc.start].decode(encoding, errors="replace")
                    # exc.object is what the decoder held back from earlier chunks plus
                    # this one, minus any BOM it dropped (then the difference is < 0).
                    offset = fed - (len(data) - len(chunk)) + exc.start
                    return breaks + line_breaks(text, last_cr) + 1, offset
                breaks += line_breaks(text, last_cr)
                if text:
                    last_cr = text.endswith("\r")
                fed += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return breaks + 1, None
    except OSError:
        return None, None
    return None, None


def line_breaks(text: str, after_cr: bool) -> int:
    """Count \\n, \\r\\n and lone \\r in ``text``; ``after_cr``: the text before ended in \\r."""
    n = text.count("\n") + text.count("\r") - text.count("\r\n")
    if after_cr and text.startswith("\n"):
        n -= 1
    return n
