"""Suppression lists: addresses never to message, loaded from files.

Two file formats, UTF-8 (a byte-order mark is accepted), any line ends:

* **plain text**, one address per line; blank lines and lines whose first
  non-blank character is ``#`` are ignored, and so is a ``#`` comment after
  whitespace (``ann@example.com   # unsubscribed 2024-05-01``);
* **CSV with a header**, used when the file name ends in ``.csv`` or its first
  non-blank, non-comment line is a header naming the address column. The column
  is ``column`` if given, else the one named like the kind (``email``, ``phone``,
  ``push_token``) or ``address`` (case-insensitive). Other columns are ignored,
  and so is a row whose address cell is empty (nothing to suppress); blank lines
  and ``#`` lines are skipped here too. Every row must have the header's width.

Entries are normalised as recipients' addresses are (:mod:`campaignkit._address`),
and matched on keys: e-mail addresses on :func:`~campaignkit._address.dedupe_key_email`
(lower-cased), phone numbers on E.164 (numbers without ``+`` read in
``default_region``; any *possible* number is accepted, so that a list never breaks
when the phone metadata changes), push tokens as they are. An entry that cannot be
normalised is an error (:class:`~campaignkit.SourceError` naming the file and line),
never skipped: a dropped entry could mean messaging someone who opted out.

Memory: a set of short strings, about 100 bytes an entry (1M entries ~ 100 MB).
"""

from __future__ import annotations

import csv
import os
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import IO, Final, Literal, TypeAlias

import attrs

from ._address import (
    dedupe_key_email,
    email_error,
    normalize_email,
    normalize_phone,
    valid_push_token,
)
from ._csvio import restore
from .exceptions import SourceError

__all__ = ["SuppressionEntry", "SuppressionKind", "SuppressionList", "read_entries"]

SuppressionKind: TypeAlias = Literal["email", "phone", "push_token"]
_KINDS: Final = ("email", "phone", "push_token")
_INLINE_COMMENT = re.compile(r"\s+#.*\Z", re.DOTALL)


def _identity(value: str) -> str:
    return value


@attrs.frozen
class SuppressionList:
    """A set of suppressed addresses of one kind.

    A :class:`~collections.abc.Collection` of keys: ``address in suppression`` (or
    :meth:`contains`) takes a *normalised* address (as
    :class:`~campaignkit._address.AddressValidator` returns it) and compares its key.

    Attributes:
        kind: ``email``, ``phone`` or ``push_token``.
        sources: the files it was loaded from.
    """

    kind: SuppressionKind
    _keys: frozenset[str] = attrs.field(alias="keys", repr=False)
    sources: tuple[str, ...] = ()

    # -- building -------------------------------------------------------------------------
    @classmethod
    def from_files(
        cls,
        paths: Iterable[str | os.PathLike[str]],
        kind: SuppressionKind,
        default_region: str | None = None,
        *,
        column: str | None = None,
    ) -> SuppressionList:
        """Load and normalise the entries of ``paths`` (see the module documentation).

        Args:
            paths: plain-text or CSV files.
            kind: what the files hold.
            default_region: ISO 3166 region of phone numbers written without ``+``.
            column: the CSV column holding the addresses.

        Raises:
            ValueError: unknown ``kind``.
            SourceError: a file cannot be read or decoded, a CSV file lacks the
                address column or has a row of the wrong width, or an entry is not a
                valid address of ``kind``; names the file, line and column.
        """
        if kind not in _KINDS:
            raise ValueError(f"unknown suppression kind {kind!r} (expected one of {_KINDS})")
        keys: set[str] = set()
        files = tuple(os.fspath(p) for p in paths)
        for file in files:
            for line, value, where in _entries(file, kind, column):
                key = _normalize(value, kind, default_region)
                if key is None:
                    raise SourceError(
                        _why(value, kind, default_region), file=file, line=line, column=where
                    )
                keys.add(key)
        return cls(kind, frozenset(keys), files)

    @classmethod
    def from_addresses(cls, addresses: Iterable[str], kind: SuppressionKind) -> SuppressionList:
        """A list of already normalised addresses (for example, from the ledger)."""
        if kind not in _KINDS:
            raise ValueError(f"unknown suppression kind {kind!r} (expected one of {_KINDS})")
        key = _key_function(kind)
        return cls(kind, frozenset(map(key, addresses)))

    def union(self, other: SuppressionList) -> SuppressionList:
        """Both lists' entries (of the same kind)."""
        if other.kind != self.kind:
            raise ValueError(f"cannot merge a {other.kind} list into a {self.kind} list")
        return SuppressionList(self.kind, self._keys | other._keys, self.sources + other.sources)

    # -- lookups --------------------------------------------------------------------------
    def key(self, address: str) -> str:
        """The key ``address`` (normalised) is matched on."""
        return dedupe_key_email(address) if self.kind == "email" else address

    def contains(self, address: str) -> bool:
        """Whether the normalised ``address`` is suppressed."""
        if self.kind == "email":
            return address.lower() in self._keys
        return address in self._keys

    def __contains__(self, address: object) -> bool:
        return isinstance(address, str) and self.contains(address)

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)


def _key_function(kind: str) -> Callable[[str], str]:
    return dedupe_key_email if kind == "email" else _identity


def _normalize(value: str, kind: str, default_region: str | None) -> str | None:
    if kind == "email":
        normalized = normalize_email(value)
        return dedupe_key_email(normalized) if normalized is not None else None
    if kind == "phone":
        return normalize_phone(value, default_region=default_region, strict=False)
    return value if valid_push_token(value, "") else None


def _why(value: str, kind: str, default_region: str | None) -> str:
    if kind == "email":
        return f"not a valid email address: {email_error(value) or 'invalid'}"
    if kind == "phone":
        if not value.startswith("+") and default_region is None:
            return "not a phone number in E.164 (+ and country code) and no default region"
        return "not a valid phone number"
    return "not a valid push token (empty or contains whitespace)"


# -- reading --------------------------------------------------------------------------


@attrs.frozen
class SuppressionEntry:
    """One entry of a suppression file, as written (not yet normalised)."""

    line: int
    value: str
    #: the CSV column it came from; ``None`` for a plain list
    column: str | None = None


def read_entries(file: str, kind: str, column: str | None = None) -> Iterator[SuppressionEntry]:
    """Every entry of the suppression file ``file`` with its line, as written;
    ``kind`` (``email``, ``phone`` or ``push_token``) names the column a CSV file's
    entries are read from when ``column`` is not given.

    Raises:
        SourceError: the file cannot be read or decoded, or its CSV has no such column.
    """
    for line, value, where in _entries(file, kind, column):
        yield SuppressionEntry(line, value, where)


def _entries(file: str, kind: str, column: str | None) -> Iterator[tuple[int, str, str | None]]:
    """``(line, value, column)`` of every entry of ``file``."""
    with _open(file) as f:
        try:
            yield from _read(f, file, kind, column)
        except UnicodeDecodeError as exc:
            raise SourceError(
                f"cannot decode the file as UTF-8: {exc.reason}",
                file=file,
                line=_undecodable_line(file),
            ) from None


def _open(file: str) -> IO[str]:
    try:
        if Path(file).is_dir():
            raise SourceError("cannot read a suppression list: a directory", file=file)
        # newline="": lines end at \n, \r\n or \r, untranslated (csv needs that).
        return open(file, encoding="utf-8-sig", newline="")
    except FileNotFoundError:
        raise SourceError("suppression list not found", file=file) from None
    except PermissionError:
        raise SourceError("permission denied", file=file) from None
    except OSError as exc:
        raise SourceError(f"cannot open the file: {exc.strerror or exc}", file=file) from None


def _read(
    f: IO[str], file: str, kind: str, column: str | None
) -> Iterator[tuple[int, str, str | None]]:
    names = (column.strip().lower(),) if column else (kind, "address")
    as_csv = file.lower().endswith(".csv")
    line = 0
    for raw in f:
        line += 1
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        if as_csv or _looks_like_header(text, names):
            yield from _read_csv(f, raw, line, file, names)
            return
        yield line, _INLINE_COMMENT.sub("", text), None
        break
    for raw in f:
        line += 1
        text = raw.strip()
        if text and not text.startswith("#"):
            yield line, _INLINE_COMMENT.sub("", text), None


def _looks_like_header(text: str, names: tuple[str, ...]) -> bool:
    try:
        cells = next(csv.reader([text]))
    except csv.Error:
        return False
    return any(c.strip().lower() in names for c in cells)


def _read_csv(
    f: IO[str], header_line: str, line: int, file: str, names: tuple[str, ...]
) -> Iterator[tuple[int, str, str | None]]:
    """Entries of a CSV file whose header is ``header_line`` (physical line ``line``)."""

    def lines() -> Iterator[str]:
        yield header_line
        yield from f

    reader = csv.reader(lines())
    first = line - 1  # physical lines before the header
    try:
        header = [h.strip() for h in next(reader)]
        lowered = [h.lower() for h in header]
        index = next((lowered.index(n) for n in names if n in lowered), None)
        if index is None:
            raise SourceError(
                f"no address column (expected one named {' or '.join(map(repr, names))})",
                file=file,
                line=line,
                column=names[0],
            )
        name = header[index]
        start = first + reader.line_num + 1
        for row in reader:
            if row and not (len(row) == 1 and not row[0].strip()) and not _comment(row):
                if len(row) != len(header):
                    raise SourceError(
                        f"expected {len(header)} fields, got {len(row)}", file=file, line=start
                    )
                # A cell our own CSV export neutralised (``'-john@x.com``) reads back as
                # the address it was.
                value = restore(row[index].strip())
                if value:
                    yield start, value, name
            start = first + reader.line_num + 1
    except csv.Error as exc:
        raise SourceError(
            f"malformed CSV: {exc}", file=file, line=first + reader.line_num
        ) from None


def _comment(row: list[str]) -> bool:
    return row[0].lstrip().startswith("#")


def _undecodable_line(file: str) -> int | None:
    """The 1-based line holding the first byte that is not UTF-8."""
    try:
        data = Path(file).read_bytes()
    except OSError:
        return None
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        head = data[: exc.start]
        return head.count(b"\n") + head.count(b"\r") - head.count(b"\r\n") + 1
    return None
