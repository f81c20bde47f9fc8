"""The one CSV writer for every CSV campaignkit writes (rejected rows, reports,
suppression exports): cells a spreadsheet would run as a formula are neutralised.

A cell is **neutralised** (a single quote ``'`` is put in front of it) when

* its first character is a tab, carriage return, line feed or NUL, or
* its first character after any leading white space (or invisible format characters:
  byte order mark, zero-width spaces and joiners, direction marks) is ``=``, ``+``, ``-``, ``@`` or
  their full-width forms (U+FF1D, U+FF0B, U+FF0D, U+FF20, which some spreadsheets read as the same),
  unless the cell (after that white space) is a **plain number**: an optional ``+`` or
  ``-``, an ASCII digit, then only ASCII digits, spaces, dots, parentheses and hyphens
  (``+14155550100``, ``-12.5``, ``+1 (415) 555-0100``). A spreadsheet may read such a
  cell as a number, but it can call no function and refer to no cell;
  ``-1+1``, ``+1-2*3``, ``=1+1``, ``@SUM(1)`` are neutralised, or
* it starts with ``'`` and the rest would be neutralised (so that :func:`restore`
  gives back exactly what was written: ``'=1`` is written ``''=1``).

Numbers (``int``, ``float``) are written as they are; ``None`` is an empty cell; other
values are written as ``str(value)``, neutralised. :func:`restore` undoes
:func:`neutralise`: ``restore(neutralise(s)) == s`` for every string ``s``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from typing import IO, Any

__all__ = ["SafeCsvWriter", "neutralise", "restore", "safe_csv_writer"]

#: Leading characters that make a cell a formula (OWASP, ASVS 5 1.2.10, full-width forms).
FORMULA_START = frozenset("=+-@\t\r\n\0\uff1d\uff0b\uff0d\uff20")
#: Leading characters neutralised whatever follows (control characters).
_CONTROL_START = frozenset("\t\r\n\0")
#: A signed number or phone number: no letters, no references, no function calls.
_PLAIN_NUMBER = re.compile(r"[+-]?[0-9][0-9 .()-]*")
#: Invisible format characters (BOM, zero-width, direction marks) that may hide a formula.
_INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060\u200e\u200f\u202a-\u202e\u2066-\u2069"
#: What a spreadsheet may skip before a formula: white space and invisible characters.
_LEADING = re.compile(rf"[\s{_INVISIBLE}]*")
_INVISIBLE_CHARS = frozenset(
    chr(c) for c in (0xFEFF, 0x200B, 0x200C, 0x200D, 0x2060, 0x200E, 0x200F, *range(0x202A, 0x202F))
) | frozenset(chr(c) for c in range(0x2066, 0x206A))
#: First characters that may need a look.
_LOOK = FORMULA_START | _INVISIBLE_CHARS | {"'"}


def _needs_quote(cell: str) -> bool:
    if not cell:
        return False
    first = cell[0]
    if first not in _LOOK and not first.isspace():
        return False
    if first == "'":  # neutralised if what follows the quotes would be
        cell = cell.lstrip("'")
        if not cell:
            return False
        first = cell[0]
    if first in _CONTROL_START:
        return True
    match = _LEADING.match(cell)
    body = cell[match.end() :] if match else cell
    if not body or body[0] not in FORMULA_START:
        return False
    return body[0] not in "+-" or _PLAIN_NUMBER.fullmatch(body) is None


def neutralise(cell: str) -> str:
    """``cell`` as a spreadsheet shows it as text: with a leading ``'`` when it would
    otherwise be read as a formula (see the module documentation for the exact rule)."""
    return "'" + cell if _needs_quote(cell) else cell


def restore(cell: str) -> str:
    """The value :func:`neutralise` was given, from the cell it returned."""
    if cell.startswith("'") and _needs_quote(cell[1:]):
        return cell[1:]
    return cell


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return value  # str() of a number is never a formula
    return neutralise(value if isinstance(value, str) else str(value))


class SafeCsvWriter:
    """A :func:`csv.writer` whose cells are neutralised (:func:`neutralise`)."""

    def __init__(self, stream: IO[str], **fmtparams: Any) -> None:
        self._writer = csv.writer(stream, **fmtparams)

    def writerow(self, row: Iterable[Any]) -> Any:
        return self._writer.writerow([_cell(v) for v in row])

    def writerows(self, rows: Iterable[Iterable[Any]]) -> None:
        for row in rows:
            self.writerow(row)


def safe_csv_writer(stream: IO[str], **fmtparams: Any) -> SafeCsvWriter:
    """A CSV writer over ``stream`` (opened with ``newline=""``) that neutralises every
    cell a spreadsheet would run as a formula; ``fmtparams`` as for :func:`csv.writer`."""
    return SafeCsvWriter(stream, **fmtparams)
