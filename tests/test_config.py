"""Campaign TOML files: structure, defaults, and errors that name the key path."""

from __future__ import annotations

from pathlib import Path

import pytest

from campaignkit import ConfigError, Pipeline, RetryPolicy, load_config
from campaignkit._models import Secret

BASE = """
[pipeline]
name = "spring_sale"
description = "d"
tags = ["a"]

[source]
type = "csv"
path = "seg.csv"

[channels.sms]
provider = "twilio"
target_customers = 10
[channels.sms.template]
body = "Hi {{ first_name }}"
[channels.sms.options]
account_sid = "AC00000000000000000000000000000000"
from = "+15005550006"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "campaign.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_follow_the_seed(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, BASE))
    assert config.name == "spring_sale"
    assert config.execution.retry == RetryPolicy(retries=2, delay_minutes=5.0)
    assert config.schedule.cron == "@daily"
    assert config.schedule.catchup is False
    assert config.schedule.start_date.isoformat() == "2024-01-01T00:00:00+00:00"
    (sms,) = config.channels
    assert sms.token_variable == "SMS_API_TOKEN"
    assert sms.report_key == "sms_campaign_results"
    assert config.base_dir == tmp_path.resolve()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ("target_customers = 10", 'target_customers = "ten"'),
            "channels.sms.target_customers: expected int, got 'ten'",
        ),
        (
            ('provider = "twilio"', 'provider = "twilio"\nconcurrency = 0'),
            "channels.sms.concurrency: expected a positive number, got 0",
        ),
        (
            ('provider = "twilio"', 'provider = "twilio"\nbogus = 1'),
            "channels.sms.bogus: unknown key",
        ),
        (
            (
                '[channels.sms.template]\nbody = "Hi {{ first_name }}"',
                '[channels.sms.template]\nbody_file = "missing.txt"',
            ),
            "channels.sms.template.body_file: cannot read",
        ),
        (
            ('tags = ["a"]', 'tags = ["a"]\n[schedule]\ncron = "every day"'),
            "schedule.cron: invalid cron expression 'every day': expected 5 fields",
        ),
        (
            ('tags = ["a"]', 'tags = ["a"]\n[schedule]\ntimezone = "Europe/Nowhere"'),
            "schedule.timezone: unknown time zone",
        ),
        (
            ('tags = ["a"]', 'tags = ["a"]\n[execution.retry]\nretries = -1'),
            "execution.retry.retries: expected zero or more",
        ),
        (('name = "spring_sale"', 'name = "Spring Sale"'), "pipeline.name: expected lower-case"),
        (("[source]", "[sauce]"), "unknown table 'sauce'"),
        (('provider = "twilio"', ""), "channels.sms.provider: missing required key"),
    ],
)
def test_errors_name_the_key_path(tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    old, new = edit
    assert old in BASE
    path = write(tmp_path, BASE.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")
    assert message in str(info.value)


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[pipeline\nname=")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read configuration"):
        load_config(tmp_path / "nope.toml")


def test_template_files_are_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "sms.txt").write_text("From a file, {{ first_name }}", encoding="utf-8")
    text = BASE.replace('body = "Hi {{ first_name }}"', 'body_file = "t/sms.txt"')
    config = load_config(write(tmp_path, text))
    assert config.channels[0].template.body == "From a file, {{ first_name }}"


def test_token_never_in_repr_or_errors(tmp_path: Path) -> None:
    token = "sk-live-SECRET-123456"
    secret = Secret(token)
    assert token not in repr(secret) and token not in str(secret)
    assert secret.reveal() == token
    (tmp_path / "seg.csv").write_text("id,phone,first_name\n1,+14155550100,Ann\n", encoding="utf-8")
    pipeline = Pipeline.from_file(write(tmp_path, BASE), env={"SMS_API_TOKEN": token})
    plan = pipeline.channel_plan(pipeline.channels[0], None)
    assert token not in repr(plan) and token not in repr(plan.notifier)
    assert token not in repr(pipeline)
