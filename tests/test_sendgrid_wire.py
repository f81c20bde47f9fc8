"""The SendGrid channel's hand-written JSON is byte for byte what the JSON encoder writes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit._models import Message
from campaignkit.channels import _sendgrid_mail as mail

texts = st.text(max_size=40)  # any code point but lone surrogates: quotes, controls, emoji
optional = st.none() | texts


@st.composite
def messages(draw: st.DrawFn) -> Message:
    return Message(
        recipient_id=draw(texts),
        channel="email",
        address=draw(texts),
        body=draw(texts),
        subject=draw(optional),
        html=draw(optional),
        headers=draw(st.dictionaries(texts, texts, max_size=2)),
        name=draw(optional),
        idempotency_key=draw(texts),
    )


def dumped(message: Message, substitute: bool) -> bytes:
    fields = mail._personalization_fields(message, substitute)
    return json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()


@settings(max_examples=500)
@given(messages(), st.booleans())
def test_personalization_is_the_json_dump_of_its_fields(message: Message, substitute: bool) -> None:
    assert mail.personalization(message, substitute) == dumped(message, substitute)


def test_personalization_fields_are_in_sendgrid_order() -> None:
    message = Message(
        recipient_id="r1",
        channel="email",
        address="a@example.com",
        body="Hi",
        subject="S",
        html="<p>Hi</p>",
        headers={"X-Tag": "1"},
        name="Ana",
        idempotency_key="k1",
    )
    fields = json.loads(mail.personalization(message, True))
    assert list(fields) == ["to", "subject", "headers", "custom_args", "substitutions"]
    assert fields["to"] == [{"email": "a@example.com", "name": "Ana"}]
    assert fields["custom_args"] == {mail.RECIPIENT_ARG: "r1", mail.IDEMPOTENCY_ARG: "k1"}
    assert fields["substitutions"] == {mail.TEXT_TAG: "Hi", mail.HTML_TAG: "<p>Hi</p>"}


@pytest.mark.parametrize("field", ["recipient_id", "subject", "name"])
def test_a_value_that_is_not_a_string_is_encoded_as_the_dict(field: str) -> None:
    values: dict[str, Any] = {
        "recipient_id": "r1",
        "channel": "email",
        "address": "a@example.com",
        "body": "Hi",
        "subject": "S",
        field: 7,
    }
    message = Message(**values)
    assert mail.personalization(message, True) == dumped(message, True)


def test_a_lone_surrogate_fails_as_the_encoder_does() -> None:
    message = Message(recipient_id="r1", channel="email", address="a@x.test", body="\ud800")
    with pytest.raises(UnicodeEncodeError):
        dumped(message, True)
    with pytest.raises(UnicodeEncodeError):
        mail.personalization(message, True)
