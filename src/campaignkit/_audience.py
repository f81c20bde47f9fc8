"""Audience selection, per channel: who is messaged, and why not.

Per recipient (here, in Python, while the segment streams):

1. address validation: a missing address is ``missing_address``, an invalid one
   ``invalid_address``; valid ones are normalized (E.164 phones, normalized emails);
2. consent: ``no_consent`` unless the channel's consent flag is true;
3. suppression files: ``suppressed``;
5. the segment filter is evaluated (applied after de-duplication, below);
8. quiet hours: the time the message may go out, in the recipient's time zone.

Over the whole audience (in the ledger, :meth:`SqliteLedger.plan`): the ledger's
suppression list (3), ``duplicate`` (4), ``filtered`` (5), ``frequency_capped`` (6),
``over_target`` (7) and ``deferred`` (8). Every recipient a channel does not message
gets exactly one reason.
"""

from __future__ import annotations

import functools
import zoneinfo
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import attrs
import jinja2
import jinja2.meta
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from ._address import AddressValidator
from ._config import Channel
from ._content import PUSH_MAX_PAYLOAD_BYTES, push_payload_size, sms_segments
from ._models import Message, Reason, Recipient
from ._notifier import Notifier
from ._suppression import SuppressionList
from ._templates import CompiledTemplate
from .exceptions import ConfigError, TemplateError

__all__ = [
    "Audience",
    "QuietHours",
    "build_audience",
    "channel_validator",
    "compile_filter",
    "content_check",
]

_ENV = SandboxedEnvironment(undefined=jinja2.StrictUndefined)
# Distinct field combinations whose filter result is remembered, per channel.
_FILTER_CACHE = 65_536

Normalizer = Callable[[str, Recipient], str | None]


def compile_filter(
    expression: str, *, channel: str, fields: Collection[str] | None
) -> Callable[[Mapping[str, Any]], bool]:
    """Compile a segment filter: a Jinja2 expression over recipient fields, evaluated in
    the sandbox (``segment == "premium" and country in ["DE", "AT"]``).

    Raises:
        TemplateError: a syntax error, or a field the segment does not have.
    """
    path = f"channels.{channel}.filter"
    try:
        ast = _ENV.parse("{{ " + expression + " }}")
        compiled = _ENV.compile_expression(expression, undefined_to_none=False)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(f"{path}: syntax error: {exc.message}") from None
    names = jinja2.meta.find_undeclared_variables(ast)
    if fields is not None:
        missing = sorted(names - set(fields) - set(_ENV.globals))
        if missing:
            raise TemplateError(
                f"{path}: references field(s) the segment does not have: {', '.join(missing)}"
            )

    def evaluate(context: Mapping[str, Any]) -> bool:
        try:
            return bool(compiled(**context))
        except (jinja2.UndefinedError, SecurityError, TypeError, ValueError) as exc:
            raise TemplateError(f"{path}: cannot evaluate for this recipient: {exc}") from None

    if names & set(_ENV.globals):
        return evaluate  # lipsum, cycler...: not a function of the fields alone
    # A filter is a function of the fields it names, which mostly take few values
    # (segment, country): remember results per combination, up to a bound.
    keys = tuple(sorted(names))
    results: dict[tuple[Any, ...], bool] = {}

    def memoized(context: Mapping[str, Any]) -> bool:
        try:
            key = tuple([context[k] for k in keys])
            result = results.get(key)
        except (KeyError, TypeError):  # undefined (the error comes from Jinja) or unhashable
            return evaluate(context)
        if result is None:
            result = evaluate(context)
            if len(results) < _FILTER_CACHE:
                results[key] = result
        return result

    return memoized


def _clock(value: str, path: str) -> time:
    try:
        return time.fromisoformat(value)
    except ValueError:
        raise ConfigError(f"expected HH:MM, got {value!r}", path=path) from None


@functools.lru_cache(maxsize=512)
def _zone(name: str) -> zoneinfo.ZoneInfo | None:
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return None


@attrs.frozen
class QuietHours:
    """A daily window, in each recipient's local time, when a channel sends nothing.

    ``start`` and ``end`` are wall-clock times; ``start > end`` wraps midnight
    (``21:00``-``08:00``). The recipient's zone is read from ``timezone_field``
    (an IANA name); a missing or unknown one falls back to ``timezone``.
    """

    start: time
    end: time
    timezone: str = "UTC"
    timezone_field: str | None = "timezone"

    @classmethod
    def parse(
        cls, start: str, end: str, *, timezone: str, timezone_field: str | None, path: str
    ) -> QuietHours:
        if _zone(timezone) is None:
            raise ConfigError(f"unknown time zone {timezone!r}", path=f"{path}.timezone")
        return cls(
            _clock(start, f"{path}.start"), _clock(end, f"{path}.end"), timezone, timezone_field
        )

    def inside(self, local: time) -> bool:
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end

    def not_before(self, recipient: Recipient, now: datetime) -> float | None:
        """``None`` if a message may go out at ``now``; else the epoch time the quiet
        hours end for this recipient (DST-correct: the first instant the local clock
        reads ``end`` or later)."""
        name = recipient.attributes.get(self.timezone_field) if self.timezone_field else None
        zone = (_zone(name) if name else None) or _zone(self.timezone)
        assert zone is not None
        local = now.astimezone(zone)
        if not self.inside(local.time()):
            return None
        day = local.date() if local.time() < self.end else local.date() + timedelta(days=1)
        opening = datetime.combine(day, self.end, tzinfo=zone)
        # A nonexistent local time (spring forward) normalizes forward via UTC.
        return opening.astimezone(UTC).timestamp()


@attrs.frozen
class Audience:
    """The per-recipient part of a channel's selection (see the module docstring)."""

    channel: str
    address_field: str
    normalize: Normalizer
    require_consent: bool = True
    suppressed: Collection[str] = frozenset()
    filter: Callable[[Mapping[str, Any]], bool] | None = None
    quiet_hours: QuietHours | None = None

    def decide(
        self, recipient: Recipient, now: datetime
    ) -> tuple[str | None, str | None, bool, float | None]:
        """``(skip reason, normalized address, filtered, not_before)`` for one recipient."""
        raw = recipient.address(self.address_field)
        if not raw:
            return Reason.MISSING_ADDRESS, None, False, None
        address = self.normalize(raw, recipient)
        if address is None:
            return Reason.INVALID_ADDRESS, None, False, None
        if self.require_consent and recipient.consent.get(self.channel) is not True:
            return Reason.NO_CONSENT, address, False, None
        if address in self.suppressed:
            return Reason.SUPPRESSED, address, False, None
        filtered = self.filter is not None and not self.filter(recipient.context())
        later = self.quiet_hours.not_before(recipient, now) if self.quiet_hours else None
        return None, address, filtered, later


def channel_validator(channel: Channel, provider: str, field: str) -> AddressValidator:
    """The address validator of ``channel`` (sending ``field`` through ``provider``).

    Raises:
        ConfigError: an unknown ``phone_region``, under ``channels.<name>``.
    """
    try:
        return AddressValidator.for_channel(
            field,
            provider,
            default_region=channel.phone_region,
            region_field=channel.region_field,
            options=channel.options,
        )
    except ConfigError as exc:
        raise ConfigError(exc.detail, path=f"channels.{channel.name}.{exc.path}") from None


def build_audience(
    channel: Channel, notifier: Notifier[Any], fields: Collection[str] | None, base_dir: Path
) -> Audience:
    """The per-recipient selection of ``channel`` (validated now, before any send)."""
    path = f"channels.{channel.name}"
    field = notifier.address_field
    validator = channel_validator(channel, notifier.name, field)
    suppressed: Collection[str] = frozenset()
    if channel.suppression_files:
        kind = field if field in ("email", "phone", "push_token") else "push_token"
        suppressed = SuppressionList.from_files(
            [base_dir / f for f in channel.suppression_files],
            kind,  # type: ignore[arg-type]
            default_region=channel.phone_region,
        )
    quiet = None
    if channel.quiet_hours is not None:
        q = channel.quiet_hours
        quiet = QuietHours.parse(
            q.start,
            q.end,
            timezone=q.timezone,
            timezone_field=q.timezone_field,
            path=f"{path}.quiet_hours",
        )
    return Audience(
        channel=channel.name,
        address_field=field,
        normalize=lambda raw, recipient: validator.normalize(recipient),
        require_consent=channel.require_consent,
        suppressed=suppressed,
        filter=compile_filter(channel.filter, channel=channel.name, fields=fields)
        if channel.filter
        else None,
        quiet_hours=quiet,
    )


def content_check(
    channel: Channel,
    notifier: Notifier[Any],
    template: CompiledTemplate,
    fields: Collection[str] | None,
) -> Callable[[Message], str | None] | None:
    """The channel's content rules as a per-message check (``None`` when it has none).

    A maximum number of SMS segments is also checked now, on the template with every
    field empty: text that is too long whatever the recipient is an error before any
    send; per recipient a long merge field makes that message fail ``too_many_segments``.

    Raises:
        TemplateError: the template alone exceeds ``max_sms_segments``.
    """
    limit = channel.max_sms_segments
    if limit is not None:
        empty = dict.fromkeys(fields or (), "")
        try:
            body = template.render(empty).get("body") or ""
        except TemplateError:
            body = ""
        if sms_segments(body).segments > limit:
            raise TemplateError(
                f"channels.{channel.name}.template.body: {sms_segments(body).segments} SMS "
                f"segments before any merge field; max_sms_segments is {limit}"
            )

    push_limit = (
        PUSH_MAX_PAYLOAD_BYTES.get(notifier.name, 4096)
        if notifier.address_field == "push_token"
        else None
    )
    if limit is None and push_limit is None:
        return None

    def check(message: Message) -> str | None:
        if limit is not None and sms_segments(message.body).segments > limit:
            return "too_many_segments"
        if push_limit is not None and (
            push_payload_size(message.title, message.body, message.data) > push_limit
        ):
            return "payload_too_large"
        return None

    return check
