"""In-doubt failures inside a run: a request the provider may have acted on (a read
timeout, a connection lost after the request, a 5xx) is re-sent only with an
idempotency key or after reconciling with the provider; otherwise it is recorded
``unknown``, unless the channel opts into at-least-once (``on_doubt = "retry"``).

Against the loopback sandboxes, counting what each fake accepted."""

from __future__ import annotations

import collections
import http.client
import socket
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
import requests
import urllib3.exceptions

from campaignkit import (
    Channel,
    ChannelSettings,
    ConfigError,
    Pipeline,
    Rate,
    RetryPolicy,
    RunStatus,
    Secret,
    Template,
    TransientDeliveryError,
)
from campaignkit._http import request_error
from campaignkit._models import Message
from campaignkit.channels.twilio import TwilioNotifier
from campaignkit.testing import StaticSource
from campaignkit.testing.sandbox import Reply, Request
from campaignkit.testing.sandbox.expo import ExpoServer
from campaignkit.testing.sandbox.onesignal import OneSignalServer
from campaignkit.testing.sandbox.sendgrid import SendGridServer
from campaignkit.testing.sandbox.smtp import SmtpServer
from campaignkit.testing.sandbox.twilio import TwilioServer

TIMEOUT = 0.4  # the client's per-request timeout in these tests
STALL = 1.2  # how long a "late" answer takes: past the timeout


# -- classification ------------------------------------------------------------------------


def _refused() -> requests.ConnectionError:
    reason = urllib3.exceptions.NewConnectionError(None, "Failed to establish a new connection")  # type: ignore[arg-type]
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", reason))  # type: ignore[arg-type]


def _dns() -> requests.ConnectionError:
    reason = urllib3.exceptions.NameResolutionError("api.example", None, socket.gaierror())  # type: ignore[arg-type]
    return requests.ConnectionError(urllib3.exceptions.MaxRetryError(None, "/", reason))  # type: ignore[arg-type]


def _aborted(cause: BaseException) -> requests.ConnectionError:
    return requests.ConnectionError(urllib3.exceptions.ProtocolError("Connection aborted.", cause))


def _ssl(cause: BaseException) -> requests.exceptions.SSLError:
    wrapped = urllib3.exceptions.SSLError(cause)
    return requests.exceptions.SSLError(urllib3.exceptions.MaxRetryError(None, "/", wrapped))  # type: ignore[arg-type]


EXCEPTIONS: list[tuple[str, requests.RequestException, str, bool]] = [
    ("connect timeout", requests.ConnectTimeout(), "connect_timeout", False),
    ("connection refused", _refused(), "connect_error", False),
    ("dns failure", _dns(), "connect_error", False),
    (
        "connect timeout inside a ConnectionError",
        requests.ConnectionError(
            urllib3.exceptions.MaxRetryError(None, "/", urllib3.exceptions.ConnectTimeoutError())  # type: ignore[arg-type]
        ),
        "connect_error",
        False,
    ),
    ("proxy error", requests.exceptions.ProxyError(), "proxy_error", False),
    ("certificate", _ssl(ssl.SSLCertVerificationError("bad cert")), "tls_error", False),
    ("tls eof", _ssl(ssl.SSLEOFError("eof")), "tls_error", True),
    ("read timeout", requests.ReadTimeout(), "timeout", True),
    ("bare timeout", requests.Timeout(), "timeout", True),
    (
        "remote disconnected",
        _aborted(http.client.RemoteDisconnected("closed")),
        "connection_error",
        True,
    ),
    ("reset", _aborted(ConnectionResetError(104, "reset")), "connection_error", True),
    ("broken pipe", _aborted(BrokenPipeError(32, "pipe")), "connection_error", True),
    ("bare ConnectionError", requests.ConnectionError(), "connection_error", True),
    ("chunked", requests.exceptions.ChunkedEncodingError(), "response_error", True),
    ("decoding", requests.exceptions.ContentDecodingError(), "response_error", True),
]


@pytest.mark.parametrize(
    ("exc", "code", "in_doubt"),
    [pytest.param(e, c, d, id=name) for name, e, c, d in EXCEPTIONS],
)
def test_request_errors_are_classified(
    exc: requests.RequestException, code: str, in_doubt: bool
) -> None:
    error = request_error(exc, 1.0)
    assert isinstance(error, TransientDeliveryError)
    assert (error.code, error.in_doubt) == (code, in_doubt)


def _twilio_notifier(server: TwilioServer, timeout: float = 5.0) -> TwilioNotifier:
    return TwilioNotifier(
        ChannelSettings(
            "sms", server.channel_options(), token=Secret(server.token), timeout=timeout
        )
    )


def _sms(address: str = "+14155550100", body: str = "hi") -> Message:
    return Message("c1", "sms", address, body, idempotency_key="k1")


@pytest.mark.parametrize(
    ("status", "code", "in_doubt"),
    [
        (429, "20429", False),  # Twilio: not processed, safe to retry
        (408, "20408", False),
        (500, "20500", True),
        (502, "20500", True),  # a gateway: the request may have gone through
        (503, "20503", True),  # Twilio does not document 503 as "not processed"
        (504, "20500", True),
    ],
)
def test_statuses_are_classified(status: int, code: str, in_doubt: bool) -> None:
    with TwilioServer() as server:
        notifier = _twilio_notifier(server)
        server.faults.retry_after = 0
        server.faults.fail_next(status)
        conn = notifier.connect()
        with pytest.raises(TransientDeliveryError) as info:
            notifier.send_batch(conn, [_sms()])
        assert (info.value.code, info.value.status_code, info.value.in_doubt) == (
            code,
            status,
            in_doubt,
        )


@pytest.mark.parametrize(
    ("fault", "code"),
    [("drop", "connection_error"), ("lost", "connection_error"), ("late", "timeout")],
)
def test_real_network_faults_are_in_doubt(fault: str, code: str) -> None:
    with TwilioServer() as server:
        server.faults.stall_seconds = STALL
        server.faults.fail_next(fault)
        notifier = _twilio_notifier(server, timeout=TIMEOUT)
        with pytest.raises(TransientDeliveryError) as info:
            notifier.send_batch(notifier.connect(), [_sms()])
        assert (info.value.code, info.value.in_doubt) == (code, True)
        # "drop" closes before processing, "lost" and "late" after it.
        assert len(server.messages) == (0 if fault == "drop" else 1)


def test_a_refused_connection_is_surely_not_sent() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again when the block ends
    server = TwilioServer(port=port)
    options = {
        "base_url": f"http://127.0.0.1:{port}",
        "account_sid": server.account_sid,
        "from": server.from_number,
    }
    notifier = TwilioNotifier(ChannelSettings("sms", options, token=Secret(server.token)))
    with pytest.raises(TransientDeliveryError) as info:
        notifier.send_batch(notifier.connect(), [_sms()])
    assert (info.value.code, info.value.in_doubt) == ("connect_error", False)


# -- Twilio's message list and reconcile ---------------------------------------------------------


def test_twilio_fake_lists_messages_in_twilios_shape() -> None:
    with TwilioServer() as server:
        notifier = _twilio_notifier(server)
        conn = notifier.connect()
        for i in range(3):
            notifier.send_batch(conn, [_sms(body=f"m{i}")])
        notifier.send_batch(conn, [_sms("+14155550101", "other")])
        auth = (server.account_sid, server.token)
        url = f"{server.base_url}/2010-04-01/Accounts/{server.account_sid}/Messages.json"
        page = requests.get(url, params={"To": "+14155550100", "PageSize": 2}, auth=auth, timeout=5)
        assert page.status_code == 200
        body = page.json()
        assert [m["body"] for m in body["messages"]] == ["m2", "m1"]  # newest first
        assert (body["page"], body["page_size"], body["start"], body["end"]) == (0, 2, 0, 1)
        assert body["previous_page_uri"] is None
        assert set(body["messages"][0]) >= {"sid", "to", "from", "body", "status", "date_created"}
        following = requests.get(server.base_url + body["next_page_uri"], auth=auth, timeout=5)
        assert [m["body"] for m in following.json()["messages"]] == ["m0"]
        assert following.json()["next_page_uri"] is None
        today = body["messages"][0]["date_created"]
        assert today.endswith("GMT")
        date_sent = requests.get(url, params={"DateSent>": "2000-01-01"}, auth=auth, timeout=5)
        assert len(date_sent.json()["messages"]) == 4
        server.sent_after = None  # nothing sent yet: a DateSent filter finds nothing
        date_sent = requests.get(url, params={"DateSent>": "2000-01-01"}, auth=auth, timeout=5)
        assert date_sent.json()["messages"] == []
        denied = requests.get(url, auth=(server.account_sid, "wrong"), timeout=5)
        assert denied.status_code == 401


def test_twilio_reconcile_finds_accepted_messages_and_only_those() -> None:
    from datetime import UTC, datetime

    with TwilioServer() as server:
        server.sent_after = None  # still queued: must be found without DateSent
        notifier = _twilio_notifier(server)
        conn = notifier.connect()
        since = datetime.now(UTC)
        notifier.send_batch(conn, [_sms(body="hello")])
        answers = notifier.reconcile(
            conn,
            [
                _sms(body="hello"),  # accepted
                _sms(body="hello, other body"),  # same number, other message
                _sms("+14155550199", "hello"),  # other number
            ],
            since,
        )
        found, other_body, other_number = answers
        assert found is not None and found.ok
        assert found.provider_message_id == server.messages[0]["sid"]
        for answer in (other_body, other_number):
            assert answer is not None and not answer.ok and answer.transient


# -- runs against the sandboxes ----------------------------------------------------------


def _source(n: int, field: str, make: Any) -> StaticSource:
    return StaticSource.from_dicts(
        {"id": f"c{i}", field: make(i), "first_name": f"N{i}", "consent": {}} for i in range(n)
    )


def _pipeline(
    tmp_path: Path,
    pm: pluggy.PluginManager,
    channel: Channel,
    source: StaticSource,
    token: str,
) -> Pipeline:
    return Pipeline(
        "t",
        source,
        [channel],
        plugins=pm,
        env={channel.token_variable: token},
        base_dir=tmp_path,
        sleep=lambda s: None,
    )


def _channel(name: str, provider: str, options: dict[str, Any], **kw: Any) -> Channel:
    template = {
        "sms": Template(body="Hi {{ first_name }}"),
        "email": Template(subject="Hello", body="Hi {{ first_name }}"),
        "push": Template(title="Hello", body="Hi {{ first_name }}"),
    }[name]
    settings: dict[str, Any] = {
        "require_consent": False,
        "timeout_seconds": TIMEOUT,
        "retry": RetryPolicy(retries=2, delay_minutes=0),
        **kw,
    }
    return Channel(name=name, provider=provider, template=template, options=options, **settings)


def _states(pipeline: Pipeline, run_id: str, channel: str) -> dict[str, str]:
    return {r.recipient_id: r.status.value for r in pipeline.results(run_id, channel)}


def _per_address(messages: list[dict[str, Any]]) -> collections.Counter[str]:
    return collections.Counter(str(m["to"]) for m in messages)


def _phone(i: int) -> str:
    return f"+1415555{i:04d}"


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer() as server:
        server.faults.stall_seconds = STALL
        server.faults.retry_after = 0
        yield server


def test_twilio_in_doubt_sends_are_reconciled_never_delivered_twice(
    tmp_path: Path, pm: pluggy.PluginManager, twilio: TwilioServer
) -> None:
    # 12 messages, one request each; four end in doubt: accepted then answered too
    # late, accepted then connection closed, closed before processing, and a 500.
    twilio.faults.fail_next("pass", "late", "pass", "lost", "drop", "pass", 500)
    channel = _channel("sms", "twilio", twilio.channel_options(), concurrency=1)
    pipeline = _pipeline(tmp_path, pm, channel, _source(12, "phone", _phone), twilio.token)
    report = pipeline.run()
    per_address = _per_address(twilio.messages)
    assert set(per_address) == {_phone(i) for i in range(12)}
    assert max(per_address.values()) == 1  # nobody got it twice
    assert len(twilio.messages) == 12
    assert report.status == RunStatus.SUCCEEDED
    result = report.channels["sms"]
    assert (result.sent, result.unknown, result.failed) == (12, 0, 0)
    assert result.retries == 1
    # The two the fake had accepted were found, with Twilio's sid; the other two re-sent.
    sids = {m["to"]: m["sid"] for m in twilio.messages}
    for r in pipeline.results(report.run_id, "sms"):
        assert r.provider_message_id == sids[_phone(int(r.recipient_id[1:]))]
    attempts = sorted(r.attempts for r in pipeline.results(report.run_id, "sms"))
    assert attempts == [1] * 10 + [2] * 2


class _BlindTwilio(TwilioServer):
    """A Twilio whose message list is down: reconciliation cannot tell."""

    def handle(self, request: Request) -> Reply:
        if request.method == "GET":
            return self.error(500, 20500, "Internal Server Error")
        return super().handle(request)


def test_twilio_lookup_failure_records_unknown(tmp_path: Path, pm: pluggy.PluginManager) -> None:
    with _BlindTwilio() as twilio:
        twilio.faults.stall_seconds = STALL
        twilio.faults.fail_next("late", "pass", "drop")
        channel = _channel("sms", "twilio", twilio.channel_options(), concurrency=1)
        pipeline = _pipeline(tmp_path, pm, channel, _source(5, "phone", _phone), twilio.token)
        report = pipeline.run()
        assert max(_per_address(twilio.messages).values()) == 1
        assert len(twilio.messages) == 4  # the dropped one was never processed
        result = report.channels["sms"]
        assert (result.sent, result.unknown) == (3, 2)
        assert result.reasons == {"in_doubt": 2}
        assert report.status == RunStatus.PARTIAL
        states = _states(pipeline, report.run_id, "sms")
        assert (states["c0"], states["c2"]) == ("unknown", "unknown")
        # resume --resend-unknown re-sends them, accepting a possible duplicate.
        resumed = pipeline.resume(report.run_id, resend_unknown=True)
        assert resumed.channels["sms"].sent == 5
        assert len(twilio.messages) == 6
        assert _per_address(twilio.messages)[_phone(0)] == 2  # the late one, twice


def test_twilio_opt_in_retries_what_the_lookup_cannot_settle(
    tmp_path: Path, pm: pluggy.PluginManager
) -> None:
    with _BlindTwilio() as twilio:
        twilio.faults.stall_seconds = STALL
        twilio.faults.fail_next("late", "pass", "drop")
        channel = _channel(
            "sms", "twilio", twilio.channel_options(), concurrency=1, on_doubt="retry"
        )
        pipeline = _pipeline(tmp_path, pm, channel, _source(5, "phone", _phone), twilio.token)
        report = pipeline.run()
        result = report.channels["sms"]
        assert (result.sent, result.unknown) == (5, 0)
        assert len(twilio.messages) == 6  # at-least-once: the late one arrived twice
        assert _per_address(twilio.messages)[_phone(0)] == 2


def _email(i: int) -> str:
    return f"user{i}@example.com"


def test_sendgrid_in_doubt_is_unknown_not_resent(tmp_path: Path, pm: pluggy.PluginManager) -> None:
    with SendGridServer() as sendgrid:
        sendgrid.faults.stall_seconds = STALL
        # batches of 3: the 2nd is accepted and answered late, the 3rd accepted and
        # the connection closed, the 4th a 502 (not processed here, but who knows),
        # the 5th a 429 (surely not processed: retried).
        sendgrid.faults.retry_after = 0
        sendgrid.faults.fail_next("pass", "late", "lost", 502, 429)
        channel = _channel(
            "email", "sendgrid", sendgrid.channel_options(), concurrency=1, batch_size=3
        )
        source = _source(15, "email", _email)
        pipeline = _pipeline(tmp_path, pm, channel, source, sendgrid.token)
        report = pipeline.run()
        per_address = _per_address(sendgrid.messages)
        assert max(per_address.values()) == 1
        assert len(sendgrid.messages) == 12  # all but the 502's batch
        result = report.channels["email"]
        assert (result.sent, result.unknown, result.failed) == (6, 9, 0)
        assert report.status == RunStatus.PARTIAL
        states = _states(pipeline, report.run_id, "email")
        assert [states[f"c{i}"] for i in range(3, 12)] == ["unknown"] * 9


def test_sendgrid_opt_in_is_at_least_once(tmp_path: Path, pm: pluggy.PluginManager) -> None:
    with SendGridServer() as sendgrid:
        sendgrid.faults.stall_seconds = STALL
        sendgrid.faults.fail_next("pass", "late", "lost")
        channel = _channel(
            "email",
            "sendgrid",
            sendgrid.channel_options(),
            concurrency=1,
            batch_size=3,
            on_doubt="retry",
        )
        pipeline = _pipeline(tmp_path, pm, channel, _source(9, "email", _email), sendgrid.token)
        report = pipeline.run()
        assert report.channels["email"].sent == 9
        assert len(sendgrid.messages) == 15  # two batches of three delivered twice
        assert sorted(_per_address(sendgrid.messages).values()) == [1] * 3 + [2] * 6


def _token(i: int) -> str:
    return f"ExponentPushToken[tok{i:04d}]"


def test_expo_in_doubt_is_unknown(tmp_path: Path, pm: pluggy.PluginManager) -> None:
    with ExpoServer() as expo:
        expo.faults.stall_seconds = STALL
        expo.faults.fail_next("late", "pass", "lost", "pass", 503)
        channel = _channel("push", "expo", expo.channel_options(), concurrency=1, batch_size=2)
        pipeline = _pipeline(tmp_path, pm, channel, _source(10, "push_token", _token), "")
        report = pipeline.run()
        assert max(_per_address(expo.messages).values()) == 1
        assert len(expo.messages) == 8
        result = report.channels["push"]
        assert (result.sent, result.unknown) == (4, 6)


def test_smtp_lost_after_data_is_unknown(tmp_path: Path, pm: pluggy.PluginManager) -> None:
    with SmtpServer() as smtp:
        smtp.faults.stall_seconds = STALL
        smtp.faults.fail_next("pass", "late", "pass", "lost", stage="data")
        channel = _channel("email", "smtp", smtp.channel_options(), concurrency=1, batch_size=3)
        pipeline = Pipeline(
            "t",
            _source(8, "email", _email),
            [channel],
            plugins=pm,
            env={"EMAIL_API_TOKEN": smtp.token, "SMTP_USERNAME": smtp.username},
            base_dir=tmp_path,
            sleep=lambda s: None,
        )
        report = pipeline.run()
        assert max(_per_address(smtp.messages).values()) == 1
        assert len(smtp.messages) == 8
        # c1 timed out after its DATA (the rest of its batch, c2, was not attempted and
        # is retried); c4's connection was closed after the server queued it.
        states = _states(pipeline, report.run_id, "email")
        assert sorted(k for k, v in states.items() if v == "unknown") == ["c1", "c4"]
        result = report.channels["email"]
        assert (result.sent, result.unknown, result.failed) == (6, 2, 0)


def test_onesignal_in_doubt_is_retried_with_the_same_key_delivered_once(
    tmp_path: Path, pm: pluggy.PluginManager
) -> None:
    with OneSignalServer() as onesignal:
        onesignal.faults.stall_seconds = STALL
        onesignal.faults.fail_next("late", "lost", "drop", 502)
        channel = _channel(
            "push", "onesignal", onesignal.channel_options(), concurrency=1, batch_size=2
        )
        source = StaticSource.from_dicts(
            {"id": f"c{i}", "push_token": str(uuid.UUID(int=i + 1)), "first_name": "N"}
            for i in range(8)
        )
        pipeline = _pipeline(tmp_path, pm, channel, source, onesignal.token)
        report = pipeline.run()
        assert report.channels["push"].sent == 8
        assert report.channels["push"].unknown == 0
        assert sorted(_per_address(onesignal.messages).values()) == [1] * 8
        assert onesignal.replays == 2  # "late" and "lost" were accepted, then replayed


def test_a_refused_connection_is_retried_normally(tmp_path: Path, pm: pluggy.PluginManager) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    twilio = TwilioServer(port=port)
    options = {
        "base_url": f"http://127.0.0.1:{port}",
        "account_sid": twilio.account_sid,
        "from": twilio.from_number,
    }
    channel = _channel("sms", "twilio", options, concurrency=2)
    started: list[float] = []

    def start_at_first_retry(seconds: float) -> None:
        if not started:
            started.append(seconds)
            twilio.start()  # the provider comes back between the rounds

    pipeline = Pipeline(
        "t",
        _source(6, "phone", _phone),
        [channel],
        plugins=pm,
        env={"SMS_API_TOKEN": twilio.token},
        base_dir=tmp_path,
        sleep=start_at_first_retry,
    )
    try:
        report = pipeline.run()
    finally:
        twilio.stop()
    assert started
    result = report.channels["sms"]
    assert (result.sent, result.unknown, result.retries) == (6, 0, 1)
    assert sorted(_per_address(twilio.messages).values()) == [1] * 6
    assert twilio.request_times and len(twilio.request_times) == 6  # no lookups needed


def test_on_doubt_is_validated() -> None:
    with pytest.raises((ConfigError, ValueError)):
        Channel(name="sms", provider="twilio", on_doubt="maybe")


def test_twilio_reconcile_follows_pages_and_gives_up_past_its_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from datetime import UTC, datetime, timedelta

    import campaignkit.channels.twilio as twilio_module

    with TwilioServer() as server:
        notifier = _twilio_notifier(server)
        conn = notifier.connect()
        since = datetime.now(UTC)
        for body in ("first", "second", "third"):
            notifier.send_batch(conn, [_sms(body=body)])
        monkeypatch.setattr(twilio_module, "RECONCILE_PAGE_SIZE", 1)
        found = notifier.reconcile(conn, [_sms(body="first")], since)[0]
        assert found is not None and found.ok  # on the third page
        absent = notifier.reconcile(conn, [_sms(body="never sent")], since)[0]
        assert absent is not None and absent.transient  # every page read, not there
        monkeypatch.setattr(twilio_module, "RECONCILE_MAX_PAGES", 2)
        assert notifier.reconcile(conn, [_sms(body="first")], since) == [None]
        # Messages older than the first attempt (less the skew) are not ours.
        later = since + timedelta(minutes=10)
        old = notifier.reconcile(conn, [_sms(body="third")], later)[0]
        assert old is not None and not old.ok and old.transient


def test_issue_scenario_random_late_and_lost_answers_no_duplicates(
    tmp_path: Path, pm: pluggy.PluginManager
) -> None:
    """The issue's measurement: answers after the client timeout at random (here 5%
    late, 3% lost); before, SendGrid and Twilio delivered some recipients twice."""
    with TwilioServer() as twilio, SendGridServer() as sendgrid:
        for server, seed in ((twilio, 1), (sendgrid, 2)):
            server.faults = type(server.faults)(
                late_rate=0.05, lost_rate=0.03, stall_seconds=0.8, seed=seed
            )
        channels = [
            _channel(
                "sms",
                "twilio",
                twilio.channel_options(),
                concurrency=8,
                timeout_seconds=0.3,
                rate=Rate(),
            ),
            _channel(
                "email",
                "sendgrid",
                sendgrid.channel_options(),
                concurrency=4,
                batch_size=5,
                timeout_seconds=0.3,
            ),
        ]
        source = StaticSource.from_dicts(
            {"id": f"c{i}", "phone": _phone(i), "email": _email(i), "first_name": "N"}
            for i in range(200)
        )
        pipeline = Pipeline(
            "t",
            source,
            channels,
            plugins=pm,
            env={"SMS_API_TOKEN": twilio.token, "EMAIL_API_TOKEN": sendgrid.token},
            base_dir=tmp_path,
            sleep=lambda s: None,
        )
        report = pipeline.run()
        sms, email = report.channels["sms"], report.channels["email"]
        assert max(_per_address(twilio.messages).values()) == 1
        assert max(_per_address(sendgrid.messages).values()) == 1
        # Twilio: every in-doubt message reconciled: all sent, each exactly once.
        assert (sms.sent, sms.unknown, sms.failed) == (200, 0, 0)
        assert len(twilio.messages) == 200
        # SendGrid: accepted-but-unanswered batches are unknown, never sent twice.
        assert sms.retries >= 1 and email.unknown > 0
        assert email.sent + email.unknown == 200 and email.failed == 0
        assert len(sendgrid.messages) == 200  # late and lost ones were all accepted
        assert report.status == RunStatus.PARTIAL


def test_sendgrid_only_the_attempted_request_is_in_doubt() -> None:
    from campaignkit.channels.sendgrid import SendGridNotifier

    with SendGridServer() as server:
        server.faults.stall_seconds = STALL
        server.faults.fail_next("late")
        notifier = SendGridNotifier(
            ChannelSettings(
                "email", server.channel_options(), token=Secret(server.token), timeout=TIMEOUT
            )
        )
        # The repeated address forces a second request, never attempted after the first.
        batch = [
            Message(f"c{i}", "email", address, "Hi", subject="S", idempotency_key=f"k{i}")
            for i, address in enumerate(["a@example.com", "b@example.com", "a@example.com"])
        ]
        outcomes = notifier.send_batch(notifier.connect(), batch)
        assert [(o.ok, o.transient, o.in_doubt) for o in outcomes] == [
            (False, True, True),
            (False, True, True),
            (False, True, False),
        ]
        assert len(server.messages) == 2  # the first request was accepted


def test_twilio_a_failed_lookup_cannot_tell_only_for_that_message() -> None:
    from datetime import UTC, datetime

    class FlakyList(TwilioServer):
        calls = 0

        def handle(self, request: Request) -> Reply:
            if request.method == "GET":
                FlakyList.calls += 1
                if FlakyList.calls == 1:
                    return self.error(503, 20503, "Service Unavailable")
            return super().handle(request)

    with FlakyList() as server:
        notifier = _twilio_notifier(server)
        conn = notifier.connect()
        since = datetime.now(UTC)
        notifier.send_batch(conn, [_sms(body="one")])
        first, second = notifier.reconcile(conn, [_sms(body="one"), _sms(body="one")], since)
        assert first is None
        assert second is not None and second.ok


def test_twilio_without_retries_reconciles_at_the_end(
    tmp_path: Path, pm: pluggy.PluginManager, twilio: TwilioServer
) -> None:
    twilio.faults.fail_next("late", "drop")
    channel = _channel(
        "sms",
        "twilio",
        twilio.channel_options(),
        concurrency=1,
        retry=RetryPolicy(retries=0),
    )
    pipeline = _pipeline(tmp_path, pm, channel, _source(3, "phone", _phone), twilio.token)
    report = pipeline.run()
    states = _states(pipeline, report.run_id, "sms")
    # c0 was accepted: found. c1 never reached Twilio: not found, and no retry left.
    assert states == {"c0": "sent", "c1": "failed", "c2": "sent"}
    result = report.channels["sms"]
    assert result.reasons == {"retries_exhausted": 1}
    assert len(twilio.messages) == 2


def test_twilio_unreadable_list_cannot_tell() -> None:
    from datetime import UTC, datetime

    class Garbled(TwilioServer):
        def handle(self, request: Request) -> Reply:
            if request.method == "GET":
                return Reply(200, {"messages": "not a list"})
            return super().handle(request)

    with Garbled() as server:
        notifier = _twilio_notifier(server)
        conn = notifier.connect()
        assert notifier.reconcile(conn, [_sms()], datetime.now(UTC)) == [None]


def test_twilio_lookup_down_for_a_round_is_asked_again(
    tmp_path: Path, pm: pluggy.PluginManager
) -> None:
    class DownOnce(TwilioServer):
        lookups = 0

        def handle(self, request: Request) -> Reply:
            if request.method == "GET":
                DownOnce.lookups += 1
                if DownOnce.lookups == 1:
                    return self.error(503, 20503, "Service Unavailable")
            return super().handle(request)

    with DownOnce() as twilio:
        twilio.faults.stall_seconds = STALL
        twilio.faults.fail_next("late")
        channel = _channel("sms", "twilio", twilio.channel_options(), concurrency=1)
        pipeline = _pipeline(tmp_path, pm, channel, _source(2, "phone", _phone), twilio.token)
        report = pipeline.run()
        result = report.channels["sms"]
        assert (result.sent, result.unknown, result.retries) == (2, 0, 2)
        assert DownOnce.lookups == 2
        assert len(twilio.messages) == 2


def test_telnyx_in_doubt_is_retried_with_the_same_key_delivered_once(
    tmp_path: Path, pm: pluggy.PluginManager
) -> None:
    from campaignkit.testing.sandbox.telnyx import TelnyxServer

    with TelnyxServer() as telnyx:
        telnyx.faults.stall_seconds = STALL
        telnyx.faults.fail_next("late", "pass", "lost", "drop", 502)
        channel = _channel("sms", "telnyx", telnyx.channel_options(), concurrency=1)
        pipeline = _pipeline(tmp_path, pm, channel, _source(6, "phone", _phone), telnyx.token)
        report = pipeline.run()
        result = report.channels["sms"]
        assert (result.sent, result.unknown) == (6, 0)
        assert sorted(_per_address(telnyx.messages).values()) == [1] * 6
        assert len(telnyx.replayed) == 2  # "late" and "lost" were accepted, then replayed
