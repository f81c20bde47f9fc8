"""A CSV file's records turned into recipients or rejected rows: :class:`CsvRows`.

Its :meth:`~CsvRows.stream` is the per-row loop of :meth:`CsvSource.records`: it runs
the cheap tests inline (the number of fields, one physical line, printable text, no
quote in a strict value, a non-empty id, consent flags the fast lookup knows) and
calls the checks that name the problem (:meth:`~CsvRows.screen`,
:meth:`~CsvRows.values`) only when one of them fires, so an accepted row pays no
call beyond building its recipient.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterator, Sequence
from operator import itemgetter
from typing import Any

import attrs

from .._controls import CONTROL_CHARACTER, control_detail, find_control
from .._models import Recipient, RejectedRow
from ._file import Layout
from ._lines import line_breaks
from ._rows import (
    BAD_CONSENT_VALUE,
    CONSENT_FAST,
    EMPTY_REQUIRED_FIELD,
    MALFORMED_ROW,
    MULTILINE_FIELD,
    NOT_CONSENT,
    dict_builder,
    parse_consent_slow,
)

__all__ = ["CsvRows", "RowTally"]


@attrs.define
class RowTally:
    """Where a read is: ``end``, the physical line where the last record read ended;
    the blank lines after the header and the lines of accepted and rejected records."""

    end: int
    blank: int = 0
    accepted: int = 0
    rejected: int = 0


class CsvRows:
    """The records of one read, against the :class:`Layout` of its header.

    Model fields without a column point one past the last field (``pad``: each row gets
    an ``""`` appended). ``strict_order``: the columns where a quote is a stray one:
    addresses, tokens, the channels' address fields and strict_columns. An id is an
    opaque key compared as written (it may hold one); consent values are parsed
    strictly anyway.
    """

    def __init__(self, layout: Layout, id_column: str, delimiter: str) -> None:
        self.names = layout.names
        self.labels = layout.labels
        self.strict = layout.strict
        self.ncols = ncols = len(layout.names)
        self.id_column = id_column
        self.delimiter = delimiter
        self.pad = None in layout.model
        self.model_get: Callable[[Sequence[str]], Any] = itemgetter(
            *(ncols if i is None else i for i in layout.model)
        )
        self.extra_required = [(f, i, c) for f, i, c in layout.required if f != "id"]
        self.consent_specs = layout.consent
        self.consent_of = dict_builder([(ch, i) for ch, i, _ in layout.consent], call=True)
        self.attributes_of = dict_builder(layout.attributes)
        self.strict_order = sorted(
            layout.strict - {i for _, i, _ in layout.consent} - {layout.model[0]}
        )

    def stream(self, reader: Any, tally: RowTally) -> Iterator[Recipient | RejectedRow]:
        """Yield a recipient or a rejected row per non-blank record of ``reader``
        (positioned after the header), counting lines in ``tally`` (also when the
        reader raises)."""
        end, blank, accepted, rejected = tally.end, 0, 0, 0
        # Everything the loop touches is a local.
        ncols, pad, strict_order = self.ncols, self.pad, self.strict_order
        model_get, consent_of, attributes_of = self.model_get, self.consent_of, self.attributes_of
        extra_required, screen, values = bool(self.extra_required), self.screen, self.values
        fast, recipient, join = CONSENT_FAST.get, Recipient, "".join
        try:
            for row in reader:
                start = end + 1
                end = reader.line_num
                if not row:
                    blank += 1
                    continue
                text = join(row)
                if (
                    len(row) != ncols
                    or end != start
                    or not text.isprintable()
                    or ('"' in text and '"' in join([row[i] for i in strict_order]))
                ) and (bad := screen(row, start, end)) is not None:
                    rejected += end - start + 1
                    yield bad
                    continue
                if pad:
                    row.append("")
                rid, email, phone, token = model_get(row)
                rid = rid.strip()
                consent = consent_of(row, fast)
                if (not rid or extra_required or None in consent.values()) and (
                    bad := values(row, rid, consent, start, end)
                ) is not None:
                    rejected += end - start + 1
                    yield bad
                    continue
                accepted += end - start + 1
                yield recipient(
                    rid,
                    email.strip() or None,
                    phone.strip() or None,
                    token.strip() or None,
                    attributes_of(row),
                    consent,
                    start,
                )
        finally:
            tally.end, tally.blank, tally.accepted, tally.rejected = end, blank, accepted, rejected

    def screen(self, row: list[str], start: int, end: int) -> RejectedRow | None:
        """The record on lines ``start``..``end`` rejected for its shape (number of
        fields, a value spanning lines, a control character, a stray quote), or None."""
        span = end if end != start else None
        if len(row) != self.ncols:
            detail = f"expected {self.ncols} fields, got {len(row)}"
            if end != start:
                detail = (
                    f"lines {start}-{end}: {detail}; the record spans "
                    f"{end - start + 1} lines: a stray quote?"
                )
            return RejectedRow(start, MALFORMED_ROW, detail, None, tuple(row), span)
        if end != start:
            # A quoted field spans lines: legitimate in free text only.
            spans = _multiline_strict(row, self.strict, self.names, start, end, self.delimiter)
            if spans is not None:
                i, detail = spans
                return RejectedRow(start, MULTILINE_FIELD, detail, self.labels[i], tuple(row), end)
        text = "".join(row)
        if not text.isprintable():
            found = _control_in_row(row, self.strict)
            if found is not None:
                i = found[0]
                detail = control_detail(f"column {self.names[i]!r}", *found[1:])
                return RejectedRow(
                    start, CONTROL_CHARACTER, detail, self.labels[i], tuple(row), span
                )
        if '"' in text and '"' in "".join([row[i] for i in self.strict_order]):
            # Left by a stray quote inside an unquoted field (``C2"x``) or an escaped
            # one: no address or token holds a quote.
            i = next(i for i in self.strict_order if '"' in row[i])
            where = f"lines {start}-{end}" if end != start else f"line {start}"
            detail = (
                f"{where}: column {self.names[i]!r} holds a quote at position "
                f"{row[i].index(chr(34)) + 1}: a stray quote?"
            )
            return RejectedRow(start, MALFORMED_ROW, detail, self.labels[i], tuple(row), span)
        return None

    def values(
        self, row: list[str], rid: str, consent: dict[str, Any], start: int, end: int
    ) -> RejectedRow | None:
        """The record rejected for an empty id or required value or a consent flag that
        does not parse, or None; ``consent`` (the fast lookup's) is completed in place."""
        if not rid:
            detail = f"column {self.id_column!r} is empty"
            return self._reject(row, start, end, EMPTY_REQUIRED_FIELD, detail, "id")
        for field, i, column in self.extra_required:
            if not row[i].strip():
                detail = f"column {column!r} is empty"
                return self._reject(row, start, end, EMPTY_REQUIRED_FIELD, detail, field)
        if None in consent.values():
            bad = parse_consent_slow(self.consent_specs, row, consent)
            if bad is not None:
                detail = f"consent value {row[bad[1]]!r} in column {bad[2]!r} is {NOT_CONSENT}"
                return self._reject(row, start, end, BAD_CONSENT_VALUE, detail, bad[2])
        return None

    def _reject(
        self, row: list[str], start: int, end: int, reason: str, detail: str, field: str
    ) -> RejectedRow:
        """A rejected row whose raw values leave out the padding of missing model fields."""
        span = end if end != start else None
        return RejectedRow(start, reason, detail, field, tuple(row[: self.ncols]), span)


_LINE_END = re.compile("\r\n|\r|\n")


def _multiline_strict(
    row: Sequence[str],
    strict: Collection[int],
    names: Sequence[str],
    start: int,
    end: int,
    delimiter: str = ",",
) -> tuple[int, str] | None:
    """For a record on lines ``start``..``end`` (> start): (index, detail) of the first
    strict value that spans lines or does not start on the record's first line (it
    follows a free-text value that spans lines), or of a free-text value one of whose
    later lines holds a record (see below), or None.

    Either way a quote may have swallowed the following lines, so that the value is
    another customer's: only free text after the last strict column may span lines.
    A stray quote in free text that a later quote closes swallows whole records into
    the value, and its message would carry other customers' addresses: a later line
    of a free-text value in column ``i`` holding ``i`` delimiters or more (as many as
    precede the column in a record) is taken for one.
    """
    line = start  # the physical line where field i starts
    spanning: tuple[int, int] | None = None  # (index, first line) of the last multi-line
    swallowed: tuple[int, str] | None = None  # the first free-text value holding a record
    for i, value in enumerate(row):
        breaks = line_breaks(value, False) if ("\n" in value or "\r" in value) else 0
        if breaks and swallowed is None and i > 0 and value.count(delimiter) >= i:
            for n, text in enumerate(_LINE_END.split(value)[1:], 1):
                if (count := text.count(delimiter)) >= i:
                    swallowed = (
                        i,
                        (
                            f"lines {start}-{end}: quoted field in column {names[i]!r} spans "
                            f"{breaks + 1} lines, and line {line + n} holds {count} {delimiter!r}, "
                            "as a record does: a stray quote?"
                        ),
                    )
                    break
        if i in strict:
            if breaks:
                return i, (
                    f"lines {start}-{end}: quoted field in column {names[i]!r} spans "
                    f"{breaks + 1} lines: a stray quote?"
                )
            if spanning is not None:
                j, first = spanning
                return i, (
                    f"lines {start}-{end}: quoted field in column {names[j]!r} spans lines "
                    f"{first}-{line}, so column {names[i]!r} is on line {line}: a stray quote?"
                )
        if breaks:
            spanning = (i, line)
            line += breaks
    return swallowed


def _control_in_row(row: Sequence[str], strict: Collection[int]) -> tuple[int, int, str] | None:
    """(index, position, character) of the first control character a value of ``row``
    may not hold (see :func:`find_control`), or None."""
    for i, value in enumerate(row):
        found = find_control(value, strict=i in strict)
        if found is not None:
            return i, found[0], found[1]
    return None
