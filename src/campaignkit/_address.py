"""Address validation and normalisation: e-mail, phone (E.164) and push tokens.

The first step of audience selection: a recipient whose address for a channel is
not valid is skipped as ``invalid_address``. Everything here is pure, thread-safe
and fast enough for a million rows.

**E-mail** syntax is checked with ``email-validator`` (no DNS lookups,
internationalised addresses allowed, quoted local parts, display names and domain
literals refused). The normalised address is the library's ``normalized`` form:
the domain lower-cased (and an IDNA ``xn--`` domain given in Unicode), the local
part kept as typed except for the RFC 2142 role names (``Postmaster`` ->
``postmaster``). Local parts are case-sensitive in theory but no mailbox provider
treats them so: :func:`dedupe_key_email` (the whole address lower-cased) is the key
for deduplication and suppression, while the address sent to stays as normalised.
Plus-addressing is kept: ``ann+news@x.org`` and ``ann@x.org`` are different keys.

Validating with the library costs ~100 µs an address, so the common shape (an
ASCII dot-atom local part at an ASCII host name whose top-level domain is letters,
no ``--`` anywhere in the domain) is decided by one regular expression with
exactly the library's result; everything else (Unicode, Punycode, odd shapes,
every invalid address except those without ``@``) goes to the library. The test
suite checks the fast path against the library.

**Phone** numbers are normalised to E.164 with ``phonenumbers``: a number written
with ``+`` needs no region; otherwise it is read in the recipient's region (a
country column holding ISO 3166 codes, ``UK`` accepted for ``GB``) or else the
default region. A number that reads as invalid there but starts with ``00`` is
read again as ``+`` (``00`` is the international prefix almost everywhere but in
North America). Numbers with an extension are refused (an extension cannot receive
an SMS). By default (``strict``) the number must be *valid* (``is_valid_number``:
its digits fit a number range in use in the metadata, fixed lines included): for
marketing SMS an invalid number costs money and never arrives. ``strict=False``
accepts any *possible* number (a length in use for its country, not only
diallable locally), for fictitious test data such as the UK drama range
``+44 7700 900xxx``, which is not valid.

Parsing and validating with the library costs 25-60 µs a number, so a number
written ``+`` digits (spaces, dots, dashes and brackets allowed) takes a fast path
that gives exactly the library's answer from the same metadata: the country code
is split off, numbers whose national part starts with their country's national
prefix (``+44 (0)20 ...``) go to the library, and validity is checked with per
country precompiled patterns (built lazily, one alternation per number length).

**Push tokens** are checked per provider: Expo wants ``ExponentPushToken[...]`` or
``ExpoPushToken[...]``; OneSignal a subscription id (a UUID) or, with
``mode="external_id"``, any external id; other providers a non-empty token
without whitespace. Tokens are kept as given (only surrounding whitespace is
stripped).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal

import attrs
import email_validator
import phonenumbers
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from phonenumbers import PhoneMetadata, PhoneNumberDesc

from ._models import Recipient
from .exceptions import ConfigError

__all__ = [
    "AddressKind",
    "AddressValidator",
    "dedupe_key_email",
    "normalize_email",
    "normalize_phone",
    "valid_push_token",
]

AddressKind = Literal["email", "phone", "push_token", "text"]
_KINDS: Final = ("email", "phone", "push_token", "text")
_FIELD_KINDS: Final[dict[str, AddressKind]] = {
    "email": "email",
    "phone": "phone",
    "push_token": "push_token",
}

# -- e-mail ---------------------------------------------------------------------------

_ATEXT = r"A-Za-z0-9!#$%&'*+/=?^_`{|}~-"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: The common shape: dot-atom local part @ LDH labels, a letters-only TLD. Every
#: string it matches (within 254 characters, no ``--`` in the domain, no special-use
#: TLD) is valid for email-validator, which returns it with the domain lower-cased.
_EMAIL_FAST = re.compile(
    rf"([{_ATEXT}]+(?:\.[{_ATEXT}]+)*)@((?:{_LABEL}\.)+[A-Za-z]{{2,63}})", re.ASCII
)
_CASE_INSENSITIVE_LOCAL: Final = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)
_ROLE_MAX = max(map(len, _CASE_INSENSITIVE_LOCAL))
_SPECIAL_USE: Final = tuple(email_validator.SPECIAL_USE_DOMAIN_NAMES)
_SPECIAL_TLDS: Final = frozenset(d for d in _SPECIAL_USE if "." not in d)
_SPECIAL_SUFFIXES: Final = tuple("." + d for d in _SPECIAL_USE if "." in d)
_EMAIL_MAX = 254


def normalize_email(value: str) -> str | None:
    """Validate an e-mail address's syntax and return its normalised form.

    Surrounding whitespace is ignored. No DNS lookup is made.

    Returns:
        The address as ``email-validator`` normalises it (domain lower-cased, IDNA
        domains in Unicode, RFC 2142 role local parts lower-cased, the rest of the
        local part as given), or ``None`` when it is not a valid address.
        Idempotent: a returned address normalises to itself.
    """
    value = value.strip()
    match = _EMAIL_FAST.fullmatch(value)
    if match is not None and len(value) <= _EMAIL_MAX:
        local, domain = match.groups()
        domain = domain.lower()
        tld = domain[domain.rfind(".") + 1 :]
        if (
            "--" not in domain
            and tld not in _SPECIAL_TLDS
            and not (_SPECIAL_SUFFIXES and domain.endswith(_SPECIAL_SUFFIXES))
        ):
            if len(local) <= _ROLE_MAX and local.lower() in _CASE_INSENSITIVE_LOCAL:
                local = local.lower()
            return f"{local}@{domain}"
    if "@" not in value:
        return None
    return _email_slow(value)


def _email_slow(value: str) -> str | None:
    """``email-validator``'s verdict (the reference the fast path must agree with)."""
    try:
        result = email_validator.validate_email(
            value, check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError:
        return None
    normalized: str = result.normalized
    return normalized


def email_error(value: str) -> str | None:
    """Why ``value`` is not a valid address (``email-validator``'s message), or ``None``."""
    try:
        email_validator.validate_email(
            value.strip(), check_deliverability=False, allow_smtputf8=True
        )
    except email_validator.EmailNotValidError as exc:
        return str(exc)
    return None


def dedupe_key_email(normalized: str) -> str:
    """The deduplication and suppression key of a normalised address: the whole
    address lower-cased (mailbox providers treat local parts case-insensitively)."""
    return normalized.lower()


# -- phone ----------------------------------------------------------------------------

#: ``+`` then digits and common separators: read without the library (see module doc).
_PLUS_FORM = re.compile(r"\+[0-9 ().\-]+", re.ASCII)
_SEPARATORS = str.maketrans("", "", " ().-")
_REGION_ALIASES: Final = {"UK": "GB"}
_SUPPORTED_REGIONS: Final = frozenset(phonenumbers.SUPPORTED_REGIONS)
_MAX_INPUT = 250  # phonenumbers refuses longer strings
_SLOW: Final = "slow"  # sentinel of the fast path: ask the library
_E164_DIGITS = 15


def normalize_phone(
    value: str, *, default_region: str | None, region: str | None = None, strict: bool = True
) -> str | None:
    """Normalise a phone number to E.164 (``+14155550101``).

    Args:
        value: the number as written; surrounding whitespace is ignored.
        default_region: ISO 3166 region for numbers without ``+`` when ``region`` is
            not given or unknown.
        region: the recipient's own region (a country column), case-insensitive;
            ``UK`` means ``GB``.
        strict: require a valid number (``phonenumbers.is_valid_number``), else only
            a possible one (a length in use in its country, not only diallable locally).

    Returns:
        The E.164 form (matches ``^\\+[1-9]\\d{1,14}$``), or ``None`` when the value is
        not a number, has an extension, needs a region none was given for, or is not
        valid (possible). Idempotent.
    """
    value = value.strip()
    if value[:1] == "+" and _PLUS_FORM.fullmatch(value):
        fast = _phone_fast(value[1:].translate(_SEPARATORS), strict)
        if fast is not _SLOW:
            return fast
    return _phone_slow(value, _region(region) or _region(default_region), strict)


def _region(value: str | None) -> str | None:
    if not value:
        return None
    code = value.strip().upper()
    code = _REGION_ALIASES.get(code, code)
    return code if code in _SUPPORTED_REGIONS else None


def _phone_slow(value: str, region: str | None, strict: bool) -> str | None:
    """The library's verdict (the reference the fast path must agree with)."""
    result = _parse_checked(value, region, strict)
    if result is None and region is not None and value[:2] == "00":
        result = _parse_checked("+" + value[2:], None, strict)
    return result


def _parse_checked(
    value: str, region: str | None, strict: bool, *, recheck: bool = True
) -> str | None:
    if len(value) > _MAX_INPUT:
        return None
    try:
        number = phonenumbers.parse(value, region)
    except phonenumbers.NumberParseException:
        return None
    if number.extension:
        return None
    ok = phonenumbers.is_valid_number(number) if strict else _is_possible(number)
    if not ok:
        return None
    e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
    if len(e164) > _E164_DIGITS + 1:
        return None
    if recheck:
        # Parsing strips a national prefix even after "+" ("+598 0..." loses its 0),
        # so a result could read as another number: keep only fixed points.
        again = _phone_fast(e164[1:], strict)
        if again is _SLOW:
            again = _parse_checked(e164, None, strict, recheck=False)
        if again != e164:
            return None
    return e164


def _is_possible(number: phonenumbers.PhoneNumber) -> bool:
    # Not is_possible_number(): it also accepts numbers only diallable locally
    # (a US number without its area code), which are no E.164 number.
    reason = phonenumbers.is_possible_number_with_reason(number)
    return reason == phonenumbers.ValidationResult.IS_POSSIBLE


def _phone_fast(digits: str, strict: bool) -> str | None:
    """E.164 for ``+digits`` without parsing, or :data:`_SLOW` when the library must
    decide. Mirrors ``phonenumbers.parse`` for this input shape: the country code is
    the prefix (1-3 digits) found in the metadata; the national number is kept as is
    unless the country's national prefix could be stripped from it (then: slow)."""
    if not 3 <= len(digits) <= 17 or digits[0] == "0":
        return _SLOW
    for size in (1, 2, 3):
        table = _country(int(digits[:size]))
        if table is not None:
            break
    else:
        return _SLOW
    nsn = digits[size:]
    if len(nsn) < 2 or (table.national_prefix is not None and table.national_prefix.match(nsn)):
        return _SLOW
    if strict:
        ok = table.is_valid(nsn)
    else:
        number = phonenumbers.PhoneNumber(country_code=table.code, national_number=int(nsn))
        if len(nsn) > 1 and nsn[0] == "0":  # as phonenumbers stores leading zeros
            number.italian_leading_zero = True
            zeros = len(nsn) - len(nsn.lstrip("0"))
            zeros = min(zeros, len(nsn) - 1)
            if zeros != 1:
                number.number_of_leading_zeros = zeros
        ok = _is_possible(number)
    # E.164 has 15 digits at most; some national numbers are longer than that allows.
    return "+" + digits if ok and len(digits) <= _E164_DIGITS else None


_Matcher = Callable[[str], bool]


@attrs.frozen
class _Country:
    """Precompiled validity rules of one country calling code (see ``is_valid``)."""

    code: int
    national_prefix: re.Pattern[str] | None
    regions: tuple[tuple[re.Pattern[str] | None, _Matcher], ...]

    def is_valid(self, nsn: str) -> bool:
        """``phonenumbers.is_valid_number`` for this code and national number: the
        region is the first whose leading digits match, or else (for regions without
        leading digits) the first where the number has a type; valid if it has a
        type there."""
        for leading, has_type in self.regions:
            if leading is not None:
                if leading.match(nsn):
                    return has_type(nsn)
            elif has_type(nsn):
                return True
        return False


_COUNTRIES: dict[int, _Country | None] = {}


def _country(code: int) -> _Country | None:
    try:
        return _COUNTRIES[code]
    except KeyError:
        pass
    regions = phonenumbers.COUNTRY_CODE_TO_REGION_CODE.get(code)
    table = _build_country(code, regions) if regions else None
    _COUNTRIES[code] = table  # a racing thread builds the same value
    return table


def _build_country(code: int, regions: tuple[str, ...]) -> _Country:
    main = PhoneMetadata.metadata_for_region_or_calling_code(
        code, phonenumbers.region_code_for_country_code(code)
    )
    prefix = main.national_prefix_for_parsing if main is not None else None
    rules: list[tuple[re.Pattern[str] | None, _Matcher]] = []
    for region in regions:
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region.upper())
        if metadata is None:
            continue
        matcher = _type_matcher(metadata) if metadata.country_code == code else _never
        if len(regions) == 1:
            rules.append((None, matcher))
        elif metadata.leading_digits is not None:
            rules.append((re.compile(metadata.leading_digits), matcher))
        else:
            rules.append((None, matcher))
    return _Country(code, re.compile(prefix) if prefix else None, tuple(rules))


def _never(nsn: str) -> bool:
    return False


def _type_matcher(metadata: PhoneMetadata) -> _Matcher:
    """Whether a national number has a type in ``metadata`` (phonenumbers'
    ``_number_type_helper(...) != UNKNOWN``): it matches the general description and
    one of the type descriptions, each within its possible lengths. The type patterns
    are joined into one alternation per length."""
    general = _desc(metadata.general_desc)
    if general is None:
        return _never
    types = [
        metadata.premium_rate,
        metadata.toll_free,
        metadata.shared_cost,
        metadata.voip,
        metadata.personal_number,
        metadata.pager,
        metadata.uan,
        metadata.voicemail,
        metadata.fixed_line,
    ]
    if not metadata.same_mobile_and_fixed_line_pattern:
        types.append(metadata.mobile)
    descs = [d for d in map(_desc, types) if d is not None]
    general_lengths, general_pattern = general
    by_length: dict[int, re.Pattern[str]] = {}
    for length in range(1, 18):
        if general_lengths and length not in general_lengths:
            continue
        patterns = [p for lengths, p in descs if not lengths or length in lengths]
        if patterns:
            joined = "|".join(f"(?:{p})" for p in patterns)
            by_length[length] = re.compile(joined)
    general_re = re.compile(general_pattern)

    def has_type(nsn: str) -> bool:
        pattern = by_length.get(len(nsn))
        return (
            pattern is not None
            and general_re.fullmatch(nsn) is not None
            and pattern.fullmatch(nsn) is not None
        )

    return has_type


def _desc(desc: PhoneNumberDesc | None) -> tuple[frozenset[int], str] | None:
    if desc is None or not desc.national_number_pattern:
        return None
    return frozenset(desc.possible_length or ()), desc.national_number_pattern


# -- push tokens ----------------------------------------------------------------------

_EXPO_TOKEN = re.compile(r"Expo(?:nent)?PushToken\[[^\]\s]+\]")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_WHITESPACE = re.compile(r"\s")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
PUSH_MODES: Final = ("subscription_ids", "external_id")


_SENDER_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_SENDER_SHORT_CODE = re.compile(r"[0-9]{3,8}")
_SENDER_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")


def valid_sms_sender(value: str) -> bool:
    """Whether ``value`` is an SMS sender: an E.164 number, a short code (3-8 digits) or
    an alphanumeric sender ID (1-11 letters, digits and spaces, at least one letter)."""
    return any(p.fullmatch(value) for p in (_SENDER_E164, _SENDER_SHORT_CODE, _SENDER_ALPHANUMERIC))


def valid_push_token(value: str, provider: str, *, mode: str = "subscription_ids") -> bool:
    """Whether ``value`` is a well-formed push address for ``provider``.

    * ``expo``: ``ExponentPushToken[...]`` or ``ExpoPushToken[...]`` (no whitespace
      or ``]`` inside the brackets);
    * ``onesignal``: with ``mode="subscription_ids"`` (the default) a subscription id,
      a UUID in its ``8-4-4-4-12`` hex form; with ``mode="external_id"`` any
      non-empty id without control characters;
    * any other provider: non-empty, no whitespace.

    The value is checked as given: callers strip surrounding whitespace first.
    """
    if not value:
        return False
    if provider == "expo":
        return _EXPO_TOKEN.fullmatch(value) is not None
    if provider == "onesignal":
        if mode == "external_id":
            return _CONTROL.search(value) is None and not value.isspace()
        return _UUID.fullmatch(value) is not None
    return _WHITESPACE.search(value) is None


# -- per channel ----------------------------------------------------------------------

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
        if push_mode is None:
            targeting = (options or {}).get("targeting") if provider == "onesignal" else None
            push_mode = targeting if targeting in PUSH_MODES else PUSH_MODES[0]
        if push_mode not in PUSH_MODES:
            raise ValueError(f"unknown push mode {push_mode!r} (expected one of {PUSH_MODES})")
        if default_region is not None and _region(default_region) is None:
            raise ConfigError(
                f"unknown region {default_region!r} (expected an ISO 3166 code such as 'US')",
                path="phone_region",
            )
        region = _region(default_region)
        normalizer: _Normalizer
        key: Callable[[str], str] = _identity
        if kind == "email":
            normalizer = _email_normalizer
            key = dedupe_key_email
        elif kind == "phone":
            normalizer = _phone_normalizer(region, strict_phone)
        elif kind == "push_token":
            normalizer = _push_normalizer(provider, push_mode)
        else:
            normalizer = _text_normalizer
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
