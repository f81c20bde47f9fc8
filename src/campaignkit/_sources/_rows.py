"""What a record becomes: the reason codes of rejected rows, strict consent parsing,
and the compiled dict builders the per-row loops use."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "BAD_CONSENT_VALUE",
    "CONSENT_FAST",
    "EMPTY_REQUIRED_FIELD",
    "MALFORMED_ROW",
    "MULTILINE_FIELD",
    "NOT_CONSENT",
    "dict_builder",
    "parse_consent",
    "parse_consent_slow",
]

_TRUE = ("true", "yes", "y", "1", "t")
_FALSE = ("false", "no", "n", "0", "f", "")

#: Normalised (stripped, lower-case) consent spellings. The hot loop first looks up
#: the raw value in :data:`CONSENT_FAST`, which also holds the common capitalisations.
_CONSENT: dict[str, bool] = {**dict.fromkeys(_TRUE, True), **dict.fromkeys(_FALSE, False)}
CONSENT_FAST: dict[str, bool] = {
    **_CONSENT,
    **{s.upper(): v for s, v in _CONSENT.items()},
    **{s.capitalize(): v for s, v in _CONSENT.items()},
}

# Reason codes of RejectedRow.
EMPTY_REQUIRED_FIELD = "empty_required_field"
BAD_CONSENT_VALUE = "bad_consent_value"
MALFORMED_ROW = "malformed_row"
MULTILINE_FIELD = "multiline_field"

#: What a bad consent value is told it is not.
NOT_CONSENT = "not one of true/yes/y/1/t or false/no/n/0/f/empty"


def parse_consent(value: str) -> bool | None:
    """Parse a consent cell strictly.

    Case-insensitive, surrounding whitespace ignored: ``true``, ``yes``, ``y``, ``1``,
    ``t`` mean consent; ``false``, ``no``, ``n``, ``0``, ``f`` and the empty string mean
    no consent.

    Returns:
        ``True`` or ``False``, or ``None`` when the value is none of those spellings.
    """
    return _CONSENT.get(value.strip().lower())


def parse_consent_slow(
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


def dict_builder(
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
