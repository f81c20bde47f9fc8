"""Built-in segment sources: :class:`CsvSource` and :class:`JsonLinesSource`.

Both stream their file (one record in memory at a time), report every row-level
problem as a :class:`~campaignkit.RejectedRow` with the physical line where the
record starts, and raise :class:`~campaignkit.SourceError` for file-level problems.
They register as source types ``csv`` and ``jsonl`` through
``campaignkit_register_sources``.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import json
import os
import re
import stat
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from operator import itemgetter
from pathlib import Path
from typing import IO, Any, ClassVar

import attrs

from ._config import structure_options
from ._controls import CONTROL_CHARACTER, control_detail, find_control
from ._models import Recipient, RejectedRow
from ._source import MODEL_FIELDS, SourceFactory
from .exceptions import ConfigError, SourceError
from .hookspecs import hookimpl

__all__ = ["CsvSource", "JsonLinesSource", "SourceLines", "parse_consent"]

_TRUE = ("true", "yes", "y", "1", "t")
_FALSE = ("false", "no", "n", "0", "f", "")

#: Normalised (stripped, lower-case) consent spellings. The hot loop first looks up
#: the raw value in :data:`_CONSENT_FAST`, which also holds the common capitalisations.
_CONSENT: dict[str, bool] = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}
_CONSENT_FAST: dict[str, bool] = {
    **_CONSENT,
    **{s.upper(): v for s, v in _CONSENT.items()},
    **{s.capitalize(): v for s, v in _CONSENT.items()},
}

# Reason codes of RejectedRow.
EMPTY_REQUIRED_FIELD = "empty_required_field"
BAD_CONSENT_VALUE = "bad_consent_value"
MALFORMED_ROW = "malformed_row"
MULTILINE_FIELD = "multiline_field"

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


def parse_consent(value: str) -> bool | None:
    """Parse a consent cell strictly.

    Case-insensitive, surrounding whitespace ignored: ``true``, ``yes``, ``y``, ``1``,
    ``t`` mean consent; ``false``, ``no``, ``n``, ``0``, ``f`` and the empty string mean
    no consent.

    Returns:
        ``True`` or ``False``, or ``None`` when the value is none of those spellings.
    """
    return _CONSENT.get(value.strip().lower())


# -- options --------------------------------------------------------------------------------


@attrs.frozen
class _CsvOptions:
    path: str
    columns: dict[str, str] = attrs.field(factory=dict)
    consent: dict[str, str] = attrs.field(factory=dict)
    delimiter: str = ","
    encoding: str = "utf-8"
    required: list[str] = attrs.field(factory=lambda: ["id"])
    strict_columns: list[str] = attrs.field(factory=list)


@attrs.frozen
class _JsonLinesOptions:
    path: str
    columns: dict[str, str] = attrs.field(factory=dict)
    consent: dict[str, str] = attrs.field(factory=dict)
    encoding: str = "utf-8"
    required: list[str] = attrs.field(factory=lambda: ["id"])
    strict_columns: list[str] = attrs.field(factory=list)


def _structure(options: Mapping[str, Any], cls: type[Any]) -> Any:
    """Structure the ``[source]`` table; ``type`` (the source type itself) is ignored."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"expected a table, got {type(options).__name__}", path="source")
    data = {k: v for k, v in options.items() if k != "type"}
    for key in ("required", "strict_columns"):
        if isinstance(data.get(key), str):
            raise ConfigError("expected a list of field names, got a string", path=f"source.{key}")
    return structure_options(data, cls, path="source")


def _resolve(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


# -- layout: where each field lives in a record -----------------------------------------------


@attrs.frozen
class _Layout:
    """Column positions resolved against a header.

    ``model`` holds, per model field, the column index or ``None`` when the file has
    no such column. ``required`` lists (field name, column index, column name) of the
    fields whose value must not be empty; ``consent`` lists (channel, index, column).
    ``strict`` holds the indexes of the columns that are not free text (see
    :meth:`_FileSource._layout`); ``labels`` the field name a reject names per column.
    """

    names: tuple[str, ...]
    model: tuple[int | None, int | None, int | None, int | None]
    required: tuple[tuple[str, int, str], ...]
    consent: tuple[tuple[str, int, str], ...]
    attributes: tuple[tuple[str, int], ...]
    strict: frozenset[int] = frozenset()
    labels: tuple[str, ...] = ()

    def fields(self) -> frozenset[str]:
        present = {f for f, i in zip(MODEL_FIELDS, self.model, strict=True) if i is not None}
        return frozenset(present | {name for name, _ in self.attributes})


class _FileSource:
    """What the CSV and JSON Lines sources share: options, opening, error locating."""

    name: ClassVar[str]
    #: They reject control characters per row themselves (see :class:`~campaignkit.Source`).
    rejects_control_characters: ClassVar[bool] = True

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        columns: Mapping[str, str],
        consent: Mapping[str, str],
        encoding: str,
        required: Collection[str],
        strict_columns: Collection[str] = (),
    ) -> None:
        self._display = os.fspath(path)
        self._path = Path(path)
        self._file = str(self._path)
        self._columns = dict(_check_mapping(columns, "columns"))
        for key in self._columns:
            if key not in MODEL_FIELDS:
                raise ConfigError(
                    f"unknown model field {key!r} (expected one of {', '.join(MODEL_FIELDS)})",
                    path=f"columns.{key}",
                )
        self._consent = dict(_check_mapping(consent, "consent"))
        try:
            info = codecs.lookup(encoding)
        except (LookupError, TypeError):
            raise ConfigError(f"unknown encoding {encoding!r}", path="encoding") from None
        # A UTF-8 file may start with a BOM; utf-8-sig drops it and is UTF-8 otherwise.
        self._encoding = "utf-8-sig" if info.name == "utf-8" else info.name
        if isinstance(required, str) or not all(isinstance(r, str) and r for r in required):
            raise ConfigError("expected a list of non-empty field names", path="required")
        # ``id`` is always required: a recipient cannot exist without it.
        self._required = ("id", *(r for r in dict.fromkeys(required) if r != "id"))
        if isinstance(strict_columns, str) or not all(
            isinstance(c, str) and c.strip() for c in strict_columns
        ):
            raise ConfigError("expected a list of non-empty column names", path="strict_columns")
        self._strict_columns = tuple(dict.fromkeys(c.strip() for c in strict_columns))
        self._last_lines: SourceLines | None = None

    @property
    def last_lines(self) -> SourceLines | None:
        """How the physical lines were accounted for by the last complete
        :meth:`records` read (``None`` before one, or after one that raised)."""
        return self._last_lines

    # -- Source protocol --------------------------------------------------------------------

    def describe(self) -> str:
        """The path as given (the configured path, for a source built by ``from_config``)."""
        return self._display

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._display!r})"

    # -- helpers ----------------------------------------------------------------------------

    def _error(
        self, message: str, *, line: int | None = None, column: str | None = None
    ) -> SourceError:
        return SourceError(message, file=self._file, line=line, column=column)

    def _open(self) -> IO[str]:
        """Open the file as text with universal line ends left untranslated."""
        try:
            st = os.stat(self._path)
            if not stat.S_ISREG(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise self._error(f"cannot read the segment: {kind}")
            return open(self._path, encoding=self._encoding, newline="")
        except FileNotFoundError:
            raise self._error("file not found") from None
        except PermissionError:
            raise self._error("permission denied") from None
        except OSError as exc:
            raise self._error(f"cannot open the file: {exc.strerror or exc}") from None

    def _column(self, field: str) -> str:
        """The file's column holding ``field`` (a model field or an attribute name)."""
        return self._columns.get(field, field)

    def _layout(self, names: Sequence[str], required: Collection[str], line: int) -> _Layout:
        """Resolve columns against a header; raise SourceError for anything missing.

        Strict (not free-text) columns: those holding model fields (``id``, ``email``,
        ``phone``, ``push_token``, mapped or not), consent columns, the columns of
        ``required`` fields (the constructor's and the channels' address fields) and
        ``strict_columns``. Every other column is free text.
        """
        for pos, name in enumerate(names, 1):
            found = find_control(name, strict=True)
            if found is not None:
                raise self._error(
                    control_detail(f"header column {pos}", *found) + " in its name", line=line
                )
        index = {name: i for i, name in enumerate(names)}
        for field, column in self._columns.items():
            if column not in index:
                raise self._error(
                    f"column {column!r} mapped to {field!r} is not in the header",
                    line=line,
                    column=column,
                )
        for field in (*self._required, *required):
            column = self._column(field)
            if column not in index:
                why = f" (holds {field!r})" if column != field else ""
                raise self._error(
                    f"required column {column!r}{why} is missing", line=line, column=column
                )
        for channel, column in self._consent.items():
            if column not in index:
                raise self._error(
                    f"consent column {column!r} for {channel!r} is missing",
                    line=line,
                    column=column,
                )
        for column in self._strict_columns:
            if column not in index:
                raise self._error(
                    f"strict column {column!r} is not in the header", line=line, column=column
                )
        model = tuple(index.get(self._column(f)) for f in MODEL_FIELDS)
        mapped = {
            self._column(f) for f, i in zip(MODEL_FIELDS, model, strict=True) if i is not None
        }
        labels = list(names)
        for f, i in zip(MODEL_FIELDS, model, strict=True):
            if i is not None:
                labels[i] = f
        strict = {i for i in model if i is not None}
        strict.update(index[col] for col in self._consent.values())
        strict.update(index[self._column(f)] for f in (*self._required, *required))
        strict.update(index[col] for col in self._strict_columns)
        return _Layout(
            names=tuple(names),
            model=(model[0], model[1], model[2], model[3]),
            required=tuple((f, index[self._column(f)], self._column(f)) for f in self._required),
            consent=tuple((ch, index[col], col) for ch, col in self._consent.items()),
            attributes=tuple((n, i) for i, n in enumerate(names) if n not in mapped),
            strict=frozenset(strict),
            labels=tuple(labels),
        )

    def _decode_error(self, exc: UnicodeDecodeError) -> SourceError:
        """Find the physical line of the first undecodable byte (the text layer reads
        ahead in chunks, so the error's own offset is no help)."""
        line, offset = _locate_undecodable(self._path, self._encoding)
        bad = exc.object[exc.start : exc.end].hex(" ")
        where = f" at byte offset {offset}" if offset is not None else ""
        return self._error(
            f"cannot decode the file as {self._encoding}{where}: bytes {bad} ({exc.reason})",
            line=line,
        )


def _check_mapping(value: Mapping[str, str], path: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"expected a table, got {type(value).__name__}", path=path)
    for key, column in value.items():
        if not isinstance(key, str) or not key:
            raise ConfigError("keys must be non-empty strings", path=path)
        if not isinstance(column, str) or not column.strip():
            raise ConfigError("expected a non-empty column name", path=f"{path}.{key}")
    return {k: v.strip() for k, v in value.items()}


def _locate_undecodable(path: Path, encoding: str) -> tuple[int | None, int | None]:
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
                    return breaks + _line_breaks(text, last_cr) + 1, offset
                breaks += _line_breaks(text, last_cr)
                if text:
                    last_cr = text.endswith("\r")
                fed += len(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return breaks + 1, None
    except OSError:
        return None, None
    return None, None


def _line_breaks(text: str, after_cr: bool) -> int:
    """Count \\n, \\r\\n and lone \\r in ``text``; ``after_cr``: the text before ended in \\r."""
    n = text.count("\n") + text.count("\r") - text.count("\r\n")
    if after_cr and text.startswith("\n"):
        n -= 1
    return n


def _dict_builder(
    pairs: Sequence[tuple[str, int]], *, call: bool = False
) -> Callable[..., dict[str, Any]]:
    """Compile ``lambda row, f=None: {name: row[i], ...}`` (``f(row[i])`` with ``call``).

    A dict display with constant keys builds a small dict about twice as fast as a
    comprehension over the pairs or ``dict(zip(...))``, and this runs once per row.
    Only ``repr()`` of the names (string literals) and int indexes reach the source.
    """
    if not all(isinstance(n, str) and type(i) is int for n, i in pairs):
        raise TypeError("pairs must be (str, int)")
    items = ", ".join(
        f"{n!r}: {'f(' if call else ''}row[{i}]{')' if call else ''}" for n, i in pairs
    )
    builder: Callable[..., dict[str, Any]] = eval(  # noqa: S307 - literal text, see above
        f"lambda row, f=None: {{{items}}}", {"__builtins__": {}}
    )
    return builder


# -- CSV --------------------------------------------------------------------------------------


class CsvSource(_FileSource):
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
        opts: _CsvOptions = _structure(options, _CsvOptions)
        with _under_source():
            source = cls(
                _resolve(opts.path, base_dir),
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
                consent_of = _dict_builder([(ch, i) for ch, i, _ in consent_specs], call=True)
                attributes_of = _dict_builder(layout.attributes)
                fast = _CONSENT_FAST.get
                recipient = Recipient
                rejected = RejectedRow
                strict = layout.strict
                # Columns where a quote is a stray one: addresses, tokens, the channels'
                # address fields and strict_columns. An id is an opaque key compared as
                # written (it may hold one); consent values are parsed strictly anyway.
                strict_order = sorted(
                    strict - {i for _, i, _ in consent_specs} - {layout.model[0]}
                )
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
                        spans = _multiline_strict(
                            row, strict, names, start, end, self._delimiter
                        )
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
                        bad = _parse_consent_slow(consent_specs, row, consent)
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
        breaks = _line_breaks(value, False) if ("\n" in value or "\r" in value) else 0
        if breaks and swallowed is None and i > 0 and value.count(delimiter) >= i:
            for n, text in enumerate(_LINE_END.split(value)[1:], 1):
                if (count := text.count(delimiter)) >= i:
                    swallowed = i, (
                        f"lines {start}-{end}: quoted field in column {names[i]!r} spans "
                        f"{breaks + 1} lines, and line {line + n} holds {count} {delimiter!r}, "
                        "as a record does: a stray quote?"
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


def _parse_consent_slow(
    specs: Sequence[tuple[str, int, str]], row: Sequence[str], consent: dict[str, bool | None]
) -> tuple[str, int, str] | None:
    """Parse the consent values the fast lookup missed, in place; return the spec of the
    first value that does not parse, or ``None``."""
    for spec in specs:
        if consent[spec[0]] is None:
            flag = parse_consent(row[spec[1]])
            if flag is None:
                return spec
            consent[spec[0]] = flag
    return None


@contextlib.contextmanager
def _under_source() -> Iterator[None]:
    """Re-raise a constructor's ConfigError with its key path under ``source``."""
    try:
        yield
    except ConfigError as exc:
        path = f"source.{exc.path}" if exc.path else "source"
        raise ConfigError(exc.detail, path=path) from None


# -- JSON Lines -------------------------------------------------------------------------------


class _Nested(Exception):
    pass


def _json_text(value: Any) -> str | None:
    """A JSON scalar as text (``null`` -> ``None``); raise _Nested for arrays/objects."""
    if isinstance(value, str):
        return value
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    raise _Nested


class JsonLinesSource(_FileSource):
    """A segment in a JSON Lines file: one JSON object per line.

    Takes the arguments of :class:`CsvSource` except ``delimiter``; keys play the part
    of columns. The keys of the first object are the "header": required, mapped and
    consent keys must be there, and :meth:`fields` reports them. Scalar values become
    text (numbers as JSON writes them, booleans ``true``/``false``); ``null`` or a
    missing key is an empty value (``None`` for a model field, ``""`` for an
    attribute). Blank lines are skipped. Rejected rows: ``malformed_row`` (invalid
    JSON, not an object, or a nested array/object value, with ``field`` naming the key),
    ``control_character`` (``key 'email': control character U+0000 at position 5``;
    strict and free-text keys as for CSV, a key holding one names no key),
    ``empty_required_field``, ``bad_consent_value``. ``raw`` is the line's text.
    """

    name: ClassVar[str] = "jsonl"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        columns: Mapping[str, str] = {},
        consent: Mapping[str, str] = {},
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

    @classmethod
    def from_config(cls, options: Mapping[str, Any], *, base_dir: Path) -> JsonLinesSource:
        """Build from a ``[source]`` table (``path``, ``columns``, ``consent``,
        ``encoding``, ``required``, ``strict_columns``); a relative ``path`` is relative
        to ``base_dir``.

        Raises:
            ConfigError: naming the key path.
        """
        opts: _JsonLinesOptions = _structure(options, _JsonLinesOptions)
        with _under_source():
            source = cls(
                _resolve(opts.path, base_dir),
                columns=opts.columns,
                consent=opts.consent,
                encoding=opts.encoding,
                required=opts.required,
                strict_columns=opts.strict_columns,
            )
        source._display = opts.path
        return source

    def _objects(
        self, f: IO[str], blank: list[int] | None = None
    ) -> Iterator[tuple[int, str, dict[str, Any] | None, str | None]]:
        """Yield (line, text, object or None, error) for each non-blank line; count the
        blank ones in ``blank[0]`` and all in ``blank[1]``."""
        line = 0
        for text in f:
            line += 1
            if blank is not None:
                blank[1] = line
            text = text.rstrip("\r\n")
            if not text.strip():
                if blank is not None:
                    blank[0] += 1
                continue
            try:
                obj = json.loads(text)
            except ValueError as exc:
                yield line, text, None, f"invalid JSON: {exc}"
                continue
            if not isinstance(obj, dict):
                yield line, text, None, f"expected a JSON object, got {type(obj).__name__}"
                continue
            yield line, text, obj, None

    def fields(self) -> frozenset[str]:
        """Model fields present (after mapping) and attribute keys of the first object.

        Raises:
            SourceError: the file cannot be opened or decoded, or holds no JSON object.
        """
        with self._open() as f:
            try:
                for line, _, obj, _ in self._objects(f):
                    if obj is not None:
                        return self._layout(list(obj), (), line).fields()
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc) from None
        raise self._error("no JSON object in the file", line=1)

    def records(self, required: Collection[str] = ()) -> Iterator[Recipient | RejectedRow]:
        """Stream the objects (see the class docstring).

        Raises:
            SourceError: cannot open, undecodable bytes, a key missing from the first
                object, no JSON object in the file.
        """
        self._last_lines = None
        with self._open() as f:
            layout: _Layout | None = None
            blank = [0, 0]
            accepted = rejected = 0
            try:
                for line, text, obj, error in self._objects(f, blank):
                    if obj is None:
                        rejected += 1
                        yield RejectedRow(line, MALFORMED_ROW, error or "", None, (text,))
                        continue
                    if layout is None:
                        layout = self._layout(list(obj), required, line)
                        build = self._builder(layout)
                    record = build(line, text, obj)
                    if type(record) is Recipient:
                        accepted += 1
                    else:
                        rejected += 1
                    yield record
            except UnicodeDecodeError as exc:
                raise self._decode_error(exc) from None
            if layout is None:
                raise self._error("no JSON object in the file", line=1)
            self._last_lines = SourceLines(
                total=blank[1],
                header=0,
                blank=blank[0],
                accepted=accepted,
                rejected=rejected,
            )

    def _builder(
        self, layout: _Layout
    ) -> Callable[[int, str, dict[str, Any]], Recipient | RejectedRow]:
        """Make the function turning one object into a Recipient or RejectedRow."""
        model_keys = tuple(self._column(f) for f in MODEL_FIELDS)
        required = tuple((f, c) for f, _, c in layout.required)
        consent_specs = tuple((ch, c) for ch, _, c in layout.consent)
        schema_attrs = dict.fromkeys((n for n, _ in layout.attributes), "")
        mapped = set(model_keys)  # keys holding model fields are never attributes
        strict_keys = frozenset(layout.names[i] for i in layout.strict)
        label = {
            layout.names[i]: f
            for i, f in zip(layout.model, MODEL_FIELDS, strict=True)
            if i is not None
        }

        def build(line: int, text: str, obj: dict[str, Any]) -> Recipient | RejectedRow:
            values: dict[str, str | None] = {}
            for key, value in obj.items():
                try:
                    values[key] = _json_text(value)
                except _Nested:
                    return RejectedRow(
                        line, MALFORMED_ROW, f"key {key!r} holds a nested value", key, (text,)
                    )
            for key, value in values.items():
                found = find_control(key, strict=True)
                if found is not None:
                    return RejectedRow(
                        line, CONTROL_CHARACTER, control_detail("a key", *found), None, (text,)
                    )
                if value is not None:
                    found = find_control(value, strict=key in strict_keys)
                    if found is not None:
                        return RejectedRow(
                            line,
                            CONTROL_CHARACTER,
                            control_detail(f"key {key!r}", *found),
                            label.get(key, key),
                            (text,),
                        )
            for field, key in required:
                if not (values.get(key) or "").strip():
                    return RejectedRow(
                        line, EMPTY_REQUIRED_FIELD, f"key {key!r} is empty", field, (text,)
                    )
            consent: dict[str, bool] = {}
            for channel, key in consent_specs:
                flag = parse_consent(values.get(key) or "")
                if flag is None:
                    return RejectedRow(
                        line,
                        BAD_CONSENT_VALUE,
                        f"consent value {values.get(key)!r} in key {key!r} is not "
                        "one of true/yes/y/1/t or false/no/n/0/f/empty",
                        key,
                        (text,),
                    )
                consent[channel] = flag
            rid, email, phone, token = ((values.get(k) or "").strip() or None for k in model_keys)
            attributes = dict(schema_attrs)
            for key, value in values.items():
                if key not in mapped:
                    attributes[key] = value or ""
            return Recipient(rid or "", email, phone, token, attributes, consent, line)

        return build


# -- registration -----------------------------------------------------------------------------


@hookimpl
def campaignkit_register_sources(register: Callable[[SourceFactory], None]) -> None:
    """Register the built-in ``csv`` and ``jsonl`` source types."""
    register(CsvSource)
    register(JsonLinesSource)
