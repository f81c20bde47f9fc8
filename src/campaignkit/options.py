"""Validators for a channel's options class: declare the options, not the checks.

A channel describes its ``[channels.<name>.options]`` table as a frozen attrs class,
with these validators on its fields, and names it in
:attr:`Notifier.options_class <campaignkit.Notifier.options_class>`::

    @attrs.frozen
    class ChatOptions:
        room: str = attrs.field(validator=not_blank("expected a room name"))
        priority: str | None = attrs.field(default=None, validator=one_of("low", "high"))
        base_url: str = attrs.field(default="https://chat.example.com", validator=safe_base_url)

Every validator lets ``None`` pass (an optional key left out) and raises
:class:`~campaignkit.ConfigError` whose ``path`` is the key. Structuring the table
(:meth:`ChannelSettings.structure <campaignkit.ChannelSettings.structure>`) prefixes
it with ``channels.<name>.options``, leaves the faulty value out, goes on, and
raises one error carrying every problem of the table. A check that spans keys goes
in the class's ``__attrs_post_init__``, raising the same way.

Standard attrs validators that name their attribute when they fail
(``attrs.validators.in_``, ``matches_re``, ``instance_of``) are reported the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import attrs

from ._address import valid_sms_sender
from ._http import check_base_url
from .exceptions import ConfigError

__all__ = [
    "between",
    "check",
    "email_address",
    "http_url",
    "matches",
    "not_blank",
    "one_of",
    "safe_base_url",
    "sms_sender",
]

#: An attrs validator: ``validator(instance, attribute, value)``.
Validator = Callable[[Any, "attrs.Attribute[Any]", Any], None]

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")


def check(test: Callable[[Any], object], message: str) -> Validator:
    """A validator raising ``ConfigError(message)`` on the key when ``test(value)`` is
    false; ``message`` may use ``{value}`` / ``{value!r}``."""

    def validate(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
        if value is not None and not test(value):
            raise ConfigError(message.format(value=value), path=attribute.name)

    return validate


def one_of(*choices: str, message: str | None = None) -> Validator:
    """One of ``choices`` (``expected one of low, high, got 'x'`` otherwise)."""
    listed = ", ".join(choices)
    return check(lambda v: v in choices, message or f"expected one of {listed}, got {{value!r}}")


def between(low: float, high: float, message: str | None = None) -> Validator:
    """A number from ``low`` to ``high`` inclusive."""
    return check(lambda v: low <= v <= high, message or f"expected {low} to {high}, got {{value}}")


def matches(pattern: str, expected: str) -> Validator:
    """A whole match of the regular expression ``pattern``; ``expected`` says what
    that is in words (``expected MG followed by 32 hex digits, got 'MG1'``)."""
    compiled = re.compile(pattern)
    return check(compiled.fullmatch, f"expected {expected}, got {{value!r}}")


def not_blank(message: str = "must not be empty") -> Validator:
    """A string that holds more than whitespace."""
    return check(str.strip, message)


#: An email address (``not an email address: 'x'`` otherwise).
email_address = check(_EMAIL.fullmatch, "not an email address: {value!r}")

#: An SMS sender: an E.164 number, a short code or an alphanumeric sender ID.
sms_sender = check(
    valid_sms_sender,
    "expected an E.164 number (+15551234567), a short code or an alphanumeric "
    "sender ID, got {value!r}",
)


def _is_http_url(value: str) -> bool:
    parts = urlsplit(value)
    return parts.scheme in ("http", "https") and bool(parts.hostname)


#: An ``http(s)`` URL with a host (a webhook or callback the provider calls).
http_url = check(_is_http_url, "expected an http(s) URL, got {value!r}")


def safe_base_url(instance: Any, attribute: attrs.Attribute[Any], value: Any) -> None:
    """A provider's API root that a token may be sent to: ``https``, or ``http`` to a
    loopback host only (see :class:`~campaignkit.HttpNotifier`)."""
    check_base_url(value, path=attribute.name)
