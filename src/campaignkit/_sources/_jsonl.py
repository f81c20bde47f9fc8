"""The built-in ``jsonl`` source: :class:`JsonLinesSource`."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import IO, Any, ClassVar

from .._controls import CONTROL_CHARACTER, control_detail, find_control
from .._models import Recipient, RejectedRow
from .._source import MODEL_FIELDS
from ._file import FileSource, Layout
from ._lines import SourceLines
from ._options import JsonLinesOptions, resolve_path, structure_source, under_source
from ._rows import (
    BAD_CONSENT_VALUE,
    EMPTY_REQUIRED_FIELD,
    MALFORMED_ROW,
    NOT_CONSENT,
    parse_consent,
)

__all__ = ["JsonLinesSource"]


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


class JsonLinesSource(FileSource):
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
        opts: JsonLinesOptions = structure_source(options, JsonLinesOptions)
        with under_source():
            source = cls(
                resolve_path(opts.path, base_dir),
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
            layout: Layout | None = None
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
        self, layout: Layout
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
                    detail = f"key {key!r} holds a nested value"
                    return _rejected(line, text, MALFORMED_ROW, detail, key)
            for key, value in values.items():
                if (found := find_control(key, strict=True)) is not None:
                    detail = control_detail("a key", *found)
                    return _rejected(line, text, CONTROL_CHARACTER, detail, None)
                if (
                    value is not None
                    and (found := find_control(value, strict=key in strict_keys)) is not None
                ):
                    detail = control_detail(f"key {key!r}", *found)
                    return _rejected(line, text, CONTROL_CHARACTER, detail, label.get(key, key))
            for field, key in required:
                if not (values.get(key) or "").strip():
                    detail = f"key {key!r} is empty"
                    return _rejected(line, text, EMPTY_REQUIRED_FIELD, detail, field)
            consent: dict[str, bool] = {}
            for channel, key in consent_specs:
                flag = parse_consent(values.get(key) or "")
                if flag is None:
                    detail = f"consent value {values.get(key)!r} in key {key!r} is {NOT_CONSENT}"
                    return _rejected(line, text, BAD_CONSENT_VALUE, detail, key)
                consent[channel] = flag
            rid, email, phone, token = ((values.get(k) or "").strip() or None for k in model_keys)
            attributes = dict(schema_attrs)
            for key, value in values.items():
                if key not in mapped:
                    attributes[key] = value or ""
            return Recipient(rid or "", email, phone, token, attributes, consent, line)

        return build


def _rejected(line: int, text: str, reason: str, detail: str, field: str | None) -> RejectedRow:
    """The rejected row for the object on ``line``: its raw value is the line's text."""
    return RejectedRow(line, reason, detail, field, (text,))
