"""The sandbox fakes' delivery receipts, as a receiver gets them: signed SendGrid event
batches, Twilio status callbacks and Telnyx webhooks posted to a loopback receiver,
and Expo's getReceipts."""

from __future__ import annotations

import base64
import collections
import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import attrs
import pytest
import requests
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from campaignkit import Channel, PipelineConfig, RunStatus, SourceConfig, Template
from campaignkit.cli import main
from campaignkit.receipts import verify_sendgrid, verify_telnyx, verify_twilio
from campaignkit.testing.sandbox import ReceiptOutcome, ReceiptSimulation, Sandbox

TOKEN = "sandbox-token"


@attrs.define
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in parse_qs(self.body.decode(), keep_blank_values=True).items()}


class Receiver:
    """A loopback HTTP receiver recording every POST; ``statuses`` scripts answers."""

    def __init__(self) -> None:
        self.calls: list[Received] = []
        self.statuses: collections.deque[int] = collections.deque()
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                return

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with receiver.lock:
                    status = receiver.statuses.popleft() if receiver.statuses else 200
                    if status < 300:
                        headers = {k.lower(): v for k, v in self.headers.items()}
                        receiver.calls.append(Received(self.path, headers, body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def at(self, path: str) -> list[Received]:
        return [c for c in self.calls if c.path == path]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def sendgrid_events(calls: list[Received]) -> list[dict[str, Any]]:
    return [event for call in calls for event in call.json()]


def send_email(sandbox: Sandbox, addresses: list[str], **fields: Any) -> requests.Response:
    body = {
        "personalizations": [{"to": [{"email": a}]} for a in addresses],
        "from": {"email": "news@example.com"},
        "subject": "Hi",
        "content": [{"type": "text/plain", "value": "Hello"}],
        **fields,
    }
    return requests.post(
        sandbox.url("sendgrid") + "/v3/mail/send",
        json=body,
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )


def send_sms(sandbox: Sandbox, to: str, callback: str) -> dict[str, Any]:
    server = sandbox.servers["twilio"]
    reply = requests.post(
        f"{sandbox.url('twilio')}/2010-04-01/Accounts/{server.account_sid}/Messages.json",
        data={"To": to, "From": server.from_number, "Body": "Hi", "StatusCallback": callback},
        auth=(server.account_sid, TOKEN),
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    return dict(reply.json())


def send_telnyx(sandbox: Sandbox, to: str, webhook_url: str) -> dict[str, Any]:
    server = sandbox.servers["telnyx"]
    reply = requests.post(
        sandbox.url("telnyx") + "/v2/messages",
        json={"to": to, "from": server.from_number, "text": "Hi", "webhook_url": webhook_url},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=10,
    )
    assert reply.status_code == 200, reply.text
    return dict(reply.json()["data"])


# -- the simulation ----------------------------------------------------------------------
def only(**fields: Any) -> ReceiptSimulation:
    """A simulation whose ratios not given are 0 (delivered: what the others leave)."""
    ratios = dict.fromkeys(_NAMES[1:], 0.0)
    ratios["delivered"] = 0.0
    return ReceiptSimulation(**{**ratios, **fields})


_NAMES = ("delivered", "undelivered", "bounced", "complained", "unsubscribed", "stop")


@given(
    name=st.sampled_from(_NAMES),
    value=st.one_of(
        st.floats(max_value=-1e-9),
        st.floats(min_value=1.000001),
        st.just(float("nan")),
        st.booleans(),
        st.text(max_size=3),
        st.none(),
    ),
)
def test_a_ratio_outside_0_to_1_is_refused(name: str, value: Any) -> None:
    with pytest.raises(ValueError, match=name):
        ReceiptSimulation(**{name: value})


@given(st.lists(st.floats(0, 1), min_size=5, max_size=5).filter(lambda r: sum(r) > 1.000001))
def test_ratios_adding_up_to_more_than_1_are_refused(ratios: list[float]) -> None:
    with pytest.raises(ValueError, match="more than 1"):
        ReceiptSimulation(**dict(zip(_NAMES[:5], ratios, strict=True)))


@given(st.lists(st.floats(0, 0.2), min_size=5, max_size=5), st.integers(), st.text())
def test_valid_ratios_give_a_deterministic_outcome(
    ratios: list[float], seed: int, key: str
) -> None:
    simulation = ReceiptSimulation(**dict(zip(_NAMES[:5], ratios, strict=True)), seed=seed)
    assert simulation.outcome(key) is ReceiptSimulation(**attrs.asdict(simulation)).outcome(key)


def test_ratios_from_text() -> None:
    simulation = ReceiptSimulation.from_ratios("delivered=0.4, bounced=0.5,stop=0.1", seed=3)
    assert (simulation.delivered, simulation.bounced, simulation.stop) == (0.4, 0.5, 0.1)
    assert simulation.undelivered == simulation.complained == 0  # not named: 0
    assert simulation.seed == 3
    # delivered, not named, is what the others leave
    assert ReceiptSimulation.from_ratios("bounced=0.5,complained=0.1").delivered == 0.4
    assert ReceiptSimulation.from_ratios(" ", seed=2) == ReceiptSimulation(seed=2)
    with pytest.raises(ValueError, match="more than 1"):
        ReceiptSimulation.from_ratios("delivered=0.5,bounced=0.6")
    with pytest.raises(ValueError, match="not a number"):
        ReceiptSimulation.from_ratios("bounced=x")
    with pytest.raises(ValueError, match="NAME=RATIO"):
        ReceiptSimulation.from_ratios("lost=0.1")


# -- SendGrid ----------------------------------------------------------------------------
#: the events seed 7 gives user0..user199@example.com (182 delivered, 5 of them then
#: complaining; 6 deferred; 7 bounced): 0.9 / 0.03 / 0.04 / 0.02 / 0.01 roughly
EXPECTED_SEED_7 = {"delivered": 187, "deferred": 6, "bounce": 7, "spamreport": 5, "unsubscribe": 0}


def test_sendgrid_events_are_signed_batched_and_follow_the_ratios(receiver: Receiver) -> None:
    simulation = ReceiptSimulation(seed=7)
    addresses = [f"user{i}@example.com" for i in range(200)]
    with Sandbox(["sendgrid"], receipts=simulation) as sandbox:
        server = sandbox.servers["sendgrid"]
        server.event_webhook_url = receiver.url + "/receipts/email"
        for start in range(0, 200, 50):
            reply = send_email(
                sandbox,
                addresses[start : start + 50],
                categories=["spring"],
                custom_args={"campaign": "c7"},
            )
            assert reply.status_code == 202
        assert sandbox.drain_receipts(10) == 0
        stats = sandbox.receipt_stats()
        key = server.webhook_public_key
    assert stats.given_up == 0 and stats.answered == stats.scheduled == len(receiver.calls)
    for call in receiver.calls:
        assert call.headers["content-type"] == "application/json"
        signature = call.headers["x-twilio-email-event-webhook-signature"]
        timestamp = call.headers["x-twilio-email-event-webhook-timestamp"]
        assert verify_sendgrid(key, signature, timestamp, call.body)
        assert not verify_sendgrid(key, signature, timestamp, call.body + b" ")
    assert max(len(c.json()) for c in receiver.calls) > 1  # several recipients per POST
    events = sendgrid_events(receiver.calls)
    by_kind = collections.Counter(e["event"] for e in events)
    assert by_kind["processed"] == 200
    assert len({e["sg_event_id"] for e in events}) == len(events)
    counts = {kind: by_kind[kind] for kind in EXPECTED_SEED_7}
    expected = collections.Counter(simulation.outcome(a).value for a in addresses)
    assert counts["bounce"] == expected["bounced"]
    assert counts["deferred"] == expected["undelivered"]
    assert counts["spamreport"] == expected["complained"]
    assert counts["unsubscribe"] == expected["unsubscribed"]
    # complaints and unsubscribes are delivered first
    assert counts["delivered"] == 200 - counts["bounce"] - counts["deferred"]
    assert counts == EXPECTED_SEED_7
    assert 160 <= counts["delivered"] - counts["spamreport"] - counts["unsubscribe"] <= 196
    event = next(e for e in events if e["event"] == "bounce")
    assert (event["type"], event["status"]) == ("bounce", "5.1.1")
    assert event["category"] == "spring" and event["campaign"] == "c7"
    assert isinstance(event["timestamp"], int) and event["reason"]
    message_ids = {m["id"] for m in server.messages}
    for e in events:
        assert e["sg_message_id"].split(".filterdrecv-")[0] in message_ids
        assert e["smtp-id"].startswith("<")


def test_the_same_seed_gives_the_same_outcomes(receiver: Receiver) -> None:
    def run() -> dict[str, str]:
        receiver.calls.clear()
        with Sandbox(["sendgrid"], receipts=ReceiptSimulation(seed=11)) as sandbox:
            sandbox.servers["sendgrid"].event_webhook_url = receiver.url
            send_email(sandbox, [f"u{i}@example.com" for i in range(40)])
            assert sandbox.drain_receipts(10) == 0
        return {
            e["email"]: e["event"]
            for e in sendgrid_events(receiver.calls)
            if e["event"] != "processed"
        }

    assert run() == run()


def test_a_later_message_to_a_bounced_address_is_dropped(receiver: Receiver) -> None:
    with Sandbox(["sendgrid"], receipts=only(bounced=1)) as sandbox:
        sandbox.servers["sendgrid"].event_webhook_url = receiver.url
        send_email(sandbox, ["gone@example.com"])
        send_email(sandbox, ["gone@example.com"])
        assert sandbox.drain_receipts(10) == 0
    kinds = [e["event"] for e in sendgrid_events(receiver.calls)]
    assert sorted(kinds) == ["bounce", "dropped", "processed"]


def test_a_refused_batch_is_retried_identically(receiver: Receiver) -> None:
    receiver.statuses.extend([500, 503])
    simulation = only(retry_seconds=0.01)
    with Sandbox(["sendgrid"], receipts=simulation) as sandbox:
        server = sandbox.servers["sendgrid"]
        server.event_webhook_url = receiver.url
        send_email(sandbox, ["a@example.com", "b@example.com"])
        assert sandbox.drain_receipts(10) == 0
        stats = sandbox.receipt_stats()
        key = server.webhook_public_key
    assert stats.retried >= 2 and stats.sent == stats.answered + 2 and stats.given_up == 0
    events = sendgrid_events(receiver.calls)
    assert sorted(e["event"] for e in events) == ["delivered"] * 2 + ["processed"] * 2
    for call in receiver.calls:
        signature = call.headers["x-twilio-email-event-webhook-signature"]
        timestamp = call.headers["x-twilio-email-event-webhook-timestamp"]
        assert verify_sendgrid(key, signature, timestamp, call.body)


def test_a_callback_never_answered_is_given_up(receiver: Receiver) -> None:
    receiver.statuses.extend([500] * 10)
    simulation = only(retries=2, retry_seconds=0.01)
    with Sandbox(["sendgrid"], receipts=simulation) as sandbox:
        sandbox.servers["sendgrid"].event_webhook_url = receiver.url
        send_email(sandbox, ["a@example.com"])
        assert sandbox.drain_receipts(10) == 0
        stats = sandbox.receipt_stats()
    assert stats.given_up == stats.scheduled == 2  # processed, delivered
    assert stats.sent == 6 and stats.retried == 4 and stats.answered == 0


def test_only_loopback_urls_are_called(receiver: Receiver) -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        Sandbox(["sendgrid"], receipts=ReceiptSimulation(), receipts_url="http://example.com")
    with Sandbox(["sendgrid"], receipts=ReceiptSimulation()) as sandbox:
        sandbox.servers["sendgrid"].event_webhook_url = "http://192.0.2.1:9/receipts"
        send_email(sandbox, ["a@example.com"])
        assert sandbox.drain_receipts(5) == 0
        assert sandbox.receipt_stats().given_up == sandbox.receipt_stats().scheduled == 2
        assert sandbox.receipt_stats().sent == 0


def test_drain_waits_for_the_delay_and_stop_ends_the_thread(receiver: Receiver) -> None:
    simulation = ReceiptSimulation(delay_seconds=0.3)
    sandbox = Sandbox(["sendgrid"], receipts=simulation).start()
    try:
        sandbox.servers["sendgrid"].event_webhook_url = receiver.url
        send_email(sandbox, ["a@example.com"])
        assert sandbox.drain_receipts(0) >= 1  # the outcome waits for its delay
        assert sandbox.drain_receipts(10) == 0
        assert len(sendgrid_events(receiver.calls)) >= 2
    finally:
        sandbox.stop()
    assert not any(t.name == "sandbox-receipts" for t in threading.enumerate())


def test_receipts_off_send_nothing(receiver: Receiver) -> None:
    with Sandbox(["sendgrid"]) as sandbox:
        sandbox.servers["sendgrid"].event_webhook_url = receiver.url
        assert send_email(sandbox, ["a@example.com"]).status_code == 202
        assert sandbox.drain_receipts(1) == 0
        assert sandbox.receipt_stats().scheduled == 0
    assert receiver.calls == []


# -- Twilio ------------------------------------------------------------------------------
def test_twilio_status_callbacks_are_signed(receiver: Receiver) -> None:
    simulation = only(delivered=0.5, undelivered=0.25, bounced=0.25, seed=3)
    callback = receiver.url + "/receipts/sms?x=1"
    numbers = [f"+1415555{i:04d}" for i in range(40)]
    with Sandbox(["twilio"], receipts=simulation) as sandbox:
        sids = {send_sms(sandbox, n, callback)["sid"]: n for n in numbers}
        assert sandbox.drain_receipts(10) == 0
        account = sandbox.servers["twilio"].account_sid
    assert len(receiver.calls) == 80
    for call in receiver.calls:
        params = call.form()
        assert verify_twilio(TOKEN, callback, params, call.headers["x-twilio-signature"])
        assert not verify_twilio("other", callback, params, call.headers["x-twilio-signature"])
        assert params["AccountSid"] == account and params["ApiVersion"] == "2010-04-01"
        assert (
            params["SmsSid"] == params["MessageSid"] and sids[params["MessageSid"]] == params["To"]
        )
        assert params["MessageStatus"] == params["SmsStatus"]
    finals = [c.form() for c in receiver.calls if c.form()["MessageStatus"] != "sent"]
    codes = collections.Counter(p.get("ErrorCode", p["MessageStatus"]) for p in finals)
    expected = collections.Counter(simulation.outcome(n) for n in numbers)
    assert codes["30003"] == expected[ReceiptOutcome.UNDELIVERED]
    assert codes["30005"] == expected[ReceiptOutcome.BOUNCED]
    assert codes["delivered"] == expected[ReceiptOutcome.DELIVERED]
    assert all(p["MessageStatus"] == "undelivered" for p in finals if "ErrorCode" in p)


def test_twilio_stop_reply_and_retry_of_the_same_params(receiver: Receiver) -> None:
    receiver.statuses.append(500)
    simulation = only(stop=1.0, retry_seconds=0.01)
    callback = receiver.url + "/receipts/sms"
    with Sandbox(["twilio"], receipts=simulation) as sandbox:
        sent = send_sms(sandbox, "+14155550100", callback)
        assert sandbox.drain_receipts(10) == 0
        assert sandbox.receipt_stats().retried == 1
    forms = [c.form() for c in receiver.calls]
    stop = next(f for f in forms if f.get("Body") == "STOP")
    assert stop["From"] == "+14155550100" and stop["To"] == sent["from"]
    assert (stop["OptOutType"], stop["SmsStatus"], stop["NumMedia"]) == ("STOP", "received", "0")
    assert stop["MessageSid"].startswith("SM") and stop["MessageSid"] != sent["sid"]
    statuses = sorted(f["MessageStatus"] for f in forms if "MessageStatus" in f)
    assert statuses == ["delivered", "sent"]  # the refused one came again, once answered


# -- Telnyx ------------------------------------------------------------------------------
def test_telnyx_webhooks_are_signed(receiver: Receiver) -> None:
    simulation = only(delivered=0.6, undelivered=0.2, bounced=0.2, stop=0.5)
    url = receiver.url + "/receipts/sms"
    numbers = [f"+1415555{i:04d}" for i in range(30)]
    with Sandbox(["telnyx"], receipts=simulation) as sandbox:
        ids = {send_telnyx(sandbox, n, url)["id"] for n in numbers}
        assert sandbox.drain_receipts(10) == 0
        key = sandbox.servers["telnyx"].webhook_public_key
        sender = sandbox.servers["telnyx"].from_number
    finals: dict[str, str] = {}
    stops = 0
    for call in receiver.calls:
        signature = call.headers["telnyx-signature-ed25519"]
        timestamp = call.headers["telnyx-timestamp"]
        assert verify_telnyx(key, signature, timestamp, call.body)
        body = call.json()
        data, meta = body["data"], body["meta"]
        assert meta == {"attempt": 1, "delivered_to": url}
        assert data["record_type"] == "event" and data["occurred_at"].endswith("Z")
        payload = data["payload"]
        if data["event_type"] == "message.received":
            stops += 1
            assert payload["direction"] == "inbound" and payload["text"] == "STOP"
            assert payload["to"][0]["phone_number"] == sender
            continue
        assert payload["id"] in ids
        if data["event_type"] == "message.finalized":
            status = payload["to"][0]["status"]
            finals[payload["to"][0]["phone_number"]] = (
                payload["errors"][0]["code"] if payload["errors"] else status
            )
        else:
            assert data["event_type"] == "message.sent"
            assert payload["to"][0]["status"] == "sent"
    expected = {
        n: {"undelivered": "40008", "bounced": "40001"}.get(simulation.outcome(n), "delivered")
        for n in numbers
    }
    assert finals == expected
    assert stops == sum(
        1 for n in numbers if expected[n] == "delivered" and simulation.replies_stop(n)
    )
    assert stops > 0


def test_telnyx_retry_counts_the_attempt(receiver: Receiver) -> None:
    receiver.statuses.append(502)
    simulation = only(retry_seconds=0.01)
    with Sandbox(["telnyx"], receipts=simulation) as sandbox:
        send_telnyx(sandbox, "+14155550100", receiver.url)
        assert sandbox.drain_receipts(10) == 0
    attempts = {c.json()["data"]["event_type"]: c.json()["meta"]["attempt"] for c in receiver.calls}
    assert sorted(attempts.values()) == [1, 2]


# -- Expo --------------------------------------------------------------------------------
def get_receipts(sandbox: Sandbox, ids: list[str], **headers: str) -> requests.Response:
    return requests.post(
        sandbox.url("expo") + "/--/api/v2/push/getReceipts",
        json={"ids": ids},
        headers=headers,
        timeout=10,
    )


def test_expo_receipts_follow_the_simulation() -> None:
    simulation = only(delivered=0.5, undelivered=0.25, bounced=0.25, delay_seconds=0.2)
    tokens = [f"ExponentPushToken[t{i}]" for i in range(20)]
    with Sandbox(
        ["expo"], receipts=simulation, server_options={"expo": {"require_auth": True}}
    ) as sandbox:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        sent = requests.post(
            sandbox.url("expo") + "/--/api/v2/push/send",
            json=[{"to": t, "body": "hi"} for t in tokens],
            headers=auth,
            timeout=10,
        ).json()["data"]
        ids = [t["id"] for t in sent]
        first = get_receipts(sandbox, [*ids, "unknown"], **auth).json()
        assert first == {"data": {}}  # not ready yet
        assert get_receipts(sandbox, ids).status_code == 401
        deadline = time.monotonic() + 10
        while not (answer := get_receipts(sandbox, ids, **auth).json()["data"]):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        too_many = get_receipts(sandbox, ids * 51, **auth)
    assert set(answer) == set(ids)
    for token, ticket_id in zip(tokens, ids, strict=True):
        receipt, outcome = answer[ticket_id], simulation.outcome(token)
        if outcome is ReceiptOutcome.BOUNCED:
            assert receipt["status"] == "error"
            assert receipt["details"] == {"error": "DeviceNotRegistered"} and receipt["message"]
        elif outcome is ReceiptOutcome.UNDELIVERED:
            assert receipt["details"] == {"error": "MessageRateExceeded"}
        else:
            assert receipt == {"status": "ok"}
    assert too_many.status_code == 400
    assert too_many.json()["errors"][0]["code"] == "PUSH_TOO_MANY_RECEIPTS"


# -- through the pipeline ----------------------------------------------------------------
def campaign(tmp_path: Path, providers: dict[str, str]) -> PipelineConfig:
    rows = [(f"c{i}", f"p{i}@example.com", f"+1415555{i:04d}") for i in range(12)]
    path = tmp_path / "seg.csv"
    path.write_text(
        "id,email,phone,push_token\n"
        + "".join(f"{i},{e},{p},ExponentPushToken[{i}]\n" for i, e, p in rows),
        encoding="utf-8",
    )
    templates = {
        "email": Template(subject="Hi", body="Text"),
        "sms": Template(body="Hi"),
        "push": Template(title="Sale", body="Hi"),
    }
    channels = tuple(
        Channel(
            name=name,
            provider=provider,
            template=templates[name],
            require_consent=False,
            options={"from_email": "news@example.com"} if name == "email" else {},
        )
        for name, provider in providers.items()
    )
    return PipelineConfig(
        name="receipts",
        source=SourceConfig("csv", {"path": str(path)}),
        channels=channels,
        base_dir=tmp_path,
    )


@pytest.mark.parametrize("sms", ["twilio", "telnyx"])
def test_a_rehearsal_run_gets_its_receipts(tmp_path: Path, receiver: Receiver, sms: str) -> None:
    config = campaign(tmp_path, {"email": "sendgrid", "sms": sms, "push": "expo"})
    simulation = ReceiptSimulation(seed=5)
    with Sandbox(receipts=simulation, receipts_url=receiver.url + "/", lazy=True) as sandbox:
        applied = sandbox.apply(config)
        assert applied.receipts.public_url == receiver.url  # the SMS channel asks there
        assert applied.receipts.url("sms") == receiver.url + "/receipts/sms"
        report = sandbox.pipeline(config, sleep=lambda s: None).run()
        assert report.status is RunStatus.SUCCEEDED
        assert sandbox.servers["sendgrid"].event_webhook_url == receiver.url + "/receipts/email"
        assert sandbox.drain_receipts(10) == 0
        stats = sandbox.receipt_stats()
    assert stats.answered == stats.scheduled > 0 and stats.given_up == 0
    email = sendgrid_events(receiver.at("/receipts/email"))
    assert collections.Counter(e["event"] for e in email)["processed"] == 12
    assert {e["campaignkit_recipient_id"] for e in email} == {f"c{i}" for i in range(12)}
    # Each callback URL carries its delivery's reference: ?ck=<seq>.<run id>.
    sms_calls = [c for c in receiver.calls if c.path.startswith("/receipts/sms?ck=")]
    assert len(sms_calls) >= 24
    refs = {c.path.split("ck=", 1)[1].split(".", 1)[0] for c in sms_calls}
    assert refs == {str(seq) for seq in range(12)}


# -- campaignkit sandbox -----------------------------------------------------------------
def test_the_cli_prints_the_keys_and_posts_signed_receipts(receiver: Receiver) -> None:
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "campaignkit", "sandbox", "--json"),
            *("--provider", "sendgrid", "--provider", "telnyx"),
            *("--receipts-url", receiver.url, "--receipt-ratios", "bounced=1"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("{"), line + proc.communicate(timeout=30)[1]
        described = json.loads(line)["providers"]
        sendgrid, telnyx = described["sendgrid"], described["telnyx"]
        assert sendgrid["receipts"]["event_webhook_url"] == receiver.url + "/receipts/email"
        assert len(base64.b64decode(telnyx["receipts"]["webhook_public_key"])) == 32
        key = sendgrid["receipts"]["webhook_public_key"]
        mail = {
            "personalizations": [{"to": [{"email": "a@example.com"}]}],
            "from": {"email": "news@example.com"},
            "subject": "Hi",
            "content": [{"type": "text/plain", "value": "Hello"}],
        }
        auth = {"Authorization": f"Bearer {sendgrid['token']}"}
        reply = requests.post(
            sendgrid["url"] + "/v3/mail/send", json=mail, headers=auth, timeout=10
        )
        assert reply.status_code == 202
        deadline = time.monotonic() + 10
        while len(sendgrid_events(receiver.calls)) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert sorted(e["event"] for e in sendgrid_events(receiver.calls)) == ["bounce", "processed"]
    for call in receiver.calls:
        signature = call.headers["x-twilio-email-event-webhook-signature"]
        timestamp = call.headers["x-twilio-email-event-webhook-timestamp"]
        assert verify_sendgrid(key, signature, timestamp, call.body)
    assert proc.returncode == 0, err


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--receipts-url", "http://example.com:8025"], "127.0.0.1"),
        (["--receipt-ratios", "bounced=2"], "between 0 and 1"),
        (["--receipt-ratios", "delivered=0.9,bounced=0.2"], "more than 1"),
        (["--receipt-ratios", "lost=0.1"], "NAME=RATIO"),
    ],
)
def test_the_cli_refuses_bad_receipt_options(args: list[str], complaint: str) -> None:
    result = CliRunner().invoke(main, ["sandbox", "--provider", "expo", *args])
    assert result.exit_code == 2
    assert complaint in result.output
