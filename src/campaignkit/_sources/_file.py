"""What the CSV and JSON Lines sources share: :class:`FileSource` (options, opening,
error locating) and the :class:`Layout` of the columns resolved against a header."""

from __future__ import annotations

import codecs
import os
import stat
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import IO, ClassVar

import attrs

from .._controls import control_detail, find_control
from .._source import MODEL_FIELDS
from ..exceptions import ConfigError, SourceError
from ._lines import SourceLines, locate_undecodable

__all__ = ["FileSource", "Layout"]


# -- layout: where each field lives in a record -----------------------------------------------


@attrs.frozen
class Layout:
    """Column positions resolved against a header.

    ``model`` holds, per model field, the column index or ``None`` when the file has
    no such column. ``required`` lists (field name, column index, column name) of the
    fields whose value must not be empty; ``consent`` lists (channel, index, column).
    ``strict`` holds the indexes of the columns that are not free text (see
    :meth:`FileSource._layout`); ``labels`` the field name a reject names per column.
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


class FileSource:
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

    def _layout(self, names: Sequence[str], required: Collection[str], line: int) -> Layout:
        """Resolve columns against a header; raise SourceError for anything missing.

        Strict (not free-text) columns: those holding model fields (``id``, ``email``,
        ``phone``, ``push_token``, mapped or not), consent columns, the columns of
        ``required`` fields (the constructor's and the channels' address fields) and
        ``strict_columns``. Every other column is free text.
        """
        index = self._check_header(names, required, line)
        model = tuple(index.get(self._column(f)) for f in MODEL_FIELDS)
        present = [(f, i) for f, i in zip(MODEL_FIELDS, model, strict=True) if i is not None]
        mapped = {self._column(f) for f, _ in present}
        labels = list(names)
        for f, i in present:
            labels[i] = f
        strict = {i for _, i in present}
        strict.update(index[col] for col in self._consent.values())
        strict.update(index[self._column(f)] for f in (*self._required, *required))
        strict.update(index[col] for col in self._strict_columns)
        return Layout(
            names=tuple(names),
            model=(model[0], model[1], model[2], model[3]),
            required=tuple((f, index[self._column(f)], self._column(f)) for f in self._required),
            consent=tuple((ch, index[col], col) for ch, col in self._consent.items()),
            attributes=tuple((n, i) for i, n in enumerate(names) if n not in mapped),
            strict=frozenset(strict),
            labels=tuple(labels),
        )

    def _check_header(
        self, names: Sequence[str], required: Collection[str], line: int
    ) -> dict[str, int]:
        """The position of each header name; raise SourceError for the first problem: a
        control character in a name, or a missing mapped, required, consent or strict
        column (in that order)."""
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
        return index

    def _decode_error(self, exc: UnicodeDecodeError) -> SourceError:
        """Find the physical line of the first undecodable byte (the text layer reads
        ahead in chunks, so the error's own offset is no help)."""
        line, offset = locate_undecodable(self._path, self._encoding)
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
