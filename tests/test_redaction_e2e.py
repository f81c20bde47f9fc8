"""Provider error bodies that echo credentials never reach the ledger, the JSON report
or ``campaignkit report`` (CSV/JSON), raw or base64-encoded.

The sandbox's ``echo_credentials`` fault makes every error reply repeat the
request's ``Authorization`` header and the bare credential.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from campaignkit.cli import main
from campaignkit.testing import sandbox as sandbox_module
from campaignkit.testing.sandbox import Sandbox

TOKENS = {
    "sendgrid": "SG.e2e-sendgrid-secret-0123456789",
    "twilio": "e2e0twilio0auth0token0abcdef0123",
    "telnyx": "KEY0e2e-telnyx-secret-456789",
    "expo": "expo-e2e-access-token-987654",
}
SIDS: dict[str, str] = {}


class EchoingSandbox(Sandbox):
    """The sandbox `--sandbox` starts, with its own tokens and echoing error bodies."""

    def start(self) -> Sandbox:
        super().start()
        for provider, server in self.servers.items():
            if provider in TOKENS:
                server.token = TOKENS[provider]
            faults = getattr(server, "faults", None)
            if faults is not None and hasattr(faults, "echo_credentials"):
                faults.echo_credentials = True
                if provider in ("twilio", "telnyx", "expo"):
                    faults.fail_next(400)  # the first request: an error body
        twilio = self.servers.get("twilio")
        if twilio is not None:
            SIDS["twilio"] = str(twilio.channel_options()["account_sid"])
        return self


@pytest.fixture
def echoing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_module, "Sandbox", EchoingSandbox)


def forbidden() -> list[str]:
    """Every spelling of a token that must not appear."""
    out = []
    for token in TOKENS.values():
        out += [token, base64.b64encode(token.encode()).decode().rstrip("=")]
    sid = SIDS.get("twilio")
    if sid:
        basic = base64.b64encode(f"{sid}:{TOKENS['twilio']}".encode()).decode()
        out += [basic, basic[len(sid) + 4 : -4]]
    return out


def campaign(tmp: Path, sms: str) -> Path:
    (tmp / "segment.csv").write_text(
        "id,email,phone,push_token\n"
        "C1,ann@example.com,+14155550101,ExponentPushToken[ann]\n"
        "C2,bob@invalid.example,+14155550102,ExponentPushToken[bob]\n"
        "C3,cid@example.com,+14155550103,ExponentPushToken[cid]\n"
    )
    options = '{ from = "+15005550006" }' if sms == "twilio" else '{ from = "+15055550100" }'
    config = tmp / "campaign.toml"
    config.write_text(
        '[pipeline]\nname = "echo"\n[source]\ntype = "csv"\npath = "segment.csv"\n'
        "[execution]\nretry = { retries = 0 }\n"
        '[channels.email]\nprovider = "sendgrid"\nrequire_consent = false\n'
        'options = { from_email = "news@example.com" }\n'
        '[channels.email.template]\nsubject = "Hi"\nbody = "Hello"\n'
        f'[channels.sms]\nprovider = "{sms}"\nrequire_consent = false\noptions = {options}\n'
        '[channels.sms.template]\nbody = "Hello"\n'
        '[channels.push]\nprovider = "expo"\nrequire_consent = false\n'
        '[channels.push.template]\ntitle = "Hi"\nbody = "Hello"\n'
    )
    return config


def invoke(*args: str) -> Result:
    env: dict[str, str | None] = {
        "EMAIL_API_TOKEN": None,
        "SMS_API_TOKEN": None,
        "PUSH_API_TOKEN": None,
        "CAMPAIGNKIT_BLOCK_PLUGINS": None,
    }
    return CliRunner().invoke(main, list(args), env=env)


@pytest.mark.parametrize("sms", ["twilio", "telnyx"])
def test_echoed_credentials_are_never_stored_or_printed(
    tmp_path: Path, echoing: None, sms: str
) -> None:
    config = campaign(tmp_path, sms)
    run = invoke("run", str(config), "--sandbox", "--json")
    assert run.exit_code in (1, 3), run.output
    report = json.loads(run.stdout)
    run_id = report["run_id"]
    texts = {"run output": run.output}
    errors = []
    for fmt in ("csv", "json"):
        result = invoke("report", str(config), run_id, "--sandbox", "--format", fmt)
        assert result.exit_code == 0, result.output
        texts[f"report {fmt}"] = result.output
        if fmt == "json":
            errors = [r["error"] for r in json.loads(result.stdout) if r.get("error")]
    # The echoed error bodies did reach the ledger, redacted.
    assert any("Authorization: ***" in e for e in errors), errors
    assert any("credentials *** rejected" in e for e in errors), errors
    for path in tmp_path.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode("latin-1")
    for name, text in texts.items():
        for spelling in forbidden():
            assert spelling not in text, (name, spelling)


def test_a_plugin_exception_carrying_the_token_is_stored_and_logged_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # requests' InvalidHeader quotes the header value: a plugin that puts the token
    # in a header it cannot carry raises it from send_batch.
    import logging
    from typing import Any

    import requests

    from campaignkit import Channel, Notifier, Pipeline, Template, get_plugin_manager, hookimpl
    from campaignkit.testing import StaticSource

    token = "plugin-secret-token-31337"

    class Leaky(Notifier[None]):
        name = "leaky"
        address_field = "email"

        def send_batch(self, conn: None, messages: Any) -> Any:
            assert self.settings.token is not None
            value = f"Bearer {self.settings.token.reveal()}\n"
            requests.Request("POST", "https://x.invalid", headers={"X-Auth": value}).prepare()
            raise AssertionError("unreachable")

    class Plugin:
        @hookimpl
        def campaignkit_register_channels(self, register: Any) -> None:
            register(Leaky)

    pipeline = Pipeline(
        "leaky",
        StaticSource.from_dicts([{"id": "C1", "email": "ann@example.com"}]),
        [
            Channel(
                name="email",
                provider="leaky",
                template=Template(body="x", subject="s"),
                require_consent=False,
            )
        ],
        base_dir=tmp_path,
        plugins=get_plugin_manager(load_entrypoints=False, plugins=[Plugin()]),
        env={"EMAIL_API_TOKEN": token},
        sleep=lambda seconds: None,
    )
    with caplog.at_level(logging.DEBUG, logger="campaignkit"):
        report = pipeline.run()
    [result] = pipeline.results(report.run_id)
    assert result.error is not None and "header" in result.error
    assert "Bearer ***" in result.error
    assert token not in caplog.text and "notifier 'leaky' raised" in caplog.text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path
