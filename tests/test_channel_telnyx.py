"""The Telnyx SMS channel against the loopback Telnyx sandbox (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit._http import parse_retry_after
from campaignkit._models import Message, Outcome, Rate, Secret
from campaignkit._notifier import ChannelSettings
from campaignkit.channels import telnyx as telnyx_module
from campaignkit.channels.telnyx import TelnyxNotifier
from campaignkit.exceptions import ConfigError, PermanentDeliveryError, TransientDeliveryError
from campaignkit.testing.sandbox._server import Faults, Reply, Request
from campaignkit.testing.sandbox.telnyx import TelnyxServer

SECRET = "KEY0123-s3cr3t-telnyx-api-key"
WRONG = "KEY9999-wr0ng-telnyx-api-key"
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def message(n: int = 1, address: str = "+15551230001", body: str = "Hi there") -> Message:
    return Message(
        recipient_id=f"r{n}",
        channel="sms",
        address=address,
        body=body,
        idempotency_key=f"run-1:sms:r{n}",
    )


def make_notifier(
    server: TelnyxServer,
    *,
    token_value: str | None = SECRET,
    timeout: float = 5.0,
    **options: Any,
) -> TelnyxNotifier:
    opts = {**server.channel_options(), **options}
    return TelnyxNotifier(
        ChannelSettings(
            channel="sms",
            options={k: v for k, v in opts.items() if v is not None},
            token=Secret(token_value) if token_value is not None else None,
            timeout=timeout,
        )
    )


def send(notifier: TelnyxNotifier, messages: list[Message]) -> list[Outcome]:
    conn = notifier.connect()
    try:
        return list(notifier.send_batch(conn, messages))
    finally:
        notifier.disconnect(conn)


@pytest.fixture(scope="module")
def shared_server() -> Iterator[TelnyxServer]:
    with TelnyxServer(token=SECRET) as srv:
        yield srv


def _restore(srv: TelnyxServer) -> None:
    srv.reset()
    srv.faults = Faults()
    srv.unsubscribed = set()
    srv.landlines = set()
    srv.invalid = set()


@pytest.fixture
def server(shared_server: TelnyxServer) -> Iterator[TelnyxServer]:
    """The module's server, reset to its defaults around each test."""
    _restore(shared_server)
    yield shared_server
    _restore(shared_server)


# -- registration & class contract -----------------------------------------------------


def test_plugin_registers_the_telnyx_notifier() -> None:
    registered: list[type] = []
    telnyx_module.campaignkit_register_channels(register=registered.append)
    assert registered == [TelnyxNotifier]
    assert TelnyxNotifier.name == "telnyx"
    assert TelnyxNotifier.address_field == "phone"
    assert TelnyxNotifier.max_batch_size == 1
    assert TelnyxNotifier.supports_idempotency_keys is True
    assert TelnyxNotifier.default_rate == Rate(messages_per_second=50.0, requests_per_second=50.0)


def test_sandbox_channel_options_shape(server: TelnyxServer) -> None:
    options = server.channel_options()
    assert set(options) == {"base_url", "from"}
    assert options["base_url"].startswith("http://127.0.0.1:")
    assert TelnyxServer.provider == "telnyx"


# -- happy path ------------------------------------------------------------------------


def test_sends_json_with_bearer_auth(server: TelnyxServer) -> None:
    outcomes = send(make_notifier(server), [message(body="Your code is 42")])

    assert len(outcomes) == 1
    assert outcomes[0].ok
    assert outcomes[0].provider_message_id is not None
    assert UUID.fullmatch(outcomes[0].provider_message_id)
    [recorded] = server.messages
    assert recorded["id"] == outcomes[0].provider_message_id
    assert recorded["to"] == "+15551230001"
    assert recorded["from"] == server.from_number
    assert recorded["body"] == "Your code is 42"
    assert recorded["content_type"] == "application/json"
    assert recorded["parts"] == 1
    assert recorded["encoding"] == "GSM-7"
    assert server.rejected == []


def test_batch_outcomes_keep_order(server: TelnyxServer) -> None:
    outcomes = send(
        make_notifier(server),
        [message(1, "+15551230001"), message(2, "+15550101234"), message(3, "+15551230003")],
    )
    assert [o.ok for o in outcomes] == [True, False, True]
    assert [m["to"] for m in server.messages] == ["+15551230001", "+15551230003"]


def test_messaging_profile_and_webhooks(server: TelnyxServer) -> None:
    notifier = make_notifier(
        server,
        **{"from": None},
        messaging_profile_id=server.messaging_profile_id,
        webhook_url="https://hooks.example.com/telnyx",
        webhook_failover_url="https://hooks2.example.com/telnyx",
    )
    [outcome] = send(notifier, [message()])
    assert outcome.ok
    [recorded] = server.messages
    assert recorded["from"] is None
    assert recorded["messaging_profile_id"] == server.messaging_profile_id
    assert recorded["webhook_url"] == "https://hooks.example.com/telnyx"


def test_landlines_are_accepted_and_fail_later_by_webhook(server: TelnyxServer) -> None:
    server.landlines.add("+15551230042")
    [outcome] = send(make_notifier(server), [message(address="+15551230042")])
    assert outcome.ok
    assert server.messages[0]["delivery_status"] == "delivery_failed"
    assert server.messages[0]["delivery_error"] == "40001"


@pytest.mark.parametrize(
    "body",
    [
        "Olá! Ünïcødé ✓ 你好 🎉",
        "emoji only 👍🏽👨‍👩‍👧",
        'quotes "\\ and \u2028 separators',
        "\x00nul",
    ],
)
def test_unicode_bodies_arrive_intact(server: TelnyxServer, body: str) -> None:
    [outcome] = send(make_notifier(server), [message(body=body)])
    assert outcome.ok
    assert server.messages[-1]["body"] == body


def test_ucs2_parts(server: TelnyxServer) -> None:
    send(make_notifier(server), [message(body="你" * 71)])
    assert server.messages[-1]["encoding"] == "UCS-2"
    assert server.messages[-1]["parts"] == 2


@settings(max_examples=60, deadline=None)
@given(body=st.text(min_size=1, max_size=2000))
def test_any_unicode_body_round_trips_through_json(shared_server: TelnyxServer, body: str) -> None:
    # A key per example: the shared server remembers keys, and a key reused with
    # another body is refused (422), as Telnyx does.
    unique = attrs.evolve(message(body=body), idempotency_key=str(uuid.uuid4()))
    [outcome] = send(make_notifier(shared_server), [unique])
    assert outcome.ok
    recorded = next(m for m in shared_server.messages if m["id"] == outcome.provider_message_id)
    assert recorded["body"] == body


# -- per-recipient permanent failures --------------------------------------------------


@pytest.mark.parametrize(
    ("address", "code"),
    [
        ("5551230001", "10016"),  # not +E.164
        ("+1 555 123 0001", "10016"),
        ("+15550101234", "40310"),  # the reserved invalid range
    ],
)
def test_recipient_errors_are_permanent_outcomes_with_the_telnyx_code(
    server: TelnyxServer, address: str, code: str
) -> None:
    [outcome] = send(make_notifier(server), [message(address=address)])
    assert not outcome.ok
    assert not outcome.transient
    assert outcome.error_code == code
    assert outcome.error is not None
    assert f"Telnyx {code}" in outcome.error
    assert server.messages == []
    assert server.rejected[0]["code"] == code


def test_unsubscribed_and_invalid_sets(server: TelnyxServer) -> None:
    server.unsubscribed.add("+15551230077")
    server.invalid.add("+15551230079")
    outcomes = send(make_notifier(server), [message(1, "+15551230077"), message(2, "+15551230079")])
    assert [o.error_code for o in outcomes] == ["40300", "40310"]
    assert not any(o.transient for o in outcomes)


def test_empty_body_is_a_message_failure(server: TelnyxServer) -> None:
    [outcome] = send(make_notifier(server), [message(body="")])
    assert not outcome.ok
    assert outcome.error_code == "10004"
    assert outcome.error is not None
    assert "/text" in outcome.error


# -- whole-request failures ------------------------------------------------------------


def test_wrong_api_key_is_a_permanent_error_without_secrets(server: TelnyxServer) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server, token_value=WRONG), [message()])
    exc = info.value
    assert exc.code == "10009"
    assert exc.status_code == 401
    for text in (str(exc), repr(exc), repr(exc.args)):
        assert WRONG not in text
        assert SECRET not in text
    assert server.messages == []


def test_missing_token_is_permanent(server: TelnyxServer) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server, token_value=None), [message()])
    assert info.value.code == "no_token"
    assert server.request_times == []


def test_sender_errors_are_request_failures_not_recipient_failures(server: TelnyxServer) -> None:
    # the same 10016 that marks a bad "to" is a configuration problem for "from"
    server.from_numbers.add("ACME")
    try:
        with pytest.raises(PermanentDeliveryError) as info:
            send(make_notifier(server, **{"from": "ACME"}), [message()])
    finally:
        server.from_numbers.discard("ACME")
    assert info.value.code == "10016"
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server, **{"from": "+15551239999"}), [message(2)])
    assert info.value.code == "40305"


def test_unknown_messaging_profile_is_permanent(server: TelnyxServer) -> None:
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server, messaging_profile_id="nope"), [message()])
    assert info.value.code == "10017"


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(server: TelnyxServer, status: int) -> None:
    server.faults.fail_next(status)
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message()])
    assert info.value.code == "10007"
    assert info.value.status_code == status
    assert send(make_notifier(server), [message()])[0].ok


def test_rate_limit_is_transient_with_x_ratelimit_reset(server: TelnyxServer) -> None:
    server.faults.retry_after = 0.25
    server.faults.fail_next(429)
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message()])
    assert info.value.code == "10011"
    assert info.value.status_code == 429
    assert info.value.retry_after == pytest.approx(0.25)


def test_rate_limit_headers(server: TelnyxServer) -> None:
    server.faults.rate_limit = 1
    server.faults.retry_after = 1
    with requests.Session() as session:
        kwargs: dict[str, Any] = {
            "json": {"to": "+15551230001", "from": server.from_number, "text": "x"},
            "headers": {"Authorization": f"Bearer {SECRET}"},
            "timeout": 5,
        }
        first = session.post(f"{server.base_url}/v2/messages", **kwargs)
        second = session.post(f"{server.base_url}/v2/messages", **kwargs)
    assert first.status_code == 200
    assert second.status_code == 429
    assert "retry-after" not in {k.lower() for k in second.headers}
    assert second.headers["x-ratelimit-limit"] == "1"
    assert second.headers["x-ratelimit-remaining"] == "0"
    assert parse_retry_after(second.headers, now=time.time()) == 1.0
    assert second.json()["errors"][0]["code"] == "10011"


def test_dropped_connection_is_transient(server: TelnyxServer) -> None:
    server.faults.fail_next("drop")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message()])
    assert info.value.code == "connection_error"


def test_stall_past_the_timeout_is_transient(server: TelnyxServer) -> None:
    server.faults.stall_seconds = 0.6
    server.faults.fail_next("stall")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server, timeout=0.15), [message()])
    assert info.value.code == "timeout"


class _GarbledServer(TelnyxServer):
    def handle(self, request: Request) -> Reply:
        return Reply(200, b"not json")


def test_accepted_reply_without_an_id_still_counts_as_sent() -> None:
    with _GarbledServer(token=SECRET) as srv:
        [outcome] = send(make_notifier(srv), [message()])
    assert outcome.ok
    assert outcome.provider_message_id is None


# -- configuration ---------------------------------------------------------------------


def _config_error(server: TelnyxServer, **options: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        make_notifier(server, **options)
    return info.value


def test_missing_sender_names_the_from_key(server: TelnyxServer) -> None:
    err = _config_error(server, **{"from": None})
    assert err.path == "channels.sms.options.from"
    assert "messaging_profile_id" in str(err)


def test_clear_text_remote_base_url_is_refused(server: TelnyxServer) -> None:
    err = _config_error(server, base_url="http://api.telnyx.com")
    assert err.path == "channels.sms.options.base_url"


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"from": "not a number!"}, "channels.sms.options.from"),
        ({"from": 15551230001}, "channels.sms.options.from"),
        ({"messaging_profile_id": " "}, "channels.sms.options.messaging_profile_id"),
        ({"webhook_url": "nope"}, "channels.sms.options.webhook_url"),
        ({"bogus": 1}, "channels.sms.options.bogus"),
        ({"account_sid": "AC" + "a" * 32}, "channels.sms.options.account_sid"),
    ],
)
def test_invalid_options_name_the_key(
    server: TelnyxServer, options: dict[str, Any], path: str
) -> None:
    assert _config_error(server, **options).path == path


# -- the sandbox's own contract ------------------------------------------------------------


def _post(server: TelnyxServer, **kwargs: Any) -> requests.Response:
    headers = kwargs.pop("headers", {"Authorization": f"Bearer {SECRET}"})
    with requests.Session() as session:
        return session.post(f"{server.base_url}/v2/messages", headers=headers, timeout=5, **kwargs)


def test_sandbox_refuses_form_bodies(server: TelnyxServer) -> None:
    reply = _post(server, data={"to": "+15551230001", "from": server.from_number, "text": "x"})
    assert reply.status_code == 415
    assert reply.json()["errors"][0]["code"] == "10014"


def test_sandbox_refuses_malformed_json(server: TelnyxServer) -> None:
    reply = _post(
        server,
        data=b"{not json",
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "application/json"},
    )
    assert reply.status_code == 400
    assert reply.json()["errors"][0]["code"] == "10015"


@pytest.mark.parametrize(
    ("payload", "pointer"),
    [
        ({"from": TelnyxServer.DEFAULT_FROM, "text": "x"}, "/to"),
        ({"to": "+15551230001", "text": "x"}, "/from"),
        ({"to": "+15551230001", "from": TelnyxServer.DEFAULT_FROM}, "/text"),
    ],
)
def test_sandbox_required_parameters(
    server: TelnyxServer, payload: dict[str, str], pointer: str
) -> None:
    reply = _post(server, json=payload)
    assert reply.status_code == 422
    [error] = reply.json()["errors"]
    assert error["code"] == "10004"
    assert error["title"] == "Missing required parameter"
    assert error["source"] == {"pointer": pointer}


def test_sandbox_auth_reply(server: TelnyxServer) -> None:
    reply = _post(server, json={"to": "+15551230001"}, headers={})
    assert reply.status_code == 401
    assert reply.json()["errors"][0]["code"] == "10009"


def test_sandbox_success_shape(server: TelnyxServer) -> None:
    reply = _post(server, json={"to": "+15551230001", "from": server.from_number, "text": "hé"})
    assert reply.status_code == 200
    data = reply.json()["data"]
    assert data["record_type"] == "message"
    assert UUID.fullmatch(data["id"])
    assert data["to"][0]["phone_number"] == "+15551230001"
    assert data["to"][0]["status"] == "queued"
    assert data["from"]["phone_number"] == server.from_number
    assert data["errors"] == []


def test_sandbox_unknown_path(server: TelnyxServer) -> None:
    with requests.Session() as session:
        reply = session.post(f"{server.base_url}/v2/nope", timeout=5)
    assert reply.status_code == 404
    assert reply.json()["errors"][0]["code"] == "10005"


# -- idempotency -----------------------------------------------------------------------


def keyed(server: TelnyxServer, n: int) -> list[dict[str, Any]]:
    """The messages the server created for ``message(n)`` (a stalled request of an
    earlier test may still land in ``server.messages``)."""
    return [m for m in server.messages if m["idempotency_key"] == f"run-1:sms:r{n}"]


def test_each_request_carries_the_delivery_idempotency_key(server: TelnyxServer) -> None:
    seen: list[str | None] = []
    handle = server.handle

    def spy(request: Request) -> Reply:
        seen.append(request.headers.get("idempotency-key"))
        return handle(request)

    server.handle = spy  # type: ignore[method-assign]
    try:
        send(make_notifier(server), [message(1)])
        send(make_notifier(server), [message(2)])
    finally:
        del server.handle
    assert seen == ["run-1:sms:r1", "run-1:sms:r2"]


def test_a_retry_after_a_timeout_sends_the_sms_once(server: TelnyxServer) -> None:
    # The first request stalls past the client timeout (the server still processes
    # it); the retry carries the same key and gets the first answer replayed.
    server.faults.stall_seconds = 0.6
    server.faults.fail_next("stall")
    notifier = make_notifier(server, timeout=0.2)
    with pytest.raises(TransientDeliveryError) as info:
        send(notifier, [message(7)])
    assert info.value.code == "timeout"
    deadline = time.monotonic() + 5
    while not keyed(server, 7) and time.monotonic() < deadline:
        time.sleep(0.02)
    [outcome] = send(notifier, [message(7)])
    assert outcome.ok
    [sent] = keyed(server, 7)
    assert outcome.provider_message_id == sent["id"]
    assert server.replayed == ["run-1:sms:r7"]


def test_a_retry_during_the_first_request_still_sends_once(server: TelnyxServer) -> None:
    # The retry arrives while the first request is stalled: whichever is processed
    # first creates the message; the other is answered from it.
    server.faults.stall_seconds = 0.5
    server.faults.fail_next("stall")
    notifier = make_notifier(server, timeout=0.2)
    with pytest.raises(TransientDeliveryError):
        send(notifier, [message(8)])
    [outcome] = send(notifier, [message(8)])
    assert outcome.ok
    time.sleep(0.6)  # the stalled request completes
    assert len(keyed(server, 8)) == 1
    assert server.replayed == ["run-1:sms:r8"]


def test_a_reused_key_with_another_body_is_refused(server: TelnyxServer) -> None:
    [first] = send(make_notifier(server), [message(10, body="one")])
    assert first.ok
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server), [message(10, body="two")])
    assert info.value.status_code == 422
    assert [m["body"] for m in keyed(server, 10)] == ["one"]


def test_a_key_still_in_progress_is_transient(server: TelnyxServer) -> None:
    process = server._process
    started = threading.Event()

    def slow(request: Request) -> Reply:
        started.set()
        time.sleep(0.5)
        return process(request)

    server._process = slow  # type: ignore[method-assign]
    first: list[Outcome] = []
    try:
        thread = threading.Thread(
            target=lambda: first.extend(send(make_notifier(server), [message(9)]))
        )
        thread.start()
        assert started.wait(5)
        with pytest.raises(TransientDeliveryError) as info:
            send(make_notifier(server), [message(9)])
        thread.join(5)
    finally:
        del server._process
    assert info.value.status_code == 409
    assert [o.ok for o in first] == [True]
    assert len(keyed(server, 9)) == 1


def test_rejections_are_replayed_too(server: TelnyxServer) -> None:
    server.unsubscribed.add("+15551230001")
    for _ in range(2):
        [outcome] = send(make_notifier(server), [message(11)])
        assert not outcome.ok and outcome.error_code == "40300"
    assert server.replayed == ["run-1:sms:r11"]


def test_a_campaign_retry_after_a_timeout_sends_one_sms(tmp_path: Any) -> None:
    from campaignkit import Channel, Pipeline, RetryPolicy, Template
    from campaignkit.testing import StaticSource

    with TelnyxServer(token=SECRET) as srv:
        srv.faults.stall_seconds = 0.5
        srv.faults.fail_next("stall")  # the first request outlives the client timeout
        pipeline = Pipeline(
            "telnyx_retry",
            StaticSource.from_dicts([{"id": "C1", "phone": "+14155550101"}]),
            [
                Channel(
                    name="sms",
                    provider="telnyx",
                    template=Template(body="Hi"),
                    options=srv.channel_options(),
                    require_consent=False,
                    timeout_seconds=0.2,
                    retry=RetryPolicy(retries=1, delay_minutes=0),
                )
            ],
            base_dir=tmp_path,
            env={"SMS_API_TOKEN": SECRET},
            sleep=lambda seconds: time.sleep(0.6),  # the stalled request completes meanwhile
        )
        report = pipeline.run()
        sms = report.channels["sms"]
        assert (sms.sent, sms.failed, sms.retries) == (1, 0, 1)
        assert len(srv.messages) == 1
        assert len(srv.replayed) == 1
