"""A run as explicit steps: each step in a process of its own, given only the campaign
file and references (run id, channel, slice), gives the same ledger and report as
``Pipeline.run()`` in one process; slices of a channel share nothing and cover
everything; a step refuses what would break the run.

The providers are the loopback sandbox's fakes; the campaign has recipients the
providers refuse (permanent failures), recipients without an address or consent
(skipped), and a repeated customer id (rejected at extraction).
"""

from __future__ import annotations

import collections
import json
import os
import random
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignkit import ConfigError, Pipeline, Slice, get_plugin_manager
from campaignkit._ledger import LedgerError, PlanRules
from campaignkit._models import DeliveryResult, DeliveryStatus, Recipient
from campaignkit._suppression import SuppressionList
from campaignkit.testing.sandbox import Sandbox
from conftest import Backend

WORKER = Path(__file__).with_name("step_worker.py")
LOGICAL_DATE = "2026-05-01T00:00:00+00:00"
CHANNELS = {"email": "sendgrid", "sms": "twilio", "push": "expo"}
N = 120


def segment_rows(n: int, seed: int, sandbox: Sandbox) -> list[str]:
    """``n`` customers; the sandbox's providers refuse some of their addresses."""
    rng = random.Random(seed)
    lines = ["customer_id,email,phone,push_token,first_name,ok_email,ok_sms,ok_push"]
    for i in range(n):
        email = "" if rng.random() < 0.05 else f"user{i}@example.com"
        phone = f"+1415{2000000 + i:07d}"
        if rng.random() < 0.05:
            phone = f"+1555010{i:04d}"  # not a real number: skipped as invalid_address
        elif rng.random() < 0.05:
            sandbox.servers["twilio"].unsubscribed.add(phone)  # refused: 21610
        token = "" if rng.random() < 0.05 else f"ExponentPushToken[steps{i:05d}]"
        if token and rng.random() < 0.05:
            sandbox.servers["expo"].unregistered.add(token)  # refused: DeviceNotRegistered
        consent = ",".join("no" if rng.random() < 0.05 else "yes" for _ in range(3))
        lines.append(f"c{i:04d},{email},{phone},{token},N{i},{consent}")
    lines.append("c0001,again@example.com,,,Again,yes,yes,yes")  # rejected: duplicate_id
    return lines


def write_campaign(directory: Path, sandbox: Sandbox, *, seed: int = 7) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    rows = segment_rows(N, seed, sandbox)
    (directory / "segment.csv").write_text("\n".join(rows) + "\n")
    text = """
[pipeline]
name = "steps"

[source]
type = "csv"
path = "segment.csv"

[source.columns]
id = "customer_id"

[source.consent]
email = "ok_email"
sms = "ok_sms"
push = "ok_push"

[execution]
state_path = "state/ledger.db"
output_dir = "results"

[execution.retry]
retries = 1
delay_minutes = 0
"""
    templates = {
        "email": 'subject = "Hi {{ first_name }}"\nbody = "Spring deals, {{ first_name }}"',
        "sms": 'body = "Hi {{ first_name }}, 20% off"',
        "push": 'title = "Spring"\nbody = "Hi {{ first_name }}"',
    }
    for channel, provider in CHANNELS.items():
        options = "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in sandbox.channel_options(provider).items()
        )
        text += f"""
[channels.{channel}]
provider = "{provider}"
batch_size = {20 if channel != "sms" else 1}
concurrency = 2
rate = {{}}

[channels.{channel}.template]
{templates[channel]}

[channels.{channel}.options]
{options}"""
    path = directory / "campaign.toml"
    path.write_text(text)
    return path


def step(config: Path, box: Sandbox, *args: str) -> dict[str, Any]:
    """Run one step in a fresh process (the tokens in its environment); its result."""
    env = {**os.environ, **box.env()}
    done = subprocess.run(
        [sys.executable, str(WORKER), str(config), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def deliveries(db: Path) -> dict[tuple[str, str], tuple[Any, ...]]:
    """Each delivery as the ledger has it, without what differs run to run (provider
    ids, times)."""
    with sqlite3.connect(db) as conn:
        rows = conn.execute(
            "SELECT c.channel, r.recipient_id, d.state, d.reason, d.attempts, d.error_code, "
            "d.transient, d.address FROM deliveries d "
            "JOIN channels c ON c.run = d.run AND c.code = d.channel "
            "JOIN recipients r ON r.run = d.run AND r.seq = d.seq"
        ).fetchall()
    return {(row[0], row[1]): tuple(row[2:]) for row in rows}


def comparable(report: dict[str, Any]) -> dict[str, Any]:
    """A report without its times, paths and session counters."""
    out = {k: v for k, v in report.items() if k not in {"started_at", "finished_at", "output_dir"}}
    channels = {}
    for name, result in report.items():
        if isinstance(result, dict) and "sent" in result:
            channels[name] = {
                k: v
                for k, v in result.items()
                if k not in {"started_at", "finished_at", "duration_seconds", "requests"}
            }
            out.pop(name)
    out["channels"] = channels
    return out


def received(sandbox: Sandbox) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(
        (provider, str(m["to"]))
        for provider in CHANNELS.values()
        for m in sandbox.servers[provider].messages
    )


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(providers=list(CHANNELS.values())) as box:
        yield box


def pipeline_of(config: Path, box: Sandbox) -> Pipeline:
    """The campaign in this process, with its state where the step processes keep it."""
    plugins = get_plugin_manager(load_entrypoints=False)
    return Pipeline.from_file(config, plugins=plugins, env=box.env(), rehearsal=False)


def run_in_process(directory: Path) -> tuple[dict[str, Any], Path, collections.Counter[Any]]:
    """``Pipeline.run()`` of the campaign against a sandbox of its own."""
    with Sandbox(providers=list(CHANNELS.values())) as box:
        config = write_campaign(directory, box)
        report = pipeline_of(config, box).run(logical_date=datetime.fromisoformat(LOGICAL_DATE))
        return report.to_dict(), directory / "state" / "ledger.db", received(box)


def test_each_step_in_its_own_process_gives_the_run_s_ledger_and_report(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    whole, whole_db, by_run = run_in_process(tmp_path / "whole")

    config = write_campaign(tmp_path / "steps", sandbox)
    opened = step(config, sandbox, "open", LOGICAL_DATE)
    run_id = opened["run_id"]
    assert not opened["resumed"]
    for channel in CHANNELS:
        planned = step(config, sandbox, "plan", run_id, channel)
        assert planned["eligible"] == planned["states"].get("pending", 0)
    for channel in CHANNELS:
        step(config, sandbox, "send", run_id, channel)
    finished = step(config, sandbox, "finish", run_id)

    assert deliveries(config.parent / "state" / "ledger.db") == deliveries(whole_db)
    assert comparable(finished["report"]) == comparable(whole)
    assert finished["status"] == whole["status"] == "partial"  # the refused addresses
    assert received(sandbox) == by_run
    written = json.loads((config.parent / "results" / run_id / "report.json").read_text())
    assert written == finished["report"]


def test_slices_in_separate_processes_send_every_owed_message_once(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    whole, whole_db, by_run = run_in_process(tmp_path / "whole")

    config = write_campaign(tmp_path / "sliced", sandbox)
    run_id = step(config, sandbox, "open", LOGICAL_DATE)["run_id"]
    for channel in CHANNELS:
        step(config, sandbox, "plan", run_id, channel)
    for channel in CHANNELS:
        for part in ("2/3", "1/3", "3/3"):
            step(config, sandbox, "send", run_id, channel, part)
        # Sending a slice again sends only what it still owes: nothing.
        again = step(config, sandbox, "send", run_id, channel, "1/3")
        assert again["pending"] == 0
    finished = step(config, sandbox, "finish", run_id)

    assert received(sandbox) == by_run
    assert max(received(sandbox).values()) == 1
    sliced = deliveries(config.parent / "state" / "ledger.db")
    # Batches differ with slicing, so retries may too: compare the outcome of each.
    by_whole = deliveries(whole_db)
    assert {k: v[:2] for k, v in sliced.items()} == {k: v[:2] for k, v in by_whole.items()}
    assert finished["status"] == whole["status"]


def test_steps_refuse_what_would_break_the_run(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_campaign(tmp_path, sandbox)
    pipeline = pipeline_of(config, sandbox)
    opened = pipeline.open_run(logical_date=datetime.fromisoformat(LOGICAL_DATE))
    with pytest.raises(LedgerError, match="not planned"):
        pipeline.send_slice(opened.run_id, "sms")
    with pytest.raises(ConfigError, match="no enabled channel 'fax'"):
        pipeline.plan_channel(opened.run_id, "fax")
    with pytest.raises(LedgerError, match="no run"):
        pipeline.plan_channel("nope", "sms")
    for channel in CHANNELS:
        pipeline.plan_channel(opened.run_id, channel)
        pipeline.send_slice(opened.run_id, channel)
    assert sum(received(sandbox).values()) > 0
    report = pipeline.finish_run(opened.run_id)
    assert report.status in ("succeeded", "partial") and set(report.channels) == set(CHANNELS)
    sent = sum(received(sandbox).values())
    with pytest.raises(LedgerError, match="finished"):
        pipeline.send_slice(opened.run_id, "sms")
    with pytest.raises(LedgerError, match="finished"):
        pipeline.finish_run(opened.run_id)
    # The logical date ran: opening it again replays the report and sends nothing.
    again = pipeline.open_run(logical_date=datetime.fromisoformat(LOGICAL_DATE))
    assert again.replay is not None and again.replay.replayed and again.run_id == opened.run_id
    assert sum(received(sandbox).values()) == sent


def test_without_the_ledger_the_steps_say_why(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_campaign(tmp_path, sandbox)
    config.write_text(config.read_text().replace("[execution]\n", "[execution]\nledger = false\n"))
    pipeline = pipeline_of(config, sandbox)
    with pytest.raises(ConfigError, match="needs the ledger") as caught:
        pipeline.open_run()
    assert caught.value.path == "execution.ledger"


@pytest.mark.parametrize(
    ("text", "index", "count"), [("1/1", 0, 1), ("2/4", 1, 4), ("4/4", 3, 4), (" 3 / 7 ", 2, 7)]
)
def test_slice_parse(text: str, index: int, count: int) -> None:
    assert Slice.parse(text) == Slice(index=index, count=count)
    assert str(Slice(index=index, count=count)) == f"{index + 1}/{count}"


@pytest.mark.parametrize("text", ["0/4", "5/4", "a/b", "2", "", "1/0", "-1/3", "1/-3", "1/2/3"])
def test_slice_parse_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="N/M"):
        Slice.parse(text)


@pytest.mark.parametrize(("index", "count"), [(0, 0), (1, 1), (-1, 2), (True, 2), (0, 1.5)])
def test_slice_refuses_a_share_that_does_not_exist(index: Any, count: Any) -> None:
    with pytest.raises(ValueError, match="slice"):
        Slice(index=index, count=count)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 60),
    count=st.integers(1, 5),
    batches=st.lists(st.integers(1, 6), max_size=12),
)
def test_slices_partition_pending_deliveries_and_keep_batches_whole(
    backend: Backend, n: int, count: int, batches: list[int]
) -> None:
    ledger = backend.fresh().open()
    try:
        ledger.begin_run(
            run_id="r",
            pipeline="p",
            logical_date=datetime(2026, 1, 1, tzinfo=UTC),
            fingerprint="",
            config_file=None,
            max_active_runs=None,
        )
        recipients = [Recipient(id=f"c{i}", email=f"u{i}@example.com") for i in range(n)]
        ledger.write_snapshot("r", iter(recipients), rows_per_customer="one")
        rows = ((seq, None, f"u{seq}@example.com", False, None) for seq in range(n))
        ledger.plan("r", "e", rows, PlanRules(kind="email"))
        # Some deliveries were sent in batches that failed transiently: pending again,
        # each remembering its batch (to be re-sent together).
        seq, members = 0, {}
        for size in batches:
            batch = list(range(seq, min(seq + size, n)))
            if not batch:
                break
            ledger.mark_in_flight("r", "e", batch)
            failed = DeliveryResult("e", "x", DeliveryStatus.PENDING, None)
            ledger.record("r", "e", [(s, failed, "pending", False) for s in batch])
            members.update(dict.fromkeys(batch, batch[0]))
            seq += size + 1
        ledger.flush()
        whole = [d.seq for d in ledger.pending("r", "e")]
        parts = [list(ledger.pending("r", "e", Slice(index=i, count=count))) for i in range(count)]
        seqs = [d.seq for part in parts for d in part]
        assert sorted(seqs) == whole and len(seqs) == len(set(seqs))
        for i, part in enumerate(parts):
            for d in part:
                assert d.batch == members.get(d.seq)
                assert (d.batch if d.batch is not None else d.seq) % count == i
    finally:
        ledger.close()


def test_a_run_reads_each_suppression_list_once(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks before a run build each channel's audience (its suppression lists
    included); the run sends with what they built, never reading a list twice."""
    config = write_campaign(tmp_path, sandbox)
    rows = [line.split(",") for line in (tmp_path / "segment.csv").read_text().splitlines()[1:]]
    stopped = next(r[1] for r in rows if r[1] and r[5] == "yes")
    (tmp_path / "stop.txt").write_text(f"# unsubscribed\n{stopped.upper()}\n")
    text = config.read_text().replace(
        '[channels.email]\nprovider = "sendgrid"\n',
        '[channels.email]\nprovider = "sendgrid"\nsuppression_files = ["stop.txt"]\n',
    )
    config.write_text(text)
    reads: list[object] = []
    original = SuppressionList.from_files.__func__  # type: ignore[attr-defined]

    def counting(cls: type[SuppressionList], *args: Any, **kwargs: Any) -> SuppressionList:
        reads.append(args)
        return original(cls, *args, **kwargs)  # type: ignore[no-any-return]

    monkeypatch.setattr(SuppressionList, "from_files", classmethod(counting))
    report = pipeline_of(config, sandbox).run(logical_date=datetime.fromisoformat(LOGICAL_DATE))
    assert len([r for r in reads if "stop.txt" in repr(r)]) == 1
    assert report.channels["email"].reasons["suppressed"] == 1
    assert stopped not in {str(m["to"]) for m in sandbox.servers["sendgrid"].messages}


def test_the_cli_takes_up_a_run_opened_by_a_step(tmp_path: Path, sandbox: Sandbox) -> None:
    """A run opened (and planned) by steps, then ``campaignkit run`` for its logical
    date: the run is taken up, said so, and sends what it owes once."""
    config = write_campaign(tmp_path, sandbox)
    run_id = step(config, sandbox, "open", LOGICAL_DATE)["run_id"]
    step(config, sandbox, "plan", run_id, "sms")
    step(config, sandbox, "send", run_id, "sms", "1/2")
    env = {**os.environ, **sandbox.env(), "COLUMNS": "200"}
    done = subprocess.run(
        [sys.executable, "-m", "campaignkit", "run", str(config), "--logical-date", LOGICAL_DATE],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 1, done.stderr  # partial: the refused addresses
    said = done.stdout + done.stderr
    assert f"had an unfinished run {run_id} (running); only what it still owed was sent" in said
    assert max(received(sandbox).values()) == 1
    again = subprocess.run(
        [sys.executable, "-m", "campaignkit", "run", str(config), "--logical-date", LOGICAL_DATE],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert "Already ran: nothing was sent now" in again.stdout + again.stderr


@pytest.mark.parametrize(
    ("setting", "env", "expected"),
    [
        (True, {}, "state/ledger.db"),
        (True, {"CAMPAIGNKIT_LEDGER_URL": "other.db"}, "other.db"),
        (True, {"CAMPAIGNKIT_LEDGER_URL": "postgresql://u:pw@db/x"}, "postgresql://u:pw@db/x"),
        ("sqlite:///rel/l.db", {}, "rel/l.db"),
        ("sqlite:////abs/l.db", {}, "/abs/l.db"),
        ("postgresql://u@db/x", {"CAMPAIGNKIT_LEDGER_URL": "ignored.db"}, "postgresql://u@db/x"),
        ("ledgers/x.db", {}, "ledgers/x.db"),
        (False, {"CAMPAIGNKIT_LEDGER_URL": "postgresql://u@db/x"}, "state/ledger.db"),
    ],
)
def test_where_the_ledger_is(
    tmp_path: Path, sandbox: Sandbox, setting: bool | str, env: dict[str, str], expected: str
) -> None:
    config = write_campaign(tmp_path, sandbox)
    value = json.dumps(setting) if isinstance(setting, str) else str(setting).lower()
    config.write_text(
        config.read_text().replace("[execution]\n", f"[execution]\nledger = {value}\n")
    )
    plugins = get_plugin_manager(load_entrypoints=False)
    pipeline = Pipeline.from_file(config, plugins=plugins, env=env, rehearsal=False)
    location = pipeline.ledger_location
    if "://" in expected:
        assert location == expected
        if ":pw@" in expected:  # the password never shows in messages
            assert pipeline.ledger_shown == "postgresql://u:***@db/x"
    else:
        assert location == (Path(expected) if Path(expected).is_absolute() else tmp_path / expected)
    # A rehearsal never uses the campaign's real ledger, whatever it is.
    rehearsal = Pipeline.from_file(config, plugins=plugins, env=env, rehearsal=True)
    assert rehearsal.ledger_location == tmp_path / "state" / "ledger.sandbox.db"


@pytest.mark.parametrize("value", ['"ftp://u:secret@h/x"', '""', "3"])
def test_a_ledger_setting_that_is_not_one_says_so_without_the_password(
    tmp_path: Path, sandbox: Sandbox, value: str
) -> None:
    config = write_campaign(tmp_path, sandbox)
    config.write_text(
        config.read_text().replace("[execution]\n", f"[execution]\nledger = {value}\n")
    )
    with pytest.raises(ConfigError, match=r"execution\.ledger") as caught:
        Pipeline.from_file(config, plugins=get_plugin_manager(load_entrypoints=False))
    assert "secret" not in str(caught.value)


def test_steps_in_separate_processes_on_a_postgresql_ledger(
    tmp_path: Path, sandbox: Sandbox, postgres_url: str
) -> None:
    """The steps, each in a process of its own, sharing a PostgreSQL ledger
    (``CAMPAIGNKIT_LEDGER_URL``): the same outcomes and report as ``Pipeline.run()``
    with the embedded ledger, and every owed message sent once."""
    whole, _, by_run = run_in_process(tmp_path / "whole")
    whole_results = _outcomes(tmp_path / "whole", {})

    config = write_campaign(tmp_path / "pg", sandbox)
    env = {"CAMPAIGNKIT_LEDGER_URL": postgres_url}
    os.environ.update(env)
    try:
        run_id = step(config, sandbox, "open", LOGICAL_DATE)["run_id"]
        for channel in CHANNELS:
            step(config, sandbox, "plan", run_id, channel)
        for channel in CHANNELS:
            for part in ("1/2", "2/2"):
                step(config, sandbox, "send", run_id, channel, part)
        finished = step(config, sandbox, "finish", run_id)
    finally:
        for name in env:
            os.environ.pop(name, None)
    assert comparable(finished["report"]) == comparable(whole)
    assert received(sandbox) == by_run and max(by_run.values()) == 1
    assert _outcomes(tmp_path / "pg", {**env, **sandbox.env()}) == whole_results
    assert not (tmp_path / "pg" / "state").exists()  # nothing went to a SQLite file


def _outcomes(directory: Path, env: dict[str, str]) -> list[tuple[Any, ...]]:
    plugins = get_plugin_manager(load_entrypoints=False)
    pipeline = Pipeline.from_file(
        directory / "campaign.toml", plugins=plugins, env=env, rehearsal=False
    )
    [run] = pipeline.runs()
    return sorted(
        (r.channel, r.recipient_id, str(r.status), r.reason, r.attempts, r.error_code)
        for r in pipeline.results(run.run_id)
    )
