"""The OneSignal push channel against the loopback OneSignal sandbox (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit._models import Message, Outcome, Secret
from campaignkit._notifier import ChannelSettings
from campaignkit.channels import onesignal as onesignal_module
from campaignkit.channels.onesignal import OneSignalNotifier, idempotency_key
from campaignkit.exceptions import ConfigError, PermanentDeliveryError, TransientDeliveryError
from campaignkit.testing.sandbox._server import Reply, Request
from campaignkit.testing.sandbox.onesignal import OneSignalServer

SECRET = "os_v2_app_s3cr3t-onesignal-key"


def sub(n: int) -> str:
    """A deterministic subscription id (a UUID) for recipient ``n``."""
    return str(uuid.UUID(int=n, version=4))


def message(n: int, address: str | None = None, **kw: Any) -> Message:
    kw.setdefault("title", "Spring sale")
    kw.setdefault("body", "20% off today")
    kw.setdefault("data", {"campaign": "spring"})
    kw.setdefault("idempotency_key", f"run-1:push:r{n}")
    return Message(
        recipient_id=f"r{n}",
        channel="push",
        address=address if address is not None else sub(n),
        **kw,
    )


def make_notifier(
    server: OneSignalServer,
    *,
    token_value: str | None = SECRET,
    timeout: float = 5.0,
    **options: Any,
) -> OneSignalNotifier:
    settings = ChannelSettings(
        channel="push",
        options={**server.channel_options(), **options},
        token=Secret(token_value) if token_value is not None else None,
        timeout=timeout,
    )
    return OneSignalNotifier(settings)


def send(notifier: OneSignalNotifier, messages: list[Message]) -> list[Outcome]:
    conn = notifier.connect()
    try:
        return list(notifier.send_batch(conn, messages))
    finally:
        notifier.disconnect(conn)


class _Server(OneSignalServer):
    """The OneSignal sandbox, plus a 503 for any notification whose content is ``"fail-me"``."""

    def handle(self, request: Request) -> Reply:
        try:
            body = request.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and body.get("contents") == {"en": "fail-me"}:
            return self.server_error_reply(503)
        return super().handle(request)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[_Server]:
    # One server per module: stopping a server takes up to half a second.
    srv = _Server(token=SECRET)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(shared_server: _Server) -> Iterator[_Server]:
    """The shared server, clean, with its default settings restored afterwards."""
    shared_server.reset()
    yield shared_server
    shared_server.reset()
    shared_server.unregistered = set()


# -- registration & class contract -----------------------------------------------------


def test_plugin_registers_the_onesignal_notifier() -> None:
    registered: list[type] = []
    onesignal_module.campaignkit_register_channels(register=registered.append)
    assert registered == [OneSignalNotifier]
    assert OneSignalNotifier.name == "onesignal"
    assert OneSignalNotifier.address_field == "push_token"
    assert OneSignalNotifier.max_batch_size == 2000
    assert OneSignalNotifier.supports_idempotency_keys is True
    assert OneSignalNotifier.token_required is True
    assert OneSignalNotifier.default_rate.requests_per_second == 150
    assert OneSignalServer.provider == OneSignalNotifier.name


# -- happy path ----------------------------------------------------------------------------


def test_happy_path_one_notification_for_shared_content(server: _Server) -> None:
    batch = [message(n) for n in range(3)]

    outcomes = send(make_notifier(server), batch)

    assert all(o.ok for o in outcomes)
    assert len(server.notifications) == 1
    sent = server.notifications[0]
    assert sent["app_id"] == server.app_id
    assert sent["contents"] == {"en": "20% off today"}
    assert sent["headings"] == {"en": "Spring sale"}
    assert sent["data"] == {"campaign": "spring"}
    assert sent["include_subscription_ids"] == [sub(n) for n in range(3)]
    assert "include_aliases" not in sent
    assert uuid.UUID(sent["idempotency_key"]).version == 4
    notification_id = server.messages[0]["notification_id"]
    assert [o.provider_message_id for o in outcomes] == [
        f"{notification_id}:{sub(n)}" for n in range(3)
    ]
    assert [o.provider_message_id for o in outcomes] == [m["id"] for m in server.messages]
    assert [(m["to"], m["title"], m["body"], m["data"]) for m in server.messages] == [
        (sub(n), "Spring sale", "20% off today", {"campaign": "spring"}) for n in range(3)
    ]


def test_external_id_targeting_uses_include_aliases(server: _Server) -> None:
    batch = [message(n, address=f"customer-{n}", title=None, data={}) for n in range(2)]

    outcomes = send(make_notifier(server, targeting="external_id"), batch)

    assert all(o.ok for o in outcomes)
    sent = server.notifications[0]
    assert sent["include_aliases"] == {"external_id": ["customer-0", "customer-1"]}
    assert sent["target_channel"] == "push"
    assert "include_subscription_ids" not in sent
    assert "headings" not in sent
    assert "data" not in sent
    assert [m["to"] for m in server.messages] == ["customer-0", "customer-1"]


def test_different_contents_go_in_separate_requests_outcomes_in_order(server: _Server) -> None:
    batch = [
        message(0, body="Hi Ann"),
        message(1, body="Hi Bob"),
        message(2, body="Hi Ann"),
        message(3, body="Hi Bob", data={"x": "1"}),
    ]
    notifier = make_notifier(server)
    assert notifier.requests_needed(batch) == 3

    outcomes = send(notifier, batch)

    assert all(o.ok for o in outcomes)
    assert len(server.request_times) == 3
    assert [n["include_subscription_ids"] for n in server.notifications] == [
        [sub(0), sub(2)],
        [sub(1)],
        [sub(3)],
    ]
    by_to = {m["to"]: m for m in server.messages}
    for m, outcome in zip(batch, outcomes, strict=True):
        assert by_to[m.address]["body"] == m.body
        assert by_to[m.address]["id"] == outcome.provider_message_id
    keys = [n["idempotency_key"] for n in server.notifications]
    assert len(set(keys)) == 3


def test_empty_batch_makes_no_request(server: _Server) -> None:
    assert send(make_notifier(server), []) == []
    assert server.request_times == []


# -- batching boundaries -----------------------------------------------------------------


def test_a_batch_of_exactly_2000_is_one_request(server: _Server) -> None:
    outcomes = send(make_notifier(server), [message(n) for n in range(2000)])
    assert len(outcomes) == 2000
    assert all(o.ok for o in outcomes)
    assert len(server.request_times) == 1
    assert len(server.messages) == 2000


def test_the_server_refuses_2001_ids(server: _Server) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server), [message(n) for n in range(2001)])
    assert info.value.status_code == 400
    assert "2000" in str(info.value)  # OneSignal's errors text is kept
    assert server.messages == []


# -- per-recipient failures inside HTTP 200 ---------------------------------------------


def test_unsubscribed_subscription_ids_fail_permanently_the_others_are_sent(
    server: _Server,
) -> None:
    server.unregistered = {sub(1), sub(3)}

    outcomes = send(make_notifier(server), [message(n) for n in range(4)])

    assert [o.ok for o in outcomes] == [True, False, True, False]
    assert [o.error_code for o in outcomes] == [None, "unsubscribed", None, "unsubscribed"]
    assert not any(o.transient for o in outcomes)
    assert [m["to"] for m in server.messages] == [sub(0), sub(2)]


def test_invalid_aliases_fail_permanently_the_others_are_sent(server: _Server) -> None:
    server.unregistered = {"customer-1"}
    batch = [message(n, address=f"customer-{n}") for n in range(3)]

    outcomes = send(make_notifier(server, targeting="external_id"), batch)

    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].error_code == "invalid_aliases"
    assert not outcomes[1].transient
    assert [m["to"] for m in server.messages] == ["customer-0", "customer-2"]


@pytest.mark.parametrize("targeting", ["subscription_ids", "external_id"])
def test_all_not_subscribed_fails_every_recipient(server: _Server, targeting: str) -> None:
    batch = [message(n) for n in range(3)]
    server.unregistered = {m.address for m in batch}

    outcomes = send(make_notifier(server, targeting=targeting), batch)

    assert not any(o.ok or o.transient for o in outcomes)
    assert {o.error_code for o in outcomes} == {"unsubscribed"}
    assert "not subscribed" in (outcomes[0].error or "")
    assert server.messages == []


def test_malformed_subscription_ids_fail_without_being_sent(server: _Server) -> None:
    batch = [message(0), message(1, address="not-a-uuid"), message(2)]

    outcomes = send(make_notifier(server), batch)

    assert [o.ok for o in outcomes] == [True, False, True]
    assert outcomes[1].error_code == "invalid_subscription_id"
    assert server.notifications[0]["include_subscription_ids"] == [sub(0), sub(2)]

    server.reset()
    outcomes = send(make_notifier(server), [message(1, address="nope")])
    assert outcomes[0].error_code == "invalid_subscription_id"
    assert server.request_times == []


# -- idempotency ----------------------------------------------------------------------------


def test_resending_the_same_batch_is_deduplicated(server: _Server) -> None:
    batch = [message(n) for n in range(5)]
    notifier = make_notifier(server)

    first = send(notifier, batch)
    second = send(notifier, list(reversed(batch)))  # order does not change the key

    assert len(server.request_times) == 2
    assert len(server.notifications) == 1
    assert len(server.messages) == 5
    assert server.replays == 1
    assert server.key_reuses == 0
    assert [o.provider_message_id for o in first] == [
        o.provider_message_id for o in reversed(second)
    ]


def test_a_retry_after_a_lost_reply_is_not_delivered_twice(server: _Server) -> None:
    batch = [message(n) for n in range(3)]
    notifier = make_notifier(server)
    server.faults.latency = 0.3  # the server processes the request, the client gives up
    with pytest.raises(TransientDeliveryError):
        send(make_notifier(server, timeout=0.1), batch)
    server.faults.latency = 0.0
    deadline = time.monotonic() + 5
    while not server.notifications and time.monotonic() < deadline:
        time.sleep(0.01)  # wait until the server has processed the lost request
    assert len(server.messages) == 3

    outcomes = send(notifier, batch)

    assert all(o.ok for o in outcomes)
    assert len(server.messages) == 3
    assert [o.provider_message_id for o in outcomes] == [m["id"] for m in server.messages]


@settings(max_examples=50, deadline=None)
@given(
    keys=st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=20, unique=True),
    data=st.data(),
)
def test_idempotency_key_is_a_deterministic_order_free_uuid(keys: list[str], data: Any) -> None:
    key = idempotency_key(keys)
    assert key is not None
    assert uuid.UUID(key).version == 4
    assert idempotency_key(data.draw(st.permutations(keys))) == key
    assert idempotency_key([*keys, "another"]) != key
    if len(keys) > 1:
        assert idempotency_key(keys[1:]) != key


def test_messages_without_idempotency_keys_are_sent_without_one(server: _Server) -> None:
    assert idempotency_key(["a", ""]) is None
    outcomes = send(make_notifier(server), [message(0, idempotency_key="")])
    assert outcomes[0].ok
    assert "idempotency_key" not in server.notifications[0]


# -- request errors ---------------------------------------------------------------------


@pytest.mark.parametrize(("token_value", "status"), [("wrong-" + SECRET, 403), (None, 401)])
def test_auth_failure_is_permanent_and_never_shows_the_token(
    server: _Server, token_value: str | None, status: int
) -> None:
    notifier = make_notifier(server, token_value=token_value)
    with pytest.raises(PermanentDeliveryError) as info:
        send(notifier, [message(0), message(1, body="other")])
    exc = info.value
    assert exc.status_code == status
    assert len(server.request_times) == 1  # no second request after an auth failure
    assert server.messages == []
    for text in (str(exc), repr(exc), repr(notifier), repr(notifier.settings)):
        assert SECRET not in text


def test_bad_request_is_permanent_with_onesignal_errors_text(server: _Server) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server), [message(0, body="")])
    assert info.value.status_code == 400
    assert "English language content" in str(info.value)


def test_a_wrong_app_id_is_a_permanent_error(server: _Server) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server, app_id=str(uuid.uuid4())), [message(0)])
    assert info.value.status_code == 400
    assert "app_id" in str(info.value)


def test_scripted_503_is_transient_and_the_next_request_succeeds(server: _Server) -> None:
    notifier = make_notifier(server)
    conn = notifier.connect()
    try:
        server.faults.fail_next(503)
        with pytest.raises(TransientDeliveryError) as info:
            notifier.send_batch(conn, [message(0)])
        assert info.value.status_code == 503
        assert server.messages == []
        assert notifier.send_batch(conn, [message(0)])[0].ok
    finally:
        notifier.disconnect(conn)


def test_429_is_transient_with_retry_after(server: _Server) -> None:
    server.faults.retry_after = 12
    server.faults.fail_next(429)
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message(0)])
    assert info.value.status_code == 429
    assert info.value.retry_after == 12
    assert "API rate limit exceeded." in str(info.value)


def test_dropped_connection_is_transient(server: _Server) -> None:
    server.faults.fail_next("drop")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message(0)])
    assert info.value.code == "connection_error"


def test_stall_past_the_client_timeout_is_transient(server: _Server) -> None:
    server.faults.stall_seconds = 0.6
    server.faults.fail_next("stall")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server, timeout=0.15), [message(0)])
    assert info.value.code == "timeout"


# -- errors after part of a batch was accepted ------------------------------------------


def test_a_transient_error_after_an_accepted_group_fails_the_rest_transiently(
    server: _Server,
) -> None:
    batch = [message(0, body="A"), message(1, body="fail-me"), message(2, body="C")]

    outcomes = send(make_notifier(server), batch)

    assert outcomes[0].ok
    assert [(o.ok, o.transient, o.error_code) for o in outcomes[1:]] == [
        (False, True, "503"),
        (False, True, "503"),
    ]
    assert len(server.request_times) == 2  # the group after the failure was not tried
    assert [m["to"] for m in server.messages] == [sub(0)]


def test_a_bad_request_for_one_group_fails_only_that_group(server: _Server) -> None:
    batch = [message(0, body=""), message(1, body="B"), message(2, body="")]

    outcomes = send(make_notifier(server), batch)

    assert [o.ok for o in outcomes] == [False, True, False]
    assert outcomes[0].error_code == "400"
    assert not outcomes[0].transient
    assert [m["to"] for m in server.messages] == [sub(1)]


def test_a_transient_error_on_the_first_group_is_raised(server: _Server) -> None:
    with pytest.raises(TransientDeliveryError):
        send(make_notifier(server), [message(0, body="fail-me"), message(1, body="B")])
    assert server.messages == []


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({}, "channels.push.options.app_id"),
        ({"app_id": "  "}, "channels.push.options.app_id"),
        ({"app_id": 42}, "channels.push.options.app_id"),
        ({"app_id": "a", "base_url": "http://api.onesignal.com"}, "channels.push.options.base_url"),
        ({"app_id": "a", "targeting": "segments"}, "channels.push.options.targeting"),
        ({"app_id": "a", "appid": "b"}, "channels.push.options.appid"),
    ],
)
def test_bad_options_are_config_errors_naming_the_key(options: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        OneSignalNotifier(ChannelSettings(channel="push", options=options, token=Secret(SECRET)))
    assert info.value.path == path
    assert SECRET not in str(info.value)


def test_defaults_to_the_onesignal_api() -> None:
    notifier = OneSignalNotifier(ChannelSettings(channel="push", options={"app_id": "a"}))
    assert notifier.base_url == "https://api.onesignal.com"
    assert notifier.options.targeting == "subscription_ids"


# -- the sandbox's own contract --------------------------------------------------------


def _post(server: OneSignalServer, body: Any, **kw: Any) -> requests.Response:
    headers = {"Authorization": f"Key {SECRET}", **kw.pop("headers", {})}
    with requests.Session() as http:
        return http.post(
            server.base_url + "/notifications", json=body, headers=headers, timeout=5, **kw
        )


def test_sandbox_replays_a_reused_key_even_with_another_body(server: _Server) -> None:
    key = str(uuid.uuid4())
    base = {"app_id": server.app_id, "contents": {"en": "hi"}, "idempotency_key": key}
    first = _post(server, {**base, "include_subscription_ids": [sub(1)]})
    again = _post(server, {**base, "include_subscription_ids": [sub(2)]})
    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    assert [m["to"] for m in server.messages] == [sub(1)]
    assert (server.replays, server.key_reuses) == (1, 1)


@pytest.mark.parametrize(
    "change",
    [
        {"include_aliases": {"external_id": ["x"]}},  # two targeting modes
        {"include_subscription_ids": ["not-a-uuid"]},
        {"include_subscription_ids": []},
        {"contents": {"fr": "salut"}},
        {"idempotency_key": "not-a-uuid"},
    ],
)
def test_sandbox_refuses_malformed_requests(server: _Server, change: dict[str, Any]) -> None:
    body = {
        "app_id": server.app_id,
        "contents": {"en": "hi"},
        "include_subscription_ids": [sub(1)],
        **change,
    }
    reply = _post(server, body)
    assert reply.status_code == 400
    assert isinstance(reply.json()["errors"], list)
    assert server.messages == []


def test_sandbox_requires_target_channel_with_aliases(server: _Server) -> None:
    body = {
        "app_id": server.app_id,
        "contents": {"en": "hi"},
        "include_aliases": {"external_id": ["c1"]},
    }
    assert _post(server, body).status_code == 400
    assert _post(server, {**body, "target_channel": "push"}).status_code == 200


def test_sandbox_channel_options(server: _Server) -> None:
    assert server.channel_options() == {"base_url": server.base_url, "app_id": server.app_id}
    assert server.token == SECRET


def test_sandbox_serves_the_legacy_path_and_basic_scheme(server: _Server) -> None:
    body = {"app_id": server.app_id, "contents": {"en": "hi"}, "include_player_ids": [sub(1)]}
    with requests.Session() as http:
        reply = http.post(
            server.base_url + "/api/v1/notifications?c=push",
            json=body,
            headers={"Authorization": f"Basic {SECRET}"},
            timeout=5,
        )
    assert reply.status_code == 200
    assert [m["to"] for m in server.messages] == [sub(1)]


@pytest.mark.parametrize(
    "targeting",
    [
        {"excluded_segments": ["Churned"]},  # only with included_segments
        {"included_segments": []},
        {"included_segments": ["A"], "filters": [{"field": "tag"}]},  # two modes
        {"filters": []},
        {"filters": [{"operator": "XOR"}]},
        {"filters": [{"key": "level"}]},
        {
            "include_aliases": {"external_id": ["a"], "onesignal_id": ["b"]},
            "target_channel": "push",
        },
    ],
)
def test_sandbox_refuses_malformed_targeting(server: _Server, targeting: dict[str, Any]) -> None:
    reply = _post(server, {"app_id": server.app_id, "contents": {"en": "hi"}, **targeting})
    assert reply.status_code == 400
    assert server.messages == []


def test_sandbox_template_id_must_be_a_uuid_and_replaces_contents(server: _Server) -> None:
    base = {"app_id": server.app_id, "included_segments": ["All"]}
    assert _post(server, {**base, "template_id": "welcome"}).status_code == 400
    assert _post(server, base).status_code == 400  # neither contents nor template
    assert _post(server, {**base, "template_id": sub(7)}).status_code == 200
    assert [m["template_id"] for m in server.messages] == [sub(7)]
