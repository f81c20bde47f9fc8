"""The webhook signature verifiers of campaignkit.receipts.

Known-answer vectors come from the providers' official SDK tests (cited at each);
other cases sign the providers' documented payloads with key pairs made here, exactly
as the provider does, and check that every tampering is refused without an exception.
"""

from __future__ import annotations

import base64
import hashlib
import json
import sys
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit.receipts import (
    ReceiptsDependencyError,
    fresh,
    verify_sendgrid,
    verify_telnyx,
    verify_twilio,
    verify_twilio_json,
)

# -- SendGrid: sendgrid/sendgrid-python test/unit/test_eventwebhook.py ---------------------------
SG_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw"
    "+2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
SG_OTHER_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEqTxd43gyp8IOEto2LdIfjRQrIbsd4SXZkLW6jDutdhXSJCWHw8REntlo"
    "7aNDthvj+y7GjUuFDb/R1NGe1OPzpA=="
)
SG_SIGNATURE = (
    "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM"
    "+uOe5W0JuG+luQAbPIqHh89M15TluLtEZtM="
)
SG_OTHER_SIGNATURE = (
    "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8"
    "xonZGi6BpSzoQsbVRamr2nlxFDWYNH3j/0="
)
SG_TIMESTAMP = "1600112502"
# The SDK builds it with json.dumps(sort_keys=True, separators=(",", ":")) plus CRLF.
SG_PAYLOAD = (
    b'[{"email":"hello@world.com","event":"dropped","reason":"Bounced Address",'
    b'"sg_event_id":"ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",'
    b'"sg_message_id":"LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0",'
    b'"smtp-id":"<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>","timestamp":1600112492}]\r\n'
)

# -- Twilio: twilio/twilio-python tests/unit/test_request_validator.py ---------------------------
TW_TOKEN = "12345"
TW_URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
TW_PARAMS = {
    "CallSid": "CA1234567890ABCDE",
    "Digits": "1234",
    "From": "+14158675309",
    "To": "+18005551212",
    "Caller": "+14158675309",
}
TW_BODY = b'{"property": "value", "boolean": true}'
TW_BODY_HASH = "0a1ff7634d9ab3b95db5c9a2dfe9416e41502b283a80c7cf19632632f96e6620"


def test_sendgrid_sdk_vector_verifies() -> None:
    pytest.importorskip("cryptography")
    assert verify_sendgrid(SG_KEY, SG_SIGNATURE, SG_TIMESTAMP, SG_PAYLOAD)
    pem = f"-----BEGIN PUBLIC KEY-----\n{SG_KEY[:64]}\n{SG_KEY[64:]}\n-----END PUBLIC KEY-----\n"
    assert verify_sendgrid(pem, SG_SIGNATURE, SG_TIMESTAMP, SG_PAYLOAD)


@pytest.mark.parametrize(
    ("key", "signature", "timestamp", "payload"),
    [
        (SG_OTHER_KEY, SG_SIGNATURE, SG_TIMESTAMP, SG_PAYLOAD),  # SDK: bad key
        (SG_KEY, SG_SIGNATURE, SG_TIMESTAMP, b"payload"),  # SDK: bad payload
        (SG_KEY, SG_OTHER_SIGNATURE, SG_TIMESTAMP, SG_PAYLOAD),  # SDK: bad signature
        (SG_KEY, SG_SIGNATURE, "timestamp", SG_PAYLOAD),  # SDK: bad timestamp
        (SG_KEY, SG_SIGNATURE, "1600112503", SG_PAYLOAD),
        (SG_KEY, SG_SIGNATURE, SG_TIMESTAMP, SG_PAYLOAD[:-2]),  # without the CRLF
        (SG_KEY, SG_SIGNATURE[:-8], SG_TIMESTAMP, SG_PAYLOAD),  # truncated
        (SG_KEY, "not base64!", SG_TIMESTAMP, SG_PAYLOAD),
        (SG_KEY, "", SG_TIMESTAMP, SG_PAYLOAD),
        ("", SG_SIGNATURE, SG_TIMESTAMP, SG_PAYLOAD),
        (SG_KEY[:-10], SG_SIGNATURE, SG_TIMESTAMP, SG_PAYLOAD),
        (SG_KEY, SG_SIGNATURE, "", SG_PAYLOAD),
        (SG_KEY, SG_SIGNATURE, SG_TIMESTAMP, b""),
        (SG_KEY, "A" * 1_000_000, SG_TIMESTAMP, SG_PAYLOAD),
        ("A" * 1_000_000, SG_SIGNATURE, SG_TIMESTAMP, SG_PAYLOAD),
        (SG_KEY, SG_SIGNATURE, "9" * 10_000, SG_PAYLOAD),
        (SG_KEY, SG_SIGNATURE, SG_TIMESTAMP, SG_PAYLOAD * 200_000),
    ],
)
def test_sendgrid_refuses(key: str, signature: str, timestamp: str, payload: bytes) -> None:
    pytest.importorskip("cryptography")
    assert verify_sendgrid(key, signature, timestamp, payload) is False


def _p256() -> tuple[Any, str]:
    """A P-256 key pair, the public half as SendGrid shows it (base64 DER)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = ec.generate_private_key(ec.SECP256R1())
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, base64.b64encode(der).decode()


def _sendgrid_sign(private: Any, timestamp: str, payload: bytes) -> str:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    signed = private.sign(timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signed).decode()


# A batch as the Event Webhook reference shows it: delivered, bounce (hard), blocked (soft).
SG_BATCH = json.dumps(
    [
        {"email": "a@example.com", "event": "delivered", "sg_message_id": "m1", "timestamp": 1},
        {"email": "b@example.com", "event": "bounce", "type": "bounce", "timestamp": 2},
        {"email": "c@example.com", "event": "bounce", "type": "blocked", "timestamp": 3},
        {"email": "d@example.com", "event": "spamreport", "timestamp": 4},
    ]
).encode()


def test_sendgrid_generated_pair_and_tampering() -> None:
    pytest.importorskip("cryptography")
    private, public = _p256()
    signature = _sendgrid_sign(private, "1733450000", SG_BATCH)
    assert verify_sendgrid(public, signature, "1733450000", SG_BATCH)
    assert not verify_sendgrid(public, signature, "1733450001", SG_BATCH)
    assert not verify_sendgrid(public, signature, "1733450000", SG_BATCH.replace(b"b@", b"x@"))
    assert not verify_sendgrid(_p256()[1], signature, "1733450000", SG_BATCH)
    # The signature is over timestamp + payload, not payload + timestamp.
    swapped = _sendgrid_sign(private, "", SG_BATCH + b"1733450000")
    assert not verify_sendgrid(public, swapped, "1733450000", SG_BATCH)


def test_sendgrid_refuses_keys_of_other_kinds() -> None:
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    p384 = ec.generate_private_key(ec.SECP384R1())
    der = p384.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    signature = p384.sign(b"1" + SG_BATCH, ec.ECDSA(hashes.SHA256()))
    b64 = base64.b64encode
    assert not verify_sendgrid(b64(der).decode(), b64(signature).decode(), "1", SG_BATCH)
    edkey = ed25519.Ed25519PrivateKey.generate()
    ed_der = edkey.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    ed_signature = b64(edkey.sign(b"1" + SG_BATCH)).decode()
    assert not verify_sendgrid(b64(ed_der).decode(), ed_signature, "1", SG_BATCH)


# -- Twilio ------------------------------------------------------------------------------------
def test_twilio_sdk_vectors() -> None:
    assert verify_twilio(TW_TOKEN, TW_URL, TW_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    # Several values for one name: names sorted, values sorted, duplicates removed.
    multi = {"Sid": "CA123", "SidAccount": "AC123", "Digits": ["5678", "1234", "1234"]}
    assert verify_twilio(TW_TOKEN, TW_URL, multi, "IK+Dwps556ElfBT0I3Rgjkr1wJU=")
    # The SDK tries the URL without its port and with the scheme's default port.
    with_port = TW_URL.replace(".com", ".com:1234")
    assert verify_twilio(TW_TOKEN, with_port, TW_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
    http_port = with_port.replace("https", "http")
    assert verify_twilio(TW_TOKEN, http_port, TW_PARAMS, "Zmvh+3yNM1Phv2jhDCwEM3q5ebU=")
    assert verify_twilio(TW_TOKEN, TW_URL, TW_PARAMS, "kvajT1Ptam85bY51eRf/AJRuM3w=")
    http = TW_URL.replace("https", "http")
    assert verify_twilio(TW_TOKEN, http, TW_PARAMS, "0ZXoZLH/DfblKGATFgpif+LLRf4=")


def test_twilio_json_body_sdk_vector() -> None:
    assert hashlib.sha256(TW_BODY).hexdigest() == TW_BODY_HASH
    url = f"{TW_URL}&bodySHA256={TW_BODY_HASH}"
    assert verify_twilio_json(TW_TOKEN, url, TW_BODY, "a9nBmqA0ju/hNViExpshrM61xv4=")
    assert not verify_twilio_json(TW_TOKEN, url, TW_BODY + b" ", "a9nBmqA0ju/hNViExpshrM61xv4=")
    assert not verify_twilio_json(TW_TOKEN, TW_URL, TW_BODY, "a9nBmqA0ju/hNViExpshrM61xv4=")
    assert not verify_twilio_json("54321", url, TW_BODY, "a9nBmqA0ju/hNViExpshrM61xv4=")


def _twilio_sign(token: str, url: str, params: dict[str, str]) -> str:
    import hmac

    signed = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), signed.encode(), "sha1").digest()).decode()


# A status callback as Twilio posts it (form fields of the Messaging status callback).
TW_STATUS = {
    "MessageSid": "SM0123456789abcdef0123456789abcdef",
    "MessageStatus": "undelivered",
    "ErrorCode": "30006",
    "AccountSid": "AC0123456789abcdef0123456789abcdef",
    "From": "+15005550006",
    "To": "+15551234567",
    "ApiVersion": "2010-04-01",
}
TW_CALLBACK = "https://receipts.example.com/receipts/sms?campaign=spring"


@pytest.mark.parametrize(
    ("token", "url", "params", "mangle"),
    [
        ("other-token", TW_CALLBACK, TW_STATUS, ""),
        (TW_TOKEN, TW_CALLBACK.replace("spring", "autumn"), TW_STATUS, ""),
        (TW_TOKEN, TW_CALLBACK, {**TW_STATUS, "MessageStatus": "delivered"}, ""),
        (TW_TOKEN, TW_CALLBACK, {**TW_STATUS, "Extra": "1"}, ""),
        (TW_TOKEN, TW_CALLBACK, {k: v for k, v in TW_STATUS.items() if k != "ErrorCode"}, ""),
        (TW_TOKEN, TW_CALLBACK, TW_STATUS, "truncate"),
        (TW_TOKEN, TW_CALLBACK, TW_STATUS, "empty"),
        (TW_TOKEN, TW_CALLBACK, TW_STATUS, "non-ascii"),
        (TW_TOKEN, TW_CALLBACK, TW_STATUS, "huge"),
        ("", TW_CALLBACK, TW_STATUS, ""),
        (TW_TOKEN, "", TW_STATUS, ""),
        (TW_TOKEN, "https://[::1/receipts", TW_STATUS, ""),
        (TW_TOKEN, "https://example.com:99999/receipts", TW_STATUS, ""),
    ],
)
def test_twilio_refuses(token: str, url: str, params: dict[str, str], mangle: str) -> None:
    good = _twilio_sign(TW_TOKEN, TW_CALLBACK, TW_STATUS)
    assert verify_twilio(TW_TOKEN, TW_CALLBACK, TW_STATUS, good)
    signature = {"": good, "truncate": good[:-4], "empty": "", "non-ascii": good[:-1] + "é"}.get(
        mangle, "A" * 1_000_000
    )
    assert verify_twilio(token, url, params, signature) is False


def test_twilio_refuses_wrong_types() -> None:
    good = _twilio_sign(TW_TOKEN, TW_CALLBACK, TW_STATUS)
    bad: list[Any] = [None, 1, b"x", ["x"], {1: "x"}, {"a": 1}, {"a": [1]}, {"a": b"x"}]
    for params in bad:
        assert verify_twilio(TW_TOKEN, TW_CALLBACK, params, good) is False
    assert verify_twilio(None, TW_CALLBACK, TW_STATUS, good) is False  # type: ignore[arg-type]
    assert verify_twilio(TW_TOKEN, None, TW_STATUS, good) is False  # type: ignore[arg-type]
    assert verify_twilio(TW_TOKEN, TW_CALLBACK, TW_STATUS, None) is False  # type: ignore[arg-type]


# -- Telnyx: Ed25519 over "timestamp|payload" (team-telnyx/telnyx-python lib) ----------------
TX_EVENT = json.dumps(
    {
        "data": {
            "event_type": "message.finalized",
            "id": "b301ed3f-1490-491f-995f-6e64e69674d4",
            "occurred_at": "2024-01-15T20:16:07.588+00:00",
            "payload": {
                "id": "40385f64-5717-4562-b3fc-2c963f66afa6",
                "to": [{"phone_number": "+15551234567", "status": "delivery_failed"}],
                "errors": [{"code": "40300", "title": "Blocked as spam"}],
            },
            "record_type": "event",
        },
        "meta": {"attempt": 1, "delivered_to": "https://receipts.example.com/receipts/sms"},
    }
).encode()


def _ed25519() -> tuple[Any, str]:
    from cryptography.hazmat.primitives.asymmetric import ed25519
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, base64.b64encode(raw).decode()


def test_telnyx_generated_pair_and_tampering() -> None:
    pytest.importorskip("cryptography")
    private, public = _ed25519()
    ts = "1705349767"
    signature = base64.b64encode(private.sign(f"{ts}|".encode() + TX_EVENT)).decode()
    assert verify_telnyx(public, signature, ts, TX_EVENT)
    assert not verify_telnyx(public, signature, "1705349768", TX_EVENT)
    assert not verify_telnyx(public, signature, ts, TX_EVENT.replace(b"failed", b"delivered"))
    assert not verify_telnyx(_ed25519()[1], signature, ts, TX_EVENT)
    no_bar = base64.b64encode(private.sign(ts.encode() + TX_EVENT)).decode()
    assert not verify_telnyx(public, no_bar, ts, TX_EVENT)
    for broken in (signature[:-4], "", "%%%%", "A" * 1_000_000, signature + "AAAA"):
        assert verify_telnyx(public, broken, ts, TX_EVENT) is False
    for key in ("", public[:-4], "A" * 1_000_000, _p256()[1]):
        assert verify_telnyx(key, signature, ts, TX_EVENT) is False
    assert verify_telnyx(public, signature, "", TX_EVENT) is False
    assert verify_telnyx(public, signature, ts, TX_EVENT * 100_000) is False


# -- properties: never raise, never accept -----------------------------------------------------
texts = st.text(max_size=300)


@settings(max_examples=150, deadline=None)
@given(key=texts, signature=texts, timestamp=texts, payload=st.binary(max_size=500))
def test_asymmetric_verifiers_never_raise_never_accept(
    key: str, signature: str, timestamp: str, payload: bytes
) -> None:
    pytest.importorskip("cryptography")
    assert verify_sendgrid(key, signature, timestamp, payload) is False
    assert verify_sendgrid(SG_KEY, signature, timestamp, payload) is False
    assert verify_telnyx(key, signature, timestamp, payload) is False


@settings(max_examples=150, deadline=None)
@given(
    token=texts,
    url=st.one_of(texts, st.just(TW_URL), st.just(TW_CALLBACK)),
    params=st.dictionaries(texts, st.one_of(texts, st.lists(texts, max_size=3)), max_size=5),
    signature=texts,
    body=st.binary(max_size=300),
)
def test_twilio_never_raises_never_accepts(
    token: str, url: str, params: dict[str, Any], signature: str, body: bytes
) -> None:
    assert verify_twilio(token, url, params, signature) is False
    assert verify_twilio_json(token, url, body, signature) is False


@settings(max_examples=100, deadline=None)
@given(
    value=st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts, st.binary()),
    now=st.one_of(st.floats(), st.integers(), st.datetimes(), st.datetimes(timezones=st.just(UTC))),
)
def test_fresh_never_raises(value: Any, now: Any) -> None:
    assert fresh(value, now) in (True, False)
    assert fresh("1700000000", now, value) in (True, False)


# -- replay window -----------------------------------------------------------------------------
def test_fresh_window() -> None:
    now = datetime(2024, 1, 15, 20, 16, 7, tzinfo=UTC)
    stamp = int(now.timestamp())
    assert fresh(str(stamp), now)
    assert fresh(stamp - 300, now) and fresh(str(stamp + 300), now)
    assert not fresh(stamp - 301, now) and not fresh(str(stamp + 301), now)
    assert fresh(stamp - 30, now, tolerance_seconds=30) and not fresh(stamp - 31, now, 30)
    assert fresh(stamp, now.astimezone(timezone(timedelta(hours=5))))
    assert fresh(stamp, now.timestamp())
    assert not fresh(stamp, now.replace(tzinfo=None))  # naive clock: refused
    for bad in ("", "-1", " 1", "1.5", "1e9", "١٢٣", True, None, b"1"):
        assert not fresh(bad, now)  # type: ignore[arg-type]
    assert not fresh(stamp, now, tolerance_seconds=-1)
    assert not fresh(stamp, float("nan")) and not fresh(stamp, now, float("inf"))


# -- the extra ---------------------------------------------------------------------------------
def test_missing_cryptography_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in sys.modules if n == "cryptography" or n.startswith("cryptography.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "cryptography", None)
    with pytest.raises(ImportError, match=r"pip install 'campaignkit\[receipts\]'") as caught:
        verify_sendgrid(SG_KEY, SG_SIGNATURE, SG_TIMESTAMP, SG_PAYLOAD)
    assert isinstance(caught.value, ReceiptsDependencyError)
    with pytest.raises(ReceiptsDependencyError):
        verify_telnyx("", "", "", b"")
    # Twilio needs only the standard library.
    assert verify_twilio(TW_TOKEN, TW_URL, TW_PARAMS, "RSOYDt4T1cUTdK1PDd93/VVr8B8=")
