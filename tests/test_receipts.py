"""Delivery receipts end to end: a campaign sent through the sandbox, then the providers'
signed receipts posted to the receiver (WSGI, as a framework mounts it), recorded in
the ledger, shown in the counts, suppressing, and the next run skipping those people."""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import attrs
import pytest

pytest.importorskip("cryptography")
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from campaignkit import Channel, Pipeline, PipelineConfig, SourceConfig, Template
from campaignkit._config import ReceiptsConfig
from campaignkit.receipts import (
    ReceiptRequest,
    receiver,
    wsgi_app,
)
from campaignkit.testing.sandbox import Sandbox

PUBLIC_URL = "https://hooks.example.com/ck"
ROWS = [
    ("c1", "ann@example.com", "+14155550101", "ExponentPushToken[ann]"),
    ("c2", "bob@example.com", "+14155550102", "ExponentPushToken[bob]"),
    ("c3", "cid@example.com", "+14155550103", "ExponentPushToken[cid]"),
    ("c4", "dee@example.com", "+14155550104", "ExponentPushToken[dee]"),
]


@attrs.frozen
class Keys:
    sendgrid: ec.EllipticCurvePrivateKey
    telnyx: ed25519.Ed25519PrivateKey

    @property
    def sendgrid_public(self) -> str:
        der = self.sendgrid.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return base64.b64encode(der).decode()

    @property
    def telnyx_public(self) -> str:
        raw = self.telnyx.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(ec.generate_private_key(ec.SECP256R1()), ed25519.Ed25519PrivateKey.generate())


def campaign(tmp_path: Path, keys: Keys, *, sms: str = "twilio") -> PipelineConfig:
    seg = tmp_path / "seg.csv"
    lines = ["id,email,phone,push_token,first_name"]
    lines += [f"{i},{e},{p},{t},N{i}" for i, e, p, t in ROWS]
    seg.write_text("\n".join(lines) + "\n", encoding="utf-8")
    channels = (
        Channel(
            name="email",
            provider="sendgrid",
            template=Template(subject="Hi", body="Text", html="<p>Hi</p>"),
            require_consent=False,
            options={"from_email": "news@example.com"},
            receipts_key=keys.sendgrid_public,
        ),
        Channel(
            name="sms",
            provider=sms,
            template=Template(body="Hi {{ first_name }}"),
            require_consent=False,
            receipts_key=keys.telnyx_public,
        ),
        Channel(
            name="push",
            provider="expo",
            template=Template(title="Sale", body="Hi"),
            require_consent=False,
        ),
    )
    return PipelineConfig(
        name="receipted",
        source=SourceConfig("csv", {"path": str(seg)}),
        channels=channels,
        receipts=ReceiptsConfig(public_url=PUBLIC_URL),
        base_dir=tmp_path,
    )


# -- signing as the providers do -------------------------------------------------------
def sendgrid_request(
    keys: Keys, events: list[dict[str, Any]], *, at: int | None = None
) -> ReceiptRequest:
    body = json.dumps(events).encode()
    stamp = str(int(time.time()) if at is None else at)
    signature = keys.sendgrid.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        "Content-Type": "application/json",
    }
    return ReceiptRequest("POST", "/receipts/email", headers, body)


def twilio_request(
    token: str, params: dict[str, str], *, channel: str = "sms", ref: str = ""
) -> ReceiptRequest:
    query = urlencode({"ck": ref}) if ref else ""
    url = f"{PUBLIC_URL}/receipts/{channel}" + (f"?{query}" if query else "")
    signed = url + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(token.encode(), signed.encode(), hashlib.sha1).digest()
    headers = {
        "X-Twilio-Signature": base64.b64encode(digest).decode(),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    body = urlencode(params).encode()
    return ReceiptRequest("POST", f"/receipts/{channel}", headers, body, query)


def telnyx_request(keys: Keys, data: dict[str, Any], *, at: int | None = None) -> ReceiptRequest:
    body = json.dumps({"data": data, "meta": {"attempt": 1}}).encode()
    stamp = str(int(time.time()) if at is None else at)
    signature = keys.telnyx.sign(stamp.encode() + b"|" + body)
    headers = {
        "telnyx-signature-ed25519": base64.b64encode(signature).decode(),
        "telnyx-timestamp": stamp,
    }
    return ReceiptRequest("POST", "/receipts/sms", headers, body)


def sendgrid_event(
    event: str, email: str, sent_as: tuple[str, str], n: int, **extra: Any
) -> dict[str, Any]:
    message_id, ref = sent_as
    return {
        "campaignkit_ref": ref,
        "email": email,
        "timestamp": 1_700_000_000 + n,
        "event": event,
        "sg_event_id": f"evt-{event}-{email}-{n}",
        "sg_message_id": f"{message_id}.filterdrecv-1-2-3",
        **extra,
    }


def sent(pipeline: Pipeline, channel: str) -> dict[str, tuple[str, str]]:
    """address -> (provider message id, reference) of the channel's sent deliveries
    (last run): what the provider's receipts carry back."""
    ledger = pipeline.ledger()
    try:
        run = ledger.list_runs(pipeline.name, limit=1)[0]
        seqs = {r.id: seq for seq, r in ledger.snapshot(run.run_id)}
        return {
            d.address: (d.provider_message_id, f"{seqs[d.recipient_id]}.{run.run_id}")
            for d in ledger.deliveries(run.run_id, channel)
            if d.provider_message_id and d.address
        }
    finally:
        ledger.close()


def counts(pipeline: Pipeline, channel: str) -> Any:
    ledger = pipeline.ledger()
    try:
        run = ledger.list_runs(pipeline.name, limit=1)[0]
        return ledger.counts(run.run_id, channel)
    finally:
        ledger.close()


@pytest.fixture
def sandbox() -> Any:
    with Sandbox(lazy=True) as box:
        yield box


def sms_token(pipeline: Pipeline) -> str:
    return pipeline.environ["SMS_API_TOKEN"]


# -- the tests -------------------------------------------------------------------------
def test_receipts_update_counts_suppress_and_the_next_run_skips(
    tmp_path: Path, keys: Keys, sandbox: Sandbox
) -> None:
    pipeline = sandbox.pipeline(campaign(tmp_path, keys))
    pipeline.run()
    emails = sent(pipeline, "email")
    phones = sent(pipeline, "sms")
    assert len(emails) == len(phones) == 4
    rx = receiver(pipeline)
    app = wsgi_app(rx)

    batch = [
        sendgrid_event("processed", "ann@example.com", emails["ann@example.com"], 0),
        sendgrid_event("delivered", "ann@example.com", emails["ann@example.com"], 1),
        sendgrid_event(
            "bounce",
            "bob@example.com",
            emails["bob@example.com"],
            2,
            type="bounce",
            status="5.1.1",
            reason="550 5.1.1 user unknown",
        ),
        sendgrid_event("delivered", "cid@example.com", emails["cid@example.com"], 3),
        sendgrid_event("spamreport", "cid@example.com", emails["cid@example.com"], 4),
        sendgrid_event("deferred", "dee@example.com", emails["dee@example.com"], 5),
    ]
    status, body = call_wsgi(app, sendgrid_request(keys, batch))
    assert status.startswith("200"), body
    token = sms_token(pipeline)
    for number, state, code in [
        ("+14155550101", "delivered", ""),
        ("+14155550102", "undelivered", "30005"),
        ("+14155550103", "undelivered", "30003"),
    ]:
        sid, ref = phones[number]
        params = {
            "MessageSid": sid,
            "MessageStatus": state,
            "To": number,
            "AccountSid": "AC" + "0" * 32,
            "ApiVersion": "2010-04-01",
        }
        if code:
            params["ErrorCode"] = code
        assert call_wsgi(app, twilio_request(token, params, ref=ref))[0].startswith("200")
    stop = {
        "MessageSid": "SM" + "f" * 32,
        "From": "+14155550104",
        "To": "+15005550006",
        "Body": " stop ",
        "SmsStatus": "received",
        "AccountSid": "AC" + "0" * 32,
    }
    status, body = call_wsgi(app, twilio_request(token, stop))
    assert status.startswith("200") and b"<Response>" in body

    email = counts(pipeline, "email")
    assert dict(email.receipts) == {"delivered": 1, "bounced": 1, "complained": 1, "undelivered": 1}
    assert email.awaiting_receipt == 0
    sms = counts(pipeline, "sms")
    assert dict(sms.receipts) == {"delivered": 1, "bounced": 1, "undelivered": 1}
    stats = rx.stats()
    assert (stats.refused, stats.invalid, stats.failed, stats.ignored) == (0, 0, 0, 1)

    ledger = pipeline.ledger()
    try:
        listed = {(k, a): (r, s) for k, a, r, s in ledger.suppressions()}
    finally:
        ledger.close()
    assert listed[("email", "bob@example.com")][0] == "bounced"
    assert listed[("email", "cid@example.com")][0] == "complained"
    assert listed[("phone", "+14155550102")][0] == "bounced"
    assert listed[("phone", "+14155550104")] == (
        "unsubscribed",
        "receipt twilio:SM" + "f" * 32 + ":inbound",
    )
    assert ("email", "dee@example.com") not in listed  # a soft bounce does not suppress
    assert ("phone", "+14155550103") not in listed

    again = sandbox.pipeline(campaign(tmp_path, keys))
    report = again.run(logical_date=datetime(2031, 1, 2, tzinfo=UTC))
    email_again, sms_again = counts(again, "email"), counts(again, "sms")
    assert email_again.reasons.get("suppressed") == 2
    assert sms_again.reasons.get("suppressed") == 2
    assert report is not None


def call_wsgi(app: Any, request: ReceiptRequest) -> tuple[str, bytes]:
    environ = {
        "REQUEST_METHOD": request.method,
        "PATH_INFO": request.path,
        "QUERY_STRING": request.query,
        "CONTENT_LENGTH": str(len(request.body)),
        "wsgi.input": io.BytesIO(request.body),
        **{"HTTP_" + k.upper().replace("-", "_"): v for k, v in request.headers.items()},
    }
    seen: list[str] = []
    body = b"".join(app(environ, lambda status, headers: seen.append(status)))
    return seen[0], body


def test_the_sandbox_sends_signed_receipts_end_to_end(tmp_path: Path, keys: Keys) -> None:
    from campaignkit.receipts import poll_receipts
    from campaignkit.testing.sandbox import ReceiptSimulation

    simulation = ReceiptSimulation.from_ratios("bounced=0.5", seed=3)
    with Sandbox(lazy=True, receipts=simulation) as box:
        box.open_receipts_endpoint()
        config = campaign(tmp_path, keys)
        pipeline = box.pipeline(config)
        rx = box.receive_receipts(pipeline)
        pipeline.run()
        assert box.drain_receipts(20) == 0
        # A callback may outrun the send's own write of its message id: kept, then
        # matched again (as `receipts serve` does every minute and a --sandbox run does).
        rx.book.rematch()
        polled = poll_receipts(pipeline)
        assert [(r.channel, r.error) for r in polled] == [("sms", None), ("push", None)]
        stats = rx.stats()
        assert stats.refused == stats.invalid == stats.failed == 0
        for channel in ("email", "sms", "push"):
            got = counts(pipeline, channel)
            assert got["sent"] == 4
            assert sum(got.receipts.values()) == 4, (channel, got.receipts)
        assert box.receipt_stats().given_up == 0
        # Expo's DeviceNotRegistered (a bounce) puts the token on the suppression list.
        push = counts(pipeline, "push")
        ledger = pipeline.ledger()
        try:
            tokens = [a for k, a, r, s in ledger.suppressions("push_token") if r == "bounced"]
        finally:
            ledger.close()
        assert len(tokens) == push.receipts.get("bounced", 0) > 0


def test_a_lost_twilio_callback_is_recovered_by_polling(tmp_path: Path, keys: Keys) -> None:
    """Twilio does not retry a status callback by default: receipts poll fetches the
    messages that have none and records what the callback would have said, once."""
    from campaignkit.receipts import poll_receipts
    from campaignkit.testing.sandbox import ReceiptSimulation

    with Sandbox(lazy=True, receipts=ReceiptSimulation(seed=5, bounced=0.5, delivered=0.4)) as box:
        config = campaign(tmp_path, keys)  # its callbacks go to hooks.example.com: lost
        config = attrs.evolve(
            config,
            channels=tuple(c for c in config.channels if c.name == "sms"),
            receipts=ReceiptsConfig(public_url=PUBLIC_URL, poll_after_minutes=0),
        )
        pipeline = box.pipeline(config)
        pipeline.run()
        assert counts(pipeline, "sms").receipts == {}
        [first] = poll_receipts(pipeline)
        assert (first.channel, first.asked, first.error) == ("sms", 4, None)
        got = counts(pipeline, "sms")
        assert sum(got.receipts.values()) == 4 and got.awaiting_receipt == 0
        assert first.tally.recorded == 4
        [again] = poll_receipts(pipeline)  # nothing awaits a receipt any more
        assert again.asked == 0
        sms = {m["to"]: m for m in box.servers["twilio"].messages}
        bounced = {n for n, m in sms.items() if m.get("final_error") == "30005"}
        ledger = pipeline.ledger()
        try:
            suppressed = {a for k, a, _, _ in ledger.suppressions("phone")}
        finally:
            ledger.close()
        assert suppressed == bounced and bounced


def test_how_receipts_are_verified_is_not_part_of_the_fingerprint(
    tmp_path: Path, keys: Keys
) -> None:
    """A run's fingerprint digests what decides what is sent: the receipts' keys do not
    (so a campaign that starts taking receipts resumes its runs without a warning, and
    the fingerprints of runs made before receipts existed stay the same)."""
    config = campaign(tmp_path, keys)
    plain = attrs.evolve(
        config,
        channels=tuple(attrs.evolve(c, receipts_key=None) for c in config.channels),
    )
    other = attrs.evolve(
        config,
        channels=tuple(attrs.evolve(c, receipts_key_env="OTHER") for c in config.channels),
    )
    fingerprints = {Pipeline.from_config(c).fingerprint() for c in (config, plain, other)}
    assert len(fingerprints) == 1
