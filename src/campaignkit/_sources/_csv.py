"""The built-in ``csv`` source: :class:`CsvSource`."""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, ClassVar

from .._controls import CONTROL_CHARACTER, control_detail, find_control
from .._models import Recipient, RejectedRow
from ..exceptions import ConfigError
from ._file import FileSource
from ._lines import SourceLines, line_breaks
from ._options import CsvOptions, resolve_path, structure_source, under_source
from ._rows import (
    BAD_CONSENT_VALUE,
    CONSENT_FAST,
    EMPTY_REQUIRED_FIELD,
    MALFORMED_ROW,
    MULTILINE_FIELD,
    dict_builder,
    parse_consent_slow,
)

__all__ = ["CsvSource"]


# -- CSV --------------------------------------------------------------------------------------


class CsvSource(FileSource):
    """A segment in a CSV file with a header row.

    Args:
        path: the file.
        columns: model field (``id``, ``email``, ``phone``, ``push_token``) -> the file's
            column holding it. An unmapped model field is read from the column of the
            same name, if any. Every column not holding a model field becomes a recipient
            attribute under its own (header) name; consent columns are attributes too.
        consent: channel name -> column whose value is that channel's consent flag,
            parsed strictly by :func:`parse_consent`.
        delimiter: one character.
        encoding: the file's encoding; with ``utf-8`` (the default) a byte-order mark
            is accepted.
        required: fields whose value must not be empty (``id`` always is); a row with
            one empty is rejected as ``empty_required_field``. Names are model fields
            or attribute columns.
        strict_columns: attribute columns that are not free text (in addition to the
            model fields, consent columns and required fields, which never are).

    Free-text columns are all the others: only there may a value span lines (a quoted
    field holding line breaks), and only when no strict column follows it in the record
    (so that every strict value comes from the record's first line), or hold tab, LF or
    CRLF; no value may hold any other control character (C0, DEL, C1).

    Rows become :class:`~campaignkit.Recipient` values: model fields stripped, empty
    ones ``None``; attributes verbatim. Header names are stripped. Blank lines are
    skipped. Rejected rows (:class:`~campaignkit.RejectedRow`, ``reason``):

    * ``malformed_row``: a number of fields different from the header's (when the
      record spans lines, the detail names the line range: a stray quote?), or a
      strict value other than the id or a consent flag holding a quote (``line 4:
      column 'email' holds a quote at position 3: a stray quote?``: a quote inside an
      unquoted field, or an escaped ``""``);
    * ``multiline_field``: a strict column's quoted value spans lines, or a strict
      column follows a free-text value that does; the record's ``line``..``end_line``
      and the detail name the range, e.g. ``lines 4-6: quoted field in column 'email'
      spans 3 lines: a stray quote?``, ``lines 4-6: quoted field in column 'note' spans
      lines 4-6, so column 'phone' is on line 6: a stray quote?``; or a free-text
      value in column ``i`` spans lines and a later line of it holds ``i`` delimiters
      or more, as a record swallowed by a stray quote does;
    * ``control_character``: ``column 'email': control character U+0000 at position 5``;
    * ``empty_required_field``: ``field`` names the required field;
    * ``bad_consent_value``: ``field`` names the consent column.

    ``field`` is the model field's name for a model field, else the column's. After a
    complete read :attr:`last_lines` accounts for every physical line.

    Raises:
        ConfigError: bad arguments (unknown model field in ``columns``, a delimiter that
            is not one character, unknown encoding), naming the argument.
    """

    name: ClassVar[str] = "csv"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        columns: Mapping[str, str] = {},
        consent: Mapping[str, str] = {},
        delimiter: str = ",",
        encoding: str = "utf-8",
        required: Collection[str] = ("id",),
        strict_columns: Collection[str] = (),
    ) -> None:
        super().__init__(
            path,
            columns=columns,
            consent=consent,
            encoding=encoding,
            required=required,
            strict_columns=strict_columns,
        )
        if not isinstance(delimiter, str) or len(delimiter) != 1:
            raise ConfigError(
                f"the delimiter must be one character, got {delimiter!r}", path="delimiter"
            )
        if delimiter in '\r\n"' or (delimiter.isspace() and delimiter != "\t"):
            raise ConfigError(f"unusable delimiter {delimiter!r}", path="delimiter")
        self._delimiter = delimiter

    @classmethod
    def from_config(cls, options: Mapping[str, Any], *, base_dir: Path) -> CsvSource:
        """Build from a ``[source]`` table (``path``, ``columns``, ``consent``,
        ``delimiter``, ``encoding``, ``required``, ``strict_columns``); a relative
        ``path`` is relative to ``base_dir``.

        Raises:
            ConfigError: naming the key path (``source.delimiter``).
        """
        opts: CsvOptions = structure_source(options, CsvOptions)
        with under_source():
            source = cls(
                resolve_path(opts.path, base_dir),
                columns=opts.columns,
                consent=opts.consent,
                delimiter=opts.delimiter,
                encoding=opts.encoding,
                required=opts.required,
                strict_columns=opts.strict_columns,
            )
        source._display = opts.path
        return source

    def _reader(self, f: IO[str]) -> Any:
        return csv.reader(f, delimiter=self._delimiter, strict=True)

    def _header(self, reader: Any) -> tuple[list[str], int]:
        """Read the header; return its stripped names and its line."""
        end = 0
        for row in reader:
            start, end = end + 1, reader.line_num
            if not row:
                continue  # blank lines before the header
            names = [n.strip() for n in row]
            seen: set[str] = set()
            for pos, name in enumerate(names, 1):
                if not name:
                    raise self._error(f"header column {pos} has no name", line=start)
                if name in seen:
                    raise self._error("duplicate column name in header", line=start, column=name)
                seen.add(name)
            return names, start
        raise self._error("the file is empty (no header)", line=1)

    def fields(self) -> frozenset[str]:
        """Model fields present (after mapping) and attribute columns; reads only the header.

        Raises:
            SourceError: the file cannot be opened or decoded, or has no usable header.
        """
        with self._open() as f:
            reader = self._reader(f)
            try:
                names, line = self._header(reader)
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc) from None
            except csv.Error as exc:
                raise self._error(f"invalid CSV: {exc}", line=1) from None
            return self._layout(names, (), line).fields()

    def records(self, required: Collection[str] = ()) -> Iterator[Recipient | RejectedRow]:
        """Stream the rows (see the class docstring).

        Args:
            required: fields whose column must exist (those the enabled channels
                send to), in addition to the constructor's ``required``.

        Raises:
            SourceError: file-level problems: cannot open, undecodable bytes (at the
                line of the first bad byte), empty file, duplicate or missing columns
                (line of the header), invalid quoting or unterminated quote (line where
                the record starts), no data rows (line after the header).
        """
        self._last_lines = None
        with self._open() as f:
            reader = self._reader(f)
            end = 0  # physical line where the last record read ended
            count = 0  # non-blank rows after the header
            start = 1
            blank = 0  # blank lines after the header
            extra = 0  # lines of accepted records beyond their first
            rejected_lines = 0  # lines of rejected records
            nrej = 0  # rejected records
            try:
                names, header_line = self._header(reader)
                end = header_lines = reader.line_num
                layout = self._layout(names, required, header_line)
                # Everything the loop touches is a local. Model fields without a column
                # point one past the last field, where each row gets an "" appended.
                ncols = len(names)
                model_get = itemgetter(*(ncols if i is None else i for i in layout.model))
                extra_required = [(f, i, c) for f, i, c in layout.required if f != "id"]
                id_column = self._column("id")
                pad = None in layout.model
                consent_specs = layout.consent
                consent_of = dict_builder([(ch, i) for ch, i, _ in consent_specs], call=True)
                attributes_of = dict_builder(layout.attributes)
                fast = CONSENT_FAST.get
                recipient = Recipient
                rejected = RejectedRow
                strict = layout.strict
                # Columns where a quote is a stray one: addresses, tokens, the channels'
                # address fields and strict_columns. An id is an opaque key compared as
                # written (it may hold one); consent values are parsed strictly anyway.
                strict_order = sorted(strict - {i for _, i, _ in consent_specs} - {layout.model[0]})
                labels = layout.labels
                join = "".join
                for row in reader:
                    start = end + 1
                    end = reader.line_num
                    count += 1
                    if len(row) != ncols:
                        if not row:
                            count -= 1
                            blank += 1
                            continue  # blank line
                        rejected_lines += end - start + 1
                        nrej += 1
                        detail = f"expected {ncols} fields, got {len(row)}"
                        if end != start:
                            detail = (
                                f"lines {start}-{end}: {detail}; the record spans "
                                f"{end - start + 1} lines: a stray quote?"
                            )
                        yield rejected(
                            start,
                            MALFORMED_ROW,
                            detail,
                            None,
                            tuple(row),
                            end if end != start else None,
                        )
                        continue
                    if end != start:
                        # A quoted field spans lines: legitimate in free text only.
                        spans = _multiline_strict(row, strict, names, start, end, self._delimiter)
                        if spans is not None:
                            rejected_lines += end - start + 1
                            nrej += 1
                            yield rejected(
                                start, MULTILINE_FIELD, spans[1], labels[spans[0]], tuple(row), end
                            )
                            continue
                    text = join(row)
                    if not text.isprintable():
                        found = _control_in_row(row, strict)
                        if found is not None:
                            rejected_lines += end - start + 1
                            nrej += 1
                            yield rejected(
                                start,
                                CONTROL_CHARACTER,
                                control_detail(f"column {names[found[0]]!r}", *found[1:]),
                                labels[found[0]],
                                tuple(row),
                                end if end != start else None,
                            )
                            continue
                    if '"' in text and '"' in join([row[i] for i in strict_order]):
                        # Left by a stray quote inside an unquoted field (``C2"x``) or
                        # an escaped one: no address or token holds a quote.
                        i = next(i for i in strict_order if '"' in row[i])
                        rejected_lines += end - start + 1
                        nrej += 1
                        where = f"lines {start}-{end}" if end != start else f"line {start}"
                        yield rejected(
                            start,
                            MALFORMED_ROW,
                            f"{where}: column {names[i]!r} holds a quote at position "
                            f"{row[i].index(chr(34)) + 1}: a stray quote?",
                            labels[i],
                            tuple(row),
                            end if end != start else None,
                        )
                        continue
                    if pad:
                        row.append("")
                    rid, email, phone, token = model_get(row)
                    rid = rid.strip()
                    if not rid:
                        rejected_lines += end - start + 1
                        nrej += 1
                        yield rejected(
                            start,
                            EMPTY_REQUIRED_FIELD,
                            f"column {id_column!r} is empty",
                            "id",
                            tuple(row[:ncols]),
                            end if end != start else None,
                        )
                        continue
                    if extra_required:
                        miss = next((r for r in extra_required if not row[r[1]].strip()), None)
                        if miss is not None:
                            rejected_lines += end - start + 1
                            nrej += 1
                            yield rejected(
                                start,
                                EMPTY_REQUIRED_FIELD,
                                f"column {miss[2]!r} is empty",
                                miss[0],
                                tuple(row[:ncols]),
                                end if end != start else None,
                            )
                            continue
                    consent = consent_of(row, fast)
                    if None in consent.values():
                        bad = parse_consent_slow(consent_specs, row, consent)
                        if bad is not None:
                            rejected_lines += end - start + 1
                            nrej += 1
                            yield rejected(
                                start,
                                BAD_CONSENT_VALUE,
                                f"consent value {row[bad[1]]!r} in column {bad[2]!r} is "
                                "not one of true/yes/y/1/t or false/no/n/0/f/empty",
                                bad[2],
                                tuple(row[:ncols]),
                                end if end != start else None,
                            )
                            continue
                    if end != start:
                        extra += end - start
                    yield recipient(
                        rid,
                        email.strip() or None,
                        phone.strip() or None,
                        token.strip() or None,
                        attributes_of(row),
                        consent,
                        start,
                    )
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc) from None
            except csv.Error as exc:
                # The reader fails on the record after the last one it returned, having
                # read the lines up to the failure.
                first, last = end + 1, max(reader.line_num, end + 1)
                if str(exc) == "unexpected end of data":
                    msg = (
                        f"unterminated quoted field: the record starting on line {first} "
                        f"runs to the end of the file (line {last}): a stray quote?"
                    )
                elif last > first:
                    msg = f"invalid CSV in lines {first}-{last}: {exc}: a stray quote?"
                else:
                    msg = f"invalid CSV: {exc}"
                raise self._error(msg, line=first) from None
            if count == 0:
                raise self._error("no data rows after the header", line=end + 1)
            self._last_lines = SourceLines(
                total=end,
                header=header_lines,
                blank=blank,
                accepted=count - nrej + extra,
                rejected=rejected_lines,
            )


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
