"""The SendGrid email channel against the loopback SendGrid sandbox (real HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignkit._models import Message, Outcome, Secret
from campaignkit._notifier import ChannelSettings
from campaignkit.channels import sendgrid as sendgrid_module
from campaignkit.channels.sendgrid import (
    HTML_TAG,
    IDEMPOTENCY_ARG,
    MAX_SUBSTITUTION_BYTES,
    RECIPIENT_ARG,
    TEXT_TAG,
    SendGridNotifier,
)
from campaignkit.exceptions import ConfigError, PermanentDeliveryError, TransientDeliveryError
from campaignkit.testing.sandbox.sendgrid import SendGridServer

SECRET = "SG.s3cr3t-sendgrid-api-key"


def message(n: int, address: str | None = None, **kw: Any) -> Message:
    kw.setdefault("subject", f"Offer {n}")
    kw.setdefault("body", f"Hello customer {n}")
    kw.setdefault("html", f"<p>Hello customer {n}</p>")
    return Message(
        recipient_id=f"r{n}",
        channel="email",
        address=address if address is not None else f"user{n}@example.com",
        idempotency_key=f"run-1:email:r{n}",
        **kw,
    )


def make_notifier(
    server: SendGridServer,
    *,
    token_value: str | None = None,
    timeout: float = 5.0,
    **options: Any,
) -> SendGridNotifier:
    settings = ChannelSettings(
        channel="email",
        options={**server.channel_options(), **options},
        token=Secret(token_value if token_value is not None else server.token),
        timeout=timeout,
    )
    return SendGridNotifier(settings)


def send(notifier: SendGridNotifier, messages: list[Message]) -> list[Outcome]:
    conn = notifier.connect()
    try:
        return list(notifier.send_batch(conn, messages))
    finally:
        notifier.disconnect(conn)


@pytest.fixture
def server() -> Iterator[SendGridServer]:
    with SendGridServer(token=SECRET) as s:
        yield s


# -- happy path ---------------------------------------------------------------------------


def test_batch_is_one_request_with_per_recipient_content(server: SendGridServer) -> None:
    batch = [
        message(0, name="Ada Lovelace", headers={"List-Unsubscribe": "<mailto:u@example.com>"}),
        message(1, subject="Ünïcode ✓", body="Grüße\nline two", html="<b>€</b>"),
        message(2),
    ]
    outcomes = send(make_notifier(server), batch)

    assert [o.ok for o in outcomes] == [True, True, True]
    assert len(server.request_times) == 1
    by_to = {m["to"]: m for m in server.messages}
    assert set(by_to) == {"user0@example.com", "user1@example.com", "user2@example.com"}
    first = by_to["user0@example.com"]
    assert first["name"] == "Ada Lovelace"
    assert first["subject"] == "Offer 0"
    assert first["text"] == "Hello customer 0"
    assert first["html"] == "<p>Hello customer 0</p>"
    assert first["headers"] == {"List-Unsubscribe": "<mailto:u@example.com>"}
    assert first["custom_args"] == {RECIPIENT_ARG: "r0", IDEMPOTENCY_ARG: "run-1:email:r0"}
    assert first["from"] == SendGridServer.FROM_EMAIL
    second = by_to["user1@example.com"]
    assert (second["subject"], second["text"], second["html"]) == (
        "Ünïcode ✓",
        "Grüße\nline two",
        "<b>€</b>",
    )
    # The provider message id is the request's X-Message-Id.
    assert {o.provider_message_id for o in outcomes[:2]} == {first["id"]}
    assert first["id"]


def test_distinct_bodies_travel_as_substitutions(server: SendGridServer) -> None:
    send(make_notifier(server), [message(0), message(1)])
    (body,) = server.requests
    assert body["content"] == [
        {"type": "text/plain", "value": TEXT_TAG},
        {"type": "text/html", "value": HTML_TAG},
    ]
    assert body["personalizations"][1]["substitutions"] == {
        TEXT_TAG: "Hello customer 1",
        HTML_TAG: "<p>Hello customer 1</p>",
    }


def test_text_only_and_html_emails_go_in_separate_requests(server: SendGridServer) -> None:
    batch = [message(0), message(1, html=None), message(2), message(3, html=None)]
    outcomes = send(make_notifier(server), batch)
    assert all(o.ok for o in outcomes)
    assert len(server.requests) == 2
    by_to = {m["to"]: m for m in server.messages}
    assert by_to["user1@example.com"]["html"] is None  # no empty HTML part
    assert by_to["user1@example.com"]["text"] == "Hello customer 1"
    assert by_to["user2@example.com"]["html"] == "<p>Hello customer 2</p>"


def test_identical_content_is_sent_as_is(server: SendGridServer) -> None:
    batch = [message(n, body="Same for all", html="<p>Same</p>") for n in range(3)]
    send(make_notifier(server), batch)
    (body,) = server.requests
    assert body["content"][0] == {"type": "text/plain", "value": "Same for all"}
    assert all("substitutions" not in p for p in body["personalizations"])
    assert [p["subject"] for p in body["personalizations"]] == ["Offer 0", "Offer 1", "Offer 2"]


def test_options_reach_the_request(server: SendGridServer) -> None:
    notifier = make_notifier(
        server,
        from_name="Shop",
        reply_to="help@shop.example",
        categories=["spring", "promo"],
        custom_args={"campaign": "spring"},
        asm_group_id=42,
        ip_pool_name="marketing",
        track_opens=False,
        track_clicks=True,
    )
    send(notifier, [message(0)])
    (body,) = server.requests
    assert body["from"] == {"email": SendGridServer.FROM_EMAIL, "name": "Shop"}
    assert body["reply_to"] == {"email": "help@shop.example"}
    assert body["categories"] == ["spring", "promo"]
    assert body["asm"] == {"group_id": 42}
    assert body["ip_pool_name"] == "marketing"
    assert body["tracking_settings"] == {
        "open_tracking": {"enable": False},
        "click_tracking": {"enable": True},
    }
    assert server.messages[0]["custom_args"]["campaign"] == "spring"
    assert server.messages[0]["categories"] == ["spring", "promo"]


def test_sandbox_mode_is_validated_but_not_delivered(server: SendGridServer) -> None:
    outcomes = send(make_notifier(server, sandbox_mode=True), [message(0)])
    assert outcomes == [Outcome.sent(None)]
    assert server.messages == []


# -- batching boundaries ------------------------------------------------------------------


def test_exactly_max_batch_size_is_one_request(server: SendGridServer) -> None:
    assert SendGridNotifier.max_batch_size == 1000
    batch = [message(n) for n in range(1000)]
    outcomes = send(make_notifier(server), batch)
    assert all(o.ok for o in outcomes)
    assert len(server.request_times) == 1
    assert len(server.messages) == 1000
    assert server.messages[999]["text"] == "Hello customer 999"


def test_sandbox_refuses_more_than_1000_personalizations(server: SendGridServer) -> None:
    body = {
        "from": {"email": "a@shop.example"},
        "subject": "s",
        "content": [{"type": "text/plain", "value": "x"}],
        "personalizations": [{"to": [{"email": f"u{n}@example.com"}]} for n in range(1001)],
    }
    response = requests.post(
        server.base_url + "/v3/mail/send",
        json=body,
        headers={"Authorization": f"Bearer {SECRET}"},
        timeout=5,
    )
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["field"] == "personalizations"
    assert "limited to 1000 personalizations" in error["message"]
    assert "You have provided 1001" in error["message"]
    assert server.messages == []


def test_repeated_address_goes_to_another_request(server: SendGridServer) -> None:
    batch = [message(0, "dup@example.com"), message(1), message(2, "DUP@example.com")]
    outcomes = send(make_notifier(server), batch)
    assert all(o.ok for o in outcomes)
    assert len(server.requests) == 2
    assert sorted(m["to"] for m in server.messages) == [
        "DUP@example.com",
        "dup@example.com",
        "user1@example.com",
    ]


def test_content_too_big_for_substitutions_gets_its_own_request(server: SendGridServer) -> None:
    big = "x" * (MAX_SUBSTITUTION_BYTES + 1)
    batch = [message(0), message(1, body=big), message(2)]
    outcomes = send(make_notifier(server), batch)
    assert all(o.ok for o in outcomes)
    assert len(server.requests) == 2
    assert {m["to"]: m["text"] for m in server.messages}["user1@example.com"] == big


def test_refused_substitutions_are_resent_with_static_content() -> None:
    with SendGridServer(token=SECRET, max_substitution_bytes=200) as server:
        batch = [message(0), message(1, body="y" * 300), message(2)]
        outcomes = send(make_notifier(server), batch)
        assert all(o.ok for o in outcomes)
        # rejected request, the same without message 1, message 1 alone
        assert len(server.request_times) == 3
        assert {m["to"]: m["text"] for m in server.messages}["user1@example.com"] == "y" * 300


def record_bodies(notifier: SendGridNotifier, monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """The request bodies ``notifier`` posts, as bytes on the wire."""
    bodies: list[bytes] = []
    post = notifier.post

    def recording(conn: requests.Session, path: str, **kwargs: Any) -> requests.Response:
        bodies.append(kwargs["data"])
        return post(conn, path, **kwargs)

    monkeypatch.setattr(notifier, "post", recording)
    return bodies


def test_request_body_is_exactly_its_json_dump(
    server: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bodies are joined from personalizations serialized once per batch; the bytes
    # must stay those of json.dumps of the whole request, key order included.
    notifier = make_notifier(server)
    bodies = record_bodies(notifier, monkeypatch)
    send(notifier, [message(0, html=None)])
    assert bodies == [
        b'{"personalizations":[{"to":[{"email":"user0@example.com"}],"subject":"Offer 0",'
        b'"custom_args":{"campaignkit_recipient_id":"r0",'
        b'"campaignkit_idempotency_key":"run-1:email:r0"}}],'
        b'"from":{"email":"' + SendGridServer.FROM_EMAIL.encode() + b'"},'
        b'"content":[{"type":"text/plain","value":"Hello customer 0"}]}'
    ]


def test_every_request_body_is_the_json_dump_of_its_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    with SendGridServer(token=SECRET, max_substitution_bytes=300) as server:
        server.invalid.add("bad@example.com")
        notifier = make_notifier(
            server,
            from_name="Shöp",
            reply_to="help@shop.example",
            categories=["spring"],
            custom_args={"campaign": "spring"},
            asm_group_id=42,
            ip_pool_name="marketing",
            track_opens=False,
        )
        bodies = record_bodies(notifier, monkeypatch)
        batch = [
            message(0, name="Ädä", headers={"X-Tag": "€"}, body='Grüße \u2028 "q" \\ 😀'),
            message(1, "bad@example.com"),
            message(2, body="y" * 400),  # refused in substitutions, resent alone
            message(3, body="Same", html="<p>Same</p>"),
            message(4, body="Same", html="<p>Same</p>"),
            message(5, "USER0@example.com"),  # repeated address: another request
        ]
        outcomes = send(notifier, batch)
    assert [o.ok for o in outcomes] == [True, False, True, True, True, True]
    # [0, 1, 2] refused, [0] resent; [3, 4] share content; [5]; [2] alone with content
    assert len(bodies) == 5
    static = ["from", "reply_to", "categories", "custom_args", "asm", "ip_pool_name"]
    for data in bodies:
        body = json.loads(data)
        assert data == json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        assert list(body) == ["personalizations", *static, "tracking_settings", "content"]
        for personalization in body["personalizations"]:
            keys = [k for k in personalization if k not in ("headers", "substitutions")]
            assert keys == ["to", "subject", "custom_args"]
    first = json.loads(bodies[0])["personalizations"][0]
    assert list(first) == ["to", "subject", "headers", "custom_args", "substitutions"]
    assert first["to"] == [{"email": "user0@example.com", "name": "Ädä"}]
    assert first["substitutions"][TEXT_TAG] == 'Grüße \u2028 "q" \\ 😀'
    assert json.loads(bodies[1])["personalizations"] == [
        p for i, p in enumerate(json.loads(bodies[0])["personalizations"]) if i not in (1, 2)
    ]


def test_request_size_limit_splits_a_batch(
    server: SendGridServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = [message(n) for n in range(5)]
    size = len(sendgrid_module._personalization(batch[0], True))
    monkeypatch.setattr(sendgrid_module, "MAX_REQUEST_BYTES", 2 * size)
    outcomes = send(make_notifier(server), batch)
    assert all(o.ok for o in outcomes)
    assert [len(b["personalizations"]) for b in server.requests] == [2, 2, 1]


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "A", "B"]),  # addresses repeat, in any case
            st.sampled_from(["same", "other", "third"]),  # bodies repeat too
            st.booleans(),  # with HTML
            st.booleans(),  # an invalid address
        ),
        min_size=1,
        max_size=12,
    )
)
def test_every_message_is_settled_exactly_once(server: SendGridServer, spec: list[Any]) -> None:
    server.messages.clear()
    server.requests.clear()
    batch = [
        message(
            n,
            f"{local}@{'invalid' if bad else 'shop'}.example",
            body=f"{body} body",
            html=f"<p>{body}</p>" if html else None,
        )
        for n, (local, body, html, bad) in enumerate(spec)
    ]
    outcomes = send(make_notifier(server), batch)
    assert len(outcomes) == len(batch)
    for m, outcome in zip(batch, outcomes, strict=True):
        assert outcome.ok == (not m.address.endswith("@invalid.example"))
    delivered = sorted(
        (m["custom_args"][RECIPIENT_ARG], m["text"], m["html"]) for m in server.messages
    )
    expected = sorted(
        (m.recipient_id, m.body, m.html) for m, o in zip(batch, outcomes, strict=True) if o.ok
    )
    assert delivered == expected
    for body in server.requests:
        addresses = [p["to"][0]["email"].lower() for p in body["personalizations"]]
        assert len(addresses) == len(set(addresses))


# -- permanent errors ---------------------------------------------------------------------


def test_invalid_address_fails_only_that_recipient(server: SendGridServer) -> None:
    batch = [message(0), message(1), message(2, "nobody@invalid.example"), message(3)]
    outcomes = send(make_notifier(server), batch)
    assert [o.ok for o in outcomes] == [True, True, False, True]
    bad = outcomes[2]
    assert (bad.transient, bad.error_code) == (False, "400")
    assert bad.error is not None
    assert "Does not contain a valid address" in bad.error
    assert "personalizations.2.to.0.email" in bad.error
    assert len(server.request_times) == 2  # refused, then sent again without it
    assert sorted(m["to"] for m in server.messages) == [
        "user0@example.com",
        "user1@example.com",
        "user3@example.com",
    ]


def test_several_invalid_addresses_are_named_in_one_answer(server: SendGridServer) -> None:
    server.invalid.add("vip@example.com")
    batch = [message(0, "x@invalid.example"), message(1), message(2, "VIP@example.com")]
    outcomes = send(make_notifier(server), batch)
    assert [o.ok for o in outcomes] == [False, True, False]
    assert len(server.request_times) == 2


def test_all_addresses_invalid_are_per_recipient_failures(server: SendGridServer) -> None:
    outcomes = send(
        make_notifier(server), [message(0, "a@invalid.example"), message(1, "not-an-email")]
    )
    assert [(o.ok, o.error_code, o.transient) for o in outcomes] == [(False, "400", False)] * 2
    assert server.messages == []


def test_message_without_subject_fails_without_a_request(server: SendGridServer) -> None:
    outcomes = send(make_notifier(server), [message(0, subject=None), message(1)])
    assert (outcomes[0].ok, outcomes[0].error_code) == (False, "invalid_message")
    assert outcomes[1].ok
    assert [m["to"] for m in server.messages] == ["user1@example.com"]


def test_bad_token_is_permanent_and_never_shown(server: SendGridServer) -> None:
    wrong = "SG.wrong-key-do-not-print"
    notifier = make_notifier(server, token_value=wrong)
    with pytest.raises(PermanentDeliveryError) as info:
        send(notifier, [message(0), message(1)])
    exc = info.value
    assert (exc.code, exc.status_code) == ("401", 401)
    assert "authorization grant is invalid" in str(exc)
    for text in (str(exc), repr(exc), repr(exc.args), repr(notifier)):
        assert wrong not in text
        assert SECRET not in text
    assert server.messages == []


@pytest.mark.parametrize("status", [403, 404])
def test_other_client_errors_are_permanent(server: SendGridServer, status: int) -> None:
    server.faults.fail_next(status)
    with pytest.raises(PermanentDeliveryError) as info:
        send(make_notifier(server), [message(0)])
    assert info.value.code == str(status)


def test_payload_too_large_is_permanent() -> None:
    with SendGridServer(token=SECRET, max_body_bytes=500) as server:
        with pytest.raises(PermanentDeliveryError) as info:
            send(make_notifier(server), [message(0, body="z" * 1000)])
        assert info.value.code == "413"
        assert "too large" in str(info.value)


def test_unauthorised_stops_the_batch(server: SendGridServer) -> None:
    # Two requests planned (repeated address); after 401 the second is not attempted.
    notifier = make_notifier(server, token_value="SG.nope")
    with pytest.raises(PermanentDeliveryError):
        send(notifier, [message(0, "a@shop.example"), message(1, "a@shop.example")])
    assert len(server.request_times) == 1


# -- transient errors ---------------------------------------------------------------------


def test_server_error_is_transient(server: SendGridServer) -> None:
    server.faults.fail_next(503)
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message(0), message(1)])
    assert (info.value.code, info.value.status_code) == ("503", 503)
    assert server.messages == []


def test_rate_limit_carries_the_reset_time(server: SendGridServer) -> None:
    server.faults.retry_after = 30
    server.faults.fail_next(429)
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message(0)])
    exc = info.value
    assert (exc.code, exc.status_code) == ("429", 429)
    assert exc.retry_after is not None
    assert 28 <= exc.retry_after <= 31
    assert "too many requests" in str(exc)


def test_rate_limit_reply_has_sendgrid_headers(server: SendGridServer) -> None:
    server.faults.rate_limit = 1
    url = server.base_url + "/v3/mail/send"
    with requests.Session() as session:
        session.post(url, timeout=5)
        response = session.post(url, timeout=5)
    assert response.status_code == 429
    assert response.headers["X-RateLimit-Remaining"] == "0"
    assert int(response.headers["X-RateLimit-Reset"]) > 1_600_000_000
    assert response.json() == {
        "errors": [{"message": "too many requests", "field": None, "help": None}]
    }


def test_dropped_connection_is_transient(server: SendGridServer) -> None:
    server.faults.fail_next("drop")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server), [message(0)])
    assert info.value.code == "connection_error"


def test_stall_beyond_the_timeout_is_transient(server: SendGridServer) -> None:
    server.faults.stall_seconds = 1.0
    server.faults.fail_next("stall")
    with pytest.raises(TransientDeliveryError) as info:
        send(make_notifier(server, timeout=0.4), [message(0)])
    assert info.value.code == "timeout"


def test_transient_error_after_a_sent_request_gives_outcomes(server: SendGridServer) -> None:
    # Three requests (the address repeats); the first passes, the second gets 503,
    # the third is not attempted.
    server.faults.fail_next("pass", 503)
    batch = [message(n, "same@shop.example") for n in range(3)]
    outcomes = send(make_notifier(server), batch)
    assert outcomes[0].ok
    assert [(o.ok, o.transient, o.error_code) for o in outcomes[1:]] == [(False, True, "503")] * 2
    assert len(server.request_times) == 2


def test_invalid_address_then_server_error(server: SendGridServer) -> None:
    # The 400 settles the bad recipient; the re-sent request meets a 503: the others
    # are transient, and the batch returns outcomes instead of raising.
    server.faults.fail_next("pass", 503)
    outcomes = send(make_notifier(server), [message(0), message(1, "x@invalid.example")])
    assert (outcomes[0].ok, outcomes[0].transient, outcomes[0].error_code) == (False, True, "503")
    assert (outcomes[1].ok, outcomes[1].transient, outcomes[1].error_code) == (False, False, "400")


# -- sandbox contract ---------------------------------------------------------------------


def _raw(server: SendGridServer, body: Any, **headers: str) -> requests.Response:
    headers.setdefault("Authorization", f"Bearer {SECRET}")
    return requests.post(server.base_url + "/v3/mail/send", json=body, headers=headers, timeout=5)


def test_sandbox_checks_auth_content_type_and_shape(server: SendGridServer) -> None:
    ok = {
        "from": {"email": "a@shop.example"},
        "personalizations": [{"to": [{"email": "u@example.com"}]}],
        "content": [{"type": "text/plain", "value": "x"}],
    }
    assert _raw(server, ok, Authorization="Bearer nope").status_code == 401
    no_type = requests.post(
        server.base_url + "/v3/mail/send",
        data=b"{}",
        headers={"Authorization": f"Bearer {SECRET}", "Content-Type": "text/plain"},
        timeout=5,
    )
    assert no_type.status_code == 415
    missing_subject = _raw(server, ok)
    assert missing_subject.status_code == 400
    assert [e["field"] for e in missing_subject.json()["errors"]] == ["subject"]
    duplicate = _raw(
        server,
        {**ok, "subject": "s", "personalizations": [{"to": [{"email": "u@x.com"}]}] * 2},
    )
    assert duplicate.status_code == 400
    assert "more than once" in duplicate.json()["errors"][0]["message"]
    no_content = _raw(server, {**ok, "subject": "s", "content": []})
    assert no_content.json()["errors"][0]["field"] == "content"
    accepted = _raw(server, {**ok, "subject": "s"})
    assert accepted.status_code == 202
    assert accepted.content == b""
    assert server.messages[0]["id"] == accepted.headers["X-Message-Id"]


def test_channel_options_point_at_the_server(server: SendGridServer) -> None:
    assert server.channel_options() == {
        "base_url": server.base_url,
        "from_email": SendGridServer.FROM_EMAIL,
    }
    assert SendGridServer.provider == SendGridNotifier.name == "sendgrid"


# -- configuration ------------------------------------------------------------------------


def _settings(options: dict[str, Any], token: str | None = SECRET) -> ChannelSettings:
    return ChannelSettings(
        channel="email", options=options, token=Secret(token) if token is not None else None
    )


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({"from_email": "a@shop.example", "base_url": "http://api.sendgrid.com"}, "base_url"),
        ({}, "from_email"),
        ({"from_email": "not an address"}, "from_email"),
        ({"from_email": "a@shop.example", "fromname": "x"}, "fromname"),
        ({"from_email": "a@shop.example", "categories": [str(n) for n in range(11)]}, "categories"),
        ({"from_email": "a@shop.example", "asm_group_id": "seven"}, "asm_group_id"),
        ({"from_email": "a@shop.example", "custom_args": {RECIPIENT_ARG: "x"}}, "custom_args"),
    ],
)
def test_config_errors_name_the_key(options: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        SendGridNotifier(_settings(options))
    assert info.value.path is not None
    assert info.value.path.startswith(f"channels.email.options.{path}")


def test_missing_api_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="API key"):
        SendGridNotifier(_settings({"from_email": "a@shop.example"}, token=None))


def test_loopback_http_and_default_https_are_accepted() -> None:
    notifier = SendGridNotifier(_settings({"from_email": "a@shop.example"}))
    assert notifier.base_url == "https://api.sendgrid.com"
    assert SECRET not in repr(notifier)


def test_registers_through_the_hook() -> None:
    registered: list[Any] = []
    sendgrid_module.campaignkit_register_channels(registered.append)
    assert registered == [SendGridNotifier]
    assert (SendGridNotifier.address_field, SendGridNotifier.supports_idempotency_keys) == (
        "email",
        False,
    )


_TEMPLATED = {
    "from": {"email": "a@shop.example"},
    "personalizations": [{"to": [{"email": "u@example.com"}]}],
    "template_id": "d-" + "0" * 32,
}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"template_id": "welcome"}, "template_id"),
        ({"categories": [f"c{i}" for i in range(11)]}, "categories"),
        ({"categories": ["x" * 256]}, "categories"),
        ({"custom_args": {"n": 1}}, "custom_args"),
        ({"asm": {"group_id": "42"}}, "asm.group_id"),
        ({"asm": {"group_id": 42, "groups_to_display": list(range(26))}}, "asm.groups_to_display"),
        ({"send_at": "tomorrow"}, "send_at"),
        (
            {"personalizations": [{"to": [{"email": "u@example.com"}], "from": {"email": "x"}}]},
            "personalizations.0.from.email",
        ),
        (
            {
                "personalizations": [
                    {"to": [{"email": "u@example.com"}], "dynamic_template_data": []}
                ]
            },
            "personalizations.0.dynamic_template_data",
        ),
    ],
)
def test_sandbox_refuses_malformed_templated_mail(
    server: SendGridServer, change: dict[str, Any], field: str
) -> None:
    assert _raw(server, _TEMPLATED).status_code == 202
    reply = _raw(server, {**_TEMPLATED, **change})
    assert reply.status_code == 400
    assert [e["field"] for e in reply.json()["errors"]] == [field]
    assert len(server.messages) == 1


def test_sandbox_known_templates() -> None:
    with SendGridServer(token=SECRET, templates=["d-" + "1" * 32]) as server:
        assert _raw(server, _TEMPLATED).status_code == 400
        assert _raw(server, {**_TEMPLATED, "template_id": "d-" + "1" * 32}).status_code == 202
