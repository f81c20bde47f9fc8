"""The built-in ``csv`` source: :class:`CsvSource`."""

from __future__ import annotations

import csv
import os
from collections.abc import Collection, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

from .._models import Recipient, RejectedRow
from ..exceptions import ConfigError, SourceError
from ._csv_rows import CsvRows, RowTally
from ._file import FileSource
from ._lines import SourceLines
from ._options import CsvOptions, resolve_path, structure_source, under_source

__all__ = ["CsvSource"]


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
            tally = RowTally(end=0)
            try:
                names, header_line = self._header(reader)
                tally.end = header_lines = reader.line_num
                layout = self._layout(names, required, header_line)
                yield from CsvRows(layout, self._column("id"), self._delimiter).stream(
                    reader, tally
                )
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc) from None
            except csv.Error as exc:
                # The reader fails on the record after the last one it returned, having
                # read the lines up to the failure.
                first = tally.end + 1
                raise self._invalid(exc, first, max(reader.line_num, first)) from None
            if tally.accepted + tally.rejected == 0:
                raise self._error("no data rows after the header", line=tally.end + 1)
            self._last_lines = SourceLines(
                total=tally.end,
                header=header_lines,
                blank=tally.blank,
                accepted=tally.accepted,
                rejected=tally.rejected,
            )

    def _invalid(self, exc: csv.Error, first: int, last: int) -> SourceError:
        """The error for the record on lines ``first``..``last`` the reader failed on."""
        if str(exc) == "unexpected end of data":
            msg = (
                f"unterminated quoted field: the record starting on line {first} "
                f"runs to the end of the file (line {last}): a stray quote?"
            )
        elif last > first:
            msg = f"invalid CSV in lines {first}-{last}: {exc}: a stray quote?"
        else:
            msg = f"invalid CSV: {exc}"
        return self._error(msg, line=first)
