"""The field validators of the campaign schema, and the patterns of the values they check."""

from __future__ import annotations

import re
import zoneinfo
from typing import Any

import attrs

from .._cron import parse_cron
from ..exceptions import ConfigError

__all__ = [
    "ENV_NAME",
    "LEDGER_SCHEMES",
    "ROWS_PER_CUSTOMER",
    "check_cron",
    "check_name",
    "check_rows_per_customer",
    "check_timezone",
    "ledger_setting",
    "non_negative",
    "one_of",
    "positive",
]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")

#: What an environment variable's name looks like (``token_env``); a value that does
#: not is never printed (it may be the token itself, written there by mistake).
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_name(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    """A pipeline or channel name: lower-case letters, digits and ``_``, starting with a
    letter."""
    if not _NAME_RE.match(value):
        raise ConfigError(
            f"expected lower-case letters, digits and '_', starting with a letter, got {value!r}",
            path=attribute.name,
        )


def positive(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A number above zero, or ``None``."""
    if value is not None and value <= 0:
        raise ConfigError(f"expected a positive number, got {value!r}", path=attribute.name)


def non_negative(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """Zero or a number above it, or ``None``."""
    if value is not None and value < 0:
        raise ConfigError(f"expected zero or more, got {value!r}", path=attribute.name)


def one_of(*choices: str) -> Any:
    """A validator accepting only the strings ``choices``."""

    def check(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
        if value not in choices:
            raise ConfigError(
                f"expected one of {', '.join(map(repr, choices))}, got {value!r}",
                path=attribute.name,
            )

    return check


def check_timezone(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    """An IANA time zone name (``Europe/Berlin``)."""
    try:
        zoneinfo.ZoneInfo(value)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"unknown time zone {value!r}", path=attribute.name) from None


def check_cron(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    """A cron expression (see :mod:`campaignkit._cron`)."""
    try:
        parse_cron(value)
    except ConfigError as exc:
        raise ConfigError(exc.detail, path=attribute.name) from None


#: ``[source] rows_per_customer``: a customer id on one row (a repeat is rejected as
#: ``duplicate_id``), or on several (one per device, say), each its own recipient.
ROWS_PER_CUSTOMER = ("one", "many")


def check_rows_per_customer(instance: Any, attribute: attrs.Attribute[str], value: str) -> None:
    """One of :data:`ROWS_PER_CUSTOMER`."""
    if value not in ROWS_PER_CUSTOMER:
        raise ConfigError(
            f"expected one of {', '.join(map(repr, ROWS_PER_CUSTOMER))}, got {value!r}",
            path=f"source.{attribute.name}",
        )


#: The URL schemes ``[execution] ledger`` accepts.
LEDGER_SCHEMES = ("postgresql", "postgres", "sqlite")


def ledger_setting(instance: Any, attribute: attrs.Attribute[Any], value: bool | str) -> None:
    """``true``, ``false``, a ``postgresql://`` or ``sqlite:///`` URL, or a path (never
    quoted: a URL may hold a password)."""
    if isinstance(value, bool):
        return
    if not value.strip():
        raise ConfigError(
            "expected true, false or a ledger URL or path, got an empty string",
            path=attribute.name,
        )
    scheme, sep, _ = value.partition("://")
    if sep and scheme.lower() not in LEDGER_SCHEMES:
        raise ConfigError(
            f"a ledger URL starts with {', '.join(s + '://' for s in LEDGER_SCHEMES)} "
            f"(got {scheme!r}://...)",
            path=attribute.name,
        )
