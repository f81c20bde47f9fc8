"""Receipts under attack and in disorder: forged, stale, replayed, huge, malformed and
badly encoded requests are refused and record nothing, the handler never raises, no
secret reaches a log; and the ledger ends in the same state whatever the order."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import io
import json
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from campaignkit import Channel, ReceiptsConfig, ReceiptStatus
from campaignkit._ledger import open_receipt_book
from campaignkit._models import Secret
from campaignkit.cli import main
from campaignkit.receipts import (
    ReceiptEvent,
    ReceiptParseError,
    ReceiptReceiver,
    ReceiptRequest,
    parse_expo_receipts,
    parse_sendgrid,
    parse_telnyx,
    parse_twilio,
    wsgi_app,
)
from campaignkit.receipts._routes import build_route
from conftest import Backend

URL = "https://hooks.example.com/ck"
TOKEN = "twilio-auth-token-0123456789abcdef"
SG_KEY = ec.generate_private_key(ec.SECP256R1())
SG_PUBLIC = base64.b64encode(
    SG_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
TX_KEY = ed25519.Ed25519PrivateKey.generate()
TX_PUBLIC = base64.b64encode(
    TX_KEY.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
).decode()
NOW = datetime(2026, 12, 6, tzinfo=UTC)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def receiver_for(book: Any, *, verify: bool = True) -> ReceiptReceiver:
    config = ReceiptsConfig(public_url=URL, max_body_bytes=4096)
    channels = [
        Channel(name="email", provider="sendgrid", receipts_key=SG_PUBLIC),
        Channel(name="sms", provider="twilio"),
        Channel(name="text", provider="telnyx", receipts_key=TX_PUBLIC),
    ]
    routes = [build_route(c, config, {}, verify=verify, auth_token=Secret(TOKEN)) for c in channels]
    return ReceiptReceiver([r for r in routes if r is not None], book, config, polled=["push"])


@pytest.fixture
def book(tmp_path: Path) -> Any:
    with open_receipt_book(tmp_path / "ledger.db") as opened:
        yield opened


def signed_sendgrid(body: bytes, stamp: int | None = None) -> dict[str, str]:
    at = str(int(time.time()) if stamp is None else stamp)
    signature = SG_KEY.sign(at.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": at,
    }


def signed_telnyx(body: bytes, stamp: int | None = None) -> dict[str, str]:
    at = str(int(time.time()) if stamp is None else stamp)
    signature = TX_KEY.sign(at.encode() + b"|" + body)
    return {
        "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
        "telnyx-timestamp": at,
    }


def signed_twilio(params: dict[str, str], url: str = URL + "/receipts/sms") -> dict[str, str]:
    signed = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(TOKEN.encode(), signed.encode(), hashlib.sha1).digest()
    return {"X-Twilio-Signature": base64.b64encode(digest).decode()}


def nothing_recorded(book: Any) -> bool:
    return book.counts() == {}


# -- every parser: anything in, events or ReceiptParseError out ------------------------
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | json_values.map(lambda v: json.dumps(v).encode()))
def test_body_parsers_never_raise_anything_else(body: bytes) -> None:
    for parse in (parse_sendgrid, parse_telnyx):
        try:
            parsed = parse(body)
        except ReceiptParseError:
            continue
        assert all(isinstance(e, ReceiptEvent) for e in parsed.events)


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_expo_parser_never_raises_anything_else(answer: Any) -> None:
    with contextlib.suppress(ReceiptParseError):
        parse_expo_receipts(answer, NOW)


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            [
                "MessageSid",
                "SmsSid",
                "MessageStatus",
                "SmsStatus",
                "ErrorCode",
                "To",
                "From",
                "Body",
                "OptOutType",
            ]
        )
        | st.text(max_size=8),
        st.text(max_size=40) | st.lists(st.text(max_size=5), max_size=3),
        max_size=8,
    )
)
def test_twilio_parser_never_raises_anything_else(params: dict[str, Any]) -> None:
    with contextlib.suppress(ReceiptParseError):
        parse_twilio(params, NOW)


# -- the handler: refused and malformed requests record nothing, never a 500 -----------
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    channel=st.sampled_from(["email", "sms", "text", "push", "nope", "../etc"]),
    method=st.sampled_from(["POST", "GET", "PUT"]),
    headers=st.dictionaries(
        st.sampled_from(
            [
                "X-Twilio-Email-Event-Webhook-Signature",
                "X-Twilio-Email-Event-Webhook-Timestamp",
                "X-Twilio-Signature",
                "telnyx-signature-ed25519",
                "telnyx-timestamp",
                "Content-Type",
            ]
        )
        | st.text(max_size=10),
        st.text(max_size=80),
        max_size=5,
    ),
    body=st.binary(max_size=600) | json_values.map(lambda v: json.dumps(v).encode()),
)
def test_forged_requests_are_refused_and_record_nothing(
    book: Any, channel: str, method: str, headers: dict[str, str], body: bytes
) -> None:
    rx = receiver_for(book)
    response = rx.handle(ReceiptRequest(method, f"/receipts/{channel}", headers, body))
    assert response.status in (401, 404, 405, 413), response
    assert nothing_recorded(book)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(body=st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()))
def test_signed_garbage_is_answered_400_or_200_never_500(book: Any, body: bytes) -> None:
    """Correctly signed bodies that are not the provider's shape: 400 and nothing
    recorded (or, the rare well-formed one, 200)."""
    rx = receiver_for(book)
    for request in (
        ReceiptRequest("POST", "/receipts/email", signed_sendgrid(body), body),
        ReceiptRequest("POST", "/receipts/text", signed_telnyx(body), body),
    ):
        before = book.counts()
        response = rx.handle(request)
        assert response.status in (200, 400), response
        if response.status == 400:
            assert book.counts() == before


def test_unverified_receiver_still_refuses_malformed_bodies(book: Any, caplog: Any) -> None:
    with caplog.at_level(logging.WARNING, "campaignkit.receipts"):
        rx = receiver_for(book, verify=False)
    assert "NOT VERIFIED" in caplog.text
    for body in (
        b"\xff\xfe\x00",
        b"[1, 2",
        b'{"data": []}',
        '[{"email": "\u00e9"}]'.encode("latin-1"),
    ):
        for channel in ("email", "text"):
            assert rx.handle(ReceiptRequest("POST", f"/receipts/{channel}", {}, body)).status == 400
    bad_form = b"To=%E9&MessageSid=SM1"
    assert rx.handle(ReceiptRequest("POST", "/receipts/sms", {}, bad_form)).status == 400
    assert nothing_recorded(book)


def test_stale_future_and_replayed_requests(book: Any) -> None:
    rx = receiver_for(book)
    event = [
        {
            "email": "a@example.com",
            "timestamp": 1,
            "event": "delivered",
            "sg_event_id": "e1",
            "sg_message_id": "m1.x",
        }
    ]
    body = json.dumps(event).encode()
    for stamp in (int(time.time()) - 301, int(time.time()) + 301, -5):
        request = ReceiptRequest("POST", "/receipts/email", signed_sendgrid(body, stamp), body)
        assert rx.handle(request).status == 401
    telnyx = json.dumps(
        {
            "data": {
                "event_type": "message.finalized",
                "id": "t1",
                "occurred_at": "2026-12-06T00:00:00Z",
                "payload": {},
            }
        }
    ).encode()
    old = ReceiptRequest(
        "POST", "/receipts/text", signed_telnyx(telnyx, int(time.time()) - 999), telnyx
    )
    assert rx.handle(old).status == 401
    assert nothing_recorded(book)
    fresh = ReceiptRequest("POST", "/receipts/email", signed_sendgrid(body), body)
    assert rx.handle(fresh).status == 200
    assert rx.handle(fresh).status == 200  # a replay inside the window: applied once
    assert book.counts() == {"unmatched": 1}
    assert (rx.stats().recorded, rx.stats().duplicates) == (1, 1)
    # Twilio signs the URL: the same params posted to another route do not verify.
    params = {"MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered"}
    moved = ReceiptRequest(
        "POST",
        "/receipts/sms",
        signed_twilio(params, URL + "/receipts/other"),
        "&".join(f"{k}={v}" for k, v in params.items()).encode(),
    )
    assert rx.handle(moved).status == 401


def test_size_limit_is_enforced_before_reading(book: Any) -> None:
    rx = receiver_for(book)
    app = wsgi_app(rx)
    statuses: list[str] = []

    class Endless(io.RawIOBase):
        def read(self, n: int = -1) -> bytes:
            raise AssertionError("a body over the limit must not be read")

    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/receipts/email",
        "CONTENT_LENGTH": str(10**10),
        "wsgi.input": Endless(),
    }
    body = b"".join(app(environ, lambda s, h: statuses.append(s)))
    assert statuses == ["413 Content Too Large"] and b"too large" in body
    chunked = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/receipts/email",
        "wsgi.input": io.BytesIO(b"x" * 5000),
        "wsgi.input_terminated": True,
    }
    b"".join(app(chunked, lambda s, h: statuses.append(s)))
    assert statuses[-1].startswith("413")
    assert rx.handle(ReceiptRequest("POST", "/receipts/email", {}, b"x" * 4097)).status == 413
    assert nothing_recorded(book)


def test_no_secret_reaches_logs_or_reprs(book: Any, caplog: Any) -> None:
    rx = receiver_for(book)
    params = {"MessageSid": "SM" + "b" * 32, "MessageStatus": "delivered", "To": "+14155550100"}
    form = "&".join(f"{k}={v}" for k, v in params.items()).encode()
    good = signed_twilio(params)
    forged = {"X-Twilio-Signature": base64.b64encode(b"f" * 20).decode()}
    with caplog.at_level(logging.DEBUG):
        rx.handle(ReceiptRequest("POST", "/receipts/sms", good, form))
        rx.handle(ReceiptRequest("POST", "/receipts/sms", forged, form))
        body = b'[{"email": "x@example.com"}]'
        rx.handle(ReceiptRequest("POST", "/receipts/email", signed_sendgrid(body), body))
    shown = caplog.text + repr(rx) + repr(rx.routes) + repr(ReceiptRequest("POST", "/", good, form))
    for secret in (TOKEN, good["X-Twilio-Signature"], forged["X-Twilio-Signature"], "+14155550100"):
        assert secret not in shown


def test_insecure_serve_refuses_to_listen_beyond_loopback(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    (tmp_path / "s.csv").write_text("id,phone\n1,+14155550100\n", encoding="utf-8")
    config.write_text(
        '[pipeline]\nname = "c"\n[source]\npath = "s.csv"\n[channels.sms]\nprovider = "twilio"\n'
        '[channels.sms.options]\nfrom = "+15005550006"\naccount_sid = "AC' + "0" * 32 + '"\n'
        '[receipts]\npublic_url = "https://hooks.example.com"\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        main,
        ["receipts", "serve", str(config), "--host", "0.0.0.0", "--insecure-skip-verification"],
    )
    assert result.exit_code == 2 and "local tests" in result.output
    verified = CliRunner().invoke(main, ["receipts", "serve", str(config), "--port", "1"])
    assert verified.exit_code == 2 and "SMS_API_TOKEN" in verified.output  # no token: no route


# -- the ledger: any order, any duplicates, the same end -------------------------------
def seed_deliveries(backend: Backend, n: int) -> None:
    backend.sql(
        "INSERT INTO runs (id, run_id, pipeline, logical_date, status, fingerprint, created_at) "
        "VALUES (1, 'r1', 'p', '2026-01-01', 'succeeded', 'f', '2026-01-01')"
    )
    backend.sql("INSERT INTO channels (run, channel, code) VALUES (1, 'sms', 0)")
    for seq in range(n):
        backend.sql(
            "INSERT INTO deliveries (run, channel, seq, state, provider_message_id, address) "
            "VALUES (1, 0, ?, 'sent', ?, ?)",
            (seq, f"SM{seq}", f"+1415555010{seq}"),
        )


events_strategy = st.lists(
    st.tuples(st.integers(0, 2), st.sampled_from(list(ReceiptStatus)), st.integers(0, 3)),
    min_size=1,
    max_size=12,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(events=events_strategy, data=st.data())
def test_any_order_and_duplicates_end_in_the_same_state(
    backend: Backend, events: list[tuple[int, ReceiptStatus, int]], data: st.DataObject
) -> None:
    store = backend.fresh()
    with open_receipt_book(store.location, schema=store.schema) as book:
        seed_deliveries(store, 3)
        made = [
            ReceiptEvent(
                provider="twilio",
                key=f"k{i}",
                status=status,
                occurred_at=NOW + timedelta(seconds=at),
                message_id=f"SM{seq}",
                reference=f"{seq}.r1",
                address=f"+1415555010{seq}",
                kind="phone",
            )
            for i, (seq, status, at) in enumerate(events)
        ]
        shuffled = data.draw(st.permutations(made + made[: len(made) // 2]))
        for start in range(0, len(shuffled), 3):
            book.record("sms", shuffled[start : start + 3])
        ranks = {s.value: i for i, s in enumerate(ReceiptStatus)}
        expected: dict[int, str] = {}
        for seq in range(3):
            mine = [e for e in made if e.message_id == f"SM{seq}"]
            if mine:
                best = max(mine, key=lambda e: (ranks[e.status.value], e.occurred_at, e.key))
                expected[seq] = best.status.value
        got = dict(store.sql("SELECT seq, receipt FROM deliveries WHERE receipt IS NOT NULL"))
        assert got == expected
        assert store.sql("SELECT COUNT(*) FROM receipts")[0][0] == len(made)
        suppressing = {
            e.message_id
            for e in made
            if e.status.value in ("bounced", "unsubscribed", "complained")
        }
        assert store.sql("SELECT COUNT(*) FROM suppressions")[0][0] == len(suppressing)


def test_dead_letters_are_kept_and_matched_later(backend: Backend) -> None:
    store = backend.fresh()
    with open_receipt_book(store.location, schema=store.schema) as book:
        early = ReceiptEvent(
            provider="twilio",
            key="early",
            status="bounced",
            occurred_at=NOW,
            message_id="SM0",
            reference="0.r1",
            address="+14155550100",
            kind="phone",
        )
        tally = book.record("sms", [early])
        assert (tally.recorded, tally.unmatched) == (1, 1)
        assert book.unmatched_count() == 1
        assert [r.key for r in book.latest(unmatched=True)] == ["early"]
        seed_deliveries(store, 1)
        again = book.rematch()
        assert (again.matched, again.suppressed) == (1, 1)
        assert book.unmatched_count() == 0
        assert store.sql("SELECT receipt FROM deliveries") == [("bounced",)]
        assert store.sql("SELECT reason, source FROM suppressions") == [
            ("bounced", "receipt early")
        ]
        # On another channel's route, the same message id is not this delivery.
        other = ReceiptEvent(
            provider="twilio",
            key="other",
            status="delivered",
            occurred_at=NOW,
            message_id="SM0",
            reference="0.r1",
            kind="phone",
        )
        assert book.record("email", [other]).unmatched == 1
        # A reference whose delivery has another message id proves nothing.
        for n, (ref, mid) in enumerate(
            [
                ("0.r1", "SM9"),
                ("1.r1", "SM0"),
                ("0.r2", "SM0"),
                ("x.r1", "SM0"),
                ("0", "SM0"),
                (None, "SM0"),
            ]
        ):
            forged = ReceiptEvent(
                provider="twilio",
                key=f"forged{n}",
                status="complained",
                occurred_at=NOW,
                message_id=mid,
                reference=ref,
                kind="phone",
            )
            assert book.record("sms", [forged]).unmatched == 1
        assert store.sql("SELECT receipt FROM deliveries") == [("bounced",)]
