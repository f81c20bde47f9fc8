"""Declared channel options: the validators of ``campaignkit.options`` and how their
problems are reported (all at once, each naming its key path)."""

from __future__ import annotations

import re
import types
from pathlib import Path
from typing import Any

import attrs
import pytest

from campaignkit import ChannelSettings, ConfigError, Secret
from campaignkit.channels.expo import ExpoNotifier
from campaignkit.channels.sendgrid import SendGridNotifier
from campaignkit.channels.smtp import SmtpNotifier
from campaignkit.channels.twilio import TwilioNotifier
from campaignkit.options import between, check, matches, one_of

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _snippet(marker: str) -> str:
    text = (DOCS / "writing-a-channel-plugin.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- doctest: {marker}[^>]*-->\n```[a-z]*\n(.*?)```", text, re.S)
    assert found
    return found.group(1)


def _error(cls: Any, options: dict[str, Any], **settings: Any) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        cls(ChannelSettings(channel="ch", options=options, **settings))
    return info.value


def _paths(error: ConfigError) -> list[str]:
    return sorted(p.path or "" for p in error.problems)


def test_the_documented_example_declares_and_checks_its_options() -> None:
    module = types.ModuleType("campaignkit_pager_example")
    exec(compile(_snippet("options"), "docs/writing-a-channel-plugin.md", "exec"), module.__dict__)
    cls = module.PagerNotifier
    settings = ChannelSettings(
        channel="team", options={"team": "ops"}, token=Secret("t"), env={"PAGER_REGION": "eu"}
    )
    notifier = cls(settings)
    assert notifier.options == module.PagerOptions(team="ops")
    assert notifier.region == "eu"
    error = _error(
        cls,
        {"team": " ", "priority": "urgent", "retries": 9, "base_url": "http://pager.example.com"},
        token=Secret("t"),
    )
    assert _paths(error) == [
        "channels.ch.options.base_url",
        "channels.ch.options.priority",
        "channels.ch.options.retries",
        "channels.ch.options.team",
    ]
    assert str(error).startswith("4 problems")
    assert "channels.ch.options.priority: expected one of low, normal, high, got 'urgent'" in str(
        error
    )
    assert "channels.ch.options.retries: expected 0 to 5, got 9" in str(error)


def test_unknown_keys_and_wrong_types_come_with_the_validators_problems() -> None:
    error = _error(
        SendGridNotifier,
        {
            "from_email": "nobody",
            "reply_to": 3,
            "categories": ["ok", ""],
            "custom_args": {"campaignkit_recipient_id": "x"},
            "sandbox_mod": True,
        },
        token=Secret("t"),
    )
    assert _paths(error) == [
        "channels.ch.options.categories.1",
        "channels.ch.options.custom_args.campaignkit_recipient_id",
        "channels.ch.options.from_email",
        "channels.ch.options.reply_to",
        "channels.ch.options.sandbox_mod",
    ]
    assert "did you mean 'sandbox_mode'?" in str(error)


def test_a_required_key_left_out_for_its_problem_is_not_also_missing() -> None:
    error = _error(SmtpNotifier, {"host": "h.example.com", "from_email": "x"})
    assert [p.message for p in error.problems] == ["not an email address: 'x'"]
    twilio = _error(
        TwilioNotifier,
        {"from": "not a number!", "account_sid": "AC" + "0" * 32},
    )
    assert _paths(twilio) == ["channels.ch.options.from"]


def test_attrs_own_validators_are_reported_on_their_key() -> None:
    from campaignkit._config import collect_options

    @attrs.frozen
    class Options:
        mode: str = attrs.field(default="a", validator=attrs.validators.in_(["a", "b"]))
        code: str = attrs.field(default="x1", validator=attrs.validators.matches_re(r"x\d"))

    value, problems = collect_options(
        {"mode": "c", "code": "y"}, Options, path="channels.c.options"
    )
    assert value == Options()  # what is left without the refused values
    assert [p.path for p in problems] == ["channels.c.options.mode", "channels.c.options.code"]


def test_validators_let_none_through_and_name_the_key() -> None:
    @attrs.frozen
    class Options:
        size: int | None = attrs.field(default=None, validator=between(1, 3))
        kind: str | None = attrs.field(default=None, validator=one_of("a"))
        sid: str | None = attrs.field(default=None, validator=matches("S[0-9]", "S and a digit"))
        even: int | None = attrs.field(default=None, validator=check(lambda v: v % 2 == 0, "odd"))

    Options()
    with pytest.raises(ConfigError) as info:
        Options(sid="T1")
    assert (info.value.path, info.value.detail) == ("sid", "expected S and a digit, got 'T1'")
    with pytest.raises(ConfigError, match="odd"):
        Options(even=3)


def test_expo_options_are_declared() -> None:
    error = _error(ExpoNotifier, {"ttl": -1, "priority": "urgent"})
    assert [(p.path, p.message) for p in error.problems] == [
        ("channels.ch.options.ttl", "expected a number >= 0, got -1"),
        ("channels.ch.options.priority", "expected one of default, normal, high, got 'urgent'"),
    ]


def test_settings_keep_the_environment_out_of_their_repr() -> None:
    settings = ChannelSettings(channel="ch", env={"SECRET_THING": "value"})
    assert "SECRET_THING" not in repr(settings)
    assert settings.getenv("SECRET_THING") == "value"
    assert settings.getenv("UNSET") is None
    assert settings.path == "channels.ch.options"


def test_validate_lists_every_option_problem_of_a_channel(tmp_path: Path) -> None:
    from campaignkit import Channel, Pipeline, Template, get_plugin_manager
    from campaignkit.testing import StaticSource

    channel = Channel(
        name="sms",
        provider="twilio",
        template=Template(body="Hi"),
        options={"from": "not a number!", "validity_period": 0, "account_sid": "AC1"},
    )
    pipeline = Pipeline(
        "t",
        StaticSource.from_dicts([{"id": "c1", "phone": "+14155550001"}]),
        [channel],
        plugins=get_plugin_manager(load_entrypoints=False),
        env={"SMS_API_TOKEN": "t"},
        base_dir=tmp_path,
    )
    found = {(p.path, p.group) for p in pipeline.problems()}
    assert {
        ("channels.sms.options.from", "channels"),
        ("channels.sms.options.validity_period", "channels"),
        ("channels.sms.options.account_sid", "channels"),
    } <= found
