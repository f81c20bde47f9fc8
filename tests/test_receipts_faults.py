"""Receipts under faults, on the path a provider uses: signed posts over loopback HTTP.

- The receiver (``campaignkit receipts serve``) is killed with SIGKILL in the middle of
  a stream and started again while the "provider" keeps retrying every post not
  answered 200 with the same events, and re-posts acknowledged ones (a 200 lost on the
  way): every event ends in the ledger once, each delivery with its expected receipt.
- The ledger is busy (another connection holds the write lock): SQLite answers 503
  with ``Retry-After`` and records nothing, and the retry after the lock is let go is
  recorded once. PostgreSQL waits for the lock (no lock timeout), then records once.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import attrs
import pytest
import requests

pytest.importorskip("cryptography")
pytest.importorskip("waitress")
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from waitress import create_server

from campaignkit import Pipeline, Rate, load_config
from campaignkit.receipts import receiver, wsgi_app
from campaignkit.testing.sandbox import Sandbox

PUBLIC_URL = "https://hooks.example.test/ck"
SMS_TOKEN = "test-receipts-token-0123456789"  # signs the Twilio callbacks of these tests
RECIPIENTS = 120
BOUNCED = {i for i in range(RECIPIENTS) if i % 10 == 3}  # e-mail: delivered, then bounce
UNDELIVERED = {i for i in range(RECIPIENTS) if i % 12 == 5}  # SMS: undelivered, no more

CAMPAIGN = """\
[pipeline]
name = "receipt_faults"

[source]
type = "csv"
path = "{segment}"

[execution]
ledger = "{ledger}"

[receipts]
public_url = "{public_url}"

[channels.email]
provider = "sendgrid"
require_consent = false

[channels.email.options]
from_email = "news@example.com"

[channels.email.template]
subject = "Hi"
body = "Text"

[channels.sms]
provider = "twilio"
require_consent = false

[channels.sms.template]
body = "Hi {{{{ first_name }}}}"
"""


@attrs.frozen
class Campaign:
    """A campaign sent through the sandbox into ``ledger`` (not a rehearsal)."""

    config: Path
    ledger: str
    key: ec.EllipticCurvePrivateKey

    @property
    def env(self) -> dict[str, str]:
        der = self.key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return {"EMAIL_RECEIPTS_KEY": base64.b64encode(der).decode(), "SMS_API_TOKEN": SMS_TOKEN}

    def sql(self, statement: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if not self.ledger.startswith("postgresql://"):
            conn = sqlite3.connect(self.ledger)
            try:
                return conn.execute(statement, args).fetchall()
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.ledger, autocommit=True) as conn:
            conn.execute("SET search_path TO campaignkit")
            return conn.execute(statement.replace("?", "%s"), args).fetchall()  # type: ignore[arg-type]

    def sent(self, channel: str) -> list[tuple[str, str, str]]:
        """(address, provider message id, reference) of the channel's deliveries, in
        order: what the provider's receipts carry back."""
        rows = self.sql(
            "SELECT d.address, d.provider_message_id, d.state, d.seq, r.run_id "
            "FROM deliveries d JOIN channels c ON c.run = d.run AND c.code = d.channel "
            "JOIN runs r ON r.id = d.run WHERE c.channel = ? ORDER BY d.seq",
            (channel,),
        )
        assert [r[2] for r in rows] == ["sent"] * RECIPIENTS
        return [(str(a), str(m), f"{seq}.{run}") for a, m, _, seq, run in rows]

    def receipts(self, channel: str) -> dict[str, str | None]:
        """address -> the channel's delivery's receipt."""
        rows = self.sql(
            "SELECT d.address, d.receipt FROM deliveries d "
            "JOIN channels c ON c.run = d.run AND c.code = d.channel WHERE c.channel = ?",
            (channel,),
        )
        return {str(a): r for a, r in rows}

    def stored(self) -> list[tuple[str, int]]:
        return [(str(k), int(m)) for k, m in self.sql("SELECT key, matched FROM receipts")]


def send_campaign(tmp_path: Path, ledger: str) -> Campaign:
    segment = tmp_path / "seg.csv"
    lines = ["id,email,phone,first_name"]
    lines += [f"c{i},u{i}@example.com,+1415{5_000_000 + i:07d},N{i}" for i in range(RECIPIENTS)]
    segment.write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = tmp_path / "campaign.toml"
    text = CAMPAIGN.format(segment=segment, ledger=ledger, public_url=PUBLIC_URL)
    path.write_text(text, encoding="utf-8")
    config = load_config(path)
    with Sandbox(["sendgrid", "twilio"]) as box:
        channels = tuple(
            attrs.evolve(c, options={**c.options, **box.channel_options(c.provider)}, rate=Rate())
            for c in config.channels
        )
        config = attrs.evolve(config, channels=channels)
        Pipeline.from_config(config, rehearsal=False, env=box.env(config)).run()
    return Campaign(path, ledger, ec.generate_private_key(ec.SECP256R1()))


# -- the provider's side: signed posts ---------------------------------------------------------
@attrs.frozen
class Post:
    path: str
    body: bytes = attrs.field(repr=False)
    headers: dict[str, str] = attrs.field(repr=False)
    events: int


def sendgrid_post(campaign: Campaign, events: list[dict[str, Any]]) -> Post:
    body = json.dumps(events).encode()
    stamp = str(int(time.time()))
    signature = campaign.key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    headers = {
        "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
        "X-Twilio-Email-Event-Webhook-Timestamp": stamp,
        "Content-Type": "application/json",
    }
    return Post("/receipts/email", body, headers, len(events))


def twilio_post(sid: str, to: str, status: str, ref: str) -> Post:
    params = {
        "MessageSid": sid,
        "MessageStatus": status,
        "To": to,
        "AccountSid": "AC" + "0" * 32,
        "ApiVersion": "2010-04-01",
    }
    if status == "undelivered":
        params["ErrorCode"] = "30003"
    query = urlencode({"ck": ref})  # the StatusCallback the send gave, with its query
    signed = f"{PUBLIC_URL}/receipts/sms?{query}" + "".join(k + params[k] for k in sorted(params))
    digest = hmac.new(SMS_TOKEN.encode(), signed.encode(), hashlib.sha1).digest()
    headers = {
        "X-Twilio-Signature": base64.b64encode(digest).decode(),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    stored = 0 if status == "sent" else 1  # "sent" is no receipt: answered 200, ignored
    return Post(f"/receipts/sms?{query}", urlencode(params).encode(), headers, stored)


def sendgrid_events(campaign: Campaign) -> list[dict[str, Any]]:
    events = []
    for i, (address, message_id, ref) in enumerate(campaign.sent("email")):
        kinds = ["delivered", "bounce"] if i in BOUNCED else ["delivered"]
        for kind in kinds:
            event = {
                "email": address,
                "timestamp": 1_700_000_000 + i + (1 if kind == "bounce" else 0),
                "event": kind,
                "sg_event_id": f"evt-{kind}-{i}",
                "sg_message_id": f"{message_id}.filterdrecv-1-2-3",
                "campaignkit_ref": ref,
            }
            if kind == "bounce":
                event.update(type="bounce", status="5.1.1", reason="550 user unknown")
            events.append(event)
    return events


def stream(campaign: Campaign, batch: int = 10) -> list[Post]:
    """SendGrid batches and Twilio callbacks, interleaved."""
    events = sendgrid_events(campaign)
    mail = [sendgrid_post(campaign, events[i : i + batch]) for i in range(0, len(events), batch)]
    sms = []
    for i, (phone, sid, ref) in enumerate(campaign.sent("sms")):
        sms.append(twilio_post(sid, phone, "sent", ref))
        final = "undelivered" if i in UNDELIVERED else "delivered"
        sms.append(twilio_post(sid, phone, final, ref))
    per_mail = max(1, len(sms) // len(mail))
    out: list[Post] = []
    for n, post in enumerate(mail):
        out.append(post)
        out.extend(sms[n * per_mail : (n + 1) * per_mail])
    out.extend(sms[len(mail) * per_mail :])
    return out


def expected_keys(posts: list[Post]) -> int:
    return sum(p.events for p in posts)


def check_ledger(campaign: Campaign, posts: list[Post]) -> None:
    stored = campaign.stored()
    assert len(stored) == expected_keys(posts)
    assert all(matched == 1 for _, matched in stored)
    email = campaign.receipts("email")
    assert email == {
        f"u{i}@example.com": "bounced" if i in BOUNCED else "delivered" for i in range(RECIPIENTS)
    }
    sms = campaign.receipts("sms")
    assert sms == {
        f"+1415{5_000_000 + i:07d}": "undelivered" if i in UNDELIVERED else "delivered"
        for i in range(RECIPIENTS)
    }
    suppressed = campaign.sql("SELECT address FROM suppressions WHERE kind = 'email'")
    assert sorted(a for (a,) in suppressed) == sorted(f"u{i}@example.com" for i in BOUNCED)


# -- the receiver as a process -----------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def serve(campaign: Campaign, port: int, log: Path) -> subprocess.Popen[bytes]:
    """``campaignkit receipts serve`` on ``port``, once it listens."""
    argv = [sys.executable, "-m", "campaignkit", "receipts", "serve", str(campaign.config)]
    env = {**os.environ, **campaign.env}
    env.pop("CAMPAIGNKIT_SANDBOX", None)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [*argv, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=out,
            preexec_fn=_sigint_default,  # Ctrl-C stops it, however the suite was started
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc
        except OSError:
            time.sleep(0.02)
    proc.kill()
    raise AssertionError("the receiver did not listen in time")


class Provider(threading.Thread):
    """Posts a stream in order, each post again until it is answered 200 (the same
    events and signature), then re-posts the acknowledged posts in ``lost`` (their
    200 lost on the way)."""

    def __init__(self, port: int, posts: list[Post], lost: list[int]) -> None:
        super().__init__(name="provider", daemon=True)
        self.base = f"http://127.0.0.1:{port}"
        self.posts, self.lost = posts, lost
        self.acked = 0
        self.failures = 0
        self.statuses: dict[int, int] = {}
        self.halfway = threading.Event()
        self.error: BaseException | None = None

    def post(self, session: requests.Session, post: Post) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                status = session.post(
                    self.base + post.path, data=post.body, headers=post.headers, timeout=10
                ).status_code
            except requests.RequestException:
                status = 0
            if status == 200:
                return
            self.failures += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1
            time.sleep(0.05)
        raise AssertionError("a post was never answered 200")

    def run(self) -> None:
        try:
            with requests.Session() as session:
                session.trust_env = False
                for n, post in enumerate(self.posts):
                    self.post(session, post)
                    self.acked = n + 1
                    if n + 1 == len(self.posts) // 3:
                        self.halfway.set()
                for n in self.lost:
                    self.post(session, self.posts[n])
        except BaseException as exc:  # reported by the test
            self.error = exc
            self.halfway.set()


def stopped_counts(log: Path) -> dict[str, int]:
    """The counts ``serve`` prints when it stops (the last ``Stopped:`` line)."""
    lines = [line for line in log.read_text().splitlines() if "Stopped:" in line]
    assert lines, log.read_text()[-2000:]
    found = re.findall(r"(\d+) (new event|duplicate)", lines[-1])
    return {name: int(n) for n, name in found}


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "ledger.db")
    else:
        yield request.getfixturevalue("own_database")


def test_receiver_killed_mid_stream_loses_nothing_and_counts_duplicates(
    tmp_path: Path, ledger: str
) -> None:
    campaign = send_campaign(tmp_path, ledger)
    posts = stream(campaign)
    port = free_port()
    log = tmp_path / "serve.log"
    first = serve(campaign, port, log)
    lost = list(range(0, len(posts), 7))  # acknowledged, then sent again
    provider = Provider(port, posts, lost)
    provider.start()
    try:
        assert provider.halfway.wait(60)
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        killed_at = provider.acked
        time.sleep(0.3)  # the provider meets a closed port, and retries
        second = serve(campaign, port, log)
        provider.join(90)
    finally:
        first.kill()
    second.send_signal(signal.SIGINT)  # Ctrl-C: it prints its counts (SIGTERM: see below)
    assert second.wait(20) == 0, log.read_text()[-2000:]
    assert provider.error is None, provider.error
    assert not provider.is_alive()
    assert 0 < killed_at < len(posts)
    assert provider.failures > 0  # it met the dead receiver
    assert set(provider.statuses) <= {0}  # nothing refused, nothing 503: only the kill
    check_ledger(campaign, posts)
    after = stopped_counts(log)
    # the second receiver saw every re-post of an acknowledged post again
    assert after["duplicate"] >= sum(posts[n].events for n in lost)
    assert after["new event"] + after["duplicate"] >= expected_keys(posts[killed_at:])
    assert after["new event"] <= expected_keys(posts)


def test_serve_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    campaign = send_campaign(tmp_path, str(tmp_path / "ledger.db"))
    log = tmp_path / "serve.log"
    port = free_port()
    proc = serve(campaign, port, log)
    answer = requests.get(f"http://127.0.0.1:{port}/receipts/email", timeout=10)
    assert answer.status_code == 405  # serving: in waitress's loop
    proc.send_signal(signal.SIGTERM)  # what systemd, docker stop, kubernetes send
    assert proc.wait(20) == 0, log.read_text()[-2000:]
    assert "Stopped:" in log.read_text()


# -- a busy ledger -----------------------------------------------------------------------------
@pytest.fixture
def http_receiver(request: pytest.FixtureRequest) -> Iterator[Any]:
    """Serve a campaign's receiver in this process (waitress, as ``serve`` does)."""
    servers = []

    def start(campaign: Campaign) -> str:
        env = dict(campaign.env)
        pipeline = Pipeline.from_file(campaign.config, env=env)
        app = wsgi_app(receiver(pipeline))
        server = create_server(app, host="127.0.0.1", port=0, threads=8)
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.effective_port}"

    yield start
    for server in servers:
        server.close()


def post(base: str, p: Post) -> requests.Response:
    return requests.post(base + p.path, data=p.body, headers=p.headers, timeout=30)


def test_sqlite_ledger_held_answers_503_then_records_the_retry_once(
    tmp_path: Path, http_receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("campaignkit._ledger._receipt_db.BUSY_TIMEOUT_MS", 300)
    campaign = send_campaign(tmp_path, str(tmp_path / "ledger.db"))
    posts = [p for p in stream(campaign, batch=40) if p.events][:6]
    base = http_receiver(campaign)
    holder = sqlite3.connect(campaign.ledger, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # a campaign's writer, holding the lock
    try:
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(lambda p: post(base, p), posts))
        assert [a.status_code for a in answers] == [503] * len(posts)
        assert all(a.headers.get("Retry-After") == "5" for a in answers)
        assert campaign.stored() == []  # read beside the writer (WAL)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert [post(base, p).status_code for p in posts] == [200] * len(posts)
    assert len(campaign.stored()) == expected_keys(posts)
    again = [post(base, p).status_code for p in posts]  # a retry of an answered post
    assert again == [200] * len(posts)
    stored = campaign.stored()
    assert len(stored) == len({k for k, _ in stored}) == expected_keys(posts)
    assert all(m == 1 for _, m in stored)


def test_sqlite_campaign_writing_meanwhile_every_receipt_once(
    tmp_path: Path, http_receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Receipts posted while a second run of the campaign writes the same ledger:
    whatever is answered 503 is posted again; all end recorded once."""
    monkeypatch.setattr("campaignkit._ledger._receipt_db.BUSY_TIMEOUT_MS", 50)
    campaign = send_campaign(tmp_path, str(tmp_path / "ledger.db"))
    posts = stream(campaign, batch=5)
    base = http_receiver(campaign)
    statuses: dict[int, int] = {}

    def provider() -> None:
        with requests.Session() as session:
            session.trust_env = False
            for p in posts:
                while True:
                    status = session.post(
                        base + p.path, data=p.body, headers=p.headers, timeout=30
                    ).status_code
                    statuses[status] = statuses.get(status, 0) + 1
                    if status == 200:
                        break
                    assert status == 503
                    time.sleep(0.01)

    thread = threading.Thread(target=provider)
    thread.start()
    from datetime import UTC, datetime

    config = load_config(campaign.config)
    with Sandbox(["sendgrid", "twilio"]) as box:
        channels = tuple(
            attrs.evolve(c, options={**c.options, **box.channel_options(c.provider)}, rate=Rate())
            for c in config.channels
        )
        config = attrs.evolve(config, channels=channels)
        Pipeline.from_config(config, rehearsal=False, env=box.env(config)).run(
            logical_date=datetime(2031, 1, 2, tzinfo=UTC)
        )
    thread.join(60)
    assert not thread.is_alive()
    stored = campaign.stored()
    assert len(stored) == expected_keys(posts)
    assert statuses.get(200) == len(posts)
    print(f"answers while a run wrote the ledger: {statuses}")


def test_postgres_ledger_locked_waits_then_records_once(
    tmp_path: Path, own_database: str, http_receiver: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While another session holds the receipts table, a post waits for the lock up to
    the receiver's lock timeout, then is answered 503 (nothing recorded); one that gets
    the lock in time is recorded; everything is recorded once in the end."""
    import psycopg

    monkeypatch.setattr("campaignkit._ledger._postgres._receipts.LOCK_TIMEOUT_MS", 2000)
    campaign = send_campaign(tmp_path, own_database)
    posts = [p for p in stream(campaign, batch=40) if p.events][:3]
    base = http_receiver(campaign)
    with psycopg.connect(own_database) as holder:
        holder.execute("LOCK TABLE campaignkit.receipts IN EXCLUSIVE MODE")
        with ThreadPoolExecutor(3) as pool:
            pending = [pool.submit(post, base, p) for p in posts]
            time.sleep(0.5)
            assert not any(f.done() for f in pending)  # waiting on the lock
            statuses = [f.result().status_code for f in pending]
        assert statuses == [503] * len(posts)  # past the lock timeout: "try again"
        assert campaign.stored() == []
        holder.rollback()
    with ThreadPoolExecutor(3) as pool:
        waiting = []
        with psycopg.connect(own_database) as holder:
            holder.execute("LOCK TABLE campaignkit.receipts IN EXCLUSIVE MODE")
            waiting = [pool.submit(post, base, p) for p in posts]
            time.sleep(0.5)
            holder.rollback()  # let go within the timeout: the waiting posts go through
        assert [f.result().status_code for f in waiting] == [200] * len(posts)
    assert [post(base, p).status_code for p in posts] == [200] * len(posts)
    stored = campaign.stored()
    assert len(stored) == len({k for k, _ in stored}) == expected_keys(posts)
