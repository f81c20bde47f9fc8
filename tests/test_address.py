"""Address validation and normalisation (campaignkit._address)."""

from __future__ import annotations

import re
import string

import phonenumbers
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from phonenumbers import PhoneMetadata

from campaignkit._address import (
    AddressValidator,
    dedupe_key_email,
    email_error,
    normalize_email,
    normalize_phone,
    valid_push_token,
)
from campaignkit._address._email import _EMAIL_FAST, _email_slow
from campaignkit._address._phone import _SLOW, _phone_fast, _phone_slow
from campaignkit._models import Recipient
from campaignkit.exceptions import ConfigError

SETTINGS = settings(max_examples=300, deadline=None)
_FULLWIDTH_DIGITS = "".join(chr(0xFF10 + int(d)) for d in "4155550101")
E164 = re.compile(r"^\+[1-9]\d{1,14}$")

# -- e-mail ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ann@example.com", "ann@example.com"),
        ("Ann@Example.COM", "Ann@example.com"),  # the local part is kept as typed
        ("  ann@example.com\t", "ann@example.com"),  # surrounding whitespace ignored
        ("ann+news@example.com", "ann+news@example.com"),  # plus-addressing kept
        ("first.last@mail.example.org", "first.last@mail.example.org"),
        ("o'brien@example.ie", "o'brien@example.ie"),
        ("x@a1-b2.example.net", "x@a1-b2.example.net"),
        ("Postmaster@Example.com", "postmaster@example.com"),  # RFC 2142 role names
        ("INFO@example.com", "info@example.com"),
        ("ann@bücher.de", "ann@bücher.de"),  # IDN kept in Unicode
        ("ann@xn--bcher-kva.de", "ann@bücher.de"),  # Punycode shown in Unicode
        ("ann@BÜCHER.de", "ann@bücher.de"),
        ("用户@例子.广告", "用户@例子.广告"),  # SMTPUTF8 local part
        ("a@123.com", "a@123.com"),
    ],
)
def test_valid_emails(value: str, expected: str) -> None:
    assert normalize_email(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "ann.example.com",  # no @
        "ann_at_example.com",
        "ann@",
        "@example.com",
        "ann@example",  # no dot
        "ann@@example.com",
        "a..b@example.com",
        ".ann@example.com",
        "ann.@example.com",
        "ann@example..com",
        "ann@-example.com",
        "ann@example-.com",
        "ann@exa_mple.com",
        "ann@example.123",  # a TLD is letters
        "ann@example.com.",
        "ann smith@example.com",
        "ann@exam ple.com",
        "ann@example.com\r\nBcc: x@y.com",  # header injection
        '"ann smith"@example.com',  # quoted local parts refused
        "Ann <ann@example.com>",  # display names refused
        "ann@[192.0.2.1]",  # domain literals refused
        "ann@localhost",
        "ann@host.local",
        "ann@x.test",
        "ann@x.invalid",
        "ann@ab--cd.com",  # R-LDH label that is not Punycode
        "ann@xn--zz.com",  # bad Punycode
        "ann\uff20example.com",  # full-width at-sign
        "a" * 250 + "@example.com",  # over 254 characters
        "ann@" + "a" * 64 + ".com",  # label over 63
    ],
)
def test_invalid_emails(value: str) -> None:
    assert normalize_email(value) is None


def test_email_error_explains() -> None:
    assert email_error("ann@example.com") is None
    assert "period" in (email_error("ann@example") or "")


def test_dedupe_key_email_is_case_insensitive() -> None:
    a = normalize_email("Ann.Smith@Example.com")
    b = normalize_email("ann.smith@example.COM")
    assert a is not None and b is not None
    assert a != b  # sent as typed
    assert dedupe_key_email(a) == dedupe_key_email(b) == "ann.smith@example.com"
    # plus-addressing is another mailbox as far as we know
    assert dedupe_key_email("ann+x@example.com") != dedupe_key_email("ann@example.com")


_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-"
_LDH = string.ascii_letters + string.digits + "-"


@st.composite
def ascii_addresses(draw: st.DrawFn) -> str:
    """Addresses near the fast path's shape, with its edge cases (length limits,
    hyphens, ``--``, special-use and odd TLDs, role names, whitespace)."""
    atoms = st.text(_ATEXT, min_size=1, max_size=draw(st.sampled_from([4, 12, 70])))
    local = draw(
        st.one_of(
            st.lists(atoms, min_size=1, max_size=3).map(".".join),
            st.sampled_from(["postmaster", "Info", "SALES", "WebMaster", "a", ""]),
        )
    )
    label = st.text(_LDH, min_size=0, max_size=draw(st.sampled_from([5, 20, 64])))
    labels = draw(st.lists(label, min_size=1, max_size=4))
    tld = draw(
        st.sampled_from(
            [
                *("com", "COM", "org", "x", "test", "local", "localhost", "invalid", "arpa"),
                *("onion", "Example", "c0m", "xn--p1ai", "q" * 63, "q" * 64, ""),
            ]
        )
    )
    pad = draw(st.sampled_from(["", "", " ", "\t", "\n"]))
    return local + "@" + ".".join([*labels, tld]) + pad


@SETTINGS
@given(ascii_addresses())
def test_email_fast_path_agrees_with_email_validator(value: str) -> None:
    assert normalize_email(value) == _email_slow(value.strip())


def test_fast_paths_are_exercised() -> None:
    # The common shapes do take the fast path (the agreement test above is meaningful).
    for value in ("ann@example.com", "Ann.Smith+x@mail.example.org", "x@a-b.co"):
        assert _EMAIL_FAST.fullmatch(value)
    # ... and so do the common phone numbers.
    assert _phone_fast("14155550101", True) == "+14155550101"
    assert _phone_fast("447911123456", True) == "+447911123456"
    assert _phone_fast("4915123456789", False) == "+4915123456789"
    assert _phone_fast("15550104696", True) is None
    assert _phone_fast("4402079460018", True) is _SLOW  # national prefix: the library decides


@SETTINGS
@given(st.one_of(ascii_addresses(), st.text(max_size=40), st.emails().map(str)))
def test_email_normalization_is_idempotent_and_clean(value: str) -> None:
    normalized = normalize_email(value)
    if normalized is None:
        return
    assert normalize_email(normalized) == normalized
    assert not any(c.isspace() for c in normalized)
    assert "\r" not in normalized and "\n" not in normalized
    assert dedupe_key_email(normalized) == dedupe_key_email(normalized).lower()


# -- phone ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "default_region", "region", "expected"),
    [
        ("+14155550101", None, None, "+14155550101"),  # E.164 needs no region
        ("+1 (415) 555-0101", None, None, "+14155550101"),
        ("+1.415.555.0101", None, None, "+14155550101"),
        ("  +14155550101  ", None, None, "+14155550101"),
        ("(415) 555-0101", "US", None, "+14155550101"),
        ("415-555-0101", "US", None, "+14155550101"),
        ("415 555 0101", "us", None, "+14155550101"),  # region case-insensitive
        ("1 415 555 0101", "US", None, "+14155550101"),  # US trunk prefix
        ("011 44 7911 123456", "US", None, "+447911123456"),  # US IDD
        ("07911 123456", "US", "GB", "+447911123456"),  # the recipient's country wins
        ("07911 123456", "US", "UK", "+447911123456"),  # UK means GB
        ("07911 123456", "GB", "", "+447911123456"),  # empty country: default region
        ("07911 123456", "GB", "Neverland", "+447911123456"),  # unknown: default
        ("00 44 7911 123456", "GB", None, "+447911123456"),  # IDD 00 in GB
        ("0044 7911 123456", "US", None, "+447911123456"),  # 00 read as + (fallback)
        ("0049 151 23456789", "US", None, "+4915123456789"),
        ("+44 (0)20 7946 0018", None, None, "+442079460018"),  # (0) trunk prefix
        ("020 7946 0018", "GB", None, "+442079460018"),  # a landline is valid
        ("+33 1 23 45 67 89", None, None, "+33123456789"),  # French landline
        ("+39 06 1234 5678", None, None, "+390612345678"),  # Italian leading zero
        ("+61 491 570 006", None, None, "+61491570006"),
        (_FULLWIDTH_DIGITS, "US", None, "+14155550101"),
        ("tel:+1-415-555-0101", None, None, "+14155550101"),
    ],
)
def test_valid_phones(
    value: str, default_region: str | None, region: str | None, expected: str
) -> None:
    assert normalize_phone(value, default_region=default_region, region=region) == expected


@pytest.mark.parametrize(
    ("value", "default_region"),
    [
        ("", "US"),
        ("not a number", "US"),
        ("4155550101", None),  # national format without any region
        ("12", "US"),  # too short
        ("+1415555010", None),  # one digit short
        ("+141555501011", None),  # one digit long
        ("+1415555010199999", None),
        ("+99912345678", None),  # unassigned country code
        ("+0123456789", None),
        ("+15550104696", None),  # NANP exchange cannot start with 0/1
        ("+1 415 555 0101 ext. 12", None),  # an extension cannot receive SMS
        ("555-0143", "US"),  # seven digits, no area code
        ("+447700900123", None),  # UK drama range: possible but not valid
        ("+" + "9" * 250, None),  # over phonenumbers' input limit
    ],
)
def test_invalid_phones(value: str, default_region: str | None) -> None:
    assert normalize_phone(value, default_region=default_region) is None


def test_possible_numbers_when_not_strict() -> None:
    assert normalize_phone("+447700900123", default_region=None, strict=False) == "+447700900123"
    assert normalize_phone("+1415555010", default_region=None, strict=False) is None
    assert normalize_phone("+1 415 555 0101 ext. 1", default_region=None, strict=False) is None
    # diallable only locally (no area code): no E.164 number
    assert normalize_phone("555-0143", default_region="US", strict=False) is None


def _country_codes() -> list[int]:
    return sorted(phonenumbers.COUNTRY_CODE_TO_REGION_CODE)


def _examples(code: int) -> list[str]:
    out = []
    for region in phonenumbers.COUNTRY_CODE_TO_REGION_CODE[code]:
        metadata = PhoneMetadata.metadata_for_region_or_calling_code(code, region)
        if metadata is None:
            continue
        for name in ("fixed_line", "mobile", "toll_free", "premium_rate", "voip", "uan"):
            desc = getattr(metadata, name)
            if desc is not None and desc.example_number:
                out.append(desc.example_number)
    return out or ["1234567"]


@st.composite
def plus_numbers(draw: st.DrawFn) -> str:
    """``+`` numbers of every country code: example numbers (valid) with a random
    tail of about the same length (valid or not), sometimes a leading zero."""
    code = draw(st.sampled_from(_country_codes()))
    example = draw(st.sampled_from(_examples(code)))
    keep = draw(st.integers(0, len(example)))
    tail = draw(st.integers(-2, 2)) + len(example) - keep
    nsn = example[:keep] + draw(st.text("0123456789", min_size=max(tail, 0), max_size=max(tail, 0)))
    if draw(st.booleans()) and draw(st.booleans()):
        nsn = "0" + nsn
    return f"{code}{nsn}"


@settings(max_examples=1500, deadline=None)
@given(plus_numbers(), st.booleans())
def test_phone_fast_path_agrees_with_phonenumbers(digits: str, strict: bool) -> None:
    fast = _phone_fast(digits, strict)
    assume(fast is not _SLOW)
    assert fast == _phone_slow("+" + digits, None, strict)


def test_phone_fast_path_valid_examples() -> None:
    # Every metadata example number (valid by definition) is valid on the fast path.
    for code in _country_codes():
        for example in _examples(code):
            number = phonenumbers.parse(f"+{code}{example}", None)
            expected = _phone_slow(f"+{code}{example}", None, True)
            fast = _phone_fast(f"{code}{example}", True)
            if fast is not _SLOW:
                assert fast == expected, (code, example)
            assert expected is None or phonenumbers.is_valid_number(number)


@SETTINGS
@given(
    st.one_of(
        plus_numbers().map(lambda d: "+" + d),
        st.text("0123456789 +-().", max_size=20),
        st.text(max_size=20),
    ),
    st.sampled_from([None, "US", "GB", "DE", "IN"]),
    st.booleans(),
)
def test_phone_normalization_is_e164_and_idempotent(
    value: str, region: str | None, strict: bool
) -> None:
    normalized = normalize_phone(value, default_region=region, strict=strict)
    if normalized is None:
        return
    assert E164.match(normalized), normalized
    assert normalize_phone(normalized, default_region=None, strict=strict) == normalized
    assert normalize_phone(normalized, default_region="FR", strict=strict) == normalized


# -- push tokens ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "provider", "mode", "ok"),
    [
        ("ExponentPushToken[xxxxxxxxxxxxxxxxxxxxxx]", "expo", None, True),
        ("ExpoPushToken[ipuIK0GkPbx3nIlgPx9Vk1]", "expo", None, True),
        ("ExponentPushToken[]", "expo", None, False),
        ("ExponentPushToken[a b]", "expo", None, False),
        ("ExponentPushToken[abc", "expo", None, False),
        ("exponentpushtoken[abc]", "expo", None, False),
        ("ExponentPushToken[abc] ", "expo", None, False),  # callers strip
        ("0c4f0a8e1b3d4e5f9a7b6c5d4e3f2a1b", "expo", None, False),  # an FCM-ish token
        ("", "expo", None, False),
        ("1dd608f2-c6a1-11e3-851d-000c2940e62c", "onesignal", None, True),
        ("1DD608F2-C6A1-11E3-851D-000C2940E62C", "onesignal", None, True),
        ("1dd608f2c6a111e3851d000c2940e62c", "onesignal", None, False),  # not 8-4-4-4-12
        ("{1dd608f2-c6a1-11e3-851d-000c2940e62c}", "onesignal", None, False),
        ("user-42", "onesignal", None, False),
        ("user-42", "onesignal", "external_id", True),
        ("user 42", "onesignal", "external_id", True),
        ("user\n42", "onesignal", "external_id", False),
        ("", "onesignal", "external_id", False),
        ("d7a1f3c2e9b8", "fcm", None, True),
        ("has space", "fcm", None, False),
        ("", "fcm", None, False),
    ],
)
def test_push_tokens(value: str, provider: str, mode: str | None, ok: bool) -> None:
    if mode is None:
        assert valid_push_token(value, provider) is ok
    else:
        assert valid_push_token(value, provider, mode=mode) is ok


# -- per channel ----------------------------------------------------------------------


def _recipient(**kwargs: object) -> Recipient:
    return Recipient(id="C1", **kwargs)  # type: ignore[arg-type]


def test_validator_email() -> None:
    v = AddressValidator.for_channel("email", "sendgrid")
    assert v.kind == "email"
    assert v.normalize(_recipient(email="Ann@Example.COM")) == "Ann@example.com"
    assert v.normalize(_recipient(email="nope")) is None
    assert v.normalize(_recipient()) is None  # missing: the caller tells missing first
    assert v.key("Ann@example.com") == "ann@example.com"


def test_validator_phone_with_country_column() -> None:
    v = AddressValidator.for_channel("phone", "twilio", "US", region_field="country")
    assert v.kind == "phone" and v.default_region == "US"
    gb = _recipient(phone="07911 123456", attributes={"country": "GB"})
    us = _recipient(phone="(415) 555-0101", attributes={"country": ""})
    plus = _recipient(phone="+33 6 12 34 56 78", attributes={"country": "US"})
    assert v.normalize(gb) == "+447911123456"
    assert v.normalize(us) == "+14155550101"
    assert v.normalize(plus) == "+33612345678"
    assert v.key("+14155550101") == "+14155550101"


def test_validator_phone_not_strict() -> None:
    v = AddressValidator.for_channel("phone", "twilio", strict_phone=False)
    assert v.normalize(_recipient(phone="+447700900123")) == "+447700900123"
    assert (
        AddressValidator.for_channel("phone", "twilio").normalize(_recipient(phone="+447700900123"))
        is None
    )


def test_validator_push_per_provider() -> None:
    expo = AddressValidator.for_channel("push_token", "expo")
    token = "ExponentPushToken[abc123]"
    assert expo.normalize(_recipient(push_token=f" {token} ")) == token
    assert expo.normalize(_recipient(push_token="abc123")) is None
    uuid = "1dd608f2-c6a1-11e3-851d-000c2940e62c"
    onesignal = AddressValidator.for_channel("push_token", "onesignal")
    assert onesignal.normalize(_recipient(push_token=uuid)) == uuid
    assert onesignal.normalize(_recipient(push_token="user-42")) is None
    external = AddressValidator.for_channel(
        "push_token", "onesignal", options={"app_id": "x", "targeting": "external_id"}
    )
    assert external.normalize(_recipient(push_token="user-42")) == "user-42"


def test_validator_attribute_field() -> None:
    text = AddressValidator.for_channel("webhook_url", "webhook")
    assert text.kind == "text"
    assert text.normalize(_recipient(attributes={"webhook_url": " https://x "})) == "https://x"
    assert text.normalize(_recipient(attributes={})) is None
    work = AddressValidator.for_channel("work_email", "sendgrid", kind="email")
    assert work.normalize(_recipient(attributes={"work_email": "A@B.CO"})) == "A@b.co"
    assert work.normalize_value("x@y.org") == "x@y.org"


def test_validator_errors() -> None:
    with pytest.raises(ConfigError, match="unknown region") as info:
        AddressValidator.for_channel("phone", "twilio", "Atlantis")
    assert info.value.path == "phone_region"
    with pytest.raises(ValueError, match="kind"):
        AddressValidator.for_channel("phone", "twilio", kind="fax")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="push mode"):
        AddressValidator.for_channel("push_token", "onesignal", push_mode="segments")
