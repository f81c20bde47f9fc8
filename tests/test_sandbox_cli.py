"""`campaignkit sandbox` as a user runs it (a real subprocess, real HTTP to 127.0.0.1):
fixed account SID, senders, tokens and ports, fault options, the printed credentials
and variables (`--json`), and the journal of accepted messages written as they arrive,
which survives a `run --sandbox` killed with SIGKILL."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import smtplib
import socket
import string
import subprocess
import sys
import time
from collections.abc import Iterator
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest
import requests
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st

from campaignkit.cli import main
from campaignkit.testing.sandbox import Sandbox
from campaignkit.testing.sandbox._settings import (
    FAULT_SETTINGS,
    PROBABILITY,
    SettingError,
    check_token,
    parse_assignment,
    parse_fault_value,
)

SID = "AC" + "0123456789abcdef" * 2
TOKEN = "sandbox-token"
USER_TOKEN = "my-own-token-8b1f27c3d9"
SENDERS = ("+14155550100", "+14155550199")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Served:
    """A `campaignkit sandbox` process and what it printed before serving."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "campaignkit", "sandbox", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert self.proc.stdout is not None
        self.lines: list[str] = []
        for line in self.proc.stdout:
            self.lines.append(line)
            if "Sandbox ready" in line or line.startswith("{"):
                break

    @property
    def described(self) -> Any:
        return json.loads(self.lines[0])

    def stop(self) -> tuple[str, str]:
        """SIGTERM, then everything else it printed (stdout, stderr)."""
        self.proc.send_signal(signal.SIGTERM)
        out, err = self.proc.communicate(timeout=30)
        return "".join(self.lines) + out, err


@pytest.fixture
def serve() -> Iterator[Any]:
    started: list[Served] = []

    def start(*args: str) -> Served:
        started.append(Served(*args))
        return started[-1]

    yield start
    for served in started:
        if served.proc.poll() is None:
            served.proc.kill()
            served.proc.communicate(timeout=30)


def twilio_send(info: Any, sender: str, token: str, to: str = "+14155550123") -> Any:
    sid = info["credentials"]["account_sid"]
    return requests.post(
        f"{info['url']}/2010-04-01/Accounts/{sid}/Messages.json",
        data={"To": to, "From": sender, "Body": "hello"},
        auth=(sid, token),
        timeout=10,
    )


def test_fixed_sid_senders_token_port_and_live_journal(serve: Any, tmp_path: Path) -> None:
    port = free_port()
    served = serve(
        "--provider", "twilio", "--provider", "sendgrid",
        "--twilio-account-sid", SID,
        "--sender", f"twilio={SENDERS[0]}", "--sender", f"twilio={SENDERS[1]}",
        "--token", f"twilio={USER_TOKEN}",
        "--port", f"twilio={port}",
        "--dump", str(tmp_path / "rec"),
        "--json",
    )  # fmt: skip
    info = served.described["providers"]
    twilio = info["twilio"]
    assert twilio["url"] == f"http://127.0.0.1:{port}"
    assert twilio["options"]["account_sid"] == SID
    assert twilio["options"]["from"] in SENDERS
    assert twilio["env"]["TWILIO_ACCOUNT_SID"] == SID
    # The user's own token is not printed back without --show-tokens.
    assert twilio["token"] is None and twilio["token_given"] is True
    assert twilio["credentials"]["auth_token"] is None
    assert twilio["env"]["TWILIO_AUTH_TOKEN"] is None and twilio["env"]["SMS_API_TOKEN"] is None
    # The sandbox's own token is a credential the user must use: printed.
    sendgrid = info["sendgrid"]
    assert sendgrid["credentials"]["api_key"] == sendgrid["token"] == "sandbox-token"
    assert sendgrid["env"] == dict.fromkeys(("SENDGRID_API_KEY", "EMAIL_API_TOKEN"), TOKEN)
    assert served.described["env"] == {"EMAIL_API_TOKEN": "sandbox-token"}

    assert twilio_send(twilio, SENDERS[1], USER_TOKEN).status_code == 201
    refused = twilio_send(twilio, "+15005550006", USER_TOKEN)  # not an allowed sender
    assert (refused.status_code, refused.json()["code"]) == (400, 21606)
    assert twilio_send(twilio, SENDERS[0], "sandbox-token").status_code == 401
    # Recorded the moment it was accepted, while the sandbox still serves.
    journal = Path(twilio["journal"])
    assert journal == tmp_path / "rec" / "twilio.jsonl"
    [line] = journal.read_text().splitlines()
    assert (json.loads(line)["to"], json.loads(line)["from"]) == ("+14155550123", SENDERS[1])

    out, err = served.stop()
    assert "Accepted messages: twilio 1, sendgrid 0" in err
    assert USER_TOKEN not in out + err


def test_text_output_and_show_tokens(serve: Any) -> None:
    served = serve("--provider", "twilio", "--provider", "expo", "--token", f"twilio={USER_TOKEN}")
    out, _ = served.stop()
    assert USER_TOKEN not in out
    assert "  credentials.auth_token = <given with --token" in out
    assert "  export TWILIO_AUTH_TOKEN=<given with --token" in out
    assert "  export EXPO_ACCESS_TOKEN=sandbox-token" in out
    assert "export PUSH_API_TOKEN=sandbox-token" in out.splitlines()

    shown = serve("--provider", "twilio", "--token", f"twilio={USER_TOKEN}", "--show-tokens")
    out, _ = shown.stop()
    assert f"  credentials.auth_token = {json.dumps(USER_TOKEN)}" in out
    assert f"export SMS_API_TOKEN={USER_TOKEN}" in out.splitlines()


def test_fault_options_reach_the_servers(serve: Any) -> None:
    served = serve(
        "--provider", "sendgrid", "--provider", "expo", "--provider", "twilio",
        "--error-rate", "1", "--error-rate", "twilio=0",
        "--drop-rate", "expo=1",
        "--rate-limit", "twilio=1", "--retry-after", "twilio=7",
        "--seed", "5",
        "--json",
    )  # fmt: skip
    info = served.described["providers"]
    assert info["sendgrid"]["faults"] == {"error_rate": 1.0, "seed": 5}
    assert info["twilio"]["faults"] == {
        "error_rate": 0.0, "rate_limit": 1.0, "retry_after": 7.0, "seed": 5,
    }  # fmt: skip
    mail = {
        "personalizations": [{"to": [{"email": "a@example.com"}]}],
        "from": {"email": "campaigns@sandbox.example"},
        "subject": "s",
        "content": [{"type": "text/plain", "value": "v"}],
    }
    reply = requests.post(
        f"{info['sendgrid']['url']}/v3/mail/send",
        json=mail,
        headers={"Authorization": "Bearer sandbox-token"},
        timeout=10,
    )
    assert reply.status_code == 503
    with pytest.raises(requests.ConnectionError):
        requests.post(f"{info['expo']['url']}/--/api/v2/push/send", json=[], timeout=10)
    sender = info["twilio"]["options"]["from"]
    assert twilio_send(info["twilio"], sender, "sandbox-token").status_code == 201
    limited = twilio_send(info["twilio"], sender, "sandbox-token")
    assert (limited.status_code, limited.headers["Retry-After"]) == (429, "7")
    served.stop()


TELNYX_README = """\
import os
import telnyx

client = telnyx.Telnyx(api_key=os.environ.get("TELNYX_API_KEY"), max_retries=0)
response = client.messages.send(from_=os.environ["FROM"], to="+14155550101", text="Hi")
print(response.data.id)
"""


def test_the_printed_telnyx_variables_point_the_sdk_at_the_sandbox(serve: Any) -> None:
    # The Telnyx SDK reads its address from TELNYX_BASE_URL (ending in /v2): without it
    # in the printed variables, a program set up from them sends to api.telnyx.com.
    pytest.importorskip("telnyx")
    served = serve("--provider", "telnyx", "--json")
    info = served.described["providers"]["telnyx"]
    assert info["env"]["TELNYX_BASE_URL"] == f"{info['url']}/v2"
    env = {k: v for k, v in os.environ.items() if not k.startswith("TELNYX_")}
    env.update(info["env"], FROM=info["options"]["from"])
    result = subprocess.run(
        [sys.executable, "-c", TELNYX_README],
        capture_output=True, text=True, timeout=60, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    _, err = served.stop()
    assert "Accepted messages: telnyx 1" in err


@pytest.mark.parametrize(
    ("args", "option", "says"),
    [
        (["--error-rate", "1.5"], "--error-rate", "1.5 is not a probability between 0 and 1"),
        (["--drop-rate", "twilio=-0.1"], "--drop-rate", "-0.1 is not a probability"),
        (["--stall-rate", "x"], "--stall-rate", "'x' is not a number"),
        (["--rate-limit", "0"], "--rate-limit", "0 is not a number above 0"),
        (["--latency", "inf"], "--latency", "'inf' is not a finite number"),
        (["--retry-after", "-1"], "--retry-after", "-1 is not a number of 0 or more"),
        (["--stall-seconds", "twilio=-2"], "--stall-seconds", "-2 is not a number of 0"),
        (["--seed", "1.5"], "--seed", "'1.5' is not an integer"),
        # time.sleep() overflows on these: refused, not a traceback at the first request
        (["--latency", "1e308"], "--latency", "1e308 is more than a day (86400 seconds)"),
        (["--stall-seconds", "twilio=1e12"], "--stall-seconds", "1e12 is more than a day"),
        (["--retry-after", "86401"], "--retry-after", "86401 is more than a day"),
        (["--error-rate", "smtp=0.5"], "--error-rate", "smtp sandbox takes --latency"),
        (["--provider", "expo", "--error-rate", "twilio=0.5"], "--error-rate", "'twilio' is not"),
        (["--twilio-account-sid", "AC123"], "--twilio-account-sid", "AC followed by 32"),
        (["--twilio-account-sid", "SM" + "0" * 32], "--twilio-account-sid", "not a Twilio"),
        (["--provider", "expo", "--twilio-account-sid", SID], "--twilio-account-sid", "add --"),
        (["--sender", "+14155550100"], "--sender", "expected PROVIDER=SENDER"),
        (["--sender", "expo=x"], "--sender", "expo sandbox accepts any sender"),
        (["--port", "twilio=70000"], "--port", "twilio: 70000 is not a port number"),
        (["--port", "twilio"], "--port", "expected PROVIDER=PORT"),
        (["--port-base", "9000", "--port", "sendgrid=9002"], "--port", "both listen on port 9002"),
        (["--provider", "nope"], "--provider", "no sandbox for 'nope'"),
    ],
)
def test_bad_options_exit_2_naming_the_option(args: list[str], option: str, says: str) -> None:
    result = CliRunner().invoke(main, ["sandbox", *args])
    assert result.exit_code == 2, result.output
    assert option in result.stderr
    assert says in result.stderr, result.stderr


@pytest.mark.parametrize("arg", [USER_TOKEN, f"twilio= {USER_TOKEN}", f"nope={USER_TOKEN}"])
def test_a_bad_token_option_never_shows_the_token(arg: str) -> None:
    result = CliRunner().invoke(main, ["sandbox", "--provider", "twilio", "--token", arg])
    assert result.exit_code == 2
    assert "--token" in result.stderr
    assert USER_TOKEN not in result.output + result.stderr


@pytest.mark.parametrize("secret", ["pässwort", "日本-token", "tab\there", "nul\x00x"])
def test_a_token_no_sdk_can_send_is_refused_without_quoting_it(secret: str) -> None:
    # Such a token started a sandbox that answered every SDK request 401 (or the SDK
    # failed to encode the header): refused up front instead, never printed.
    result = CliRunner().invoke(main, ["sandbox", "--provider", "twilio", "--token",
                                       f"twilio={secret}"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--token" in result.stderr
    assert "twilio: TOKEN holds a character other than printable ASCII" in result.stderr
    assert secret not in result.output + result.stderr


@given(st.text(min_size=1).filter(lambda t: t == t.strip()))
def test_printable_ascii_tokens_and_only_those_are_taken(value: str) -> None:
    if value.isascii() and value.isprintable():
        assert check_token(value) == value
    else:
        with pytest.raises(SettingError) as info:
            check_token(value)
        assert value not in str(info.value)


@given(st.text(alphabet=string.ascii_letters + string.digits + "-_.:/+", min_size=1))
def test_token_errors_never_quote_the_value(text: str) -> None:
    token = f"tok-{text}"
    for arg in (token, f"twilio={token} ", f"other={token}", f"Bad Name={token}"):
        with pytest.raises(SettingError) as info:
            parse_assignment(arg, providers=("twilio",), provider_required=True, secret=True)
        assert token not in str(info.value)


@given(st.floats(allow_nan=True, allow_infinity=True))
def test_probabilities_are_checked(value: float) -> None:
    setting = next(s for s in FAULT_SETTINGS if s.expects == PROBABILITY)
    if 0.0 <= value <= 1.0:
        assert parse_fault_value(setting, repr(value)) == value
    else:
        with pytest.raises(SettingError):
            parse_fault_value(setting, repr(value))


@given(
    st.sampled_from(["twilio", "sendgrid"]),
    st.text(alphabet=st.characters(blacklist_characters="= \t\n\r\x0b\x0c\x1c\x1d\x1e\x1f\x85\xa0"),
            min_size=1, max_size=20),
)  # fmt: skip
def test_provider_assignments_round_trip(provider: str, value: str) -> None:
    if value != value.strip():
        return
    got = parse_assignment(
        f"{provider}={value}", providers=("twilio", "sendgrid"), provider_required=False
    )
    assert (got.provider, got.value) == (provider, value)
    assert parse_assignment(value, providers=("twilio",), provider_required=False).provider is None


# -- the journal: messages recorded as they arrive ------------------------------------------


def test_smtp_messages_are_journaled_too(tmp_path: Path) -> None:
    with Sandbox(["smtp"], record_to=tmp_path) as sandbox:
        server = sandbox.servers["smtp"]
        message = EmailMessage()
        message["From"], message["To"], message["Subject"] = "a@example.com", "b@example.com", "s"
        message.set_content("hello")
        with smtplib.SMTP(server.HOST, server.port, timeout=10) as client:
            client.login(server.username, server.token)
            client.send_message(message)
        [line] = (tmp_path / "smtp.jsonl").read_text().splitlines()
        assert json.loads(line)["to"] == "b@example.com"
        assert json.loads(line) == json.loads(json.dumps(server.messages[0], default=str))


CAMPAIGN = """\
[pipeline]
name = "killed"
[source]
type = "csv"
path = "segment.csv"
[execution]
output_dir = "out"
[channels.sms]
provider = "twilio"
require_consent = false
rate = { messages_per_second = 40 }
[channels.sms.template]
body = "Hi {{ id }}"
"""


def deliveries(config: Path) -> list[dict[str, str]]:
    result = subprocess.run(
        [sys.executable, "-m", "campaignkit", "report", str(config), "latest", "--sandbox",
         "--format", "csv"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr
    return list(csv.DictReader(io.StringIO(result.stdout)))


def journal(directory: Path) -> list[dict[str, Any]]:
    path = directory / "sandbox" / "twilio.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_killed_run_keeps_the_journal_of_everything_accepted(tmp_path: Path) -> None:
    rows = ["id,phone"] + [f"c{i},+1415555{i:04d}" for i in range(400)]
    (tmp_path / "segment.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "campaign.toml"
    config.write_text(CAMPAIGN)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_TOKEN")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignkit", "run", str(config), "--sandbox", "--json"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    try:
        deadline = time.monotonic() + 60
        runs = tmp_path / "out" / "sandbox"
        while time.monotonic() < deadline:
            dirs = list(runs.glob("*/sandbox")) if runs.exists() else []
            if dirs and len(journal(dirs[0].parent)) >= 30:
                break
            assert proc.poll() is None, "the run ended before it could be killed"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    [run_dir] = list(runs.iterdir())
    recorded = journal(run_dir)  # every line a whole JSON object
    by_status: dict[str, set[str]] = {}
    ids = {}
    for d in deliveries(config):
        by_status.setdefault(d["status"], set()).add(d["address"])
        ids[d["address"]] = d["provider_message_id"]
    sent = by_status.get("sent", set())
    to = [m["to"] for m in recorded]
    # Killed mid-run: the journal had 30 lines; the ledger records a message after the
    # fake answered it, so it may be up to the requests in flight behind.
    assert len(to) >= 30
    assert 0 < len(sent) < 400, by_status.keys()
    assert len(to) == len(set(to))  # each accepted message once
    # Every delivery the run recorded as sent is in the journal, with the fake's id...
    assert sent <= set(to)
    assert all(m["sid"] == ids[m["to"]] for m in recorded if m["to"] in sent)
    # ...and the journal holds nothing the run did not send or have in flight.
    assert set(to) <= sent | by_status.get("in_flight", set())
    assert len(to) <= len(sent) + 4  # at most the requests in flight (concurrency 4)

    # A resume adds to the same journal.
    resumed = subprocess.run(
        [sys.executable, "-m", "campaignkit", "resume", str(config), "latest", "--sandbox"],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert resumed.returncode in (0, 1), resumed.stderr
    assert f"recorded messages in {run_dir / 'sandbox'}" in resumed.stdout
    final = [m["to"] for m in journal(run_dir)]
    assert final[: len(to)] == to
    statuses = deliveries(config)
    assert {d["address"] for d in statuses if d["status"] == "sent"} <= set(final)
