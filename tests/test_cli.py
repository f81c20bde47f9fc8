"""The ``campaignkit`` command line, against the real loopback sandboxes (HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pluggy
import pytest
import requests
from click.testing import CliRunner, Result

import campaignkit
from campaignkit import load_config
from campaignkit.cli import main
from campaignkit.cli._options import with_retry_delay
from campaignkit.testing import sandbox as sandbox_module
from campaignkit.testing.sandbox import Sandbox

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "multi_channel_campaign"

HEADER = (
    "customer_id,email_address,phone,push_token,first_name,last_name,segment,city,"
    "opted_in_email,opted_in_sms,opted_in_push\n"
)
# 8 rows: 2 rejected by the source, 1 without any consent, one standard-segment customer
# (the example's e-mail goes to the premium segment only), and one bad address per
# channel: an address the SendGrid sandbox refuses (400), Twilio's invalid test number
# (21211), and an empty Expo token (invalid_address: never sent).
ROWS = [
    "C1,ada@example.com,+14155550101,ExponentPushToken[aaaaaaaaaaaaaaaaaaaaa1],Ada,Lovelace,premium,London,yes,yes,yes",
    "C2,bounce@invalid.example,+14155550102,ExponentPushToken[aaaaaaaaaaaaaaaaaaaaa2],Bo,Ng,premium,Austin,yes,yes,yes",
    "C3,cy@example.com,+15005550001,ExponentPushToken[aaaaaaaaaaaaaaaaaaaaa3],Cy,Ray,standard,Miami,true,1,Y",
    "C4,di@example.org,+14155550104,ExponentPushToken[],Di,Ho,premium,Denver,1,TRUE,yes",
    ",eve@example.com,+14155550105,,Eve,Li,standard,Boston,yes,yes,yes",
    "C6,fay@example.com,+14155550106,,Fay,Wu,standard,Boston,maybe,yes,yes",
    "C7,gus@example.com,+14155550107,ExponentPushToken[aaaaaaaaaaaaaaaaaaaaa7],Gus,Oz,standard,Miami,no,no,no",
    "C8,hal@example.net,+447911123456,ExponentPushToken[aaaaaaaaaaaaaaaaaaaaa8],Hal,Jo,premium,Leeds,yes,yes,yes",
]
GOOD_ROWS = [ROWS[0], ROWS[7]]

SECRET = "s3cret-token-never-printed"


def make_campaign(directory: Path, rows: list[str] = ROWS, *, edit: Any = None) -> Path:
    """A copy of the example campaign over a small segment, in ``directory``."""
    shutil.copytree(EXAMPLE / "templates", directory / "templates")
    shutil.copytree(EXAMPLE / "suppressions", directory / "suppressions")
    text = (EXAMPLE / "campaign.toml").read_text(encoding="utf-8")
    if edit is not None:
        text = edit(text)
    config = directory / "campaign.toml"
    config.write_text(text, encoding="utf-8")
    (directory / "customer_segments.csv").write_text(HEADER + "\n".join(rows) + "\n")
    return config


def invoke(*args: str, env: dict[str, str] | None = None, obj: Any = None) -> Result:
    base = {
        "EMAIL_API_TOKEN": None,
        "SMS_API_TOKEN": None,
        "PUSH_API_TOKEN": None,
        "CAMPAIGNKIT_BLOCK_PLUGINS": None,
    }
    return CliRunner().invoke(main, list(args), env={**base, **(env or {})}, obj=obj)


# A sandbox server thread left over from an earlier test (a stalled reply to a client
# that gave up) may report its BrokenPipeError through socketserver's handle_error on
# the process-wide stderr, which CliRunner captures. That block is not the CLI's output.
_SERVER_ERROR = re.compile(
    r"-{40}\nException occurred during processing of request from .*?\n-{40}\n", re.S
)


def stderr_of(result: Result) -> str:
    """What the command itself wrote on stderr."""
    return _SERVER_ERROR.sub("", result.stderr)


def no_traceback(result: Result) -> None:
    assert "Traceback" not in _SERVER_ERROR.sub("", result.output), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture
def campaign(tmp_path: Path) -> Path:
    return make_campaign(tmp_path)


# -- run -------------------------------------------------------------------------------------


def test_run_sandbox_json_reports_every_outcome(campaign: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = invoke(
        "run", str(campaign), "--sandbox", "--json", "--output-dir", str(out), "--run-id", "r1"
    )
    no_traceback(result)
    assert result.exit_code == 1, result.output  # some deliveries failed: partial
    report = json.loads(result.stdout)
    assert report["status"] == "partial"
    assert report["extraction"] == {
        "rows_read": 8,
        "rows_rejected": 2,
        "rejected_reasons": {"bad_consent_value": 1, "empty_required_field": 1},
        "lines": {"total": 9, "header": 1, "blank": 0, "accepted": 6, "rejected": 2},
    }
    email = report["email_campaign_results"]
    assert (email["sent"], email["failed"], email["skipped"]) == (3, 1, 2)
    assert email["error_codes"] == {"400": 1}
    # C3 is in the standard segment: the example's e-mail filter leaves it out.
    assert email["reasons"] == {"filtered": 1, "no_consent": 1, "permanent_error": 1}
    sms = report["sms_campaign_results"]
    assert (sms["sent"], sms["failed"], sms["skipped"]) == (4, 1, 1)
    assert sms["error_codes"] == {"21211": 1}
    assert sms["reasons"] == {"no_consent": 1, "permanent_error": 1}
    push = report["push_notification_results"]
    # C4's empty ExponentPushToken[] is refused before sending, not by Expo.
    assert (push["sent"], push["failed"], push["skipped"]) == (4, 0, 2)
    assert push["error_codes"] == {}
    assert push["reasons"] == {"invalid_address": 1, "no_consent": 1}

    run_dir = out / "sandbox" / "r1"  # a rehearsal writes under <output dir>/sandbox/
    assert report["output_dir"] == str(run_dir)
    assert json.loads((run_dir / "report.json").read_text()) == report
    recorded = {p.name: p.read_text().splitlines() for p in (run_dir / "sandbox").iterdir()}
    assert sorted(recorded) == ["expo.jsonl", "sendgrid.jsonl", "twilio.jsonl"]
    emails = [json.loads(line) for line in recorded["sendgrid.jsonl"]]
    assert sorted(m["to"] for m in emails) == [
        "ada@example.com",
        "di@example.org",
        "hal@example.net",
    ]
    assert all("early access" in m["subject"] for m in emails)  # premium template branch
    # RFC 8058 one-click unsubscribe headers, per recipient.
    ada = next(m for m in emails if m["to"] == "ada@example.com")
    assert ada["headers"]["List-Unsubscribe"].startswith(
        "<https://shop.example.com/unsubscribe?c=C1>"
    )
    assert ada["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert len(recorded["twilio.jsonl"]) == 4
    pushed = [json.loads(line)["to"] for line in recorded["expo.jsonl"]]
    assert "ExponentPushToken[]" not in pushed and len(pushed) == 4
    # --json prints only the report on stdout; the sandbox notes go to stderr.
    assert "Sandbox:" in stderr_of(result) and "sandbox" in stderr_of(result)


def test_run_human_summary(campaign: Path, tmp_path: Path) -> None:
    result = invoke("run", str(campaign), "--sandbox", "--output-dir", str(tmp_path / "out"))
    no_traceback(result)
    assert result.exit_code == 1
    text = result.stdout
    for expected in (
        "email",
        "sendgrid",
        "sms",
        "twilio",
        "push",
        "expo",
        "code 21211: 1",
        "code 400: 1",
        "filtered 1",
        "invalid_address 1",
        "report.json",
        "rejected.csv",
        "Status: partial (exit 1)",
        "Sandbox:   accepted messages per provider: sendgrid 3, twilio 4, expo 4",
    ):
        assert expected in text, expected
    # Per-recipient outcomes are in the ledger, not in files of the run directory.
    assert f"Results:   per recipient in the ledger: campaignkit report {campaign} " in text
    assert "email.jsonl" not in text and "sms.jsonl" not in text


def test_run_all_sent_exits_0(tmp_path: Path) -> None:
    config = make_campaign(tmp_path, GOOD_ROWS)
    result = invoke("run", str(config), "--sandbox", "--json", "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["status"] == "succeeded"
    assert [
        report[k]["sent"]
        for k in ("email_campaign_results", "sms_campaign_results", "push_notification_results")
    ] == [2, 2, 2]


def test_run_retry_delay_overrides_the_five_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A transient failure is retried after --retry-delay, not after 5 minutes."""

    class FlakySandbox(Sandbox):
        def start(self) -> Sandbox:
            super().start()
            # The first SMS request gets a 503: in doubt, so Twilio's message list is
            # asked at the retry round (nothing there) and the message is sent again.
            self.servers["twilio"].faults.fail_next(503)
            return self

    monkeypatch.setattr(sandbox_module, "Sandbox", FlakySandbox)
    config = make_campaign(tmp_path, GOOD_ROWS)
    started = time.monotonic()
    result = invoke(
        "run",
        str(config),
        "--sandbox",
        "--json",
        "--retry-delay",
        "0",
        "--output-dir",
        str(tmp_path / "o"),
    )
    assert result.exit_code == 0, result.output
    sms = json.loads(result.stdout)["sms_campaign_results"]
    assert (sms["sent"], sms["unknown"], sms["retries"]) == (2, 0, 1)
    assert time.monotonic() - started < 30


def test_with_retry_delay_sets_every_channel(campaign: Path) -> None:
    config = load_config(campaign)
    sms = next(c for c in config.channels if c.name == "sms")
    config = attrs.evolve(
        config,
        channels=tuple(
            attrs.evolve(c, retry=attrs.evolve(config.execution.retry, jitter_seconds=3.0))
            if c is sms
            else c
            for c in config.channels
        ),
    )
    changed = with_retry_delay(config, 1.5)
    assert changed.execution.retry.delay_seconds == pytest.approx(1.5)
    assert changed.execution.retry.retries == 2
    by_name = {c.name: c for c in changed.channels}
    assert by_name["sms"].retry is not None
    assert by_name["sms"].retry.delay_seconds == pytest.approx(1.5)
    assert by_name["sms"].retry.jitter_seconds == 3.0  # kept
    assert by_name["email"].retry is None  # inherits the execution policy


def test_run_sandbox_refuses_a_provider_without_sandbox(tmp_path: Path) -> None:
    config = make_campaign(
        tmp_path, edit=lambda t: t.replace('provider = "expo"', 'provider = "pigeon"')
    )
    result = invoke("run", str(config), "--sandbox")
    no_traceback(result)
    assert result.exit_code == 2
    assert "channels.push.provider" in stderr_of(result)
    assert "--sandbox has no server for provider 'pigeon'" in stderr_of(result)


def test_run_without_token_exits_2_before_sending(campaign: Path, tmp_path: Path) -> None:
    result = invoke(
        "run", str(campaign), "--output-dir", str(tmp_path / "o"), env={"SMS_API_TOKEN": SECRET}
    )
    no_traceback(result)
    assert result.exit_code == 2
    assert stderr_of(result).startswith("campaignkit: error: ")
    assert "EMAIL_API_TOKEN is not set" in stderr_of(result)
    assert SECRET not in result.output
    assert not (tmp_path / "o").exists()  # nothing started


def test_run_twice_for_the_same_logical_date_sends_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second run of a logical date reports the first run and sends nothing;
    --force starts a new run deliberately."""
    # No simulated receipts: a simulated bounce would suppress a recipient of the
    # forced run (as a real one would), which is not what this test is about.
    monkeypatch.setenv("CAMPAIGNKIT_SANDBOX_RECEIPTS", "off")
    config = make_campaign(tmp_path, GOOD_ROWS)
    out = tmp_path / "o"
    args = ("run", str(config), "--sandbox", "--json", "--output-dir", str(out))
    first = invoke(*args, "--run-id", "same")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["run_id"] == "same"
    recorded = out / "sandbox" / "same" / "sandbox" / "twilio.jsonl"
    assert len(recorded.read_text().splitlines()) == 2

    again = invoke(*args, "--run-id", "other")
    no_traceback(again)
    assert again.exit_code == 0, again.output  # the first run's outcome
    assert report["replayed"] is False
    # Its stored report, not a new run, and marked as a replay.
    assert json.loads(again.stdout) == {**report, "replayed": True}
    notes = stderr_of(again)
    assert notes.startswith("Already ran: nothing was sent now. Logical date"), notes
    assert "accepted messages per provider: sendgrid 0, twilio 0, expo 0" in notes
    assert len(recorded.read_text().splitlines()) == 2  # the record is not overwritten
    assert not (out / "sandbox" / "other").exists()

    forced = invoke(*args, "--force")
    assert forced.exit_code == 0, forced.output
    second = json.loads(forced.stdout)
    assert second["run_id"] != "same" and second["run_id"].endswith("__2")
    assert "accepted messages per provider: sendgrid 2, twilio 2, expo 2" in stderr_of(forced)


def test_run_with_an_existing_run_id_for_another_date_is_an_input_error(tmp_path: Path) -> None:
    config = make_campaign(tmp_path, GOOD_ROWS)
    args = ("run", str(config), "--sandbox", "--json", "--output-dir", str(tmp_path / "o"))
    assert invoke(*args, "--run-id", "same", "--logical-date", "2024-03-01").exit_code == 0
    again = invoke(*args, "--run-id", "same", "--logical-date", "2024-03-02")
    no_traceback(again)
    assert again.exit_code == 2
    assert "run 'same' already exists" in stderr_of(again)


def test_verbose_logs_to_stderr_without_tokens(tmp_path: Path) -> None:
    config = make_campaign(tmp_path, GOOD_ROWS)
    result = invoke(
        "-vv", "run", str(config), "--sandbox", "--json", "--output-dir", str(tmp_path / "o")
    )
    assert result.exit_code == 0, result.output
    assert "extracted 2 recipient(s)" in stderr_of(result)
    assert "sandbox-token" not in result.output  # the sandbox servers' token
    json.loads(result.stdout)  # stdout stays pure JSON


# -- validate --------------------------------------------------------------------------------

TOKENS = {"EMAIL_API_TOKEN": SECRET, "SMS_API_TOKEN": SECRET}


def test_validate_ok_lists_source_fields_and_channels(campaign: Path) -> None:
    result = invoke("validate", str(campaign), env=TOKENS)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"{campaign}: valid" in out
    assert "source:   csv customer_segments.csv" in out
    assert "first_name" in out and "segment" in out
    assert "email -> sendgrid" in out and "sms -> twilio" in out and "push -> expo" in out
    assert SECRET not in result.output


def test_validate_the_example_itself() -> None:
    result = invoke("validate", str(EXAMPLE / "campaign.toml"), env=TOKENS)
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "target_customers = 150",
            'target_customers = "ten"',
            "channels.sms.target_customers: expected int, got 'ten'",
        ),
        ("catchup = false", "catchup = false\nfrequency = 3", "schedule.frequency: unknown key"),
        ('from = "+15005550006"', 'from = "not a number!"', "channels.sms.options.from"),
        (
            'provider = "expo"',
            'provider = "carrier-pigeon"',
            "channels.push.provider: no channel provider 'carrier-pigeon'",
        ),
        (
            "{{ first_name }}, your spring",
            "{{ loyalty_tier }}, your spring",
            "channels.push.template.title: references field(s) the segment does not have: "
            "loyalty_tier",
        ),
    ],
)
def test_validate_errors_name_the_key_path(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    config = make_campaign(tmp_path, edit=lambda t: t.replace(old, new, 1))
    result = invoke("validate", str(config), env=TOKENS)
    no_traceback(result)
    assert result.exit_code == 2
    assert expected in stderr_of(result)
    assert stderr_of(result).count("\n") == 1  # one line
    assert SECRET not in result.output


def test_validate_missing_token(campaign: Path) -> None:
    result = invoke("validate", str(campaign), env={"EMAIL_API_TOKEN": SECRET})
    no_traceback(result)
    assert result.exit_code == 2
    # The example writes token_env: the error names its line.
    lines = campaign.read_text(encoding="utf-8").splitlines()
    (line,) = [
        n for n, text in enumerate(lines, 1) if text.startswith('token_env = "SMS_API_TOKEN"')
    ]
    assert (
        f"{campaign}:{line}: channels.sms.token_env: environment variable SMS_API_TOKEN is "
        "not set" in stderr_of(result)
    )
    assert SECRET not in result.output


def test_validate_missing_csv_names_the_file(campaign: Path) -> None:
    (campaign.parent / "customer_segments.csv").unlink()
    result = invoke("validate", str(campaign), env=TOKENS)
    no_traceback(result)
    assert result.exit_code == 2
    assert str(campaign.parent / "customer_segments.csv") in stderr_of(result)
    assert "file not found" in stderr_of(result)


def test_validate_missing_and_invalid_config(tmp_path: Path) -> None:
    missing = invoke("validate", str(tmp_path / "nope.toml"))
    assert missing.exit_code == 2
    assert "nope.toml" in stderr_of(missing)
    bad = tmp_path / "bad.toml"
    bad.write_text("[pipeline\nname = 1\n")
    result = invoke("validate", str(bad))
    no_traceback(result)
    assert result.exit_code == 2
    assert "invalid TOML" in stderr_of(result)


# -- preview ---------------------------------------------------------------------------------


def test_preview_renders_and_sends_nothing(tmp_path: Path) -> None:
    with Sandbox(["sendgrid", "twilio", "expo"]) as box:

        def point_at_sandbox(text: str) -> str:
            for provider, table in (("sendgrid", "email"), ("twilio", "sms"), ("expo", "push")):
                url = box.servers[provider].base_url
                text = text.replace(
                    f"[channels.{table}.options]\n",
                    f'[channels.{table}.options]\nbase_url = "{url}"\n',
                )
            return text

        config = make_campaign(tmp_path, edit=point_at_sandbox)
        result = invoke("preview", str(config), "--channel", "email", "-n", "2")
        assert result.exit_code == 0, result.output
        out = result.stdout
        assert "email 1/2: C1 -> ada@example.com" in out
        assert "subject: Ada, your premium early access starts today" in out
        assert "email 2/2: C2 -> bounce@invalid.example" in out
        assert "2 message(s) rendered; nothing was sent." in out

        push = invoke("preview", str(config), "-c", "push", "-n", "5", "--json")
        assert push.exit_code == 0, push.output
        messages = json.loads(push.stdout)
        # C7 has no push consent; C5/C6 were rejected by the source; C4's token is empty.
        assert [m["recipient_id"] for m in messages] == ["C1", "C2", "C3", "C8"]
        assert messages[0]["address"] == "ExponentPushToken[aaaaaaaaaaaaaaaaaaaaa1]"
        assert messages[0]["data"] == {
            "url": "exampleshop://offers/spring?segment=premium",
            "customer_id": "C1",
        }
        assert all(not s.request_times for s in box.servers.values())


def test_preview_unknown_channel(campaign: Path) -> None:
    result = invoke("preview", str(campaign), "--channel", "fax")
    no_traceback(result)
    assert result.exit_code == 2
    assert "no channel named 'fax'" in stderr_of(result)


# -- channels --------------------------------------------------------------------------------


def test_channels_lists_builtins() -> None:
    result = invoke("channels", "--json")
    assert result.exit_code == 0, result.output
    listing = json.loads(result.stdout)
    providers = {row["provider"]: row for row in listing["channels"]}
    for name in ("sendgrid", "smtp", "twilio", "telnyx", "onesignal", "expo"):
        assert providers[name]["package"] == "campaignkit (built-in)"
    assert providers["twilio"]["address_field"] == "phone"
    assert providers["expo"]["max_batch_size"] == 100
    assert providers["twilio"]["default_rate"] == "10 msg/s, 10 req/s"
    assert {s["type"] for s in listing["sources"]} >= {"csv", "jsonl"}

    table = invoke("channels")
    assert table.exit_code == 0
    assert "sendgrid" in table.stdout and "push_token" in table.stdout


def test_channels_block_plugin() -> None:
    result = invoke("channels", "--json", "--block-plugin", "campaignkit.channels.smtp")
    names = {row["provider"] for row in json.loads(result.stdout)["channels"]}
    assert "smtp" not in names and "sendgrid" in names


# -- the real executable ---------------------------------------------------------------------


def test_python_m_campaignkit_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "campaignkit", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Usage: campaignkit" in done.stdout
    for line in (
        "0  all sent",
        "1  the run completed but some deliveries failed",
        "2  input or configuration error",
        "3  the run failed",
    ):
        assert line in done.stdout


@pytest.fixture
def sandbox_process() -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignkit", "sandbox", "--provider", "expo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def test_sandbox_command_serves_until_sigterm(sandbox_process: subprocess.Popen[str]) -> None:
    assert sandbox_process.stdout is not None
    lines = []
    for line in sandbox_process.stdout:
        lines.append(line)
        if "Sandbox ready" in line:
            break
    base_url = next(
        json.loads(line.split("=", 1)[1]) for line in lines if "options.base_url" in line
    )
    reply = requests.post(
        f"{base_url}/--/api/v2/push/send",
        json=[{"to": "ExponentPushToken[zzz]", "body": "hello"}],
        timeout=10,
    )
    assert reply.status_code == 200 and reply.json()["data"][0]["status"] == "ok"
    sandbox_process.send_signal(signal.SIGTERM)
    out, err = sandbox_process.communicate(timeout=30)
    assert sandbox_process.returncode == 0, err
    assert "Accepted messages: expo 1" in out


# -- the example -----------------------------------------------------------------------------


def test_make_segment_reproduces_the_committed_csv(tmp_path: Path) -> None:
    target = tmp_path / "segment.csv"
    done = subprocess.run(
        [sys.executable, str(EXAMPLE / "make_segment.py"), "--output", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert target.read_bytes() == (EXAMPLE / "customer_segments.csv").read_bytes()
    lines = target.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 301


# -- errors raised by plugins during a run ---------------------------------------------------


class GuardPlugin:
    def __init__(self, hook: str) -> None:
        self.hook = hook

    @campaignkit.hookimpl
    def campaignkit_run_started(self, run_id: str) -> None:
        if self.hook == "started":
            raise campaignkit.AudienceGuardError("audience is 40% smaller than expected")

    @campaignkit.hookimpl
    def campaignkit_run_finished(self, report: Any) -> None:
        if self.hook == "finished":
            raise campaignkit.PluginError("could not publish the report")


@pytest.mark.parametrize(("hook", "code"), [("started", 2)])
def test_plugin_errors_before_and_after_sending(tmp_path: Path, hook: str, code: int) -> None:
    """A guard that stops the run before any send is an input error (2)."""

    def guarded(block: Sequence[str]) -> pluggy.PluginManager:
        return campaignkit.get_plugin_manager(plugins=[GuardPlugin(hook)])

    config = make_campaign(tmp_path, GOOD_ROWS)
    result = invoke(
        "run", str(config), "--sandbox", "--output-dir", str(tmp_path / "o"), obj=guarded
    )
    no_traceback(result)
    assert result.exit_code == code
    assert stderr_of(result).count("\n") == 1
    assert ("audience is 40% smaller" if hook == "started" else "could not publish") in (
        stderr_of(result)
    )
    assert ("Sandbox:" in result.stdout) is False  # no summary after an error


def test_observer_error_after_sending_does_not_change_the_outcome(
    tmp_path: Path,
) -> None:
    """Messages went out: an observer failing in campaignkit_run_finished is logged, and
    the run's own outcome (and summary) stand."""

    def guarded(block: Sequence[str]) -> pluggy.PluginManager:
        return campaignkit.get_plugin_manager(plugins=[GuardPlugin("finished")])

    config = make_campaign(tmp_path, GOOD_ROWS)
    result = invoke(
        "run", str(config), "--sandbox", "--json", "--output-dir", str(tmp_path / "o"), obj=guarded
    )
    no_traceback(result)
    report = json.loads(result.stdout)
    assert result.exit_code == (0 if report["status"] == "succeeded" else 1)
