"""The ledger commands of the command line: runs, report, resume, retry-failed, schedule,
run --scheduled / --force / --logical-date and the scheduler, end to end against the
loopback sandboxes (HTTP on 127.0.0.1), with crashes (SIGKILL) and SIGTERM in real
subprocesses."""

from __future__ import annotations

import csv
import io
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from campaignkit._csvio import neutralise
from campaignkit.cli import main
from campaignkit.testing import sandbox as sandbox_module
from campaignkit.testing.sandbox import Sandbox
from campaignkit.testing.sandbox.onesignal import OneSignalServer
from campaignkit.testing.sandbox.twilio import TwilioServer

NAME = "ledger_cli"
HEADER = "customer_id,first_name,email,phone,push_token\n"


def rows(n: int, *, ids: list[str] | None = None, bad_phone: int | None = None) -> list[str]:
    """``n`` recipients with an e-mail, a valid mobile number and a push subscription id
    (``bad_phone``: the index of one with Twilio's invalid number, code 21211)."""
    out = []
    for i in range(n):
        rid = ids[i] if ids else f"C{i + 1}"
        phone = "+15005550001" if i == bad_phone else f"+1415555{i + 1:04d}"
        push = uuid.UUID(int=i + 1)
        out.append(f"{rid},Name{i + 1},user{i + 1}@example.com,{phone},{push}")
    return out


def toml_table(values: dict[str, Any]) -> str:
    return "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items())


def sms_channel(options: dict[str, Any] | None = None, *, retries: int = 2) -> str:
    return (
        '[channels.sms]\nprovider = "twilio"\nrequire_consent = false\nconcurrency = 1\n'
        "rate = { messages_per_second = 1000, requests_per_second = 1000 }\n"
        f"retry = {{ retries = {retries} }}\n"
        '[channels.sms.template]\nbody = "Hi {{ first_name }}"\n'
        "[channels.sms.options]\n"
        + toml_table(
            options or {"from": "+15005550006", "account_sid": "AC" + "0" * 32},
        )
    )


def email_channel() -> str:
    return (
        '[channels.email]\nprovider = "sendgrid"\nrequire_consent = false\n'
        '[channels.email.template]\nsubject = "Hello"\nbody = "Hi {{ first_name }}"\n'
        '[channels.email.options]\nfrom_email = "offers@example.com"\n'
    )


def push_channel(options: dict[str, Any]) -> str:
    return (
        '[channels.push]\nprovider = "onesignal"\nrequire_consent = false\nconcurrency = 1\n'
        '[channels.push.template]\ntitle = "Hello"\nbody = "Hi {{ first_name }}"\n'
        "[channels.push.options]\n" + toml_table(options)
    )


def write_campaign(
    directory: Path,
    segment: list[str],
    *channels: str,
    schedule: str = "",
    execution: str = "",
) -> Path:
    (directory / "segment.csv").write_text(HEADER + "\n".join(segment) + "\n")
    config = directory / "campaign.toml"
    config.write_text(
        f'[pipeline]\nname = "{NAME}"\n\n'
        '[source]\ntype = "csv"\npath = "segment.csv"\n[source.columns]\nid = "customer_id"\n\n'
        f"[schedule]\n{schedule}\n[execution]\n{execution}\n" + "\n".join(channels)
    )
    return config


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    base: dict[str, str | None] = {
        "EMAIL_API_TOKEN": None,
        "SMS_API_TOKEN": None,
        "PUSH_API_TOKEN": None,
        "CAMPAIGNKIT_BLOCK_PLUGINS": None,
    }
    return CliRunner().invoke(main, list(args), env={**base, **(env or {})})


def one_error_line(result: Result) -> str:
    assert "Traceback" not in result.output, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = [line for line in result.stderr.splitlines() if line.startswith("campaignkit:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def runs_json(config: Path, *extra: str) -> list[dict[str, Any]]:
    result = invoke("runs", str(config), "--json", *extra)
    assert result.exit_code == 0, result.output
    listing: list[dict[str, Any]] = json.loads(result.stdout)
    return listing


def deliveries(config: Path, run_id: str, *extra: str) -> list[dict[str, Any]]:
    result = invoke("report", str(config), run_id, "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    records: list[dict[str, Any]] = json.loads(result.stdout)
    return records


def by_status(records: list[dict[str, Any]], channel: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in records:
        if r["channel"] == channel:
            out[r["status"]] = out.get(r["status"], 0) + 1
    return out


# -- an in-process sandbox with faults -------------------------------------------------------

FAULTS: dict[str, dict[str, Any]] = {}


class FaultySandbox(Sandbox):
    """The sandbox `--sandbox` starts, with the faults of FAULTS applied at start."""

    def start(self) -> Sandbox:
        super().start()
        for provider, faults in FAULTS.items():
            if provider in self.servers:
                for key, value in faults.items():
                    setattr(self.servers[provider].faults, key, value)
        return self


@pytest.fixture
def faults(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, dict[str, Any]]]:
    monkeypatch.setattr(sandbox_module, "Sandbox", FaultySandbox)
    FAULTS.clear()
    yield FAULTS
    FAULTS.clear()


def recorded(run_dir: Path, provider: str) -> list[dict[str, Any]]:
    """What the sandbox accepted for a run, over the run and its resumes."""
    path = run_dir / "sandbox" / f"{provider}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


# -- runs and report -------------------------------------------------------------------------


def test_runs_and_report_show_the_ledger(tmp_path: Path) -> None:
    config = write_campaign(tmp_path, rows(4, bad_phone=1), sms_channel(), email_channel())
    done = invoke("run", str(config), "--sandbox", "--logical-date", "2024-05-01")
    assert done.exit_code == 1, done.output  # one invalid number: partial
    run_id = f"{NAME}__20240501T000000Z"
    assert f"campaignkit report {config} {run_id} --format csv --sandbox" in done.stdout

    # Sandbox runs have their own ledger: the real one knows nothing of them.
    assert runs_json(config) == []
    assert "No runs of ledger_cli" in invoke("runs", str(config)).stdout
    [listed] = runs_json(config, "--sandbox")
    assert listed["run_id"] == run_id
    assert listed["logical_date"] == "2024-05-01T00:00:00+00:00"
    assert (listed["status"], listed["recipients"]) == ("partial", 4)
    assert listed["channels"]["sms"] == {
        "sent": 3,
        "failed": 1,
        "skipped": 0,
        "pending": 0,
        "unknown": 0,
        "deferred": 0,
    }
    assert listed["channels"]["email"]["sent"] == 4
    table = invoke("runs", str(config), "--sandbox")
    assert run_id in table.stdout and "3 sent, 1 failed" in table.stdout

    summary = invoke("report", str(config), run_id, "--sandbox")
    assert summary.exit_code == 0, summary.output
    assert "ledger_cli · run ledger_cli__20240501T000000Z · partial" in summary.stdout
    assert "code 21211: 1" in summary.stdout

    records = deliveries(config, run_id, "--sandbox")
    assert len(records) == 8
    [failed] = [r for r in records if r["status"] == "failed"]
    assert failed == {
        "run_id": run_id,
        "channel": "sms",
        "recipient_id": "C2",
        "line": 3,
        "address": failed["address"],
        "status": "failed",
        "reason": "permanent_error",
        "provider_message_id": None,
        "attempts": 1,
        "error_code": "21211",
        "error": failed["error"],
        "receipt": None,
    }
    sms = deliveries(config, run_id, "--sandbox", "--channel", "sms")
    assert {r["channel"] for r in sms} == {"sms"} and len(sms) == 4
    assert all(r["provider_message_id"].startswith("SM") for r in sms if r["status"] == "sent")

    out = tmp_path / "sms.csv"
    exported = invoke(
        "report", str(config), run_id, "--sandbox", "-c", "sms", "--format", "csv", "-o", str(out)
    )
    assert exported.exit_code == 0, exported.output
    assert "4 record(s) written" in exported.stderr
    table_rows = list(csv.DictReader(io.StringIO(out.read_text(encoding="utf-8"), newline="")))
    assert [r["recipient_id"] for r in table_rows] == ["C1", "C2", "C3", "C4"]
    assert table_rows[1]["error_code"] == "21211"
    assert [r["line"] for r in table_rows] == ["2", "3", "4", "5"]  # rows tell apart by line
    assert table_rows[1]["address"] == failed["address"]  # a plain number: not neutralised

    lines = invoke("report", str(config), run_id, "--sandbox", "--format", "jsonl")
    assert [json.loads(line)["recipient_id"] for line in lines.stdout.splitlines()][:2] == [
        "C1",
        "C2",
    ]


def test_csv_export_is_safe_against_formula_injection(tmp_path: Path) -> None:
    hostile = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "plain"]
    config = write_campaign(tmp_path, rows(5, ids=hostile), sms_channel())
    assert invoke("run", str(config), "--sandbox").exit_code == 0
    run_id = runs_json(config, "--sandbox")[0]["run_id"]
    result = invoke("report", str(config), run_id, "--sandbox", "--format", "csv")
    assert result.exit_code == 0, result.output
    table = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["recipient_id"] for r in table] == [
        '\'=HYPERLINK("http://x")',
        "'+1+1",
        "'-2+3",
        "'@SUM(A1)",
        "plain",
    ]
    for row in table:
        for cell in row.values():
            # Plain numbers (a phone number in the address column) stay as they are.
            plain = re.fullmatch(r"[+-]?[0-9][0-9 .()-]*", cell)
            assert plain or not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    # JSON keeps the values as they are.
    assert [r["recipient_id"] for r in deliveries(config, run_id, "--sandbox")] == hostile


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("=1+1", "'=1+1"),
        ("+1", "+1"),  # a plain number is left as it is
        ("-1", "-1"),
        ("+1+1", "'+1+1"),
        ("@A1", "'@A1"),
        ("\t=1", "'\t=1"),
        ("\r=1", "'\r=1"),
        ("a=1", "a=1"),
        ("", ""),
    ],
)
def test_csv_safe(value: str, expected: str) -> None:
    assert neutralise(value) == expected


def test_unknown_run_id_is_an_input_error(tmp_path: Path) -> None:
    config = write_campaign(tmp_path, rows(2), sms_channel())
    nothing = invoke("report", str(config), "nope")
    assert nothing.exit_code == 2
    assert "no ledger at" in one_error_line(nothing) and "no runs yet" in nothing.stderr
    assert not (tmp_path / ".campaignkit").exists()  # looking creates no ledger

    assert invoke("run", str(config), "--sandbox").exit_code == 0
    for command in ("report", "resume", "retry-failed"):
        result = invoke(command, str(config), "nope", "--sandbox")
        assert result.exit_code == 2, (command, result.output)
        line = one_error_line(result)
        assert "no run 'nope' in" in line, line
        assert f"campaignkit runs {config} --sandbox lists the runs" in line
    run_id = runs_json(config, "--sandbox")[0]["run_id"]
    missing = invoke("report", str(config), run_id, "--sandbox", "--channel", "fax")
    assert missing.exit_code == 2
    assert "has no channel 'fax' (channels: sms)" in one_error_line(missing)


# -- resume and retry-failed -----------------------------------------------------------------


def test_resume_after_a_timeout_sends_the_rest_exactly_once(
    tmp_path: Path, faults: dict[str, dict[str, Any]]
) -> None:
    config = write_campaign(tmp_path, rows(8), sms_channel(), execution="timeout_seconds = 1.5")
    faults["twilio"] = {"latency": 0.5}
    first = invoke("run", str(config), "--sandbox", "--logical-date", "2024-05-01")
    assert first.exit_code == 3, first.output  # timed out
    run_id = f"{NAME}__20240501T000000Z"
    assert "timed_out" in first.stdout
    assert f"campaignkit resume {config} {run_id} --sandbox" in first.stdout
    [listed] = runs_json(config, "--sandbox")
    sms = listed["channels"]["sms"]
    assert listed["status"] == "timed_out" and sms["pending"] > 0
    assert sms["sent"] + sms["pending"] == 8

    faults["twilio"] = {"latency": 0.0}
    resumed = invoke("resume", str(config), run_id, "--sandbox")
    assert resumed.exit_code == 0, resumed.output
    assert f"This time: settled (sent or failed) per channel: sms {sms['pending']}" in (
        resumed.stdout
    )
    run_dir = tmp_path / "campaignkit-results" / "sandbox" / run_id
    sent_to = [m["to"] for m in recorded(run_dir, "twilio")]  # both sessions
    assert sorted(sent_to) == sorted(f"+1415555{i:04d}" for i in range(1, 9))
    assert runs_json(config, "--sandbox")[0]["status"] == "succeeded"

    again = invoke("resume", str(config), run_id, "--sandbox")  # nothing is owed
    assert again.exit_code == 0
    assert again.stdout.startswith(f"Finished:  nothing was sent now. Run {run_id} had finished")
    assert "accepted messages per provider: twilio 0" in again.stdout
    again_json = invoke("resume", str(config), run_id, "--sandbox", "--json")
    assert json.loads(again_json.stdout)["replayed"] is True

    # Running the logical date again reports it, and sends nothing.
    rerun = invoke("run", str(config), "--sandbox", "--logical-date", "2024-05-01")
    assert rerun.exit_code == 0
    assert "Already ran: nothing was sent now. Logical date 2024-05-01 00:00 UTC" in rerun.stdout
    assert "accepted messages per provider: twilio 0" in rerun.stdout


def test_retry_failed_redrives_transient_failures_only(
    tmp_path: Path, faults: dict[str, dict[str, Any]]
) -> None:
    segment = rows(3)
    segment[1] = segment[1].replace("user2@example.com", "bounce@invalid.example")
    config = write_campaign(tmp_path, segment, sms_channel(retries=1), email_channel())
    faults["twilio"] = {"error_rate": 1.0}  # every SMS request: 503
    first = invoke("run", str(config), "--sandbox", "--retry-delay", "0")
    assert first.exit_code == 1, first.output
    run_id = runs_json(config, "--sandbox")[0]["run_id"]
    assert f"Retry:     3 transient failure(s): campaignkit retry-failed {config} {run_id}" in (
        first.stdout
    )
    records = deliveries(config, run_id, "--sandbox")
    assert by_status(records, "sms") == {"failed": 3}
    assert {r["reason"] for r in records if r["channel"] == "sms"} == {"retries_exhausted"}
    assert by_status(records, "email") == {"sent": 2, "failed": 1}  # a permanent bounce

    faults.clear()
    retried = invoke("retry-failed", str(config), run_id, "--sandbox", "--channel", "sms")
    assert retried.exit_code in (0, 1), retried.output  # the status of what was re-driven
    assert "accepted messages per provider: twilio 3" in retried.stdout
    records = deliveries(config, run_id, "--sandbox")
    assert by_status(records, "sms") == {"sent": 3}
    assert all(r["attempts"] == 3 for r in records if r["channel"] == "sms")  # 2 + 1

    everything = invoke("retry-failed", str(config), run_id, "--sandbox")
    assert everything.exit_code == 1  # the bounce stays failed: never re-sent
    assert "accepted messages per provider: twilio 0, sendgrid 0" in everything.stdout
    assert by_status(deliveries(config, run_id, "--sandbox"), "email") == {"sent": 2, "failed": 1}
    # The table counts every channel from the ledger.
    [listed] = runs_json(config, "--sandbox")
    assert (listed["channels"]["sms"]["sent"], listed["channels"]["email"]["failed"]) == (3, 1)


# -- run semantics ---------------------------------------------------------------------------


def test_run_options(tmp_path: Path) -> None:
    config = write_campaign(tmp_path, rows(2), sms_channel())
    bad = invoke("run", str(config), "--scheduled", "--force")
    assert bad.exit_code == 2 and "--scheduled" in bad.stderr
    wrong = invoke("run", str(config), "--logical-date", "yesterday")
    assert wrong.exit_code == 2 and "expected an ISO 8601 date" in wrong.stderr

    first = invoke("run", str(config), "--sandbox", "--json", "--logical-date", "2024-03-01T09:30")
    assert first.exit_code == 0, first.output
    assert json.loads(first.stdout)["run_id"] == f"{NAME}__20240301T093000Z"
    forced = invoke(
        "run", str(config), "--sandbox", "--json", "--logical-date", "2024-03-01T10:30+01:00"
    )  # the same instant
    assert json.loads(forced.stdout)["run_id"] == f"{NAME}__20240301T093000Z"
    assert "Already ran" in forced.stderr
    again = invoke(
        "run", str(config), "--sandbox", "--json", "--logical-date", "2024-03-01T09:30", "--force"
    )
    assert json.loads(again.stdout)["run_id"] == f"{NAME}__20240301T093000Z__2"
    assert [r["status"] for r in runs_json(config, "--sandbox")] == ["succeeded", "succeeded"]


def test_run_scheduled_with_catchup_runs_every_missed_interval_once(tmp_path: Path) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=3)
    config = write_campaign(
        tmp_path,
        rows(2),
        sms_channel(),
        schedule=f'cron = "@daily"\nstart_date = {start:%Y-%m-%dT%H:%M:%SZ}\ncatchup = true\n',
    )
    first = invoke("run", str(config), "--scheduled", "--sandbox", "--json")
    assert first.exit_code == 0, first.output
    outcome = json.loads(first.stdout)
    assert [r["status"] for r in outcome["reports"]] == ["succeeded"] * 3
    expected = [(start + timedelta(days=i)).strftime("%Y%m%dT%H%M%SZ") for i in range(3)]
    assert [r["run_id"] for r in outcome["reports"]] == [f"{NAME}__{d}" for d in expected]
    assert outcome["next_due"] == (today + timedelta(days=1)).isoformat()
    assert "accepted messages per provider: twilio 6" in first.stderr

    second = invoke("run", str(config), "--scheduled", "--sandbox")
    assert second.exit_code == 0, second.output
    assert "Nothing due." in second.stdout
    assert f"Next due:  {today + timedelta(days=1):%Y-%m-%d} 00:00 UTC" in second.stdout
    assert "accepted messages per provider: twilio 0" in second.stdout
    assert len(runs_json(config, "--sandbox")) == 3


def test_run_scheduled_skips_late_runs_and_records_them(tmp_path: Path) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start, end = today - timedelta(days=4), today - timedelta(days=3)
    config = write_campaign(
        tmp_path,
        rows(2),
        sms_channel(),
        schedule=(
            f'cron = "@daily"\nstart_date = {start:%Y-%m-%dT%H:%M:%SZ}\n'
            f"end_date = {end:%Y-%m-%dT%H:%M:%SZ}\ncatchup = true\nmax_lateness_minutes = 60\n"
        ),
    )
    result = invoke("run", str(config), "--scheduled", "--sandbox")
    assert result.exit_code == 0, result.output  # skipping is the declared policy
    assert result.stdout.count("Skipped:   logical date") == 2
    assert "more than max_lateness_minutes (60) ago; recorded as skipped_late" in result.stdout
    assert "Next due:  none (the schedule's end_date has passed)" in result.stdout
    assert "accepted messages per provider: twilio 0" in result.stdout
    listed = runs_json(config, "--sandbox")
    assert [r["status"] for r in listed] == ["skipped_late", "skipped_late"]
    assert listed[0]["channels"] == {}

    refused = invoke("resume", str(config), listed[0]["run_id"], "--sandbox")
    assert refused.exit_code == 2
    assert "was skipped as too late" in one_error_line(refused)
    assert "--force" in refused.stderr
    shown = invoke("report", str(config), listed[0]["run_id"], "--sandbox")
    assert shown.exit_code == 0 and "skipped_late" in shown.stdout


def test_schedule_prints_due_times_across_dst(tmp_path: Path) -> None:
    config = write_campaign(
        tmp_path,
        rows(1),
        sms_channel(),
        schedule='cron = "30 2 * * *"\ntimezone = "Europe/Berlin"\n',
    )
    result = invoke("schedule", str(config), "-n", "3", "--at", "2024-03-29T12:00:00Z", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    # 02:30 does not exist on 31 March in Berlin: that run is due at 03:00 CEST.
    assert [(i["logical_date"], i["due"], i["due_local"]) for i in data["upcoming"]] == [
        ("2024-03-29T01:30:00+00:00", "2024-03-30T01:30:00+00:00", "2024-03-30T02:30:00+01:00"),
        ("2024-03-30T01:30:00+00:00", "2024-03-31T01:00:00+00:00", "2024-03-31T03:00:00+02:00"),
        ("2024-03-31T01:00:00+00:00", "2024-04-01T00:30:00+00:00", "2024-04-01T02:30:00+02:00"),
    ]
    assert data["due_now"]["start"] == [
        {"logical_date": "2024-03-28T01:30:00+00:00", "due": "2024-03-29T01:30:00+00:00"}
    ]
    text = invoke("schedule", str(config), "-n", "3", "--at", "2024-03-29T12:00:00Z")
    assert text.exit_code == 0, text.output
    assert "cron '30 2 * * *' in Europe/Berlin" in text.stdout
    assert "start   logical date 2024-03-28 01:30 UTC (due 2024-03-29 01:30 UTC)" in text.stdout
    assert "2024-03-31 03:00 CEST" in text.stdout
    assert not (tmp_path / ".campaignkit").exists()  # looking creates no ledger


# -- crashes: SIGKILL during a run, then resume ----------------------------------------------


@pytest.fixture
def twilio() -> Iterator[TwilioServer]:
    with TwilioServer() as server:
        yield server


@pytest.fixture
def onesignal() -> Iterator[OneSignalServer]:
    with OneSignalServer() as server:
        yield server


def kill_in_flight(config: Path, env: dict[str, str], server: Any, *, requests: int = 2) -> None:
    """Run CONFIG in a subprocess and SIGKILL it while its ``requests``-th request is
    held in flight by the server's latency."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignkit", "run", str(config)],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while len(server.request_times) < requests:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            assert time.monotonic() < deadline
            time.sleep(0.005)
        proc.kill()
    finally:
        proc.wait(timeout=30)
        if proc.stderr is not None:
            proc.stderr.close()
    # The server still answers the request the process was waiting for.
    while len(server.messages) < requests and time.monotonic() < deadline:
        time.sleep(0.01)


def test_crash_then_resume_reports_unknown_without_idempotency_keys(
    tmp_path: Path, twilio: TwilioServer
) -> None:
    config = write_campaign(tmp_path, rows(6), sms_channel(twilio.channel_options()))
    env = {"SMS_API_TOKEN": twilio.token}
    twilio.faults.latency = 1.0
    kill_in_flight(config, env, twilio)
    twilio.faults.latency = 0.0
    [crashed] = runs_json(config)
    run_id = crashed["run_id"]
    assert crashed["status"] == "running" and crashed["process_alive"] is False
    assert crashed["channels"]["sms"]["sent"] == 1  # the second one was in flight
    table = invoke("runs", str(config))
    assert "process gone: resume it" in table.stdout

    resumed = invoke("resume", str(config), run_id, env=env)
    assert resumed.exit_code == 1, resumed.output  # unknown is not success
    assert "Unknown:   1 message(s) were in flight" in resumed.stdout
    assert f"campaignkit resume {config} {run_id} --resend-unknown" in resumed.stdout
    assert by_status(deliveries(config, run_id), "sms") == {"sent": 5, "unknown": 1}
    # The provider did get the one in flight: every number exactly once so far.
    assert sorted(m["to"] for m in twilio.messages) == sorted(
        f"+1415555{i:04d}" for i in range(1, 7)
    )

    resent = invoke("resume", str(config), run_id, "--resend-unknown", env=env)
    assert resent.exit_code == 0, resent.output
    assert by_status(deliveries(config, run_id), "sms") == {"sent": 6}
    assert len(twilio.messages) == 7  # the declared cost of --resend-unknown


def test_crash_then_resume_resends_in_flight_with_the_same_idempotency_key(
    tmp_path: Path, onesignal: OneSignalServer
) -> None:
    config = write_campaign(tmp_path, rows(6), push_channel(onesignal.channel_options()))
    env = {"PUSH_API_TOKEN": onesignal.token}
    onesignal.faults.latency = 1.0
    kill_in_flight(config, env, onesignal)
    onesignal.faults.latency = 0.0
    run_id = runs_json(config)[0]["run_id"]
    resumed = invoke("resume", str(config), run_id, env=env)
    assert resumed.exit_code == 0, resumed.output
    assert "Unknown:" not in resumed.stdout
    assert by_status(deliveries(config, run_id), "push") == {"sent": 6}
    # The whole batch was in flight (one request per message: the content is personal);
    # the two requests that had reached OneSignal are replayed by their keys.
    assert onesignal.replays == 2
    assert sorted(m["to"] for m in onesignal.messages) == sorted(
        str(uuid.UUID(int=i)) for i in range(1, 7)
    )


# -- the scheduler ---------------------------------------------------------------------------


class Lines:
    """A subprocess's stdout lines, read by a thread, awaited with a deadline."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        self.seen: list[str] = []
        self._queue: queue.Queue[str | None] = queue.Queue()
        stream = proc.stdout

        def pump() -> None:
            for line in stream:
                self._queue.put(line)
            self._queue.put(None)

        self._thread = threading.Thread(target=pump, daemon=True)
        self._thread.start()

    def wait_for(self, predicate: Callable[[str], bool], timeout: float = 30) -> str:
        deadline = time.monotonic() + timeout
        while True:
            line = self._queue.get(timeout=max(0.01, deadline - time.monotonic()))
            assert line is not None, "".join(self.seen)
            self.seen.append(line)
            if predicate(line):
                return line

    def rest(self) -> str:
        self._thread.join(timeout=30)
        while not self._queue.empty():
            line = self._queue.get()
            if line is not None:
                self.seen.append(line)
        return "".join(self.seen)


@pytest.fixture
def scheduler_process(
    tmp_path: Path, twilio: TwilioServer
) -> Iterator[Callable[[Path], tuple[subprocess.Popen[str], Lines]]]:
    procs: list[subprocess.Popen[str]] = []

    def start(config: Path) -> tuple[subprocess.Popen[str], Lines]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "campaignkit", "scheduler", str(config), "--poll", "0.2"],
            env={**os.environ, "SMS_API_TOKEN": twilio.token},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proc)
        return proc, Lines(proc)

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def daily(twilio: TwilioServer, directory: Path, n: int) -> Path:
    """A daily campaign whose latest interval is due (catchup off): due immediately."""
    return write_campaign(
        directory,
        rows(n),
        sms_channel(twilio.channel_options()),
        schedule='cron = "@daily"\nstart_date = 2024-01-01T00:00:00Z\ncatchup = false\n',
    )


def test_scheduler_runs_what_is_due_then_stops_cleanly_on_sigterm(
    tmp_path: Path, twilio: TwilioServer, scheduler_process: Any
) -> None:
    config = daily(twilio, tmp_path, 3)
    proc, lines = scheduler_process(config)
    lines.wait_for(lambda line: "succeeded" in line)
    lines.wait_for(lambda line: "next run due " in line)
    time.sleep(0.5)  # a few idle polls: the due run is not started again
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    output = lines.rest()
    assert "scheduler stopped" in output
    assert len(twilio.messages) == 3
    [run] = runs_json(config)
    assert run["status"] == "succeeded"


def test_scheduler_sigterm_mid_run_finishes_in_flight_and_exits_0(
    tmp_path: Path, twilio: TwilioServer, scheduler_process: Any
) -> None:
    config = daily(twilio, tmp_path, 6)
    twilio.faults.latency = 0.5
    proc, lines = scheduler_process(config)
    deadline = time.monotonic() + 30
    while not twilio.request_times:
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)  # the first request is in flight
    assert proc.wait(timeout=30) == 0, proc.stderr.read() if proc.stderr else ""
    output = lines.rest()
    [run] = runs_json(config)
    assert f"run {run['run_id']} is cancelled" in output
    assert f"campaignkit resume {config} {run['run_id']}" in output
    sms = run["channels"]["sms"]
    assert run["status"] == "cancelled"
    # What was in flight finished and was recorded: the ledger matches the provider.
    assert sms["sent"] == len(twilio.messages) >= 1
    assert sms["pending"] == 6 - sms["sent"] and sms["unknown"] == 0

    twilio.faults.latency = 0.0
    resumed = invoke("resume", str(config), run["run_id"], env={"SMS_API_TOKEN": twilio.token})
    assert resumed.exit_code == 0, resumed.output
    assert sorted(m["to"] for m in twilio.messages) == sorted(
        f"+1415555{i:04d}" for i in range(1, 7)
    )


def test_latest_names_the_newest_run_and_a_forgotten_sandbox_flag_is_named(
    tmp_path: Path,
) -> None:
    config = write_campaign(tmp_path, rows(3), sms_channel())
    first = invoke("run", str(config), "--sandbox", "--logical-date", "2024-05-01")
    second = invoke("run", str(config), "--sandbox", "--logical-date", "2024-05-02")
    assert first.exit_code == second.exit_code == 0, second.output
    newest = f"{NAME}__20240502T000000Z"
    report = invoke("report", str(config), "latest", "--sandbox", "--format", "json")
    assert report.exit_code == 0, report.output
    assert {row["run_id"] for row in json.loads(report.stdout)} == {newest}
    resumed = invoke("resume", str(config), "latest", "--sandbox")
    assert resumed.exit_code == 0, resumed.output
    assert f"Run {newest} had finished" in resumed.stdout
    # Without --sandbox: the real ledger does not exist; the error says where the runs are.
    for args in (("report", str(config), "latest"), ("resume", str(config), newest)):
        missing = invoke(*args)
        assert missing.exit_code == 2
        line = one_error_line(missing)
        assert "has no runs yet" in line and "ledger.sandbox.db: add --sandbox" in line
