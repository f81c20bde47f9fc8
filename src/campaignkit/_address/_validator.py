"""One channel's address check: :class:`AddressValidator`, built for the channel's
address field, provider and region."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import attrs

from .._models import Recipient
from ..exceptions import ConfigError
from ._email import dedupe_key_email, normalize_email
from ._phone import normalize_phone, region_code
from ._push import PUSH_MODES, valid_push_token

__all__ = ["AddressKind", "AddressValidator"]

AddressKind = Literal["email", "phone", "push_token", "text"]
_KINDS: Final = ("email", "phone", "push_token", "text")
_FIELD_KINDS: Final[dict[str, AddressKind]] = {
    "email": "email",
    "phone": "phone",
    "push_token": "push_token",
}


_Normalizer = Callable[[str, str | None], str | None]


def _identity(value: str) -> str:
    return value


@attrs.frozen
class AddressValidator:
    """Validates and normalises one channel's recipient addresses.

    Build with :meth:`for_channel`; immutable and thread-safe.

    Attributes:
        address_field: the recipient field holding the address (``email``,
            ``phone``, ``push_token``, or an attribute column).
        kind: how the address is checked (``email``, ``phone``, ``push_token``, or
            ``text``: any non-empty value).
        provider: the channel's provider (push tokens are checked per provider).
        default_region: region of phone numbers without ``+`` and without a region
            column value.
        region_field: attribute column holding the recipient's ISO 3166 region.
    """

    address_field: str
    kind: AddressKind
    provider: str
    default_region: str | None = None
    region_field: str | None = None
    _normalize: _Normalizer = attrs.field(alias="normalizer", kw_only=True, repr=False, eq=False)
    #: The deduplication / suppression key of a normalised address (e-mail:
    #: lower-cased, others: the address itself).
    key: Callable[[str], str] = attrs.field(default=_identity, kw_only=True, repr=False, eq=False)

    @classmethod
    def for_channel(
        cls,
        address_field: str,
        provider: str,
        default_region: str | None = None,
        region_field: str | None = None,
        *,
        kind: AddressKind | None = None,
        options: Mapping[str, Any] | None = None,
        push_mode: str | None = None,
        strict_phone: bool = True,
    ) -> AddressValidator:
        """The validator of a channel.

        Args:
            address_field: the notifier's ``address_field``.
            provider: the notifier's name (``sendgrid``, ``twilio``, ``expo`` ...).
            default_region: ISO 3166 region for phone numbers without ``+``.
            region_field: attribute column with the recipient's region, if any.
            kind: how to check the address; by default from ``address_field``
                (``email``, ``phone`` and ``push_token`` are themselves, any other
                field is ``text``).
            options: the channel's provider options; OneSignal's ``targeting`` gives
                the push mode.
            push_mode: OneSignal targeting (``subscription_ids`` or ``external_id``),
                overriding ``options``.
            strict_phone: phone numbers must be valid, not only possible.

        Raises:
            ConfigError: unknown ``default_region`` (``path="phone_region"``).
            ValueError: unknown ``kind`` or ``push_mode``.
        """
        if kind is None:
            kind = _FIELD_KINDS.get(address_field, "text")
        if kind not in _KINDS:
            raise ValueError(f"unknown address kind {kind!r} (expected one of {_KINDS})")
        push_mode = _push_mode(provider, options, push_mode)
        region = _default_region(default_region)
        normalizer, key = _normalizer_and_key(kind, provider, region, push_mode, strict_phone)
        return cls(
            address_field,
            kind,
            provider,
            region,
            region_field,
            normalizer=normalizer,
            key=key,
        )

    def normalize(self, recipient: Recipient) -> str | None:
        """The recipient's normalised address, or ``None`` if it is missing or
        invalid (callers that report ``missing_address`` separately test
        ``recipient.address(address_field)`` first)."""
        value = recipient.address(self.address_field)
        if not value:
            return None
        region = recipient.attributes.get(self.region_field) if self.region_field else None
        return self._normalize(value, region)

    def normalize_value(self, value: str, region: str | None = None) -> str | None:
        """Normalise an address given directly (``region``: the recipient's region)."""
        return self._normalize(value, region) if value else None


def _email_normalizer(value: str, region: str | None) -> str | None:
    return normalize_email(value)


def _text_normalizer(value: str, region: str | None) -> str | None:
    return value.strip() or None


def _phone_normalizer(default_region: str | None, strict: bool) -> _Normalizer:
    def normalize(value: str, region: str | None) -> str | None:
        return normalize_phone(value, default_region=default_region, region=region, strict=strict)

    return normalize


def _push_normalizer(provider: str, mode: str) -> _Normalizer:
    def normalize(value: str, region: str | None) -> str | None:
        value = value.strip()
        return value if valid_push_token(value, provider, mode=mode) else None

    return normalize


def _push_mode(provider: str, options: Mapping[str, Any] | None, push_mode: str | None) -> str:
    """``push_mode`` when given, else OneSignal's ``targeting`` option when it is a push
    mode, else the default mode (``subscription_ids``)."""
    if push_mode is None:
        targeting = (options or {}).get("targeting") if provider == "onesignal" else None
        push_mode = targeting if targeting in PUSH_MODES else PUSH_MODES[0]
    if push_mode not in PUSH_MODES:
        raise ValueError(f"unknown push mode {push_mode!r} (expected one of {PUSH_MODES})")
    return push_mode


def _default_region(default_region: str | None) -> str | None:
    """The ISO 3166 code of a channel's ``phone_region`` (``None`` when not given)."""
    if default_region is not None and region_code(default_region) is None:
        raise ConfigError(
            f"unknown region {default_region!r} (expected an ISO 3166 code such as 'US')",
            path="phone_region",
        )
    return region_code(default_region)


def _normalizer_and_key(
    kind: AddressKind, provider: str, region: str | None, push_mode: str, strict_phone: bool
) -> tuple[_Normalizer, Callable[[str], str]]:
    """How addresses of ``kind`` are normalised, and their deduplication key."""
    if kind == "email":
        return _email_normalizer, dedupe_key_email
    if kind == "phone":
        return _phone_normalizer(region, strict_phone), _identity
    if kind == "push_token":
        return _push_normalizer(provider, push_mode), _identity
    return _text_normalizer, _identity
