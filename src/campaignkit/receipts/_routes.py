"""One route per channel: how its provider's receipts are authenticated and read.

A route holds its channel's secret (Twilio's auth token) or public key (SendGrid,
Telnyx) and never shows it: not in its repr, not in a message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import attrs

from campaignkit._config import Channel, ReceiptsConfig
from campaignkit._models import Secret
from campaignkit._notifier import REFERENCE_PARAMETER
from campaignkit.exceptions import ConfigError

from ._parsers import ParsedReceipts, ReceiptParseError, parse_sendgrid, parse_telnyx, parse_twilio
from ._signatures import (
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TELNYX_SIGNATURE_HEADER,
    TELNYX_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    fresh,
    verify_sendgrid,
    verify_telnyx,
    verify_twilio,
)

__all__ = ["POLLED_PROVIDERS", "Refused", "Route", "build_route"]

#: Providers whose receipts are asked for (``campaignkit receipts poll``).
POLLED_PROVIDERS = ("expo",)
_MAX_FORM_FIELDS = 200


class Refused(Exception):
    """A request that is not the provider's: unsigned, forged or stale (never recorded)."""


@attrs.frozen
class Route:
    """How one channel's receipts are checked and parsed.

    Attributes:
        channel: the channel's name (the route is ``/receipts/<channel>``).
        provider: its provider.
        url: the public URL of the route, if known (Twilio signs it).
    """

    channel: str
    provider: str
    url: str | None
    _check: Callable[[Mapping[str, str], bytes, str, float], None] = attrs.field(
        alias="check", repr=False
    )
    _parse: Callable[[bytes, str | None, datetime], ParsedReceipts] = attrs.field(
        alias="parse", repr=False
    )
    verified: bool = True

    def authenticate(self, headers: Mapping[str, str], body: bytes, query: str, now: float) -> None:
        """Check the request's signature (headers lower-cased).

        Raises:
            Refused: it is not signed by the provider, or signed too long ago.
        """
        if self.verified:
            self._check(headers, body, query, now)

    def parse(self, body: bytes, query: str, now: float) -> ParsedReceipts:
        """The request's events (the query may carry the delivery's reference).

        Raises:
            ReceiptParseError: the body is not the provider's shape.
        """
        return self._parse(body, _reference(query), datetime.fromtimestamp(now, UTC))


def _stamped(headers: Mapping[str, str], name: str, tolerance: float, now: float) -> str:
    timestamp = headers.get(name.lower(), "")
    if not fresh(timestamp, now, tolerance):
        raise Refused("the signed timestamp is missing, malformed or outside the tolerance")
    return timestamp


def _form(body: bytes) -> dict[str, list[str]]:
    try:
        text = body.decode("utf-8")
        return parse_qs(
            text,
            keep_blank_values=True,
            strict_parsing=True,
            max_num_fields=_MAX_FORM_FIELDS,
            errors="strict",  # a %-escape that is not UTF-8 is not Twilio's
        )
    except (UnicodeDecodeError, ValueError):
        raise ReceiptParseError("twilio: the body is not a UTF-8 form") from None


def _reference(query: str) -> str | None:
    """The ``ck`` parameter of a callback URL's query: the delivery's reference."""
    try:
        found = parse_qs(query, max_num_fields=_MAX_FORM_FIELDS, errors="strict")
    except (UnicodeDecodeError, ValueError):
        return None
    values = found.get(REFERENCE_PARAMETER, [])
    return values[0] if len(values) == 1 and len(values[0]) <= 512 else None


def _key(channel: Channel, env: Mapping[str, str], provider: str) -> str:
    key = channel.receipts_key or env.get(channel.receipts_key_variable, "").strip()
    if not key:
        what = "Event Webhook verification key" if provider == "sendgrid" else "public key"
        raise ConfigError(
            f"verifying {provider} receipts needs the {what}: set receipts_key, or the "
            f"environment variable {channel.receipts_key_variable}",
            path=f"channels.{channel.name}.receipts_key",
        )
    return key


def build_route(
    channel: Channel,
    config: ReceiptsConfig,
    env: Mapping[str, str],
    *,
    verify: bool,
    auth_token: Secret | None = None,
) -> Route | None:
    """The route of ``channel`` (``None`` for a provider that sends no webhooks).

    Raises:
        ConfigError: verifying needs a key or URL that is not configured.
    """
    tolerance = config.tolerance_seconds
    keywords = frozenset(word.upper() for word in config.stop_keywords)
    url = config.url(channel.name)
    check: Callable[[Mapping[str, str], bytes, str, float], None]
    parse: Callable[[bytes, str | None, datetime], Any]
    if channel.provider == "sendgrid":
        sendgrid_key = _key(channel, env, "sendgrid") if verify else ""

        def check(headers: Mapping[str, str], body: bytes, query: str, now: float) -> None:
            stamp = _stamped(headers, SENDGRID_TIMESTAMP_HEADER, tolerance, now)
            signature = headers.get(SENDGRID_SIGNATURE_HEADER.lower(), "")
            if not verify_sendgrid(sendgrid_key, signature, stamp, body):
                raise Refused("the signature does not verify")

        def parse(body: bytes, reference: str | None, at: datetime) -> ParsedReceipts:
            return parse_sendgrid(body)  # its events carry their references

    elif channel.provider == "telnyx":
        telnyx_key = _key(channel, env, "telnyx") if verify else ""

        def check(headers: Mapping[str, str], body: bytes, query: str, now: float) -> None:
            stamp = _stamped(headers, TELNYX_TIMESTAMP_HEADER, tolerance, now)
            signature = headers.get(TELNYX_SIGNATURE_HEADER.lower(), "")
            if not verify_telnyx(telnyx_key, signature, stamp, body):
                raise Refused("the signature does not verify")

        def parse(body: bytes, reference: str | None, at: datetime) -> ParsedReceipts:
            return parse_telnyx(body, stop_keywords=keywords, reference=reference)

    elif channel.provider == "twilio":
        if verify and (auth_token is None or not auth_token):
            raise ConfigError(
                f"verifying twilio receipts needs the auth token: set {channel.token_variable}",
                path=f"channels.{channel.name}.token_env",
            )
        if verify and url is None:
            raise ConfigError(
                "verifying twilio receipts needs the URL Twilio calls (it signs it): "
                "set public_url",
                path="receipts.public_url",
            )

        def check(headers: Mapping[str, str], body: bytes, query: str, now: float) -> None:
            assert auth_token is not None and url is not None
            signature = headers.get(TWILIO_SIGNATURE_HEADER.lower(), "")
            full = url + ("?" + query if query else "")
            try:
                params = _form(body)
            except ReceiptParseError:
                raise Refused("the body is not a form: nothing signed can be checked") from None
            if not verify_twilio(auth_token.reveal(), full, params, signature):
                raise Refused("the signature does not verify")

        def parse(body: bytes, reference: str | None, at: datetime) -> ParsedReceipts:
            return parse_twilio(_form(body), at, stop_keywords=keywords, reference=reference)

    else:
        return None
    return Route(channel.name, channel.provider, url, check=check, parse=parse, verified=verify)
