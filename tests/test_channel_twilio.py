"""The Twilio SMS channel against the loopback Twilio sandbox (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit import Channel, Pipeline, Template, get_plugin_manager
from campaignkit._models import Message, Outcome, Rate, Secret
from campaignkit._notifier import ChannelSettings
from campaignkit.channels import twilio as twilio_module
from campaignkit.channels.twilio import TwilioNotifier
from campaignkit.exceptions import ConfigError, PermanentDeliveryError, TransientDeliveryError
from campaignkit.testing import StaticSource
from campaignkit.testing.sandbox._server import Faults, Reply, Request
from campaignkit.testing.sandbox.twilio import TwilioServer, sms_segments

SECRET = "s3cr3t-twilio-auth-token"
WRONG = "wr0ng-twilio-auth-token"
SID = re.compile(r"SM[0-9a-f]{32}")


def message(n: int = 1, address: str = "+15551230001", body: str = "Hi there") -> Message:
    return Message(
        recipient_id=f"r{n}",
        channel="sms",
        address=address,
        body=body,
        idempotency_key=f"run-1:sms:r{n}",
    )


def make_notifier(
    server: TwilioServer,
    *,
    token_value: str | None = SECRET,
    timeout: float = 5.0,
    env: dict[str, str] | None = None,
    **options: Any,
) -> TwilioNotifier:
    opts = {**server.channel_options(), **options}
    return TwilioNotifier(
        ChannelSettings(
            channel="sms",
            options={k: v for k, v in opts.items() if v is not None},
            token=Secret(token_value) if token_value is not None else None,
            timeout=timeout,
            env=env or {},
        )
    )


def send(notifier: TwilioNotifier, messages: list[Message]) -> list[Outcome]:
    conn = notifier.connect()
    try:
        return list(notifier.send_batch(conn, messages))
    finally:
        notifier.disconnect(conn)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[TwilioServer]:
    with TwilioServer(token=SECRET) as srv:
        yield srv


@pytest.fixture
def server(shared_server: TwilioServer) -> Iterator[TwilioServer]:
    """The module's server, reset to its defaults around each test."""
    _restore(shared_server)
    yield shared_server
    _restore(shared_server)


def _restore(srv: TwilioServer) -> None:
    srv.reset()
    srv.faults = Faults()
    srv.unsubscribed = {"+15005550004"}
    srv.landlines = {"+15005550009"}
    srv.invalid = {"+15005550001"}


# -- registration & class contract -----------------------------------------------------


def test_plugin_registers_the_twilio_notifier() -> None:
    registered: list[type] = []
    twilio_module.campaignkit_register_channels(register=registered.append)
    assert registered == [TwilioNotifier]
    assert TwilioNotifier.name == "twilio"
    assert TwilioNotifier.address_field == "phone"
    assert TwilioNotifier.max_batch_size == 1
    assert TwilioNotifier.supports_idempotency_keys is False
    assert TwilioNotifier.default_rate == Rate(messages_per_second=10.0, requests_per_second=10.0)


def test_sandbox_channel_options_shape(server: TwilioServer) -> None:
    options = server.channel_options()
    assert set(options) == {"base_url", "account_sid", "from"}
    assert options["base_url"].startswith("http://127.0.0.1:")
    assert re.fullmatch(r"AC[0-9a-f]{32}", options["account_sid"])
    assert TwilioServer.provider == "twilio"


# -- happy path ------------------------------------------------------------------------


def test_sends_form_encoded_with_basic_auth(server: TwilioServer) -> None:
    outcomes = send(make_notifier(server), [message(body="Your code is 42")])

    assert len(outcomes) == 1
    assert outcomes[0].ok
    assert outcomes[0].provider_message_id is not None
    assert SID.fullmatch(outcomes[0].provider_message_id)
    [recorded] = server.messages
    assert recorded["id"] == outcomes[0].provider_message_id
    assert recorded["to"] == "+15551230001"
    assert recorded["from"] == server.from_number
    assert recorded["body"] == "Your code is 42"
    assert recorded["content_type"] == "application/x-www-form-urlencoded"
    assert recorded["account_sid"] == server.account_sid
    assert recorded["status"] == "queued"
    assert server.rejected == []


def test_batch_outcomes_keep_order(server: TwilioServer) -> None:
    outcomes = send(
        make_notifier(server),
        [message(1, "+15551230001"), message(2, "+15550101234"), message(3, "+15551230003")],
    )
    assert [o.ok for o in outcomes] == [True, False, True]
    assert [m["to"] for m in server.messages] == ["+15551230001", "+15551230003"]


def test_messaging_service_and_optional_parameters(server: TwilioServer) -> None:
    notifier = make_notifier(
        server,
        **{"from": None},
        messaging_service_sid=server.messaging_service_sid,
        status_callback="https://hooks.example.com/twilio",
        validity_period=600,
    )
    [outcome] = send(notifier, [message()])
    assert outcome.ok
    [recorded] = server.messages
    assert recorded["from"] is None
    assert recorded["messaging_service_sid"] == server.messaging_service_sid
    assert recorded["status"] == "accepted"
    assert recorded["status_callback"] == "https://hooks.example.com/twilio"
    assert recorded["validity_period"] == "600"


def test_account_sid_from_the_environment_given(
    server: TwilioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MY_TWILIO_SID", "AC" + "0" * 32)  # never read: not what was given
    env = {"MY_TWILIO_SID": server.account_sid}
    notifier = make_notifier(server, account_sid=None, account_sid_env="MY_TWILIO_SID", env=env)
    assert notifier.account_sid == server.account_sid
    assert send(notifier, [message()])[0].ok


def test_account_sid_is_never_read_from_os_environ(
    server: TwilioServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", server.account_sid)
    err = _config_error(server, account_sid=None)
    assert err.path == "channels.sms.options.account_sid"


@pytest.mark.parametrize(
    "body",
    [
        "Olá! Ünïcødé ✓ 你好 🎉",
        "emoji only 👍🏽👨‍👩‍👧",
        "line\r\nbreaks & = + % ?",
        "€ [GSM] {ext} ~",
    ],
)
def test_unicode_bodies_arrive_intact(server: TwilioServer, body: str) -> None:
    [outcome] = send(make_notifier(server), [message(body=body)])
    assert outcome.ok
    assert server.messages[-1]["body"] == body


@settings(max_examples=60, deadline=None)
@given(body=st.text(min_size=1, max_size=TwilioServer.MAX_BODY))
def test_any_unicode_body_round_trips_through_the_form(
    shared_server: TwilioServer, body: str
) -> None:
    [outcome] = send(make_notifier(shared_server), [message(body=body)])
    assert outcome.ok
    recorded = next(m for m in shared_server.messages if m["id"] == outcome.provider_message_id)
    assert recorded["body"] == body


def test_segment_counting() -> None:
    assert sms_segments("a" * 160) == (1, "GSM-7")
    assert sms_segments("a" * 161) == (2, "GSM-7")
    assert sms_segments("€" * 80) == (1, "GSM-7")  # extension characters cost two
    assert sms_segments("é" * 160) == (1, "GSM-7")
    assert sms_segments("ñ" * 70 + "你") == (2, "UCS-2")
    assert sms_segments("👍" * 35) == (1, "UCS-2")  # two UTF-16 units each


# -- per-recipient permanent failures --------------------------------------------------


@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("+15550101234", "21211"),  # the reserved invalid range
        ("+15005550001", "21211"),  # Twilio's magic invalid number
        ("5551230001", "21211"),  # not E.164
        ("+15005550004", "21610"),  # unsubscribed (STOP)
        ("+15005550009", "21614"),  # not a mobile number
    ],
)
def test_recipient_errors_are_permanent_outcomes_with_the_twilio_code(
    server: TwilioServer, address: str, code: str
) -> None:
    [outcome] = send(make_notifier(server), [message(address=address)])
    assert not outcome.ok
    assert not outcome.transient
    assert outcome.error_code == code
    assert outcome.error is not None
    assert f"Twilio {code}" in outcome.error
    assert server.messages == []
    assert server.rejected == [{"to": address, "code": code, "status": 400}]


def test_configured_sets_and_predicate(server: TwilioServer) -> None:
    server.unsubscribed.add("+15551230077")
    server.landlines.add("+15551230078")
    server.invalid.add("+15551230079")
    outcomes = send(
        make_notifier(server),
        [message(1, "+15551230077"), message(2, "+15551230078"), message(3, "+15551230079")],
    )
    assert [o.error_code for o in outcomes] == ["21610", "21614", "21211"]


def test_body_over_1600_characters_fails_with_21617(server: TwilioServer) -> None:
    [outcome] = send(make_notifier(server), [message(body="x" * 1601)])
    assert not outcome.ok
    assert not outcome.transient
    assert outcome.error_code == "21617"


# -- whole-request failures ------------------------------------------------------------


def test_wrong_token_is_a_permanent_error_without_secrets(server: TwilioServer) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server, token_value=WRONG), [message()])
    exc = info.value
    assert exc.code == "20003"
    assert exc.status_code == 401
    for text in (str(exc), repr(exc), repr(exc.args)):
        assert WRONG not in text
        assert SECRET not in text
    assert server.messages == []


def test_wrong_account_is_refused(server: TwilioServer) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server, account_sid="AC" + "0" * 32), [message()])
    assert info.value.code == "20003"


def test_notifier_repr_hides_the_token(server: TwilioServer) -> None:
    notifier = make_notifier(server)
    assert SECRET not in repr(notifier)
    assert SECRET not in repr(notifier.settings)


def test_missing_token_is_permanent(server: TwilioServer) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server, token_value=None), [message()])
    assert info.value.code == "no_token"
    assert server.request_times == []


def test_sender_not_on_the_account_is_permanent(server: TwilioServer) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server, **{"from": "+15551239999"}), [message()])
    assert info.value.code == "21606"


@pytest.mark.parametrize(("status", "code"), [(503, "20503"), (500, "20500")])
def test_server_errors_are_transient(server: TwilioServer, status: int, code: str) -> None:
    server.faults.fail_next(status)
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message()])
    assert info.value.code == code
    assert info.value.status_code == status
    assert server.messages == []
    # the next request goes through
    assert send(make_notifier(server), [message()])[0].ok


def test_rate_limit_is_transient_with_retry_after(server: TwilioServer) -> None:
    server.faults.retry_after = 0.25
    server.faults.fail_next(429)
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message()])
    assert info.value.code == "20429"
    assert info.value.status_code == 429
    assert info.value.retry_after == pytest.approx(0.25)


def test_sliding_window_rate_limit(server: TwilioServer) -> None:
    server.faults.rate_limit = 2
    notifier = make_notifier(server)
    conn = notifier.connect()
    try:
        assert notifier.send_batch(conn, [message(1)])[0].ok
        assert notifier.send_batch(conn, [message(2)])[0].ok
        with pytest.raises(TransientDeliveryError) as info:
            notifier.send_batch(conn, [message(3)])
    finally:
        notifier.disconnect(conn)
    assert info.value.code == "20429"


def test_dropped_connection_is_transient(server: TwilioServer) -> None:
    server.faults.fail_next("drop")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message()])
    assert info.value.code == "connection_error"


def test_stall_past_the_timeout_is_transient(server: TwilioServer) -> None:
    server.faults.stall_seconds = 0.6
    server.faults.fail_next("stall")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server, timeout=0.15), [message()])
    assert info.value.code == "timeout"


class _QueueFullServer(TwilioServer):
    def handle(self, request: Request) -> Reply:
        return self.error(400, 21611, "This 'From' number has exceeded the queue size")


def test_sender_queue_full_is_transient() -> None:
    with _QueueFullServer(token=SECRET) as srv, pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(srv), [message()])
    assert info.value.code == "21611"
    assert info.value.status_code == 400


# -- configuration ---------------------------------------------------------------------


def _config_error(server: TwilioServer, **options: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        make_notifier(server, **options)
    return info.value


def test_missing_sender_names_the_from_key(server: TwilioServer) -> None:
    err = _config_error(server, **{"from": None})
    assert err.path == "channels.sms.options.from"
    assert "messaging_service_sid" in str(err)


def test_clear_text_remote_base_url_is_refused(server: TwilioServer) -> None:
    err = _config_error(server, base_url="http://api.twilio.com")
    assert err.path == "channels.sms.options.base_url"


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"from": "not a number!"}, "channels.sms.options.from"),
        ({"from": 15551230001}, "channels.sms.options.from"),
        ({"account_sid": "AC123"}, "channels.sms.options.account_sid"),
        ({"messaging_service_sid": "MG1"}, "channels.sms.options.messaging_service_sid"),
        ({"validity_period": 0}, "channels.sms.options.validity_period"),
        ({"validity_period": 36_001}, "channels.sms.options.validity_period"),
        ({"status_callback": "ftp://x"}, "channels.sms.options.status_callback"),
        ({"bogus": 1}, "channels.sms.options.bogus"),
        ({"from_": "+15005550006"}, "channels.sms.options.from_"),
    ],
)
def test_invalid_options_name_the_key(
    server: TwilioServer, options: dict[str, Any], path: str
) -> None:
    assert _config_error(server, **options).path == path


def test_missing_account_sid(server: TwilioServer) -> None:
    err = _config_error(server, account_sid=None)
    assert err.path == "channels.sms.options.account_sid"
    assert "TWILIO_ACCOUNT_SID" in str(err)
    err = _config_error(server, account_sid=None, env={"TWILIO_ACCOUNT_SID": "nonsense"})
    assert err.path == "channels.sms.options.account_sid_env"


def test_pipeline_env_reaches_the_account_sid(
    server: TwilioServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TWILIO_ACCOUNT_SID", raising=False)
    options = {k: v for k, v in server.channel_options().items() if k != "account_sid"}
    channel = Channel(
        name="sms", provider="twilio", template=Template(body="Hi {{ id }}"), options=options
    )
    source = StaticSource.from_dicts(
        [{"id": "c1", "phone": "+14155550001", "consent": {"sms": True}}]
    )
    env = {"SMS_API_TOKEN": SECRET, "TWILIO_ACCOUNT_SID": server.account_sid}
    pipeline = Pipeline(
        "t",
        source,
        [channel],
        plugins=get_plugin_manager(load_entrypoints=False),
        env=env,
        base_dir=tmp_path,
    )
    result = pipeline.run().channels["sms"]
    assert result.sent == 1, result.reasons
    [recorded] = server.messages
    assert recorded["account_sid"] == server.account_sid
    with pytest.raises(ConfigError, match="TWILIO_ACCOUNT_SID"):
        Pipeline(
            "t",
            source,
            [channel],
            plugins=get_plugin_manager(load_entrypoints=False),
            env={"SMS_API_TOKEN": SECRET},
            base_dir=tmp_path,
        ).run()


def test_every_option_problem_is_reported_at_once(server: TwilioServer) -> None:
    err = _config_error(
        server,
        **{"from": "not a number!"},
        messaging_service_sid="MG1",
        validity_period=0,
        status_callback="ftp://x",
        base_url="http://api.twilio.com",
        bogus=1,
    )
    assert sorted(p.path or "" for p in err.problems) == [
        f"channels.sms.options.{key}"
        for key in (
            "base_url",
            "bogus",
            "from",
            "messaging_service_sid",
            "status_callback",
            "validity_period",
        )
    ]
    assert "expected 1 to 36000 seconds, got 0" in str(err)


def test_accepted_senders() -> None:
    base = {"account_sid": "AC" + "a" * 32, "base_url": "https://api.twilio.com"}
    for sender in ("+15005550006", "12345", "ACME Shop"):
        TwilioNotifier(ChannelSettings(channel="sms", options={**base, "from": sender}))


# -- the sandbox's own contract ------------------------------------------------------------


def _post(server: TwilioServer, **kwargs: Any) -> requests.Response:
    url = f"{server.base_url}/2010-04-01/Accounts/{server.account_sid}/Messages.json"
    kwargs.setdefault("auth", (server.account_sid, SECRET))
    with requests.Session() as session:
        return session.post(url, timeout=5, **kwargs)


def test_sandbox_ignores_json_bodies_like_twilio(server: TwilioServer) -> None:
    reply = _post(server, json={"To": "+15551230001", "From": server.from_number, "Body": "x"})
    assert reply.status_code == 400
    assert reply.json()["code"] == 21604


@pytest.mark.parametrize(
    ("form", "code"),
    [
        ({"From": TwilioServer.DEFAULT_FROM, "Body": "x"}, 21604),
        ({"To": "+15551230001", "Body": "x"}, 21603),
        ({"To": "+15551230001", "From": TwilioServer.DEFAULT_FROM}, 21602),
        ({"To": "+15551230001", "MessagingServiceSid": "MG" + "0" * 32, "Body": "x"}, 21701),
    ],
)
def test_sandbox_required_parameters(server: TwilioServer, form: dict[str, str], code: int) -> None:
    reply = _post(server, data=form)
    assert reply.status_code == 400
    body = reply.json()
    assert body["code"] == code
    assert body["status"] == 400
    assert body["more_info"] == f"https://www.twilio.com/docs/errors/{code}"


def test_sandbox_auth_reply(server: TwilioServer) -> None:
    reply = _post(server, data={"To": "+15551230001"}, auth=None)
    assert reply.status_code == 401
    assert reply.json()["code"] == 20003
    assert reply.headers["WWW-Authenticate"].startswith("Basic")


def test_sandbox_success_shape(server: TwilioServer) -> None:
    reply = _post(server, data={"To": "+15551230001", "From": server.from_number, "Body": "hé"})
    assert reply.status_code == 201
    body = reply.json()
    assert SID.fullmatch(body["sid"])
    assert body["status"] == "queued"
    assert body["account_sid"] == server.account_sid
    assert body["num_segments"] == "1"
    assert body["direction"] == "outbound-api"


def test_sandbox_unknown_path(server: TwilioServer) -> None:
    with requests.Session() as session:
        reply = session.get(f"{server.base_url}/2010-04-01/Nope.json", timeout=5)
    assert reply.status_code == 404
    assert reply.json()["code"] == 20404
