"""Phone numbers normalised to E.164, and SMS sender ids.

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
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import attrs
import phonenumbers
from phonenumbers import PhoneMetadata, PhoneNumberDesc

__all__ = ["normalize_phone", "region_code", "valid_sms_sender"]

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
    return _phone_slow(value, region_code(region) or region_code(default_region), strict)


def region_code(value: str | None) -> str | None:
    """The ISO 3166 region ``value`` names (any case, ``UK`` for ``GB``), or ``None``
    when it is empty or not a region ``phonenumbers`` knows."""
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


_SENDER_E164 = re.compile(r"\+[1-9][0-9]{1,14}")
_SENDER_SHORT_CODE = re.compile(r"[0-9]{3,8}")
_SENDER_ALPHANUMERIC = re.compile(r"(?=.*[A-Za-z])[A-Za-z0-9 ]{1,11}")


def valid_sms_sender(value: str) -> bool:
    """Whether ``value`` is an SMS sender: an E.164 number, a short code (3-8 digits) or
    an alphanumeric sender ID (1-11 letters, digits and spaces, at least one letter)."""
    return any(p.fullmatch(value) for p in (_SENDER_E164, _SENDER_SHORT_CODE, _SENDER_ALPHANUMERIC))
