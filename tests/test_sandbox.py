"""The provider sandbox as users get it: the pytest11 fixtures and Sandbox.apply()."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit import Channel, Pipeline, PipelineConfig, RunStatus, SourceConfig, Template
from campaignkit.testing.sandbox import PROVIDERS, Sandbox

ROWS = [
    # id, email, phone, push token (Expo) / subscription id (OneSignal)
    ("c1", "ann@example.com", "+14155550101", "ExponentPushToken[ann]"),
    ("c2", "bob@invalid.example", "+15550100123", "ExponentPushToken[bob]"),
    ("c3", "cid@example.com", "+14155550103", "ExponentPushToken[cid]"),
]


def segment(tmp_path: Path) -> Path:
    path = tmp_path / "seg.csv"
    lines = ["id,email,phone,push_token,first_name"]
    lines += [f"{i},{e},{p},{t},N{i}" for i, e, p, t in ROWS]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def config(tmp_path: Path, providers: dict[str, str]) -> PipelineConfig:
    templates = {
        "email": Template(subject="Hi {{ first_name }}", body="Text", html="<p>Hi</p>"),
        "sms": Template(body="Hi {{ first_name }}"),
        "push": Template(title="Sale", body="Hi {{ first_name }}"),
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
        name="sandboxed",
        source=SourceConfig("csv", {"path": str(segment(tmp_path))}),
        channels=channels,
        base_dir=tmp_path,
    )


def test_fixture_starts_every_provider(ck_sandbox: Sandbox) -> None:
    assert set(ck_sandbox.servers) == set(PROVIDERS)
    for provider, info in ck_sandbox.describe().items():
        assert info["token"], provider
        assert info["options"], provider


@pytest.mark.parametrize(
    "providers",
    [
        {"email": "sendgrid", "sms": "twilio", "push": "expo"},
        {"email": "smtp", "sms": "telnyx", "push": "expo"},
    ],
)
def test_campaign_against_the_sandbox(
    tmp_path: Path, ck_sandbox: Sandbox, providers: dict[str, str]
) -> None:
    cfg = ck_sandbox.apply(config(tmp_path, providers))
    report = Pipeline.from_config(cfg, env=ck_sandbox.env(cfg), sleep=lambda s: None).run()
    assert report.status in (RunStatus.SUCCEEDED, RunStatus.PARTIAL)
    email, sms, push = (report.channels[n] for n in ("email", "sms", "push"))
    assert (email.sent, email.failed) == (2, 1)  # *@invalid.example is refused
    assert push.sent == 3
    delivered = {
        p: sorted(m["to"] for m in ck_sandbox.servers[p].messages) for p in providers.values()
    }
    assert delivered[providers["push"]] == sorted(t for *_, t in ROWS)
    assert "ann@example.com" in delivered[providers["email"]]
    # The fictional +1555010xxxx number is an invalid address: never sent to the provider.
    assert (sms.sent, sms.failed, sms.reasons) == (2, 0, {"invalid_address": 1})
    dumped = ck_sandbox.dump(tmp_path / "recorded")
    assert all(path.exists() for path in dumped.values())


def test_recorder_fixture(tmp_path: Path, ck_plugin_manager: Any, ck_recorder: Any) -> None:
    cfg = config(tmp_path, {"sms": "recording"})
    report = Pipeline.from_config(cfg, plugins=ck_plugin_manager, env={}).run()
    assert report.channels["sms"].sent == 3
    assert [m.address for m in ck_recorder.outbox.messages] == [e for _, e, *_ in ROWS]


# -- fake forms: authorization schemes are case-insensitive (RFC 9110), as at the providers --


@pytest.fixture(scope="module")
def http_sandbox() -> Iterator[Sandbox]:
    with Sandbox(["sendgrid", "twilio", "telnyx", "expo", "onesignal"]) as sandbox:
        sandbox.servers["expo"].require_auth = True
        yield sandbox


def _authorized_request(sandbox: Sandbox, provider: str, scheme: str, secret: str) -> Any:
    """A valid send to ``provider`` with ``Authorization: <scheme> <credential>``."""
    server = sandbox.servers[provider]
    url = sandbox.url(provider)
    if provider == "twilio":
        credential = base64.b64encode(f"{server.account_sid}:{secret}".encode()).decode()
        return requests.post(
            f"{url}/2010-04-01/Accounts/{server.account_sid}/Messages.json",
            data={"To": "+14155550101", "From": server.from_number, "Body": "hi"},
            headers={"Authorization": f"{scheme} {credential}"},
            timeout=5,
        )
    path, body = _json_send(provider, server)
    return requests.post(
        url + path, json=body, headers={"Authorization": f"{scheme} {secret}"}, timeout=5
    )


def _json_send(provider: str, server: Any) -> tuple[str, dict[str, Any]]:
    """The path and a valid JSON body of a send to a JSON provider's server."""
    if provider == "sendgrid":
        return "/v3/mail/send", {
            "from": {"email": server.FROM_EMAIL},
            "subject": "s",
            "personalizations": [{"to": [{"email": "ann@example.com"}]}],
            "content": [{"type": "text/plain", "value": "t"}],
        }
    if provider == "telnyx":
        return "/v2/messages", {"to": "+14155550101", "from": server.from_number, "text": "hi"}
    if provider == "expo":
        return "/--/api/v2/push/send", {"to": "ExponentPushToken[x]", "body": "hi"}
    return "/notifications", {
        "app_id": server.app_id,
        "contents": {"en": "hi"},
        "included_segments": ["All"],
    }


_SCHEMES = {
    "sendgrid": ["Bearer"],
    "twilio": ["Basic"],
    "telnyx": ["Bearer"],
    "expo": ["Bearer"],
    "onesignal": ["Key", "Basic"],  # Basic: OneSignal's legacy scheme
}


@settings(max_examples=40, deadline=None)
@given(
    provider=st.sampled_from(sorted(_SCHEMES)),
    data=st.data(),
)
def test_authorization_scheme_is_matched_without_case(
    http_sandbox: Sandbox, provider: str, data: st.DataObject
) -> None:
    scheme = data.draw(st.sampled_from(_SCHEMES[provider]))
    cased = "".join(c.upper() if data.draw(st.booleans()) else c.lower() for c in scheme)
    server = http_sandbox.servers[provider]
    before = len(server.messages)
    accepted = _authorized_request(http_sandbox, provider, cased, server.token)
    assert accepted.status_code < 300, (cased, accepted.text)
    assert len(server.messages) == before + 1
    refused = _authorized_request(http_sandbox, provider, cased, "wrong-" + server.token)
    assert refused.status_code in (401, 403)
    assert len(server.messages) == before + 1
