"""Newcomer frictions: -v/-q anywhere, `latest` wherever a RUN_ID is, help that does not
repeat itself, summaries that stay whole at 80 columns, honest reasons for unknown
deliveries, and a public in-memory source.

Through the command line (click's runner, or a real terminal for the width checks) and
the Pipeline API, against the loopback sandboxes."""

from __future__ import annotations

import itertools
import json
import os
import pty
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import campaignkit
import campaignkit.testing
from campaignkit import (
    Channel,
    JsonLinesSource,
    Pipeline,
    Recipient,
    StaticSource,
    Template,
    get_plugin_manager,
)
from campaignkit.cli import main
from campaignkit.testing import recording_plugin
from campaignkit.testing.sandbox import Sandbox

RUN_ID = "campaign__2024-01-02T00:00:00+00:00__2"  # long, with the characters ids have

CAMPAIGN = """\
[pipeline]
name = "multi_channel_marketing_campaign"

[source]
type = "csv"
path = "customers.csv"

[source.columns]
id = "customer_id"

[channels.email]
provider = "sendgrid"
require_consent = false
timeout_seconds = 0.5
batch_size = 1
concurrency = 1

[channels.email.template]
subject = "Hi {{ first_name }}"
body = "Hi {{ first_name }}, everything is 20% off."

[channels.email.options]
from_email = "offers@example.com"

[channels.email.retry]
retries = 1
delay_minutes = 0

[channels.sms]
provider = "twilio"
require_consent = false

[channels.sms.template]
body = "Hi {{ first_name }}, 20% off. Reply STOP to opt out."

[channels.sms.options]
from = "+15005550006"
account_sid = "AC00000000000000000000000000000000"
"""

CUSTOMERS = """\
customer_id,first_name,email,phone
C1,Ada,ada@example.com,+14155550101
C2,Bo,bounce@invalid.example,+15005550001
C3,Cy,cy@example.com,+14155550103
C4,Di,not-an-address,+14155550104
"""


def campaign(directory: Path) -> Path:
    (directory / "customers.csv").write_text(CUSTOMERS, encoding="utf-8")
    config = directory / "campaign.toml"
    config.write_text(CAMPAIGN, encoding="utf-8")
    return config


def invoke(*args: str, columns: int | None = None) -> Result:
    env: dict[str, str | None] = {
        "EMAIL_API_TOKEN": None,
        "SMS_API_TOKEN": None,
        "CAMPAIGNKIT_BLOCK_PLUGINS": None,
        "COLUMNS": None if columns is None else str(columns),
    }
    return CliRunner().invoke(main, list(args), env=env)


def on_a_terminal(*args: str, columns: int) -> str:
    """What ``campaignkit ARGS`` shows on a real terminal ``columns`` wide (a pty)."""
    master, slave = pty.openpty()
    env = {**os.environ, "COLUMNS": str(columns), "NO_COLOR": "1", "TERM": "xterm"}
    for name in ("EMAIL_API_TOKEN", "SMS_API_TOKEN", "CAMPAIGNKIT_BLOCK_PLUGINS"):
        env.pop(name, None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignkit", *args],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=subprocess.PIPE,
        env=env,
    )
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read)
    reader.start()
    _, err = proc.communicate(timeout=120)
    reader.join(timeout=10)
    os.close(master)
    assert proc.returncode in (0, 1), err.decode()
    text = b"".join(chunks).decode("utf-8").replace("\r\n", "\n")
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)


def assert_whole(output: str, run_id: str) -> None:
    """``run_id`` is printed, and every line showing a piece of it shows all of it; no
    text is cut with an ellipsis."""
    assert run_id in output, output
    head, tail = run_id[:12], run_id[-12:]
    for line in output.splitlines():
        if head in line or tail in line:
            assert run_id in line, f"run id broken across lines:\n{output}"
    assert "…" not in output, output


@pytest.fixture
def ran(tmp_path: Path) -> Path:
    """A sandbox run of the campaign under the long id :data:`RUN_ID`."""
    config = campaign(tmp_path)
    result = invoke("run", str(config), "--sandbox", "--run-id", RUN_ID, "--retry-delay", "0")
    assert result.exit_code == 1, result.output  # a 400 and a 21211: partial
    return config


# -- -v and -q, before and after the command ---------------------------------------------------


def test_every_command_takes_verbose_and_quiet() -> None:
    commands: dict[str, click.Command] = main.commands  # type: ignore[attr-defined]
    assert len(commands) >= 13
    for name, command in commands.items():
        options = {o for p in command.params for o in getattr(p, "opts", ())}
        assert {"-v", "--verbose", "-q", "--quiet"} <= options, name


@pytest.mark.parametrize("where", ["before", "after"])
def test_verbose_logs_before_or_after_the_command(tmp_path: Path, where: str) -> None:
    config = campaign(tmp_path)
    args = ["run", str(config), "--sandbox", "--json", "--retry-delay", "0"]
    result = invoke(*(["-v", *args] if where == "before" else [*args, "-v"]))
    assert result.exit_code == 1, result.output
    assert "extracted 4 recipient(s)" in result.stderr
    json.loads(result.stdout)
    quiet = invoke(*args[:-2], "--force", "--retry-delay", "0")
    assert "extracted" not in quiet.stderr


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_prints_the_status_line_only(tmp_path: Path, where: str) -> None:
    config = campaign(tmp_path)
    args = ["run", str(config), "--sandbox", "--retry-delay", "0"]
    loud = invoke(*args)
    assert loud.exit_code == 1
    assert "Sandbox:" in loud.stdout and "top reasons" in loud.stdout
    quiet = invoke(*(["-q", *args, "--force"] if where == "before" else [*args, "--force", "-q"]))
    assert quiet.exit_code == 1, quiet.output
    assert quiet.stdout == "Status: partial (exit 1)\n"
    again = invoke(*args, "-q")  # the same logical date: nothing sent, and it says so
    assert again.stdout.startswith("Already ran: nothing was sent now.")
    assert again.stdout.splitlines()[-1] == "Status: partial (exit 1)"
    plan = invoke("-q", "run", str(config), "--dry-run", "--plan-output", str(tmp_path / "p"))
    assert plan.exit_code == 0
    assert plan.stdout.splitlines() == [f"Plan:      {tmp_path / 'p'}", "Status: dry run (exit 0)"]


def test_quiet_and_verbose_together_are_refused(tmp_path: Path) -> None:
    config = campaign(tmp_path)
    for args in (("-q", "runs", str(config), "-v"), ("-v", "-q", "runs", str(config))):
        result = invoke(*args)
        assert result.exit_code == 2
        assert "-q (quiet) and -v (verbose) contradict each other" in result.stderr


# -- help ----------------------------------------------------------------------------------------


def test_exit_codes_are_in_the_group_help_and_pointed_to_elsewhere() -> None:
    group = invoke("--help").stdout
    assert "Exit codes:" in group and "  3  the run failed" in group
    for name in main.commands:  # type: ignore[attr-defined]
        text = invoke(name, "--help").stdout
        assert "Exit codes:" not in text and "  3  the run failed" not in text, name
        assert "Exit codes (0-3) and token variables: campaignkit --help." in text, name


# -- latest --------------------------------------------------------------------------------------


def run_id_commands() -> list[str]:
    return sorted(
        name
        for name, command in main.commands.items()  # type: ignore[attr-defined]
        if any(isinstance(p, click.Argument) and p.name == "run_id" for p in command.params)
    )


def test_latest_is_accepted_wherever_a_run_id_is(ran: Path) -> None:
    commands = run_id_commands()
    assert {"report", "resume", "retry-failed"} <= set(commands)
    for name in commands:
        result = invoke(name, str(ran), "latest", "--sandbox")
        assert result.exit_code in (0, 1), (name, result.output)
        assert RUN_ID in result.stdout, name
        assert "no run 'latest'" not in result.output


def test_latest_cannot_be_a_new_run_id(tmp_path: Path) -> None:
    result = invoke("run", str(campaign(tmp_path)), "--sandbox", "--run-id", "latest")
    assert result.exit_code == 2
    assert "'latest' is reserved" in result.stderr


# -- 80 columns ----------------------------------------------------------------------------------


@pytest.mark.parametrize("columns", [80, 60])
def test_run_ids_stay_whole_on_a_narrow_terminal(ran: Path, columns: int) -> None:
    runs = on_a_terminal("runs", str(ran), "--sandbox", columns=columns)
    assert_whole(runs, RUN_ID)
    assert "2 sent, 1 failed, 1 skipped" in runs  # email: a 400 and an invalid address
    assert "3 sent, 1 failed" in runs  # sms: +15005550001 is Twilio's 21211
    report = on_a_terminal("report", str(ran), "latest", "--sandbox", columns=columns)
    assert_whole(report, RUN_ID)
    assert "code 21211: 1" in report and "code 400: 1" in report
    assert "invalid_address 1" in report


@pytest.mark.parametrize("columns", [80, 60, 200])
def test_summary_and_plan_fit_the_columns_asked_for(tmp_path: Path, columns: int) -> None:
    config = campaign(tmp_path)
    result = invoke("run", str(config), "--sandbox", "--run-id", RUN_ID, columns=columns)
    assert result.exit_code == 1, result.output
    assert_whole(result.stdout, RUN_ID)
    lines = result.stdout.splitlines()
    assert any("code 21211: 1" in line for line in lines)
    if columns < 100:  # one block per channel; every line whole (the terminal wraps)
        assert "sms (twilio): 3 sent, 1 failed, 0 skipped; 0 retries" in result.stdout
    else:  # the table, within the width
        table = lines[lines.index(next(x for x in lines if "top reasons" in x)) :]
        assert all(len(line.rstrip()) <= columns for line in table[:6])
    plan_file = str(tmp_path / "plan.json")
    plan = invoke("run", str(config), "--dry-run", "--plan-output", plan_file, columns=columns)
    assert plan.exit_code == 0
    assert "…" not in plan.stdout
    assert "invalid_address 1" in plan.stdout


# -- unknown deliveries are not failures ---------------------------------------------------------


LATE = """\
[pipeline]
name = "late"

[source]
type = "csv"
path = "customers.csv"

[source.columns]
id = "customer_id"

[channels.email]
provider = "sendgrid"
require_consent = false
timeout_seconds = 0.4
batch_size = 1
concurrency = 1

[channels.email.template]
subject = "Hi {{ first_name }}"
body = "Hi {{ first_name }}"

[channels.email.options]
from_email = "offers@example.com"

[channels.email.retry]
retries = 1
delay_minutes = 0
"""


def test_unknown_deliveries_are_reported_with_their_cause_not_as_failures(
    tmp_path: Path,
) -> None:
    (tmp_path / "customers.csv").write_text(
        "customer_id,first_name,email\n"
        + "".join(f"C{i},N{i},user{i}@example.com\n" for i in range(4))
        + "C9,Bad,bounce@invalid.example\n",
        encoding="utf-8",
    )
    config = tmp_path / "campaign.toml"
    config.write_text(LATE, encoding="utf-8")
    with Sandbox(["sendgrid"]) as sandbox:
        server = sandbox.servers["sendgrid"]
        server.faults.stall_seconds = 1.2
        # accepted then answered too late; two 503s (the provider may have acted).
        server.faults.fail_next("late", 503, 503)
        report = sandbox.pipeline(config, sleep=lambda s: None).run()
    email = report.channels["email"]
    assert (email.sent, email.failed, email.unknown) == (1, 1, 3)
    assert email.error_codes == {"400": 1}  # failures only: unknown ones failed nothing
    for columns in (200, 60):
        result = invoke("report", str(config), "latest", "--sandbox", columns=columns)
        assert result.exit_code == 0, result.output
        out = " ".join(result.stdout.split())  # the table wraps its reasons column
        assert "unknown 2: provider answered 503; provider may have it" in out
        assert "unknown 1: timed out after sending; provider may have it" in out
        assert "code 400: 1" in out
        assert "code 503" not in out and "code timeout" not in out
        assert "in_doubt" not in out  # said in words, under unknown
    rows = json.loads(
        invoke("report", str(config), "latest", "--sandbox", "--format", "json").stdout
    )
    codes = sorted((r["status"], r["error_code"]) for r in rows if r["error_code"])
    assert codes == [
        ("failed", "400"),
        ("unknown", "503"),
        ("unknown", "503"),
        ("unknown", "timeout"),
    ]


# -- the in-memory source ------------------------------------------------------------------------


def test_static_source_is_public_and_the_same_class() -> None:
    assert campaignkit.StaticSource is campaignkit.testing.StaticSource is StaticSource
    assert "StaticSource" in campaignkit.__all__


def _plan(source: Any, base_dir: Path) -> Any:
    recorder = recording_plugin()
    channel = Channel(
        name="email",
        provider="recording",
        template=Template(body="Hi {{ first_name }}"),
        options={"address_field": "email"},
    )
    return Pipeline(
        "t",
        source,
        [channel],
        plugins=get_plugin_manager(load_entrypoints=False, plugins=[recorder]),
        env={},
        base_dir=base_dir,
    ).plan(samples=0)


# One problem at most per row, so that the two sources name the same one.
_values = st.one_of(
    st.text(alphabet=st.characters(codec="utf-8"), max_size=6), st.integers(-5, 5), st.none()
)
_row = st.fixed_dictionaries(
    {
        "customer_id": st.one_of(st.sampled_from(["C1", "C2", "C3", " ", ""]), st.integers(0, 3)),
        "email": st.sampled_from(["a@example.com", "b@example.org", "not-an-address", "", None]),
        "first_name": _values,
        "opt": st.one_of(st.sampled_from(["yes", "no", "Y", "0", "maybe", ""]), st.booleans()),
    }
)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rows=st.lists(_row, min_size=1, max_size=8))
def test_from_dicts_checks_rows_as_a_json_lines_file_is(
    tmp_path_factory: pytest.TempPathFactory, rows: list[dict[str, Any]]
) -> None:
    directory = tmp_path_factory.mktemp("rows")
    path = directory / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    options: dict[str, Any] = {"columns": {"id": "customer_id"}, "consent": {"email": "opt"}}
    from_file = _plan(JsonLinesSource(path, **options), directory)
    in_memory = _plan(StaticSource.from_dicts(rows, **options), directory)
    assert (in_memory.rows_read, in_memory.rows_rejected) == (
        from_file.rows_read,
        from_file.rows_rejected,
    )
    assert in_memory.rejected_reasons == from_file.rejected_reasons
    mine, theirs = in_memory.channels["email"], from_file.channels["email"]
    assert (mine.eligible, mine.skipped) == (theirs.eligible, theirs.skipped)


def test_from_dicts_rejects_what_it_cannot_use_and_never_raises(tmp_path: Path) -> None:
    rows: list[Any] = [
        {"id": "C1", "email": "ada@example.com", "first_name": "Ada", "consent": {"email": True}},
        {"id": "C2", "email": "bo@example.com", "first_name": "Bo\x1b[2J"},  # escape sequence
        {"id": "C3", "email": "cy\x00@example.com"},  # NUL in an address
        {"id": "C4", "email": "no-at-sign", "first_name": "Di"},  # skipped: invalid_address
        {"email": "eve@example.com"},  # no id
        {"id": "C6", "email": "fay@example.com", "consent": {"email": "maybe"}},
        {"id": "C7", "email": "gus@example.com", "tags": ["a", "b"]},  # nested
        ["C8", "hal@example.com"],  # not a mapping
        {"id": 9, "email": "ivy@example.com", "score": 4.5, "vip": True, "note": None},
    ]
    recorder = recording_plugin()
    channel = Channel(
        name="email", provider="recording", template=Template(body="Hi"), require_consent=False
    )
    pipeline = Pipeline(
        "t",
        StaticSource.from_dicts(rows),
        [channel],
        plugins=get_plugin_manager(load_entrypoints=False, plugins=[recorder]),
        env={},
        base_dir=tmp_path,
    )
    report = pipeline.run()
    assert (report.rows_read, report.rows_rejected) == (9, 6)
    assert report.rejected_reasons == {
        "control_character": 2,
        "empty_required_field": 1,
        "bad_consent_value": 1,
        "malformed_row": 2,
    }
    email = report.channels["email"]
    assert (email.sent, email.skipped) == (2, 1)
    assert email.reasons == {"invalid_address": 1}
    sent = {m.recipient_id: m for m in recorder.outbox.messages}
    assert set(sent) == {"C1", "9"}
    rejected = (Path(report.output_dir) / "rejected.csv").read_text(encoding="utf-8")
    assert "expected a mapping, got list" in rejected
    assert "key 'tags' holds a nested value" in rejected
    assert "key 'first_name': control character U+001B at position 3" in rejected
    assert "\x1b" not in rejected and "\x00" not in rejected  # raw rows are JSON-escaped


def test_from_dicts_streams_a_function_of_rows() -> None:
    pulled = itertools.count()

    def endless() -> Iterator[dict[str, Any]]:
        for i in itertools.count():
            next(pulled)
            if i > 10_000:
                raise AssertionError("the source read ahead: it would hold every row")
            yield {"id": f"C{i}", "email": f"u{i}@example.com", "first_name": f"N{i}"}

    source = StaticSource.from_dicts(endless)
    assert "first_name" in source.fields()
    first = list(itertools.islice(source.records(), 3))
    assert [r.id for r in first if isinstance(r, Recipient)] == ["C0", "C1", "C2"]
    again = next(iter(source.records()))  # every pass reads afresh
    assert isinstance(again, Recipient) and again.id == "C0"
    assert next(pulled) < 20


def test_from_dicts_reads_a_generator_expression_once_and_keeps_it(tmp_path: Path) -> None:
    rows = ({"id": f"C{i}", "email": f"u{i}@example.com"} for i in range(3))
    source = StaticSource.from_dicts(rows)
    recorder = recording_plugin()
    channel = Channel(
        name="email", provider="recording", template=Template(body="Hi"), require_consent=False
    )
    pipeline = Pipeline(
        "t",
        source,
        [channel],
        plugins=get_plugin_manager(load_entrypoints=False, plugins=[recorder]),
        env={},
        base_dir=tmp_path,
    )
    assert len(pipeline.preview("email", 5)) == 3
    assert pipeline.run().channels["email"].sent == 3  # read again, whole


# -- red team: what a newcomer still tripped over -----------------------------------------------


def test_quiet_still_says_why_a_channel_stopped(tmp_path: Path) -> None:
    """-q hides the summary, never the reason a run failed: a rejected token is said on
    stderr, before the Status line."""
    (tmp_path / "customers.csv").write_text(
        "customer_id,first_name,email\nC1,Ada,ada@example.com\nC2,Bo,bo@example.com\n",
        encoding="utf-8",
    )
    with Sandbox(["sendgrid"], server_options={"sendgrid": {"token": "the-right-one"}}) as box:
        base_url = box.channel_options("sendgrid")["base_url"]
        config = tmp_path / "campaign.toml"
        config.write_text(
            LATE.replace('name = "late"', 'name = "creds"').replace(
                'from_email = "offers@example.com"',
                f'from_email = "offers@example.com"\nbase_url = "{base_url}"',
            ),
            encoding="utf-8",
        )
        result = CliRunner().invoke(
            main, ["-q", "run", str(config)], env={"EMAIL_API_TOKEN": "a-wrong-one"}
        )
    assert result.exit_code == 3, result.output
    assert result.stdout == "Status: failed (exit 3)\n"
    assert "Channel email stopped: credentials rejected (401)" in result.stderr
    assert "a-wrong-one" not in result.output


def test_quiet_resume_promises_no_report_it_does_not_print(ran: Path) -> None:
    result = invoke("resume", str(ran), "latest", "--sandbox", "-q")
    assert result.exit_code == 1, result.output
    assert "Finished:  nothing was sent now." in result.stdout
    assert "report follows" not in result.stdout
    assert result.stdout.splitlines()[-1] == "Status: partial (exit 1)"


def test_runs_points_to_the_rehearsals_when_only_they_ran(ran: Path) -> None:
    result = invoke("runs", str(ran))
    assert result.exit_code == 0
    assert "No runs of multi_channel_marketing_campaign" in result.stdout
    assert "ledger.sandbox.db: add --sandbox" in result.stdout


@pytest.mark.parametrize("columns", [80, 60, 40])
def test_channels_are_never_cut_on_a_narrow_terminal(columns: int) -> None:
    for output in (
        invoke("channels", columns=columns).stdout,
        on_a_terminal("channels", columns=columns),
    ):
        assert "…" not in output, output
        assert "onesignal (built-in)" in output or "onesignal  built-in" in output
        onesignal = output[output.index("onesignal") :]
        assert "2000" in onesignal.split("sendgrid")[0]  # OneSignal's batch, whole
        assert "required" in onesignal.split("sendgrid")[0]  # its token column, whole
        assert "csv" in output and "jsonl" in output


def test_suppressions_keep_run_ids_and_addresses_whole_when_narrow(tmp_path: Path) -> None:
    config = campaign(tmp_path)
    with (tmp_path / "customers.csv").open("a", encoding="utf-8") as f:
        f.write("C5,Eve,eve@example.com,+15005550004\n")  # Twilio's 21610: suppressed
    result = invoke("run", str(config), "--sandbox", "--run-id", RUN_ID, "--retry-delay", "0")
    assert result.exit_code == 1, result.output
    for columns in (60, 40):
        listed = on_a_terminal("suppressions", str(config), "--sandbox", columns=columns)
        assert_whole(listed, RUN_ID)
        assert any("+15005550004" in line for line in listed.splitlines()), listed
    wide = invoke("suppressions", str(config), "--sandbox", columns=200).stdout
    assert f"+15005550004   21610    twilio run {RUN_ID}" in wide  # still a table when it fits


def test_static_source_refuses_what_is_not_a_record_up_front(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match=r"record 1 is a dict.*StaticSource.from_dicts"):
        StaticSource([{"id": "C1", "email": "ada@example.com"}])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="wrap a single row in a list"):
        StaticSource.from_dicts({"id": "C1"})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="rows is a str"):
        StaticSource.from_dicts("C1,ada@example.com")  # type: ignore[arg-type]
    nothing = StaticSource.from_dicts(lambda: None)  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match="the rows function returned a NoneType"):
        list(nothing.records())
    # A function's records are checked as they stream: a clear TypeError, not an
    # AssertionError from the middle of the extraction.
    lazy = StaticSource(lambda: [{"id": "C1", "email": "ada@example.com"}])  # type: ignore[list-item]
    channel = Channel(
        name="email", provider="recording", template=Template(body="Hi"), require_consent=False
    )
    pipeline = Pipeline(
        "t",
        lazy,
        [channel],
        plugins=get_plugin_manager(load_entrypoints=False, plugins=[recording_plugin()]),
        env={},
        base_dir=tmp_path,
    )
    with pytest.raises(TypeError, match="record 1 is a dict"):
        pipeline.run()


def test_a_source_giving_something_else_than_records_is_a_source_error(tmp_path: Path) -> None:
    class Sloppy:
        def fields(self) -> frozenset[str]:
            return frozenset({"id", "email", "phone", "push_token"})

        def records(self, required: Any = ()) -> Iterator[Any]:
            yield {"id": "C1", "email": "ada@example.com"}

        def describe(self) -> str:
            return "sloppy plugin"

    channel = Channel(
        name="email", provider="recording", template=Template(body="Hi"), require_consent=False
    )
    pipeline = Pipeline(
        "t",
        Sloppy(),  # type: ignore[arg-type]
        [channel],
        plugins=get_plugin_manager(load_entrypoints=False, plugins=[recording_plugin()]),
        env={},
        base_dir=tmp_path,
    )
    with pytest.raises(campaignkit.SourceError, match="sloppy plugin: the source gave a dict"):
        pipeline.run()


def test_a_source_that_raises_midway_is_a_source_error_and_sends_nothing(
    tmp_path: Path,
) -> None:
    """A bug in the function behind a StaticSource (or in a plugin source) is said as a
    SourceError naming the source, with the bug as its cause; nothing is sent."""

    def rows() -> Iterator[dict[str, Any]]:
        yield {"id": "C1", "email": "ada@example.com"}
        raise RuntimeError("database went away")

    recorder = recording_plugin()
    channel = Channel(
        name="email", provider="recording", template=Template(body="Hi"), require_consent=False
    )
    pipeline = Pipeline(
        "t",
        StaticSource.from_dicts(rows),
        [channel],
        plugins=get_plugin_manager(load_entrypoints=False, plugins=[recorder]),
        env={},
        base_dir=tmp_path,
    )
    with pytest.raises(campaignkit.SourceError, match="RuntimeError: database went away") as info:
        pipeline.run()
    assert isinstance(info.value.__cause__, RuntimeError)
    assert recorder.outbox.messages == []


def test_docs_say_unknown_deliveries_are_not_in_error_codes() -> None:
    docs = Path(__file__).resolve().parents[1] / "docs"
    configuration = " ".join((docs / "configuration.md").read_text(encoding="utf-8").split())
    assert "reasons of `unknown` deliveries: `in_flight_at_crash`, `in_doubt`" in configuration
    assert "of **failed** messages are in `error_codes`" in configuration
    ledger = " ".join((docs / "ledger.md").read_text(encoding="utf-8").split())
    assert "with the error code of the failure)" not in ledger
    cli = (docs / "cli.md").read_text(encoding="utf-8")
    assert "`in_flight_at_crash`, `in_doubt` (see" in cli


def test_the_sandbox_demo_is_not_said_to_take_15_seconds() -> None:
    """A rehearsal sends at the sandbox's pace (docs/sandbox.md), so the getting-started
    page and the example's README do not promise Twilio's 10 messages a second."""
    root = Path(__file__).resolve().parents[1]
    for page in ("docs/getting-started.md", "examples/multi_channel_campaign/README.md"):
        text = " ".join((root / page).read_text(encoding="utf-8").split())
        assert "It takes about 15 seconds" not in text, page
        assert "It takes a second or so" in text, page
