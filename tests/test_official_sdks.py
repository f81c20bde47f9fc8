"""The providers' official SDKs, pointed at the sandbox as a user would, get what the
real provider gives them: their documented request forms are accepted and recorded,
and refusals reach the SDK as its own exception carrying the provider's code.

The SDKs are test-only dependencies (``pip install -e '.[sdk-tests]'``); each test is
skipped when its SDK is missing. Network only to 127.0.0.1.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import requests

from campaignkit.testing.sandbox.expo import ExpoServer
from campaignkit.testing.sandbox.onesignal import OneSignalServer
from campaignkit.testing.sandbox.sendgrid import SendGridServer
from campaignkit.testing.sandbox.telnyx import TelnyxServer
from campaignkit.testing.sandbox.twilio import TwilioServer

# The SDKs' own deprecation notices (at import or call) are theirs to fix, not ours: they
# are ignored here only, where the SDKs are imported, and stay errors everywhere else.
pytestmark = pytest.mark.filterwarnings(
    r"ignore::DeprecationWarning:(sendgrid|python_http_client|twilio|telnyx"
    r"|exponent_server_sdk|onesignal|six|pydantic)\b",
    r"ignore::PendingDeprecationWarning:(sendgrid|python_http_client|twilio|telnyx"
    r"|exponent_server_sdk|onesignal|six|pydantic)\b",
)

SECRET = "sdk-secret-0123456789"
WRONG = "not-the-" + SECRET
TEMPLATE = "d-0123456789abcdef0123456789abcdef"


# == SendGrid (sendgrid 6.x: python_http_client over urllib) ===============================


@pytest.fixture
def sendgrid_server() -> Iterator[SendGridServer]:
    with SendGridServer(token=SECRET) as server:
        yield server


def sendgrid_client(server: SendGridServer, key: str = SECRET) -> Any:
    sendgrid = pytest.importorskip("sendgrid")
    return sendgrid.SendGridAPIClient(key, host=server.base_url)


def sg_mail() -> Any:
    return pytest.importorskip("sendgrid.helpers.mail")


def test_sendgrid_plain_send_is_recorded_with_its_message_id(
    sendgrid_server: SendGridServer,
) -> None:
    mail = sg_mail()
    message = mail.Mail(
        from_email="campaigns@shop.example",
        to_emails="ann@example.com",
        subject="Spring sale",
        plain_text_content="Text",
        html_content="<p>HTML</p>",
    )
    response = sendgrid_client(sendgrid_server).send(message)
    assert response.status_code == 202
    (record,) = sendgrid_server.messages
    assert record["id"] == response.headers["X-Message-Id"]
    assert (record["to"], record["from"], record["subject"]) == (
        "ann@example.com",
        "campaigns@shop.example",
        "Spring sale",
    )
    assert (record["text"], record["html"]) == ("Text", "<p>HTML</p>")


def test_sendgrid_dynamic_template_needs_no_subject_or_content(
    sendgrid_server: SendGridServer,
) -> None:
    mail = sg_mail()
    message = mail.Mail(from_email="campaigns@shop.example", to_emails="ann@example.com")
    message.template_id = TEMPLATE
    message.dynamic_template_data = {"first_name": "Ann", "items": [1, 2]}
    response = sendgrid_client(sendgrid_server).send(message)
    assert response.status_code == 202
    (record,) = sendgrid_server.messages
    assert record["template_id"] == TEMPLATE
    assert record["dynamic_template_data"] == {"first_name": "Ann", "items": [1, 2]}
    assert record["subject"] is None
    assert record["text"] is record["html"] is None


def test_sendgrid_personalization_subject_and_from(sendgrid_server: SendGridServer) -> None:
    mail = sg_mail()
    message = mail.Mail(from_email="campaigns@shop.example", plain_text_content="Text")
    for address, sender in (
        ("ann@example.com", "ann-team@shop.example"),
        ("bob@example.com", None),
    ):
        personalization = mail.Personalization()
        personalization.add_to(mail.To(address))
        personalization.subject = f"For {address}"
        if sender:
            personalization.set_from(mail.From(sender))
        message.add_personalization(personalization)
    response = sendgrid_client(sendgrid_server).send(message)
    assert response.status_code == 202
    by_to = {r["to"]: r for r in sendgrid_server.messages}
    assert by_to["ann@example.com"]["subject"] == "For ann@example.com"
    assert by_to["ann@example.com"]["from"] == "ann-team@shop.example"
    assert by_to["bob@example.com"]["from"] == "campaigns@shop.example"


def test_sendgrid_categories_custom_args_and_asm_are_recorded(
    sendgrid_server: SendGridServer,
) -> None:
    mail = sg_mail()
    message = mail.Mail(
        from_email="campaigns@shop.example",
        to_emails="ann@example.com",
        subject="S",
        plain_text_content="T",
    )
    message.category = [mail.Category("spring"), mail.Category("sale")]
    message.custom_arg = mail.CustomArg("campaign", "spring-2026")
    message.asm = mail.Asm(mail.GroupId(42), mail.GroupsToDisplay([42, 43]))
    sendgrid_client(sendgrid_server).send(message)
    (record,) = sendgrid_server.messages
    assert sorted(record["categories"]) == ["sale", "spring"]
    assert record["custom_args"] == {"campaign": "spring-2026"}
    assert record["asm"] == {"group_id": 42, "groups_to_display": [42, 43]}


def test_sendgrid_sandbox_mode_validates_without_sending(sendgrid_server: SendGridServer) -> None:
    mail = sg_mail()
    message = mail.Mail(from_email="campaigns@shop.example", to_emails="ann@example.com")
    message.template_id = TEMPLATE
    settings = mail.MailSettings()
    settings.sandbox_mode = mail.SandBoxMode(True)
    message.mail_settings = settings
    response = sendgrid_client(sendgrid_server).send(message)
    assert response.status_code == 200
    assert sendgrid_server.messages == []
    assert [r["template_id"] for r in sendgrid_server.sandbox_requests] == [TEMPLATE]
    # ... and still refuses what SendGrid refuses
    exceptions = pytest.importorskip("python_http_client.exceptions")
    message.template_id = None
    message.template_id = "not-a-template"
    with pytest.raises(exceptions.BadRequestsError) as info:
        sendgrid_client(sendgrid_server).send(message)
    assert [e["field"] for e in info.value.to_dict["errors"]] == ["template_id"]


def test_sendgrid_bad_key_is_the_sdks_unauthorized_error(sendgrid_server: SendGridServer) -> None:
    mail = sg_mail()
    exceptions = pytest.importorskip("python_http_client.exceptions")
    message = mail.Mail("a@shop.example", "ann@example.com", "S", "T")
    with pytest.raises(exceptions.UnauthorizedError) as info:
        sendgrid_client(sendgrid_server, key=WRONG).send(message)
    assert info.value.status_code == 401
    assert info.value.to_dict["errors"][0]["message"]
    assert sendgrid_server.messages == []


@pytest.mark.parametrize(
    ("build", "fields"),
    [
        ({"to_emails": "bob@invalid.example"}, ["personalizations.0.to.0.email"]),
        ({"to_emails": "ann@example"}, ["personalizations.0.to.0.email"]),
        ({"subject": None}, ["subject"]),
        ({"plain_text_content": None}, ["content"]),
        ({"from_email": "nobody"}, ["from"]),  # the SDK sends {"name": "nobody"}
        ({"from_email": "campaigns@shop"}, ["from.email"]),
    ],
)
def test_sendgrid_refusals_name_the_field(
    sendgrid_server: SendGridServer, build: dict[str, Any], fields: list[str]
) -> None:
    mail = sg_mail()
    exceptions = pytest.importorskip("python_http_client.exceptions")
    kwargs = {
        "from_email": "campaigns@shop.example",
        "to_emails": "ann@example.com",
        "subject": "S",
        "plain_text_content": "T",
        **build,
    }
    with pytest.raises(exceptions.BadRequestsError) as info:
        sendgrid_client(sendgrid_server).send(mail.Mail(**kwargs))
    assert info.value.status_code == 400
    assert [e["field"] for e in info.value.to_dict["errors"]] == fields
    assert sendgrid_server.messages == []


def test_sendgrid_unverified_sender_is_forbidden() -> None:
    mail = sg_mail()
    exceptions = pytest.importorskip("python_http_client.exceptions")
    with SendGridServer(token=SECRET, verified_senders=["Campaigns@Shop.example"]) as server:
        client = sendgrid_client(server)
        ok = client.send(mail.Mail("campaigns@shop.example", "ann@example.com", "S", "T"))
        assert ok.status_code == 202
        with pytest.raises(exceptions.ForbiddenError) as info:
            client.send(mail.Mail("other@shop.example", "ann@example.com", "S", "T"))
        assert info.value.to_dict["errors"][0]["field"] == "from"
        assert len(server.messages) == 1


def test_sendgrid_rate_limit_is_the_sdks_429(sendgrid_server: SendGridServer) -> None:
    mail = sg_mail()
    exceptions = pytest.importorskip("python_http_client.exceptions")
    sendgrid_server.faults.fail_next(429)
    with pytest.raises(exceptions.TooManyRequestsError) as info:
        sendgrid_client(sendgrid_server).send(
            mail.Mail("a@shop.example", "ann@example.com", "S", "T")
        )
    assert info.value.status_code == 429
    assert info.value.headers["X-RateLimit-Remaining"] == "0"
    assert sendgrid_server.messages == []


# == Twilio (twilio 9.x) ===================================================================


@pytest.fixture
def twilio_server() -> Iterator[TwilioServer]:
    with TwilioServer(token=SECRET) as server:
        yield server


def twilio_client(server: TwilioServer, token: str = SECRET) -> Any:
    rest = pytest.importorskip("twilio.rest")
    client = rest.Client(server.account_sid, token)
    client.api.base_url = server.base_url  # the api.twilio.com domain, on loopback
    return client


TO = "+14155550101"


def test_twilio_body_send_is_parsed_into_a_message_instance(twilio_server: TwilioServer) -> None:
    message = twilio_client(twilio_server).messages.create(
        to=TO, from_=twilio_server.from_number, body="Hello"
    )
    (record,) = twilio_server.messages
    assert message.sid == record["sid"]
    assert message.status == "queued"
    assert (message.to, message.body, message.num_segments) == (TO, "Hello", "1")


def test_twilio_media_urls_with_or_without_body(twilio_server: TwilioServer) -> None:
    client = twilio_client(twilio_server)
    urls = ["https://cdn.example/a.png", "https://cdn.example/b.jpg"]
    bare = client.messages.create(to=TO, from_=twilio_server.from_number, media_url=urls)
    captioned = client.messages.create(
        to=TO, from_=twilio_server.from_number, media_url=urls[:1], body="Look"
    )
    assert (bare.num_media, captioned.num_media) == ("2", "1")
    first, second = twilio_server.messages
    assert (first["media_urls"], first["body"]) == (urls, "")
    assert (second["media_urls"], second["body"]) == (urls[:1], "Look")


def test_twilio_content_template_without_body(twilio_server: TwilioServer) -> None:
    sid = "HX" + "ab" * 16
    message = twilio_client(twilio_server).messages.create(
        to=TO,
        from_=twilio_server.from_number,
        content_sid=sid,
        content_variables=json.dumps({"1": "Ann", "2": "20%"}),
    )
    (record,) = twilio_server.messages
    assert message.sid == record["sid"]
    assert record["content_sid"] == sid
    assert record["content_variables"] == {"1": "Ann", "2": "20%"}


def test_twilio_messaging_service_and_optional_params(twilio_server: TwilioServer) -> None:
    message = twilio_client(twilio_server).messages.create(
        to=TO,
        messaging_service_sid=twilio_server.messaging_service_sid,
        body="Hi",
        status_callback="https://hooks.example/twilio",
        validity_period=600,
        smart_encoded=True,
        shorten_urls=False,
    )
    assert message.status == "accepted"
    assert message.messaging_service_sid == twilio_server.messaging_service_sid
    (record,) = twilio_server.messages
    assert record["status_callback"] == "https://hooks.example/twilio"
    assert record["params"]["ValidityPeriod"] == "600"
    assert record["params"]["SmartEncoded"] == "true"
    assert record["params"]["ShortenUrls"] == "false"


def test_twilio_scheduled_message_is_scheduled(twilio_server: TwilioServer) -> None:
    # Twilio's scheduling form: SendAt with ScheduleType "fixed", through a Messaging
    # Service. The sandbox answered "accepted" and listed it as sent at once.
    when = datetime.now(UTC).replace(microsecond=0) + timedelta(days=2)
    client = twilio_client(twilio_server)
    message = client.messages.create(
        to=TO,
        messaging_service_sid=twilio_server.messaging_service_sid,
        body="Tomorrow",
        schedule_type="fixed",
        send_at=when,
    )
    assert message.status == "scheduled"
    fetched = client.messages(message.sid).fetch()
    assert (fetched.status, fetched.date_sent) == ("scheduled", None)
    assert [m.status for m in client.messages.list(to=TO)] == ["scheduled"]
    (record,) = twilio_server.messages
    assert record["send_at"] == when


def test_twilio_fetch_a_message_by_its_sid(twilio_server: TwilioServer) -> None:
    client = twilio_client(twilio_server)
    sent = client.messages.create(to=TO, from_=twilio_server.from_number, body="Hello")
    fetched = client.messages(sent.sid).fetch()
    assert (fetched.sid, fetched.to, fetched.body) == (sent.sid, TO, "Hello")
    exceptions = pytest.importorskip("twilio.base.exceptions")
    with pytest.raises(exceptions.TwilioRestException) as info:
        client.messages("SM" + "0" * 32).fetch()
    assert (info.value.status, info.value.code) == (404, 20404)
    with pytest.raises(exceptions.TwilioRestException) as info:
        client.messages(sent.sid).delete()
    assert (info.value.status, info.value.code) == (405, 20004)
    assert len(twilio_server.messages) == 1


def test_twilio_bad_token_is_a_rest_exception_20003(twilio_server: TwilioServer) -> None:
    exceptions = pytest.importorskip("twilio.base.exceptions")
    with pytest.raises(exceptions.TwilioRestException) as info:
        twilio_client(twilio_server, token=WRONG).messages.create(
            to=TO, from_=twilio_server.from_number, body="x"
        )
    assert (info.value.status, info.value.code) == (401, 20003)
    assert twilio_server.messages == []


@pytest.mark.parametrize(
    ("kwargs", "code"),
    [
        ({"to": "+15005550001", "body": "x"}, 21211),  # Twilio's magic invalid number
        ({"to": "415-555-0101", "body": "x"}, 21211),  # not E.164
        ({"to": TO}, 21602),  # no Body, MediaUrl or ContentSid
        ({"to": TO, "media_url": [f"https://cdn.example/{i}.png" for i in range(11)]}, 21623),
        ({"to": TO, "media_url": ["cdn.example/a.png"]}, 21620),
        ({"to": TO, "content_sid": "HX-nope"}, 21655),
        ({"to": TO, "content_sid": "HX" + "0" * 32, "content_variables": "[1]"}, 21656),
        ({"to": TO, "body": "x" * 1601}, 21617),
        ({"to": "+15005550004", "body": "x"}, 21610),
    ],
)
def test_twilio_refusals_carry_twilios_code(
    twilio_server: TwilioServer, kwargs: dict[str, Any], code: int
) -> None:
    exceptions = pytest.importorskip("twilio.base.exceptions")
    with pytest.raises(exceptions.TwilioRestException) as info:
        twilio_client(twilio_server).messages.create(from_=twilio_server.from_number, **kwargs)
    assert (info.value.status, info.value.code) == (400, code)
    assert twilio_server.messages == []


def test_twilio_rate_limit_is_a_429_with_20429(twilio_server: TwilioServer) -> None:
    exceptions = pytest.importorskip("twilio.base.exceptions")
    twilio_server.faults.fail_next(429)
    with pytest.raises(exceptions.TwilioRestException) as info:
        twilio_client(twilio_server).messages.create(
            to=TO, from_=twilio_server.from_number, body="x"
        )
    assert (info.value.status, info.value.code) == (429, 20429)


# == Telnyx (telnyx 4.x, httpx) ============================================================


@pytest.fixture
def telnyx_server() -> Iterator[TelnyxServer]:
    with TelnyxServer(token=SECRET) as server:
        yield server


@pytest.fixture
def telnyx_client(telnyx_server: TelnyxServer) -> Iterator[Any]:
    telnyx = pytest.importorskip("telnyx")
    with telnyx.Telnyx(
        api_key=SECRET, base_url=f"{telnyx_server.base_url}/v2", max_retries=0
    ) as client:
        yield client


def test_telnyx_sms_is_parsed_into_the_sdks_response(
    telnyx_server: TelnyxServer, telnyx_client: Any
) -> None:
    response = telnyx_client.messages.send(to=TO, from_=telnyx_server.from_number, text="Hi")
    (record,) = telnyx_server.messages
    assert response.data.id == record["id"]
    assert response.data.to[0].phone_number == TO
    assert response.data.type == record["type"] == "SMS"


def test_telnyx_mms_with_media_subject_and_type(
    telnyx_server: TelnyxServer, telnyx_client: Any
) -> None:
    urls = ["https://cdn.example/a.png"]
    response = telnyx_client.messages.send(
        to=TO,
        from_=telnyx_server.from_number,
        media_urls=urls,
        subject="Spring",
        type="MMS",
        webhook_url="https://hooks.example/telnyx",
    )
    (record,) = telnyx_server.messages
    assert (record["media_urls"], record["subject"], record["type"]) == (urls, "Spring", "MMS")
    assert record["body"] == ""
    assert [m.url for m in response.data.media] == urls


def test_telnyx_messaging_profile_instead_of_from(
    telnyx_server: TelnyxServer, telnyx_client: Any
) -> None:
    telnyx_client.messages.send(
        to=TO, messaging_profile_id=telnyx_server.messaging_profile_id, text="Hi"
    )
    (record,) = telnyx_server.messages
    assert (record["from"], record["messaging_profile_id"]) == (
        None,
        telnyx_server.messaging_profile_id,
    )


def test_telnyx_bad_key_is_the_sdks_authentication_error(telnyx_server: TelnyxServer) -> None:
    telnyx = pytest.importorskip("telnyx")
    with (
        telnyx.Telnyx(api_key=WRONG, base_url=f"{telnyx_server.base_url}/v2") as client,
        pytest.raises(telnyx.AuthenticationError) as info,
    ):
        client.messages.send(to=TO, from_=telnyx_server.from_number, text="Hi")
    assert info.value.status_code == 401
    assert info.value.body["errors"][0]["code"] == "10009"


@pytest.mark.parametrize(
    ("kwargs", "error", "code"),
    [
        ({"to": "4155550101"}, "UnprocessableEntityError", "10016"),
        ({"to": "+15550100123"}, "BadRequestError", "40310"),  # the reserved invalid range
        ({"to": TO, "text": None}, "UnprocessableEntityError", "10004"),
        (
            {"to": TO, "type": "SMS", "media_urls": ["https://x.example/a"]},
            "UnprocessableEntityError",
            "10015",
        ),
        ({"to": TO, "media_urls": ["ftp://x.example/a"]}, "UnprocessableEntityError", "10015"),
        ({"to": TO, "encoding": "gsm7", "text": "€ ok, 日本 not"}, "BadRequestError", "10015"),
    ],
)
def test_telnyx_refusals_carry_telnyxs_code(
    telnyx_server: TelnyxServer,
    telnyx_client: Any,
    kwargs: dict[str, Any],
    error: str,
    code: str,
) -> None:
    telnyx = pytest.importorskip("telnyx")
    send: dict[str, Any] = {"from_": telnyx_server.from_number, "text": "Hi", **kwargs}
    send = {k: v for k, v in send.items() if v is not None}
    with pytest.raises(getattr(telnyx, error)) as info:
        telnyx_client.messages.send(**send)
    assert info.value.body["errors"][0]["code"] == code
    assert telnyx_server.messages == []


def test_telnyx_unknown_sender_is_refused_with_from_numbers() -> None:
    telnyx = pytest.importorskip("telnyx")
    with (
        TelnyxServer(token=SECRET, from_numbers=["+15055550111"]) as server,
        telnyx.Telnyx(api_key=SECRET, base_url=f"{server.base_url}/v2") as client,
    ):
        client.messages.send(to=TO, from_="+15055550111", text="ok")
        with pytest.raises(telnyx.BadRequestError) as info:
            client.messages.send(to=TO, from_="+15055550100", text="no")
    assert info.value.body["errors"][0]["code"] == "40305"
    assert [m["from"] for m in server.messages] == ["+15055550111"]


def test_telnyx_rate_limit_is_the_sdks_rate_limit_error(
    telnyx_server: TelnyxServer, telnyx_client: Any
) -> None:
    telnyx = pytest.importorskip("telnyx")
    telnyx_server.faults.fail_next(429)
    with pytest.raises(telnyx.RateLimitError) as info:
        telnyx_client.messages.send(to=TO, from_=telnyx_server.from_number, text="Hi")
    assert info.value.status_code == 429
    assert info.value.body["errors"][0]["code"] == "10011"


# == Expo (exponent_server_sdk 2.x, requests) ==============================================


def expo_token(n: int) -> str:
    return f"ExponentPushToken[sdk-{n}]"


@pytest.fixture
def expo_server() -> Iterator[ExpoServer]:
    with ExpoServer(token=SECRET) as server:
        yield server


def expo() -> Any:
    return pytest.importorskip("exponent_server_sdk")


def expo_session(token: str) -> requests.Session:
    """The session the SDK's README shows for an access token (enhanced security)."""
    session = requests.Session()
    session.headers.update(
        {
            "Authorization": f"Bearer {token}",
            "accept": "application/json",
            "accept-encoding": "gzip, deflate",
            "content-type": "application/json",
        }
    )
    return session


def test_expo_sound_object_and_ios_fields(expo_server: ExpoServer) -> None:
    sdk = expo()
    sound = {"critical": True, "name": "default", "volume": 0.7}
    ticket = sdk.PushClient(host=expo_server.base_url).publish(
        sdk.PushMessage(
            to=expo_token(1),
            title="Sale",
            body="Hi",
            data={"offer": "1"},
            sound=sound,
            badge=3,
            priority="high",
            channel_id="promo",
            category="offers",
            mutable_content=True,
            subtitle="Today",
        )
    )
    ticket.validate_response()
    (record,) = expo_server.messages
    assert ticket.id == record["id"]
    assert record["sound"] == sound
    assert (record["badge"], record["channel_id"], record["category_id"]) == (3, "promo", "offers")
    assert (record["mutable_content"], record["subtitle"]) == (True, "Today")


def test_expo_string_sound_and_interruption_level(expo_server: ExpoServer) -> None:
    sdk = expo()

    class LevelMessage(sdk.PushMessage):  # type: ignore[misc,name-defined]
        """The SDK's documented way to send a field it does not know yet."""

        def get_payload(self) -> dict[str, Any]:
            return {**super().get_payload(), "interruptionLevel": "time-sensitive"}

    tickets = sdk.PushClient(host=expo_server.base_url).publish_multiple(
        [
            sdk.PushMessage(to=expo_token(1), body="Hi", sound="default"),
            LevelMessage(to=expo_token(2)),
        ]
    )
    assert [t.status for t in tickets] == ["ok"] * 2
    assert [m["to"] for m in expo_server.messages] == [expo_token(1), expo_token(2)]
    assert expo_server.messages[0]["sound"] == "default"
    assert expo_server.messages[1]["interruption_level"] == "time-sensitive"


def test_expo_ticket_and_receipt_errors_are_the_sdks_exceptions() -> None:
    sdk = expo()
    with ExpoServer(
        unregistered=[expo_token(9)],
        ticket_errors={expo_token(8): "MessageRateExceeded"},
        receipt_errors={expo_token(2): "DeviceNotRegistered"},
    ) as server:
        client = sdk.PushClient(host=server.base_url)
        tickets = client.publish_multiple(
            [sdk.PushMessage(to=expo_token(n), body="Hi") for n in (1, 2, 8, 9)]
        )
        with pytest.raises(sdk.MessageRateExceededError):
            tickets[2].validate_response()
        with pytest.raises(sdk.DeviceNotRegisteredError) as info:
            tickets[3].validate_response()
        assert info.value.push_response.details["expoPushToken"] == expo_token(9)
        receipts = {r.id: r for r in client.check_receipts_multiple(tickets[:2])}
    receipts[tickets[0].id].validate_response()
    with pytest.raises(sdk.DeviceNotRegisteredError):
        receipts[tickets[1].id].validate_response()
    assert [m["to"] for m in server.messages] == [expo_token(1), expo_token(2)]


def test_expo_access_token_via_the_sdk_session(expo_server: ExpoServer) -> None:
    sdk = expo()
    expo_server.require_auth = True
    ok = sdk.PushClient(host=expo_server.base_url, session=expo_session(SECRET))
    assert ok.publish(sdk.PushMessage(to=expo_token(1), body="Hi")).is_success()
    bad = sdk.PushClient(host=expo_server.base_url, session=expo_session(WRONG))
    with pytest.raises(sdk.PushServerError) as info:
        bad.publish(sdk.PushMessage(to=expo_token(2), body="Hi"))
    assert info.value.response.status_code == 401
    assert info.value.errors[0]["code"] == "UNAUTHORIZED"
    assert [m["to"] for m in expo_server.messages] == [expo_token(1)]


@pytest.mark.parametrize(
    "message",
    [
        {"sound": {"volume": 2}},
        {"sound": 5},
        {"badge": -1},
        {"priority": "urgent"},
        {"mutable_content": "yes"},
    ],
)
def test_expo_request_errors_are_push_server_errors(
    expo_server: ExpoServer, message: dict[str, Any]
) -> None:
    sdk = expo()
    with pytest.raises(sdk.PushServerError) as info:
        sdk.PushClient(host=expo_server.base_url).publish_multiple(
            [sdk.PushMessage(**{"to": expo_token(1), "body": "Hi", **message})]
        )
    assert info.value.response.status_code == 400
    assert info.value.errors[0]["code"] == "VALIDATION_ERROR"
    assert expo_server.messages == []


def test_expo_rate_limit_reaches_the_sdk_as_429(expo_server: ExpoServer) -> None:
    sdk = expo()
    expo_server.faults.fail_next(429)
    with pytest.raises(sdk.PushServerError) as info:
        sdk.PushClient(host=expo_server.base_url).publish(sdk.PushMessage(to=expo_token(1)))
    assert info.value.response.status_code == 429
    assert info.value.errors[0]["code"] == "TOO_MANY_REQUESTS"


# == OneSignal (onesignal-python-api 5.x, urllib3) =========================================


def sub(n: int) -> str:
    return str(uuid.UUID(int=n))


@pytest.fixture
def onesignal_server() -> Iterator[OneSignalServer]:
    with OneSignalServer(token=SECRET, unregistered=[sub(9)]) as server:
        yield server


def onesignal_api(server: OneSignalServer, key: str | None = SECRET) -> Any:
    onesignal = pytest.importorskip("onesignal")
    default_api = pytest.importorskip("onesignal.api.default_api")
    configuration = onesignal.Configuration(host=server.base_url, rest_api_key=key)
    return default_api.DefaultApi(onesignal.ApiClient(configuration))


def notification(server: OneSignalServer, **fields: Any) -> Any:
    model = pytest.importorskip("onesignal.model.notification")
    return model.Notification(app_id=server.app_id, **fields)


def test_onesignal_subscription_ids_with_language_maps(onesignal_server: OneSignalServer) -> None:
    strings = pytest.importorskip("onesignal.model.language_string_map")
    reply = onesignal_api(onesignal_server).create_notification(
        notification(
            onesignal_server,
            contents=strings.LanguageStringMap(en="Hi", fr="Salut"),
            headings=strings.LanguageStringMap(en="Sale", fr="Soldes"),
            include_subscription_ids=[sub(1), sub(9)],
        )
    )
    assert reply.errors == {"invalid_player_ids": [sub(9)]}
    (record,) = onesignal_server.messages
    assert record["notification_id"] == reply.id
    assert (record["to"], record["title"], record["body"]) == (sub(1), "Sale", "Hi")
    assert record["contents"] == {"en": "Hi", "fr": "Salut"}


def test_onesignal_external_id_aliases(onesignal_server: OneSignalServer) -> None:
    aliases = pytest.importorskip("onesignal.model.include_aliases")
    onesignal_api(onesignal_server).create_notification(
        notification(
            onesignal_server,
            contents={"en": "Hi"},
            include_aliases=aliases.IncludeAliases(external_id=["c1", "c2"]),
            target_channel="push",
        )
    )
    assert [m["to"] for m in onesignal_server.messages] == ["c1", "c2"]
    assert onesignal_server.messages[0]["targeting"]["target_channel"] == "push"


def test_onesignal_segments_are_accepted_and_recorded(onesignal_server: OneSignalServer) -> None:
    reply = onesignal_api(onesignal_server).create_notification(
        notification(
            onesignal_server,
            contents={"en": "Hi"},
            included_segments=["Subscribed Users"],
            excluded_segments=["Churned"],
        )
    )
    (record,) = onesignal_server.messages
    assert record["to"] is None  # a segment's reach is unknown
    assert record["id"] == reply.id
    assert record["targeting"] == {
        "included_segments": ["Subscribed Users"],
        "excluded_segments": ["Churned"],
    }


def test_onesignal_filters_and_template_without_contents(
    onesignal_server: OneSignalServer,
) -> None:
    filters = pytest.importorskip("onesignal.model.filter")
    template = str(uuid.uuid4())
    onesignal_api(onesignal_server).create_notification(
        notification(
            onesignal_server,
            template_id=template,
            filters=[filters.Filter(field="tag", key="level", relation=">", value="10")],
        )
    )
    (record,) = onesignal_server.messages
    assert record["template_id"] == template
    assert record["contents"] is None
    assert record["targeting"]["filters"][0]["key"] == "level"


def test_onesignal_legacy_player_ids(onesignal_server: OneSignalServer) -> None:
    onesignal_api(onesignal_server).create_notification(
        notification(onesignal_server, contents={"en": "Hi"}, include_player_ids=[sub(2)])
    )
    assert [m["to"] for m in onesignal_server.messages] == [sub(2)]


def test_onesignal_nobody_subscribed_is_an_empty_id(onesignal_server: OneSignalServer) -> None:
    reply = onesignal_api(onesignal_server).create_notification(
        notification(onesignal_server, contents={"en": "Hi"}, include_subscription_ids=[sub(9)])
    )
    assert reply.id == ""
    assert reply.errors == ["All included players are not subscribed"]
    assert onesignal_server.messages == []


@pytest.mark.parametrize(
    ("key", "error", "status"),
    [(WRONG, "ForbiddenException", 403), (None, "UnauthorizedException", 401)],
)
def test_onesignal_bad_key_is_the_sdks_auth_exception(
    onesignal_server: OneSignalServer, key: str | None, error: str, status: int
) -> None:
    exceptions = pytest.importorskip("onesignal.exceptions")
    with pytest.raises(getattr(exceptions, error)) as info:
        onesignal_api(onesignal_server, key=key).create_notification(
            notification(onesignal_server, contents={"en": "Hi"}, include_subscription_ids=[sub(1)])
        )
    assert info.value.status == status
    assert info.value.error_messages
    assert onesignal_server.messages == []


@pytest.mark.parametrize(
    "fields",
    [
        {"contents": {"en": "Hi"}, "include_subscription_ids": ["not-a-uuid"]},
        {"contents": {"fr": "Salut"}, "include_subscription_ids": [sub(1)]},
        {"contents": {"en": "Hi"}, "excluded_segments": ["Churned"]},
        {
            "contents": {"en": "Hi"},
            "included_segments": ["A"],
            "include_subscription_ids": [sub(1)],
        },
        {"include_subscription_ids": [sub(1)]},
    ],
)
def test_onesignal_malformed_notifications_are_api_exceptions(
    onesignal_server: OneSignalServer, fields: dict[str, Any]
) -> None:
    exceptions = pytest.importorskip("onesignal.exceptions")
    with pytest.raises(exceptions.ApiException) as info:
        onesignal_api(onesignal_server).create_notification(
            notification(onesignal_server, **fields)
        )
    assert info.value.status == 400
    assert info.value.error_messages
    assert onesignal_server.messages == []


def test_onesignal_rate_limit_is_an_api_exception_429(onesignal_server: OneSignalServer) -> None:
    exceptions = pytest.importorskip("onesignal.exceptions")
    onesignal_server.faults.fail_next(429)
    with pytest.raises(exceptions.ApiException) as info:
        onesignal_api(onesignal_server).create_notification(
            notification(onesignal_server, contents={"en": "Hi"}, include_subscription_ids=[sub(1)])
        )
    assert info.value.status == 429
    assert info.value.error_messages == ["API rate limit exceeded."]


# == the docs' snippets (docs/sandbox.md, "Pointing the official SDKs at the sandbox") ====

DOCS = Path(__file__).resolve().parents[1] / "docs" / "sandbox.md"


@pytest.mark.parametrize(
    ("marker", "sdk"),
    [
        ("sdk-sendgrid", "sendgrid"),
        ("sdk-twilio", "twilio"),
        ("sdk-telnyx", "telnyx"),
        ("sdk-expo", "exponent_server_sdk"),
        ("sdk-onesignal", "onesignal"),
    ],
)
def test_the_documented_snippet_runs(marker: str, sdk: str) -> None:
    pytest.importorskip(sdk)
    pattern = rf"<!-- doctest: {re.escape(marker)} -->\n```python\n(.*?)```"
    found = re.search(pattern, DOCS.read_text(encoding="utf-8"), re.S)
    assert found, f"no {marker} snippet in {DOCS}"
    exec(compile(found.group(1), f"docs/sandbox.md ({marker})", "exec"), {})
