"""An in-memory source: a segment built by the application, as recipients or plain dicts."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sized
from typing import Any

from ._controls import CONTROL_CHARACTER, control_detail, find_control
from ._models import Recipient, RejectedRow
from ._source import MODEL_FIELDS
from ._sources import BAD_CONSENT_VALUE, EMPTY_REQUIRED_FIELD, MALFORMED_ROW, parse_consent

__all__ = ["StaticSource"]

Record = Recipient | RejectedRow

#: The key of a row that may hold the consent flags as a mapping (channel -> flag).
CONSENT_KEY = "consent"


class StaticSource:
    """A :class:`~campaignkit.Source` over a segment the application holds or produces:
    :class:`~campaignkit.Recipient` (and :class:`~campaignkit.RejectedRow`) values, or
    plain dicts through :meth:`from_dicts`.

    ``records`` is one of:

    * a collection (a list, a tuple): read again on every pass (validation, a preview,
      the run's extraction);
    * a function returning a fresh iterable (a generator function, say): called on every
      pass, so the segment **streams** and is never held in memory: the way to give a
      segment read from a database or an API;
    * any other iterable (a generator expression): read into a list once, as it is
      given, since a source is read more than once.

    As for every source, extraction rejects a recipient holding a control character
    where it may not (``control_character``) and selection skips invalid addresses
    (``invalid_address``), so a bad record never stops the run; :meth:`from_dicts`
    checks each row as a JSON Lines file's line is checked.

    Args:
        records: the recipients, as above.
        fields: the names templates and filters may use (default: the model fields
            ``id``, ``email``, ``phone``, ``push_token`` and the recipients' attributes:
            of every recipient of a collection, of the first one otherwise).
        name: what reports call the source (default ``<static records>``).

    Raises:
        TypeError: a record is neither a :class:`~campaignkit.Recipient` nor a
            :class:`~campaignkit.RejectedRow` (a dict: use :meth:`from_dicts`); for a
            function, when the records are read.
    """

    def __init__(
        self,
        records: Iterable[Record] | Callable[[], Iterable[Record]],
        *,
        fields: Collection[str] | None = None,
        name: str | None = None,
    ) -> None:
        if isinstance(records, str | bytes | Mapping):
            hint = (
                ": StaticSource.from_dicts([row]) takes dicts"
                if isinstance(records, Mapping)
                else ""
            )
            raise TypeError(
                f"StaticSource: records must be Recipient values (a list, a function "
                f"returning them...), not a {type(records).__name__}{hint}"
            )
        if not callable(records) and iter(records) is records:
            records = list(records)  # a one-shot iterator: kept, to be read again
        if not callable(records):
            for position, record in enumerate(records, start=1):
                _check_record(position, record)
        self._records = records
        self._fields = frozenset(fields) if fields is not None else None
        self._name = name
        #: ``fields`` looks at every record of a collection, at the first otherwise.
        self._scan_all = not callable(records)
        self._size: int | None = len(records) if isinstance(records, Sized) else None
        #: What ``fields`` reports when the records came from dicts: their keys.
        self._keys: Callable[[], frozenset[str]] | None = None

    @classmethod
    def from_dicts(
        cls,
        rows: Iterable[Mapping[str, Any]] | Callable[[], Iterable[Mapping[str, Any]]],
        *,
        columns: Mapping[str, str] | None = None,
        consent: Mapping[str, str] | None = None,
        required: Collection[str] = ("id",),
        fields: Collection[str] | None = None,
        name: str | None = None,
    ) -> StaticSource:
        """A source over plain dicts, one per customer, checked as a JSON Lines file is.

        Keys ``id``, ``email``, ``phone`` and ``push_token`` are the model fields (or the
        keys ``columns`` maps them from, ``{"id": "customer_id"}``); every other key is
        an attribute. Consent comes from the keys ``consent`` names (channel -> key,
        ``{"sms": "opted_in_sms"}``), or from a ``consent`` key holding a mapping
        (``{"sms": True}``); a flag is a bool or one of the spellings of a consent
        column (``yes``, ``no``, ``1``, ...). Scalar values become text (numbers as JSON
        writes them, booleans ``true``/``false``, ``None`` an empty value).

        A row that cannot be used becomes a :class:`~campaignkit.RejectedRow` in the
        run's ``rejected.csv``, never an exception, with the reason a JSON Lines file
        gives it: ``malformed_row`` (not a mapping, a key that is not a string, a nested
        list or mapping), ``control_character`` (in a key, in a model, consent or
        required key; other than tab and line breaks in another), ``empty_required_field``
        (a ``required`` field missing or empty; ``id`` by default), ``bad_consent_value``.
        Its ``line`` is the row's position, from 1. An address that is not valid is
        not a reject: the channel skips it (``invalid_address``).

        ``rows`` may be a collection, a function returning fresh rows (streamed on every
        pass, never held in memory) or another iterable (read into a list), as for the
        constructor.

        Raises:
            ValueError: ``columns`` maps something other than a model field.
            TypeError: ``rows`` (or what its function returns) is not an iterable of
                rows: a single dict, a string, ``None``.
        """
        builder = _DictRow(_model_keys(columns or {}), dict(consent or {}), tuple(required))
        if callable(rows):
            produce = rows
            source = cls(lambda: builder.many(_rows(produce())), fields=fields, name=name)
            source._keys = lambda: builder.fields(itertools.islice(_rows(produce()), 1))
            return source
        _rows(rows, given=True)
        kept = rows if isinstance(rows, Collection) else list(rows)
        source = cls(lambda: builder.many(kept), fields=fields, name=name)
        source._size = len(kept)
        source._keys = lambda: builder.fields(kept)
        return source

    def _open(self) -> Iterator[Record]:
        records = self._records
        if not callable(records):
            return iter(records)
        produced = records()
        if isinstance(produced, str | bytes | Mapping) or not isinstance(produced, Iterable):
            raise TypeError(
                f"StaticSource: the records function returned a {type(produced).__name__}, "
                f"not an iterable of records"
            )
        return _checked(produced)

    def fields(self) -> frozenset[str]:
        """The model fields and the recipients' attributes (see the class docstring)."""
        if self._fields is not None:
            return self._fields
        if self._keys is not None:
            return self._keys()
        sample = self._open() if self._scan_all else itertools.islice(self._open(), 1)
        names = set(MODEL_FIELDS)
        for record in sample:
            if isinstance(record, Recipient):
                names.update(record.attributes)
        return frozenset(names)

    def records(self, required: Collection[str] = ()) -> Iterator[Record]:
        """Stream the records (see the class docstring)."""
        return self._open()

    def describe(self) -> str:
        """``<N static records>``, or the ``name`` given."""
        if self._name is not None:
            return self._name
        return "<static records>" if self._size is None else f"<{self._size} static records>"

    def __repr__(self) -> str:
        return f"StaticSource({self.describe()})"


def _model_keys(columns: Mapping[str, str]) -> dict[str, str]:
    """Model field -> the key holding it: ``columns`` over the fields' own names.

    Raises:
        ValueError: ``columns`` maps something other than a model field.
    """
    keys = {f: f for f in MODEL_FIELDS}
    for field, key in columns.items():
        if field not in MODEL_FIELDS:
            raise ValueError(
                f"columns: {field!r} is not a model field (expected one of "
                f"{', '.join(MODEL_FIELDS)}); other keys are attributes as they are"
            )
        keys[field] = key
    return keys


def _rows(rows: Any, *, given: bool = False) -> Iterable[Any]:
    """``rows`` if it is an iterable of rows (a single dict or a string is not)."""
    if isinstance(rows, str | bytes | Mapping) or not isinstance(rows, Iterable):
        what = "rows is" if given else "the rows function returned"
        hint = ": wrap a single row in a list" if isinstance(rows, Mapping) else ""
        raise TypeError(
            f"StaticSource.from_dicts: {what} a {type(rows).__name__}, not an iterable "
            f"of dicts{hint}"
        )
    return rows


def _check_record(position: int, record: Any) -> None:
    """A record is a Recipient or a RejectedRow: anything else is a programming error,
    said here rather than as a crash in the middle of a run."""
    if not isinstance(record, Recipient | RejectedRow):
        hint = ": StaticSource.from_dicts(rows) takes dicts" if isinstance(record, Mapping) else ""
        raise TypeError(
            f"StaticSource: record {position} is a {type(record).__name__}, not a "
            f"Recipient or RejectedRow{hint}"
        )


def _checked(records: Iterable[Any]) -> Iterator[Record]:
    for position, record in enumerate(records, start=1):
        _check_record(position, record)
        yield record


class _DictRow:
    """Turns dicts into recipients, or rejected rows naming the key at fault."""

    def __init__(
        self, keys: Mapping[str, str], consent: Mapping[str, str], required: tuple[str, ...]
    ) -> None:
        self.keys = keys
        self.mapped = frozenset(keys.values())
        self.consent = consent
        self.required = tuple((f, keys.get(f, f)) for f in required)
        #: Keys that are not free text (as a file's mapped, consent and required columns).
        self.strict = self.mapped | frozenset(consent.values()) | {k for _, k in self.required}
        self.label = {key: field for field, key in keys.items()}

    def fields(self, rows: Iterable[Any]) -> frozenset[str]:
        """The model fields and the other keys of ``rows`` (a file's header)."""
        names = set(MODEL_FIELDS)
        for row in rows:
            if isinstance(row, Mapping):
                names.update(
                    k
                    for k, v in row.items()
                    if isinstance(k, str)
                    and k not in self.mapped
                    and not (k == CONSENT_KEY and isinstance(v, Mapping))
                )
        return frozenset(names)

    def many(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[Record]:
        for line, row in enumerate(rows, start=1):
            yield self.one(line, row)

    def one(self, line: int, row: Any) -> Record:
        """The recipient the ``line``-th row makes, or the row rejected naming the key
        at fault."""
        if not isinstance(row, Mapping):
            return RejectedRow(
                line,
                MALFORMED_ROW,
                f"expected a mapping, got {type(row).__name__}",
                None,
                (_raw(row),),
            )
        values: dict[str, str | None] = {}
        flags: Mapping[Any, Any] = {}
        for key, value in row.items():
            if not isinstance(key, str):
                return self._reject(line, row, MALFORMED_ROW, f"key {key!r} is not a string")
            if key == CONSENT_KEY and key not in self.mapped and isinstance(value, Mapping):
                flags = value
                continue
            text = _text(value)
            if text is _NESTED:
                return self._reject(
                    line, row, MALFORMED_ROW, f"key {key!r} holds a nested value", key
                )
            values[key] = text
        for key, value in values.items():
            found = find_control(key, strict=True)
            if found is not None:
                return self._reject(line, row, CONTROL_CHARACTER, control_detail("a key", *found))
            found = find_control(value, strict=key in self.strict) if value else None
            if found is not None:
                detail = control_detail(f"key {key!r}", *found)
                return self._reject(line, row, CONTROL_CHARACTER, detail, self.label.get(key, key))
        for field, key in self.required:
            if not (values.get(key) or "").strip():
                return self._reject(
                    line, row, EMPTY_REQUIRED_FIELD, f"key {key!r} is empty or missing", field
                )
        consent = self._consent(line, row, flags)
        if isinstance(consent, RejectedRow):
            return consent
        rid, email, phone, token = (
            (values.get(self.keys[f]) or "").strip() or None for f in MODEL_FIELDS
        )
        attributes = {k: v or "" for k, v in values.items() if k not in self.mapped}
        return Recipient(rid or "", email, phone, token, attributes, consent, line)

    def _consent(
        self, line: int, row: Mapping[str, Any], flags: Mapping[Any, Any]
    ) -> dict[str, bool] | RejectedRow:
        """The row's consent flags: those of its ``consent`` mapping (``flags``), then
        those of the keys ``consent`` names; or the row rejected for the first bad one."""
        consent: dict[str, bool] = {}
        given = [
            (str(ch), CONSENT_KEY, f"key 'consent', channel {str(ch)!r}", v)
            for ch, v in flags.items()
        ]
        given += [(ch, key, f"key {key!r}", row.get(key)) for ch, key in self.consent.items()]
        for channel, field, where, value in given:
            found = find_control(value, strict=True) if isinstance(value, str) else None
            if found is not None:
                detail = control_detail(where, *found)
                return self._reject(line, row, CONTROL_CHARACTER, detail, field)
            flag = value if isinstance(value, bool) else parse_consent(_text(value) or "")
            if not isinstance(flag, bool):
                return self._reject(
                    line,
                    row,
                    BAD_CONSENT_VALUE,
                    f"consent value {value!r} in {where} is not a bool nor one of "
                    f"true/yes/y/1/t or false/no/n/0/f/empty",
                    field,
                )
            consent[channel] = flag
        return consent

    def _reject(
        self, line: int, row: Mapping[Any, Any], reason: str, detail: str, field: str | None = None
    ) -> RejectedRow:
        return RejectedRow(line, reason, detail, field, (_raw(row),))


_NESTED = object()


def _text(value: Any) -> Any:
    """A scalar as text (``None`` stays ``None``); :data:`_NESTED` for a list or mapping."""
    if isinstance(value, str) or value is None:
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, Mapping | list | tuple | set | frozenset):
        return _NESTED
    return str(value)


def _raw(row: Any) -> str:
    """The row as one cell of ``rejected.csv``: JSON where it can be, else its repr."""
    try:
        return json.dumps(row, ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return repr(row)
