"""`ck_sandbox` starts only the servers a test uses (no aiosmtpd for HTTP-only tests),
rehearsals are not slowed by the providers' default rate limits, and the fakes come
from the plugin manager (``campaignkit_register_sandbox_servers``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from campaignkit import (
    Channel,
    PipelineConfig,
    PluginError,
    SourceConfig,
    Template,
    get_plugin_manager,
    hookimpl,
)
from campaignkit._models import Rate
from campaignkit.channels.twilio import TwilioNotifier
from campaignkit.testing.sandbox import (
    Credential,
    ProviderServer,
    Reply,
    Request,
    Sandbox,
    sandbox_fakes,
)

PHONES = [f"+1415555{i:04d}" for i in range(40)]


def sms_config(
    tmp_path: Path, *, rate: Rate | None = None, target: int | None = None
) -> PipelineConfig:
    segment = tmp_path / "segment.csv"
    rows = [f"c{i},{phone},c{i}@example.com" for i, phone in enumerate(PHONES)]
    segment.write_text("id,phone,email\n" + "\n".join(rows) + "\n")
    channels = [
        Channel(
            name="sms",
            provider="twilio",
            template=Template(body="Hi {{ id }}"),
            require_consent=False,
            rate=rate,
            target_customers=target,
        ),
        Channel(
            name="push", provider="expo", template=Template(body="x"), enabled=False
        ),
    ]
    return PipelineConfig(
        name="lazy",
        source=SourceConfig("csv", {"path": str(segment)}),
        channels=tuple(channels),
        base_dir=tmp_path,
    )


def test_the_fixture_starts_only_what_the_test_uses(ck_sandbox: Sandbox, tmp_path: Path) -> None:
    assert ck_sandbox.live_servers() == {}
    pipeline = ck_sandbox.pipeline(sms_config(tmp_path), sleep=lambda s: None)
    assert set(ck_sandbox.live_servers()) == {"twilio"}  # the disabled push channel: no
    assert pipeline.run().channels["sms"].sent == len(PHONES)
    assert ck_sandbox.counts() == {p: (40 if p == "twilio" else 0) for p in ck_sandbox.providers}
    assert ck_sandbox.url("expo").startswith("http://127.0.0.1:")  # used: started now
    assert set(ck_sandbox.live_servers()) == {"twilio", "expo"}


def test_an_eager_sandbox_starts_everything_it_serves() -> None:
    with Sandbox(["twilio", "expo"]) as sandbox:
        assert set(sandbox.live_servers()) == {"twilio", "expo"}
    assert sandbox.live_servers() == {} and dict(sandbox.servers) == {}


def test_importing_the_sandbox_does_not_import_aiosmtpd() -> None:
    code = (
        "import sys, campaignkit.testing.sandbox, campaignkit.testing.pytest_plugin\n"
        "from campaignkit.testing.sandbox import Sandbox\n"
        "with Sandbox(['twilio', 'sendgrid']) as s: s.servers['twilio']\n"
        "assert 'aiosmtpd' not in sys.modules, 'aiosmtpd imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


INNER_TESTS = """
    import sys
    from pathlib import Path

    from campaignkit import Channel, PipelineConfig, SourceConfig, Template


    def config(tmp_path, provider):
        (tmp_path / "seg.csv").write_text("id,email,phone\\nc1,a@example.com,+14155550100\\n")
        channel = Channel(name="msg", provider=provider, template=Template(subject="s", body="b"),
                          require_consent=False)
        source = SourceConfig("csv", {"path": str(tmp_path / "seg.csv")})
        return PipelineConfig(name="inner", source=source, channels=(channel,), base_dir=tmp_path)


    def test_http_only(ck_sandbox, tmp_path):
        report = ck_sandbox.pipeline(config(tmp_path, "twilio")).run()
        assert report.channels["msg"].sent == 1
        assert sys.modules.get("aiosmtpd") is None


    def test_smtp(ck_sandbox, tmp_path):
        ck_sandbox.pipeline(config(tmp_path, "smtp")).run()
"""

BLOCKED = "import sys; sys.modules['aiosmtpd'] = None; import pytest; sys.exit(pytest.main())"


def run_inner(tmp_path: Path, test: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_inner.py").write_text(textwrap.dedent(INNER_TESTS))
    return subprocess.run(
        [sys.executable, "-c", BLOCKED],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={
            **os.environ,
            "PYTEST_ADDOPTS": f"-q -p no:randomly -p no:cacheprovider test_inner.py::{test}",
        },
    )


def test_without_aiosmtpd_http_tests_pass(tmp_path: Path) -> None:
    result = run_inner(tmp_path, "test_http_only")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed" in result.stdout


def test_without_aiosmtpd_an_smtp_test_says_what_to_install(tmp_path: Path) -> None:
    result = run_inner(tmp_path, "test_smtp")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "the SMTP sandbox needs aiosmtpd: pip install 'campaignkit[sandbox]'" in result.stdout


# -- rate limits in rehearsals ---------------------------------------------------------------


def test_rehearsals_lift_the_default_rate_but_keep_an_explicit_one(tmp_path: Path) -> None:
    with Sandbox(["twilio", "expo"], lazy=True) as sandbox:
        unset, explicit = (
            sandbox.apply(sms_config(tmp_path, rate=r)).channels[0]
            for r in (None, Rate(messages_per_second=3))
        )
        assert unset.rate == Rate()  # unlimited, instead of Twilio's documented default
        assert explicit.rate == Rate(messages_per_second=3)


def test_sandbox_sends_are_not_held_to_the_provider_default(
    ck_sandbox: Sandbox, tmp_path: Path
) -> None:
    default = TwilioNotifier.default_rate.messages_per_second
    assert default is not None
    report = ck_sandbox.pipeline(sms_config(tmp_path), sleep=lambda s: None).run()
    assert report.channels["sms"].sent == len(PHONES)
    # Held to the default, no one-second window could see more than default + 1 sends.
    assert ck_sandbox.servers["twilio"].requests_per_second() > default + 1


def test_an_explicit_rate_is_rehearsed(tmp_path: Path) -> None:
    limit = 4.0
    with Sandbox(["twilio"], lazy=True) as sandbox:
        config = sms_config(tmp_path, rate=Rate(messages_per_second=limit), target=10)
        report = sandbox.pipeline(config, sleep=lambda s: None).run()
        assert report.channels["sms"].sent == 10
        assert sandbox.servers["twilio"].requests_per_second() <= limit + 1


# -- fakes from plugins ----------------------------------------------------------------------


class EchoServer(ProviderServer):
    """A fake accepting any request."""

    def handle(self, request: Request) -> Reply:
        with self.lock:
            self.messages.append(request.json())
        return Reply(200, {"ok": True})

    def channel_options(self) -> dict[str, Any]:
        return {"base_url": self.base_url}


def fake_plugin(*calls: tuple[Any, ...], **details: Any) -> object:
    """A plugin registering ``EchoServer`` as ``echo`` (or making the given calls)."""

    class Plugin:
        @hookimpl
        def campaignkit_register_sandbox_servers(self, register: Callable[..., None]) -> None:
            for call in calls or (("echo", EchoServer),):
                register(*call, **details)

    return Plugin()


def test_a_plugin_fake_is_served_through_the_plugin_manager() -> None:
    pm = get_plugin_manager(load_entrypoints=False, plugins=[fake_plugin()])
    with Sandbox(["echo", "twilio"], plugins=pm, lazy=True) as sandbox:
        assert sandbox.live_servers() == {}
        assert sandbox.channel_options("echo")["base_url"] == sandbox.url("echo")
        assert set(sandbox.live_servers()) == {"echo"}
        assert sandbox.provider_env("echo") == {"ECHO_API_TOKEN": "sandbox-token"}
    assert "echo" in Sandbox(plugins=pm).providers  # all, by default


def test_a_provider_without_a_fake_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="no sandbox for provider 'echo'") as info:
        Sandbox(["echo"], plugins=get_plugin_manager(load_entrypoints=False))
    assert "campaignkit_register_sandbox_servers" in str(info.value)


def test_the_builtin_fakes_are_a_plugin_like_any_other() -> None:
    pm = get_plugin_manager(
        load_entrypoints=False, block=["campaignkit.testing.sandbox.providers"]
    )
    assert sandbox_fakes(pm) == {}
    builtin = sandbox_fakes(get_plugin_manager(load_entrypoints=False))
    assert list(builtin) == ["sendgrid", "smtp", "twilio", "telnyx", "onesignal", "expo"]
    assert builtin["telnyx"].sdk_base_url == ("TELNYX_BASE_URL", "/v2")
    assert builtin["twilio"].plugin == "campaignkit.testing.sandbox.providers"


def test_details_of_a_plugin_fake() -> None:
    secret = Credential("api_key", "ECHO_KEY", "token")
    pm = get_plugin_manager(
        load_entrypoints=False,
        plugins=[fake_plugin(credentials=[secret], token_variable="CRM_API_TOKEN")],
    )
    with Sandbox(["echo"], plugins=pm) as sandbox:
        assert sandbox.credentials("echo") == {"api_key": "sandbox-token"}
        assert sandbox.provider_env("echo") == {
            "ECHO_KEY": "sandbox-token",
            "CRM_API_TOKEN": "sandbox-token",
        }


@pytest.mark.parametrize(
    ("plugin", "says"),
    [
        (fake_plugin(("twilio", EchoServer)), "sandbox server 'twilio' is registered twice"),
        (fake_plugin(("echo", 42)), "is not a class, a factory or a 'module:Class' string"),
        (fake_plugin(("", EchoServer)), "registered a sandbox server without a provider"),
        (fake_plugin(colour="red"), "unknown details: colour"),
        (fake_plugin(credentials=42), "sandbox server 'echo'"),
    ],
)
def test_a_fake_registered_wrongly_is_a_plugin_error(plugin: object, says: str) -> None:
    pm = get_plugin_manager(load_entrypoints=False, plugins=[plugin])
    with pytest.raises(PluginError, match=says):
        Sandbox(plugins=pm)
