"""The Expo push channel against the loopback Expo sandbox (real HTTP on 127.0.0.1)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignkit._models import Message, Outcome, Secret
from campaignkit._notifier import ChannelSettings
from campaignkit.channels import expo as expo_module
from campaignkit.channels.expo import ExpoNotifier
from campaignkit.exceptions import ConfigError, PermanentDeliveryError, TransientDeliveryError
from campaignkit.testing.sandbox._server import Reply, Request
from campaignkit.testing.sandbox.expo import ExpoServer

SECRET = "s3cr3t-expo-access-token"


def token(n: int) -> str:
    return f"ExponentPushToken[tok-{n:05d}]"


def message(n: int, address: str | None = None, **kw: Any) -> Message:
    kw.setdefault("title", f"Hello {n}")
    kw.setdefault("body", f"Your offer #{n}")
    kw.setdefault("data", {"offer": str(n)})
    return Message(
        recipient_id=f"r{n}",
        channel="push",
        address=address if address is not None else token(n),
        idempotency_key=f"run-1:push:r{n}",
        **kw,
    )


def make_notifier(
    server: ExpoServer,
    *,
    token_value: str | None = None,
    timeout: float = 5.0,
    **options: Any,
) -> ExpoNotifier:
    settings = ChannelSettings(
        channel="push",
        options={**server.channel_options(), **options},
        token=Secret(token_value) if token_value is not None else None,
        timeout=timeout,
    )
    return ExpoNotifier(settings)


def send(notifier: ExpoNotifier, messages: list[Message]) -> list[Outcome]:
    conn = notifier.connect()
    try:
        return list(notifier.send_batch(conn, messages))
    finally:
        notifier.disconnect(conn)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[ExpoServer]:
    # One server per module: stopping a server takes up to half a second.
    srv = ExpoServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(shared_server: ExpoServer) -> Iterator[ExpoServer]:
    """The shared server, clean, with its default settings restored afterwards."""
    shared_server.reset()
    yield shared_server
    shared_server.reset()
    shared_server.token = ExpoServer.DEFAULT_TOKEN
    shared_server.require_auth = False
    shared_server.unregistered = set()
    shared_server.ticket_errors = {}


# -- registration & class contract -----------------------------------------------------


def test_plugin_registers_the_expo_notifier() -> None:
    registered: list[type] = []
    expo_module.campaignkit_register_channels(register=registered.append)
    assert registered == [ExpoNotifier]
    assert ExpoNotifier.name == "expo"
    assert ExpoNotifier.address_field == "push_token"
    assert ExpoNotifier.max_batch_size == 100
    assert ExpoNotifier.supports_idempotency_keys is False
    assert ExpoNotifier.token_required is False
    assert ExpoNotifier.default_rate.messages_per_second == 600
    assert ExpoServer.provider == ExpoNotifier.name


# -- happy path ----------------------------------------------------------------------------


def test_happy_path_delivers_content_and_returns_ticket_ids(server: ExpoServer) -> None:
    notifier = make_notifier(server, ttl=3600, priority="high", sound="default", channel_id="promo")
    batch = [message(1), message(2, title=None, data={}), message(3)]

    outcomes = send(notifier, batch)

    assert all(o.ok for o in outcomes)
    assert [o.provider_message_id for o in outcomes] == [m["id"] for m in server.messages]
    assert len({o.provider_message_id for o in outcomes}) == 3
    first, second, _ = server.messages
    assert first == {
        "to": token(1),
        "id": outcomes[0].provider_message_id,
        "title": "Hello 1",
        "body": "Your offer #1",
        "data": {"offer": "1"},
        "ttl": 3600,
        "priority": "high",
        "sound": "default",
        "channel_id": "promo",
        # fields the notifier does not send
        "subtitle": None,
        "expiration": None,
        "badge": None,
        "category_id": None,
        "mutable_content": None,
        "interruption_level": None,
        # the message object as sent
        "message": {
            "to": token(1),
            "title": "Hello 1",
            "body": "Your offer #1",
            "data": {"offer": "1"},
            "ttl": 3600,
            "priority": "high",
            "sound": "default",
            "channelId": "promo",
        },
    }
    assert second["title"] is None
    assert second["data"] == {}
    assert server.requests_per_second() == 1  # one request for the batch


def test_empty_batch_makes_no_request(server: ExpoServer) -> None:
    assert send(make_notifier(server), []) == []
    assert server.request_times == []


def test_without_token_no_authorization_header_is_needed(server: ExpoServer) -> None:
    outcomes = send(make_notifier(server), [message(1)])
    assert outcomes[0].ok


def test_bearer_token_is_sent_when_set(server: ExpoServer) -> None:
    server.require_auth, server.token = True, SECRET
    outcomes = send(make_notifier(server, token_value=SECRET), [message(1)])
    assert outcomes[0].ok
    assert len(server.messages) == 1


@pytest.mark.parametrize("token_value", [None, "wrong-" + SECRET])
def test_auth_failure_is_permanent_and_never_shows_the_token(
    server: ExpoServer, token_value: str | None
) -> None:
    server.require_auth, server.token = True, SECRET
    notifier = make_notifier(server, token_value=token_value)
    with pytest.raises(PermanentDeliveryError) as info:
        send(notifier, [message(1)])
    assert server.messages == []
    exc = info.value
    assert exc.status_code == 401
    assert exc.code == "UNAUTHORIZED"
    for text in (str(exc), repr(exc), repr(notifier), repr(notifier.settings)):
        assert SECRET not in text


# -- batching boundaries -----------------------------------------------------------------


def test_a_batch_of_exactly_100_is_one_request(server: ExpoServer) -> None:
    outcomes = send(make_notifier(server), [message(n) for n in range(100)])
    assert len(outcomes) == 100
    assert all(o.ok for o in outcomes)
    assert [m["to"] for m in server.messages] == [token(n) for n in range(100)]
    assert len(server.request_times) == 1


def test_the_server_refuses_101_notifications(server: ExpoServer) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server), [message(n) for n in range(101)])
    assert info.value.code == "PUSH_TOO_MANY_NOTIFICATIONS"
    assert info.value.status_code == 400
    assert server.messages == []


# -- per-recipient failures inside HTTP 200 ---------------------------------------------


def test_ticket_errors_map_to_outcomes_in_order(server: ExpoServer) -> None:
    server.unregistered = {token(2)}
    server.ticket_errors = {
        token(4): "InvalidCredentials",
        token(5): "MessageRateExceeded",
        token(6): "MessageTooBig",
    }
    batch = [message(n) for n in range(7)]
    batch[3] = message(3, address="not-an-expo-token")
    outcomes = send(make_notifier(server), batch)
    sent_ids = [m["id"] for m in server.messages]

    assert [o.ok for o in outcomes] == [True, True, False, False, False, False, False]
    assert [o.error_code for o in outcomes[2:]] == [
        "DeviceNotRegistered",
        "DeviceNotRegistered",
        "InvalidCredentials",
        "MessageRateExceeded",
        "MessageTooBig",
    ]
    assert [o.transient for o in outcomes[2:]] == [False, False, False, True, False]
    assert token(2) in (outcomes[2].error or "")
    assert [o.provider_message_id for o in outcomes[:2]] == sent_ids


def test_an_oversized_message_gets_message_too_big(server: ExpoServer) -> None:
    outcomes = send(make_notifier(server), [message(1, body="x" * 5000), message(2)])
    assert outcomes[0].error_code == "MessageTooBig"
    assert not outcomes[0].transient
    assert outcomes[1].ok


@pytest.fixture
def shared(server: ExpoServer) -> Iterator[tuple[ExpoServer, ExpoNotifier, requests.Session]]:
    notifier = make_notifier(server)
    conn = notifier.connect()
    try:
        yield server, notifier, conn
    finally:
        notifier.disconnect(conn)


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(registered=st.lists(st.booleans(), min_size=1, max_size=100))
def test_outcomes_follow_the_batch_order(
    shared: tuple[ExpoServer, ExpoNotifier, requests.Session], registered: list[bool]
) -> None:
    srv, notifier, conn = shared
    batch = [
        message(n) if ok else message(n, address=f"ExpoPushToken[gone-{n}]")
        for n, ok in enumerate(registered)
    ]
    srv.unregistered = {m.address for m, ok in zip(batch, registered, strict=True) if not ok}
    before = len(srv.messages)

    outcomes = notifier.send_batch(conn, batch)

    assert [o.ok for o in outcomes] == registered
    assert all(o.error_code == "DeviceNotRegistered" for o in outcomes if not o.ok)
    recorded = srv.messages[before:]
    assert [m["to"] for m in recorded] == [
        m.address for m, ok in zip(batch, registered, strict=True) if ok
    ]
    assert [o.provider_message_id for o in outcomes if o.ok] == [m["id"] for m in recorded]


# -- transient request errors ----------------------------------------------------------


def test_scripted_503_is_transient_and_the_next_request_succeeds(server: ExpoServer) -> None:
    notifier = make_notifier(server)
    conn = notifier.connect()
    try:
        server.faults.fail_next(503)
        with pytest.raises(TransientDeliveryError) as info:
            notifier.send_batch(conn, [message(1)])
        assert info.value.status_code == 503
        assert info.value.code == "INTERNAL_SERVER_ERROR"
        assert server.messages == []
        assert notifier.send_batch(conn, [message(1)])[0].ok
    finally:
        notifier.disconnect(conn)


def test_429_is_transient_with_retry_after(server: ExpoServer) -> None:
    server.faults.retry_after = 7
    server.faults.fail_next(429)
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message(1)])
    assert info.value.status_code == 429
    assert info.value.code == "TOO_MANY_REQUESTS"
    assert info.value.retry_after == 7


def test_rate_limit_fault_answers_expo_429(server: ExpoServer) -> None:
    server.faults.rate_limit = 1
    notifier = make_notifier(server)
    conn = notifier.connect()
    try:
        assert notifier.send_batch(conn, [message(1)])[0].ok
        with pytest.raises(TransientDeliveryError) as info:
            notifier.send_batch(conn, [message(2)])
    finally:
        notifier.disconnect(conn)
    assert info.value.code == "TOO_MANY_REQUESTS"
    assert info.value.retry_after == 1


def test_dropped_connection_is_transient(server: ExpoServer) -> None:
    server.faults.fail_next("drop")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message(1)])
    assert info.value.code == "connection_error"


def test_stall_past_the_client_timeout_is_transient(server: ExpoServer) -> None:
    server.faults.stall_seconds = 0.6
    server.faults.fail_next("stall")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server, timeout=0.15), [message(1)])
    assert info.value.code == "timeout"


class _CustomReplyServer(ExpoServer):
    """An Expo sandbox whose 200 replies are replaced by ``reply``."""

    reply: Reply = Reply(200, {"data": []})

    def handle(self, request: Request) -> Reply:
        real = super().handle(request)
        return self.reply if real.status == 200 else real


@pytest.fixture(scope="module")
def custom_server() -> Iterator[_CustomReplyServer]:
    srv = _CustomReplyServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_too_many_requests_code_is_transient_whatever_the_status(
    custom_server: _CustomReplyServer,
) -> None:
    custom_server.reply = Reply(
        400, {"errors": [{"code": "TOO_MANY_REQUESTS", "message": "slow down"}]}
    )
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(custom_server), [message(1)])
    assert info.value.code == "TOO_MANY_REQUESTS"


@pytest.mark.parametrize(
    "reply",
    [
        Reply(200, {"data": [{"status": "ok", "id": "only-one"}]}),
        Reply(200, {"data": "nope"}),
        Reply(200, b"<html>proxy</html>"),
    ],
    ids=["fewer-tickets", "bad-data", "not-json"],
)
def test_a_reply_that_does_not_match_the_batch_is_a_permanent_protocol_error(
    custom_server: _CustomReplyServer, reply: Reply
) -> None:
    custom_server.reply = reply
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(custom_server), [message(1), message(2)])
    assert info.value.code == "protocol_error"


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"base_url": "http://exp.example.com"}, "channels.push.options.base_url"),
        ({"base_url": "ftp://127.0.0.1"}, "channels.push.options.base_url"),
        ({"priority": "urgent"}, "channels.push.options.priority"),
        ({"ttl": -1}, "channels.push.options.ttl"),
        ({"ttl": "soon"}, "channels.push.options.ttl"),
        ({"badge": 1}, "channels.push.options.badge"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        ExpoNotifier(ChannelSettings(channel="push", options=options))
    assert info.value.path == path


def test_defaults_to_the_expo_host() -> None:
    notifier = ExpoNotifier(ChannelSettings(channel="push"))
    assert notifier.base_url == "https://exp.host"


# -- the sandbox's own contract --------------------------------------------------------


def test_sandbox_accepts_a_single_object_and_token_lists(server: ExpoServer) -> None:
    url = server.base_url + "/--/api/v2/push/send"
    with requests.Session() as http:
        one = http.post(url, json={"to": token(1), "body": "hi"}, timeout=5)
        many = http.post(url, json=[{"to": [token(2), token(3)], "body": "yo"}], timeout=5)
        bad = http.post(url, json=[{"to": 5}], timeout=5)
        text = http.post(url, data=b"[]", headers={"Content-Type": "text/plain"}, timeout=5)
    assert one.status_code == 200
    assert [t["status"] for t in one.json()["data"]] == ["ok"]
    assert [t["status"] for t in many.json()["data"]] == ["ok", "ok"]
    assert [m["to"] for m in server.messages] == [token(1), token(2), token(3)]
    assert bad.status_code == 400
    assert bad.json()["errors"][0]["code"] == "VALIDATION_ERROR"
    assert text.status_code == 400
    assert server.channel_options() == {"base_url": server.base_url}


def test_sandbox_receipts_for_known_tickets_only(server: ExpoServer) -> None:
    server.receipt_errors = {token(2): "MessageTooBig"}
    base = server.base_url + "/--/api/v2/push"
    with requests.Session() as http:
        sent = http.post(f"{base}/send", json=[{"to": token(1)}, {"to": token(2)}], timeout=5)
        ids = [t["id"] for t in sent.json()["data"]]
        receipts = http.post(f"{base}/getReceipts", json={"ids": [*ids, "unknown"]}, timeout=5)
        too_many = http.post(f"{base}/getReceipts", json={"ids": ["x"] * 1001}, timeout=5)
    server.receipt_errors = {}
    data = receipts.json()["data"]
    assert set(data) == set(ids)
    assert data[ids[0]] == {"status": "ok"}
    assert (data[ids[1]]["status"], data[ids[1]]["details"]) == (
        "error",
        {"error": "MessageTooBig"},
    )
    assert too_many.status_code == 400
    assert too_many.json()["errors"][0]["code"] == "PUSH_TOO_MANY_RECEIPTS"
