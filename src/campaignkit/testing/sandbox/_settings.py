"""How the sandbox servers are set up from ``PROVIDER=VALUE`` settings, as
``campaignkit sandbox`` takes them: tokens, ports, allowed senders, the Twilio
account SID and fault injection, each checked with an error naming what is wrong
(never quoting a token)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence

import attrs

__all__ = [
    "FAULT_SETTINGS",
    "Assignment",
    "FaultSetting",
    "SettingError",
    "check_token",
    "fault_values",
    "parse_assignment",
    "parse_fault_value",
    "parse_port",
    "parse_twilio_account_sid",
]

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")
_PROVIDER = re.compile(r"[a-z][a-z0-9_-]*")

PROBABILITY = "a probability between 0 and 1"
POSITIVE = "a number above 0"
NON_NEGATIVE = "a number of 0 or more"
INTEGER = "an integer"
#: the most seconds a duration setting (``--latency``, ``--stall-seconds``,
#: ``--retry-after``) takes: a day (``time.sleep`` overflows past ~3e8 years, and a
#: longer wait has no use in a sandbox).
MAX_SECONDS = 86_400.0


class SettingError(ValueError):
    """A sandbox setting that cannot be used; the message says why (and never holds
    a token)."""


@attrs.frozen
class FaultSetting:
    """One fault-injection setting.

    Attributes:
        field: the :class:`~campaignkit.testing.sandbox.Faults` field it sets.
        option: the ``campaignkit sandbox`` option.
        expects: what a valid value is (:data:`PROBABILITY`, :data:`POSITIVE`...).
        smtp: whether the SMTP server's faults have it too.
    """

    field: str
    option: str
    expects: str
    smtp: bool = False


#: the fault settings ``campaignkit sandbox`` takes, in order.
FAULT_SETTINGS: tuple[FaultSetting, ...] = (
    FaultSetting("error_rate", "--error-rate", PROBABILITY),
    FaultSetting("rate_limit", "--rate-limit", POSITIVE),
    FaultSetting("retry_after", "--retry-after", NON_NEGATIVE),
    FaultSetting("stall_rate", "--stall-rate", PROBABILITY),
    FaultSetting("stall_seconds", "--stall-seconds", NON_NEGATIVE, smtp=True),
    FaultSetting("drop_rate", "--drop-rate", PROBABILITY),
    FaultSetting("latency", "--latency", NON_NEGATIVE, smtp=True),
    FaultSetting("seed", "--seed", INTEGER),
)


@attrs.frozen
class Assignment:
    """``PROVIDER=VALUE``, or a bare ``VALUE`` for every provider (``provider`` None)."""

    provider: str | None
    value: str


def parse_assignment(
    text: str,
    *,
    providers: Sequence[str],
    provider_required: bool,
    secret: bool = False,
    what: str = "VALUE",
) -> Assignment:
    """Split ``PROVIDER=VALUE``; the provider must be one of ``providers``.

    Args:
        provider_required: a bare ``VALUE`` is an error.
        secret: the value is a token: error messages never show it.
        what: the value's name in the expected form (``TOKEN``, ``PORT``...).
    """
    name, sep, value = text.partition("=")
    shown = "" if secret else f" (got {text!r})"
    if not sep:
        if provider_required:
            raise SettingError(f"expected PROVIDER={what}{shown}")
        return Assignment(None, _non_empty(text, what, secret))
    name = name.strip().lower()
    if not _PROVIDER.fullmatch(name):
        raise SettingError(f"expected PROVIDER={what}, the provider a name{shown}")
    if name not in providers:
        raise SettingError(
            f"{name!r} is not one of the sandbox servers started ({', '.join(providers)})"
        )
    return Assignment(name, _non_empty(value, what, secret))


def _non_empty(value: str, what: str, secret: bool) -> str:
    if not value.strip():
        raise SettingError(f"{what} is empty")
    if value != value.strip():
        raise SettingError(f"{what} has spaces around it" + ("" if secret else f" (got {value!r})"))
    return value


def check_token(value: str) -> str:
    """``value`` if it can be a token: printable ASCII (spaces allowed inside), what
    the SDKs can send in an ``Authorization`` header (httpx refuses any other
    character, requests sends Latin-1, Basic auth does not round-trip it). The error
    never quotes the token."""
    if not (value.isascii() and value.isprintable()):
        raise SettingError(
            "TOKEN holds a character other than printable ASCII, which the providers' "
            "SDKs cannot send in an Authorization header"
        )
    return value


def parse_fault_value(setting: FaultSetting, text: str) -> float | int:
    """The value of ``setting`` written ``text``, checked against its range."""
    if setting.expects == INTEGER:
        try:
            return int(text)
        except ValueError:
            raise SettingError(f"{text!r} is not {INTEGER}") from None
    try:
        value = float(text)
    except ValueError:
        raise SettingError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise SettingError(f"{text!r} is not a finite number")
    if setting.expects == PROBABILITY and not 0.0 <= value <= 1.0:
        raise SettingError(f"{text} is not {PROBABILITY}")
    if setting.expects == POSITIVE and value <= 0.0:
        raise SettingError(f"{text} is not {POSITIVE}")
    if setting.expects == NON_NEGATIVE and value < 0.0:
        raise SettingError(f"{text} is not {NON_NEGATIVE}")
    if setting.expects == NON_NEGATIVE and value > MAX_SECONDS:
        raise SettingError(f"{text} is more than a day ({MAX_SECONDS:g} seconds)")
    return value


def parse_port(text: str) -> int:
    """A TCP port, 1 to 65535."""
    try:
        port = int(text)
    except ValueError:
        raise SettingError(f"{text!r} is not a port number") from None
    if not 1 <= port <= 65_535:
        raise SettingError(f"{port} is not a port number (1 to 65535)")
    return port


def parse_twilio_account_sid(text: str) -> str:
    """A Twilio account SID: ``AC`` and 32 hexadecimal digits."""
    if not _ACCOUNT_SID.fullmatch(text):
        raise SettingError(
            f"{text!r} is not a Twilio account SID (AC followed by 32 hexadecimal digits)"
        )
    return text


def fault_values(
    given: Mapping[FaultSetting, Iterable[Assignment]], provider: str
) -> dict[str, float | int]:
    """The fault fields for ``provider``: each setting's value for every provider,
    overridden by one for ``provider``."""
    out: dict[str, float | int] = {}
    for setting, assignments in given.items():
        for assignment in sorted(assignments, key=lambda a: a.provider is not None):
            if assignment.provider in (None, provider):
                out[setting.field] = parse_fault_value(setting, assignment.value)
    return out
