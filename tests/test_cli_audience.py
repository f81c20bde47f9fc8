"""Audience selection and content rules through the command line: ``run --dry-run``,
``run --limit`` (a canary), ``suppress`` / ``suppressions``, the ``expected_audience``
guard, segment filters and quiet hours, end to end against the loopback sandboxes
(HTTP on 127.0.0.1)."""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from campaignkit import ChannelResult, RunReport, RunStatus
from campaignkit.cli import EXIT_OK, EXIT_PARTIAL, main
from campaignkit.cli._output import report_exit
from campaignkit.testing import sandbox as sandbox_module
from campaignkit.testing.sandbox import Sandbox

NAME = "audience_cli"
DATE = "2024-05-01"
HEADER = (
    "customer_id,first_name,email,phone,push_token,segment,country,timezone,"
    "opted_in_email,opted_in_sms,opted_in_push\n"
)
#: One row per selection outcome (see EXPECTED_PLAN).
ROWS = [
    "C1,Ada,ada@example.com,+14155550101,ExponentPushToken[a1],premium,US,UTC,yes,yes,yes",
    # national number, read in phone_region US; standard segment: no e-mail (filter)
    "C2,Bo,bo@example.com,(415) 555-0102,ExponentPushToken[a2],standard,US,UTC,yes,yes,yes",
    # invalid e-mail; a UK number read in the row's country; an empty Expo token
    "C3,Cy,not-an-email,020 7946 0123,ExponentPushToken[],premium,GB,UTC,yes,yes,yes",
    # C1's e-mail in other case and C1's number: duplicates on e-mail and SMS
    "C4,Di,ADA@Example.com,+1 415 555 0101,ExponentPushToken[a4],premium,US,UTC,yes,yes,yes",
    "C5,Ed,ed@example.com,+14155550105,ExponentPushToken[a5],premium,US,UTC,no,no,no",
    # a name outside GSM-7: the SMS becomes UCS-2, 3 segments > max_sms_segments
    "C6,Łukasz,lu@example.com,+14155550106,,premium,US,UTC,yes,yes,yes",
    # in the e-mail suppression file (in other case)
    "C7,Fay,fay@example.com,+14155550107,ExponentPushToken[a7],premium,US,UTC,yes,yes,yes",
]
#: ~150 GSM-7 characters: one segment, but three in UCS-2.
SMS_BODY = (
    "Hi {{ first_name }}! "
    + "Spring sale: 20% off everything in store and online " * 2
    + ("this week. Reply STOP to opt out.")
)

EXPECTED_PLAN = {
    "email": {
        "eligible": 2,  # C1, C6
        "skipped": {
            "duplicate": 1,
            "filtered": 1,
            "invalid_address": 1,
            "no_consent": 1,
            "suppressed": 1,
        },
        "failures": {},
        "sms_segments": None,
        "estimated_cost": pytest.approx(0.004),
    },
    "sms": {
        "eligible": 4,  # C1, C2, C3, C7
        "skipped": {"duplicate": 1, "no_consent": 1},
        "failures": {"too_many_segments": 1},  # C6
        "sms_segments": 4,
        "estimated_cost": pytest.approx(0.04),
    },
    "push": {
        "eligible": 4,  # C1, C2, C4, C7
        "skipped": {"invalid_address": 1, "missing_address": 1, "no_consent": 1},
        "failures": {},
        "sms_segments": None,
        "estimated_cost": None,
    },
}


def write_campaign(
    directory: Path,
    rows: list[str] = ROWS,
    *,
    email: str = "",
    sms: str = "",
    options: dict[str, dict[str, Any]] | None = None,
) -> Path:
    """A campaign over ``rows`` with e-mail (SendGrid, premium only), SMS (Twilio) and
    push (Expo); ``email`` / ``sms`` add keys to those channels, ``options`` provider
    options (a sandbox's, for commands run without ``--sandbox``)."""
    options = options or {}
    (directory / "segment.csv").write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    (directory / "suppressed.txt").write_text("# unsubscribed\nFAY@example.com\n")

    def table(provider: str, defaults: dict[str, Any]) -> str:
        merged = {**defaults, **options.get(provider, {})}
        return "".join(f"{k} = {json.dumps(v)}\n" for k, v in merged.items())

    config = directory / "campaign.toml"
    config.write_text(
        f'[pipeline]\nname = "{NAME}"\n\n'
        '[source]\ntype = "csv"\npath = "segment.csv"\n'
        '[source.columns]\nid = "customer_id"\n'
        '[source.consent]\nemail = "opted_in_email"\nsms = "opted_in_sms"\n'
        'push = "opted_in_push"\n\n'
        "[channels.email]\n"
        'provider = "sendgrid"\n'
        "filter = 'segment == \"premium\"'\n"
        'suppression_files = ["suppressed.txt"]\n'
        'unsubscribe_url = "https://shop.example.com/u?c={{ id | urlencode }}"\n'
        "price_per_message = 0.002\n"
        f"{email}"
        '[channels.email.template]\nsubject = "Hello {{ first_name }}"\n'
        'body = "Hi {{ first_name }}"\n'
        "[channels.email.options]\n"
        + table("sendgrid", {"from_email": "offers@example.com"})
        + "\n[channels.sms]\n"
        'provider = "twilio"\n'
        'phone_region = "US"\n'
        'region_field = "country"\n'
        "max_sms_segments = 2\n"
        "price_per_segment = 0.01\n"
        "rate = { messages_per_second = 1000, requests_per_second = 1000 }\n"
        f"{sms}"
        f"[channels.sms.template]\nbody = {json.dumps(SMS_BODY)}\n"
        "[channels.sms.options]\n"
        + table("twilio", {"from": "+15005550006", "account_sid": "AC" + "0" * 32})
        + "\n[channels.push]\n"
        'provider = "expo"\n'
        '[channels.push.template]\ntitle = "Hi {{ first_name }}"\nbody = "Spring sale"\n'
        "[channels.push.options]\n" + table("expo", {}),
        encoding="utf-8",
    )
    return config


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    base = {
        "EMAIL_API_TOKEN": None,
        "SMS_API_TOKEN": None,
        "PUSH_API_TOKEN": None,
        "CAMPAIGNKIT_BLOCK_PLUGINS": None,
    }
    return CliRunner().invoke(main, list(args), env={**base, **(env or {})})


def ok(result: Result, code: int = 0) -> Result:
    assert "Traceback" not in result.output, result.output
    assert result.exit_code == code, result.output
    return result


def error_line(result: Result) -> str:
    assert "Traceback" not in result.output, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("campaignkit:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


class RecordingSandbox(Sandbox):
    """The CLI's ``--sandbox`` servers, kept for inspection after the command."""

    started: list[RecordingSandbox] = []

    def start(self) -> Sandbox:
        RecordingSandbox.started.append(self)
        return super().start()

    def stop(self) -> None:
        self.seen = dict(self.servers)
        super().stop()

    @classmethod
    def requests(cls) -> int:
        return sum(len(s.request_times) for box in cls.started for s in box.seen.values())


@pytest.fixture
def recording(monkeypatch: pytest.MonkeyPatch) -> type[RecordingSandbox]:
    RecordingSandbox.started = []
    monkeypatch.setattr(sandbox_module, "Sandbox", RecordingSandbox)
    return RecordingSandbox


def recorded(run_dir: Path, provider: str) -> list[dict[str, Any]]:
    path = run_dir / "sandbox" / f"{provider}.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def runs(config: Path) -> list[dict[str, Any]]:
    listing: list[dict[str, Any]] = json.loads(
        ok(invoke("runs", str(config), "--sandbox", "--json")).stdout
    )
    return listing


def plan_channels(plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    keys = ("eligible", "skipped", "failures", "sms_segments", "estimated_cost")
    return {name: {k: c[k] for k in keys} for name, c in plan["channels"].items()}


# -- dry run ---------------------------------------------------------------------------------


def test_dry_run_prints_every_count_and_sends_nothing(
    tmp_path: Path, recording: type[RecordingSandbox]
) -> None:
    config = write_campaign(tmp_path)
    result = ok(invoke("run", str(config), "--sandbox", "--dry-run", "--samples", "1"))
    out = result.stdout
    assert "audience_cli · dry run · nothing sent" in out
    for row in (r"email\s+sendgrid\s+2\s+5\s", r"sms\s+twilio\s+4\s+2\s", r"push\s+expo\s+4\s+3\s"):
        assert re.search(row, out), row  # channel, provider, eligible, skipped
    for reason in (
        "invalid_address 1",
        "no_consent 1",
        "suppressed 1",
        "duplicate 1",
        "filtered 1",
        "missing_address 1",
        "too_many_segments 1",
    ):
        assert reason in out, reason
    # Reasons in the order selection applies them.
    assert out.index("invalid_address 1") < out.index("suppressed 1") < out.index("filtered 1")
    assert "Cost:      0.04 estimated in total" in out  # 0.004 + 0.04
    assert "Would fail: too_many_segments: the SMS would be longer than max_sms_segments" in out
    # One rendered sample per channel, with the e-mail's one-click unsubscribe headers.
    assert "email sample 1/1: C1 -> ada@example.com" in out
    assert "List-Unsubscribe: <https://shop.example.com/u?c=C1>" in out
    assert "List-Unsubscribe-Post: List-Unsubscribe=One-Click" in out
    assert "sms sample 1/1: C1 -> +14155550101" in out
    assert "(SMS: 1 segment(s), GSM-7," in out
    assert "Status: dry run (exit 0)" in out

    plans = list((tmp_path / "campaignkit-results" / "sandbox").glob("plan-*.json"))
    assert len(plans) == 1 and plans[0].name.startswith("plan-2")
    assert f"Plan:      {plans[0]}" in out
    plan = json.loads(plans[0].read_text())
    assert plan["extraction"] == {
        "rows_read": 7,
        "rows_rejected": 0,
        "rejected_reasons": {},
        "lines": {"total": 8, "header": 1, "blank": 0, "accepted": 7, "rejected": 0},
    }
    assert plan_channels(plan) == EXPECTED_PLAN
    assert [s["recipient_id"] for s in plan["channels"]["push"]["samples"]] == ["C1"]

    assert recording.started and recording.requests() == 0  # nothing reached a provider
    assert runs(config) == []  # and no run was recorded
    assert list((tmp_path / "campaignkit-results" / "sandbox").iterdir()) == plans


def test_dry_run_json_needs_no_token_and_contacts_no_provider(tmp_path: Path) -> None:
    """Without --sandbox (channels pointed at a loopback sandbox here) and without any
    token: the plan is printed as JSON, a note says a real run would stop."""
    with Sandbox(["sendgrid", "twilio", "expo"]) as box:
        options = {p: box.channel_options(p) for p in ("sendgrid", "twilio", "expo")}
        config = write_campaign(tmp_path, options=options)
        target = tmp_path / "plans" / "spring.json"
        result = ok(
            invoke(
                "run", str(config), "--dry-run", "--json", "--samples", "0",
                "--plan-output", str(target),
            )
        )  # fmt: skip
        plan = json.loads(result.stdout)
        assert plan == json.loads(target.read_text())
        assert plan_channels(plan) == EXPECTED_PLAN
        assert all(c["samples"] == [] for c in plan["channels"].values())
        assert "EMAIL_API_TOKEN is not set" in result.stderr
        assert "SMS_API_TOKEN is not set" in result.stderr
        assert "PUSH_API_TOKEN" not in result.stderr  # Expo's token is optional
        assert f"Plan:      {target}" in result.stderr
        assert all(not s.request_times for s in box.servers.values())
    assert json.loads(ok(invoke("runs", str(config), "--json")).stdout) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--dry-run", "--limit", "3"), "--dry-run plans a run without recording one"),
        (("--dry-run", "--force"), "it takes no --force"),
        (("--samples", "2"), "--samples needs --dry-run"),
        (("--plan-output", "p.json"), "--plan-output needs --dry-run"),
        (("--scheduled", "--limit", "3"), "--scheduled runs what the schedule says is due"),
    ],
)
def test_dry_run_and_limit_option_errors(
    tmp_path: Path, args: tuple[str, ...], message: str
) -> None:
    config = write_campaign(tmp_path)
    result = invoke("run", str(config), "--sandbox", *args)
    assert result.exit_code == 2, result.output
    assert message in result.stderr


def test_dry_run_input_error_exits_2(tmp_path: Path) -> None:
    config = write_campaign(tmp_path)
    text = config.read_text().replace(
        "filter = 'segment == \"premium\"'", "filter = 'tier == \"gold\"'"
    )
    config.write_text(text)
    result = invoke("run", str(config), "--sandbox", "--dry-run")
    assert result.exit_code == 2
    assert "channels.email.filter: references field(s) the segment does not have: tier" in (
        error_line(result)
    )


# -- canary ----------------------------------------------------------------------------------


def test_limit_then_full_run_sends_nobody_twice(
    tmp_path: Path, recording: type[RecordingSandbox]
) -> None:
    config = write_campaign(tmp_path)
    out = tmp_path / "o"
    args = ("run", str(config), "--sandbox", "--logical-date", DATE, "--output-dir", str(out))
    canary = ok(invoke(*args, "--limit", "1"))
    text = canary.stdout
    assert "Status: canary (exit 0)" in text
    assert "Canary:    " in text and "held back for the full run" in text
    assert f"campaignkit run {config} --logical-date 2024-05-01T00:00:00+00:00 --sandbox" in text
    [run] = runs(config)
    assert run["status"] == "canary"
    assert {name: c["sent"] for name, c in run["channels"].items()} == {
        "email": 1,
        "sms": 1,
        "push": 1,
    }
    run_dir = out / "sandbox" / run["run_id"]
    assert [m["to"] for m in recorded(run_dir, "sendgrid")] == ["ada@example.com"]

    full = ok(invoke(*args, "--json"), code=1)
    report = json.loads(full.stdout)
    assert report["run_id"] == run["run_id"]  # the canary run, continued
    assert report["status"] == "partial"  # C6's SMS is too long
    assert "had canary run" in full.stderr and "not messaged again" in full.stderr
    email = report["email_campaign_results"]
    sms = report["sms_campaign_results"]
    push = report["push_notification_results"]
    assert (email["sent"], email["pending"]) == (2, 0)
    assert (sms["sent"], sms["failed"], sms["pending"]) == (4, 1, 0)
    assert sms["error_codes"] == {"too_many_segments": 1}
    assert (push["sent"], push["pending"]) == (4, 0)
    # What the sandbox servers accepted, over both commands: everyone once.
    emails = [m["to"] for m in recorded(run_dir, "sendgrid")]
    assert sorted(emails) == ["ada@example.com", "lu@example.com"]
    phones = [m["to"] for m in recorded(run_dir, "twilio")]
    assert sorted(phones) == ["+14155550101", "+14155550102", "+14155550107", "+442079460123"]
    tokens = [m["to"] for m in recorded(run_dir, "expo")]
    assert len(tokens) == len(set(tokens)) == 4
    sent = sum(len(s.messages) for box in recording.started for s in box.seen.values())
    assert sent == 2 + 4 + 4


def test_limit_needs_the_ledger(tmp_path: Path, recording: type[RecordingSandbox]) -> None:
    config = write_campaign(tmp_path)
    config.write_text(
        config.read_text().replace(
            "[channels.email]", "[execution]\nledger = false\n\n[channels.email]"
        )
    )
    result = invoke("run", str(config), "--sandbox", "--limit", "1")
    assert result.exit_code == 2
    assert "--limit needs the ledger" in error_line(result)
    assert recording.requests() == 0


def test_canary_or_deferral_with_failures_exits_1() -> None:
    now = datetime.now(UTC)

    def report(status: RunStatus, failed: int) -> RunReport:
        result = ChannelResult(
            channel="sms", provider="twilio", result_key="sms", sent=1, failed=failed, pending=3
        )
        return RunReport("r", "p", status, now, now, channels={"sms": result})

    assert report_exit(report(RunStatus.CANARY, 0)) == EXIT_OK
    assert report_exit(report(RunStatus.CANARY, 1)) == EXIT_PARTIAL
    assert report_exit(report(RunStatus.DEFERRED, 1)) == EXIT_PARTIAL
    assert report_exit(report(RunStatus.SUCCEEDED, 0)) == EXIT_OK


# -- suppress and suppressions ---------------------------------------------------------------


def test_suppress_then_run_skips_as_suppressed(tmp_path: Path) -> None:
    config = write_campaign(tmp_path)
    first = ok(invoke("suppress", str(config), "--sandbox", "-c", "email", " Ada@Example.COM "))
    assert "ada@example.com  added (unsubscribed)" in first.stdout
    assert "1 e-mail address(es) added, 0 already there" in first.stdout

    numbers = tmp_path / "stop.csv"
    numbers.write_text("# from the call centre\nphone,date\n(415) 555-0102,2024-04-30\n")
    second = ok(
        invoke(
            "suppress", str(config), "--sandbox", "--channel", "sms", "+442079460123",
            "--from-file", str(numbers), "--reason", "STOP by phone",
        )
    )  # fmt: skip
    assert "+14155550102  added (STOP by phone)" in second.stdout
    again = ok(invoke("suppress", str(config), "--sandbox", "-c", "email", "ada@example.com"))
    assert "already suppressed (unsubscribed)" in again.stdout
    assert "0 e-mail address(es) added, 1 already there" in again.stdout

    listing = json.loads(ok(invoke("suppressions", str(config), "--sandbox", "--json")).stdout)
    assert listing == [
        {
            "kind": "email",
            "address": "ada@example.com",
            "reason": "unsubscribed",
            "source": "campaignkit suppress",
        },
        {
            "kind": "phone",
            "address": "+14155550102",
            "reason": "STOP by phone",
            "source": "campaignkit suppress",
        },
        {
            "kind": "phone",
            "address": "+442079460123",
            "reason": "STOP by phone",
            "source": "campaignkit suppress",
        },
    ]
    phones = ok(invoke("suppressions", str(config), "--sandbox", "--kind", "phone"))
    assert "2 suppressed phone address(es) in the ledger." in phones.stdout
    assert "ada@example.com" not in phones.stdout
    assert "suppression_files: suppressed.txt" in phones.stdout
    # The real ledger is a different list.
    real = ok(invoke("suppressions", str(config), "--json"))
    assert json.loads(real.stdout) == []

    out = tmp_path / "o"
    result = ok(invoke("run", str(config), "--sandbox", "--json", "--output-dir", str(out)), code=1)
    report = json.loads(result.stdout)
    email = report["email_campaign_results"]
    # C1 suppressed now, so C4 (the same address) is no longer its duplicate: suppressed too.
    assert email["reasons"]["suppressed"] == 3  # C1, C4 and C7 (the file)
    assert "duplicate" not in email["reasons"]
    assert email["sent"] == 1
    sms = report["sms_campaign_results"]
    # C2 (read in phone_region US) and C3 (in its country, GB); C4 is C1's duplicate.
    assert sms["reasons"] == {
        "duplicate": 1,
        "no_consent": 1,
        "suppressed": 2,
        "too_many_segments": 1,
    }
    run_dir = out / "sandbox" / report["run_id"]
    assert [m["to"] for m in recorded(run_dir, "sendgrid")] == ["lu@example.com"]
    sent_phones = sorted(m["to"] for m in recorded(run_dir, "twilio"))
    assert "+14155550102" not in sent_phones and "+442079460123" not in sent_phones


def test_suppress_refuses_invalid_addresses_and_adds_none(tmp_path: Path) -> None:
    config = write_campaign(tmp_path)
    result = invoke(
        "suppress", str(config), "--sandbox", "-c", "email", "ok@example.com", "bad@@x", "nope"
    )
    assert result.exit_code == 2
    line = error_line(result)
    assert "not a valid e-mail address for channel 'email': 'bad@@x', 'nope'" in line
    assert line.endswith("nothing was suppressed")
    phone = invoke("suppress", str(config), "--sandbox", "-c", "sms", "+1555010 1234")
    assert phone.exit_code == 2
    assert "not a valid phone number for channel 'sms'" in error_line(phone)
    missing = invoke("suppress", str(config), "-c", "fax", "x")
    assert missing.exit_code == 2 and "no channel named 'fax'" in error_line(missing)
    nothing = invoke("suppress", str(config), "-c", "email")
    assert nothing.exit_code == 2 and "give the addresses to suppress" in nothing.stderr
    assert json.loads(ok(invoke("suppressions", str(config), "--sandbox", "--json")).stdout) == []


def test_provider_stop_code_suppresses_for_later_runs(tmp_path: Path) -> None:
    """Twilio's 21610 (the recipient sent STOP) lands in the suppression list."""
    rows = [ROWS[0], ROWS[1].replace("(415) 555-0102", "+15005550004")]
    config = write_campaign(tmp_path, rows)
    args = ("run", str(config), "--sandbox", "--json", "--output-dir", str(tmp_path / "o"))
    first = json.loads(ok(invoke(*args, "--logical-date", DATE), code=1).stdout)
    assert first["sms_campaign_results"]["error_codes"] == {"21610": 1}
    listing = json.loads(ok(invoke("suppressions", str(config), "--sandbox", "--json")).stdout)
    assert [(e["kind"], e["address"], e["reason"]) for e in listing] == [
        ("phone", "+15005550004", "21610")
    ]
    assert listing[0]["source"].startswith("twilio run ")
    second = json.loads(ok(invoke(*args, "--logical-date", "2024-05-02")).stdout)
    assert second["sms_campaign_results"]["reasons"] == {"suppressed": 1}


# -- expected_audience guard -----------------------------------------------------------------


def test_expected_audience_guard_exits_2_and_sends_nothing(
    tmp_path: Path, recording: type[RecordingSandbox]
) -> None:
    config = write_campaign(tmp_path, email="expected_audience = 10\naudience_tolerance = 0.5\n")
    result = invoke("run", str(config), "--sandbox", "--output-dir", str(tmp_path / "o"))
    assert result.exit_code == 2, result.output
    line = error_line(result)
    assert "channels.email: 2 eligible recipient(s), expected 10 ± 50%; nothing was sent" in line
    assert recording.requests() == 0
    assert "Status:" not in result.stdout
    # A dry run does not stop, but says that a run would.
    plan = ok(invoke("run", str(config), "--sandbox", "--dry-run", "--samples", "0"))
    assert (
        "Guard:     channels.email: 2 eligible recipient(s), expected 10 ± 50%: a run would "
        "stop before sending (exit 2)" in plan.stdout
    )
    # Within the tolerance, the same campaign sends.
    config = write_campaign(tmp_path, email="expected_audience = 3\naudience_tolerance = 0.5\n")
    forced = invoke(
        "run", str(config), "--sandbox", "--force", "--json", "--output-dir", str(tmp_path / "o")
    )
    assert json.loads(ok(forced, code=1).stdout)["email_campaign_results"]["sent"] == 2


# -- filter ----------------------------------------------------------------------------------


def test_email_filter_sends_to_the_premium_segment_only(tmp_path: Path) -> None:
    rows = [
        f"P{i},N{i},p{i}@example.com,+1415555{i:04d},ExponentPushToken[p{i}],"
        f"{'premium' if i % 3 == 0 else 'standard'},US,UTC,yes,yes,yes"
        for i in range(1, 13)
    ]
    config = write_campaign(tmp_path, rows)
    out = tmp_path / "o"
    result = ok(invoke("run", str(config), "--sandbox", "--json", "--output-dir", str(out)))
    report = json.loads(result.stdout)
    email = report["email_campaign_results"]
    assert (email["sent"], email["reasons"]) == (4, {"filtered": 8})
    # Other channels have no filter: everyone.
    assert report["sms_campaign_results"]["sent"] == 12
    assert report["push_notification_results"]["sent"] == 12
    sent = sorted(m["to"] for m in recorded(out / "sandbox" / report["run_id"], "sendgrid"))
    assert sent == ["p12@example.com", "p3@example.com", "p6@example.com", "p9@example.com"]


# -- quiet hours -----------------------------------------------------------------------------


def test_quiet_hours_defer_and_the_summary_says_how_to_send_them(tmp_path: Path) -> None:
    """A window around now in UTC: the UTC recipient is deferred, the one at UTC+6 (far
    outside it) is sent; a resume after the window sends the deferred message."""
    now = datetime.now(UTC)
    hour = timedelta(hours=1)
    rows = [
        "Q1,Ann,q1@example.com,+14155550201,,premium,US,UTC,yes,yes,no",
        "Q2,Bob,q2@example.com,+14155550202,,premium,US,Etc/GMT-6,yes,yes,no",
    ]
    quiet = (
        f'quiet_hours = {{ start = "{now - hour:%H:%M}", end = "{now + hour:%H:%M}", '
        'timezone = "UTC" }\n'
    )
    config = write_campaign(tmp_path, rows, sms=quiet)
    out = tmp_path / "o"
    result = ok(invoke("run", str(config), "--sandbox", "--output-dir", str(out)))
    text = result.stdout
    assert "· deferred" in text  # the table's title carries the status
    assert re.search(r"channel +provider +sent +failed +skipped +deferred", text)
    [run] = runs(config)
    assert run["channels"]["sms"] == {
        "sent": 1,
        "failed": 0,
        "skipped": 0,
        "pending": 0,
        "unknown": 0,
        "deferred": 1,
    }
    assert (
        f"Deferred:  1 message(s) held back by quiet hours: campaignkit resume {config} "
        f"{run['run_id']} --sandbox sends them once they are due" in text
    )
    assert "Status: deferred (exit 0)" in text
    run_dir = out / "sandbox" / run["run_id"]
    assert [m["to"] for m in recorded(run_dir, "twilio")] == ["+14155550202"]

    # The window is over (the deferral moved into the past): a resume sends it.
    with sqlite3.connect(tmp_path / ".campaignkit" / "ledger.sandbox.db") as conn:
        conn.execute("UPDATE deliveries SET not_before = 0 WHERE state = 'deferred'")
    conn.close()
    resumed = ok(invoke("resume", str(config), run["run_id"], "--sandbox", "--json"))
    report = json.loads(resumed.stdout)
    assert report["status"] == "succeeded"
    assert report["sms_campaign_results"]["sent"] == 2
    phones = [m["to"] for m in recorded(out / "sandbox" / run["run_id"], "twilio")]
    assert sorted(phones) == ["+14155550201", "+14155550202"]
