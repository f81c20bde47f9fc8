"""Hostile orchestrators against the shared steps (campaignkit.integrations.tasks): what
an orchestrator may do (change the shards between attempts of one logical date, kill a
task mid-shard, run tasks at once, hand in hostile references or secrets) must still
send each owed message once and skip no one, and leak no token."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from campaignkit import load_config
from campaignkit.exceptions import ConfigError, ShardIncomplete
from campaignkit.integrations import tasks
from campaignkit.integrations.tasks import LedgerError
from campaignkit.testing.sandbox import Sandbox, shared_sandbox
from conftest import example_on_postgres

EXAMPLE = Path(__file__).parent.parent / "examples" / "multi_channel_campaign"
SRC = Path(__file__).parent.parent / "src"
DATE = datetime(2024, 1, 2, tzinfo=UTC)
#: what the example campaign accepts per provider (its README's demo figures)
ACCEPTED = {"sendgrid": 66, "twilio": 145, "expo": 151}


@pytest.fixture
def campaign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The example campaign in a folder of its own (2 shards per channel), the sandbox
    switch on, the shared sandbox's messages and faults reset."""
    folder = tmp_path / "campaign"
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".campaignkit", "*-results"))
    config = folder / "campaign.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[execution]\n", "[execution]\nshards = 2\n", 1), "utf-8")
    monkeypatch.setenv("CAMPAIGNKIT_SANDBOX", "1")
    _reset(shared_sandbox())
    yield config
    _reset(shared_sandbox())


def _reset(sandbox: Sandbox) -> None:
    for server in sandbox.live_servers().values():
        server.messages.clear()
        server.faults.script.clear()


def _delivered(sandbox: Sandbox) -> dict[str, Counter[str]]:
    """Provider -> how many messages each recipient got."""
    return {
        provider: Counter(str(m["to"]) for m in server.messages)
        for provider, server in sandbox.live_servers().items()
    }


def _assert_each_once(sandbox: Sandbox) -> None:
    delivered = _delivered(sandbox)
    assert {p: sum(c.values()) for p, c in delivered.items()} == ACCEPTED
    assert all(n == 1 for c in delivered.values() for n in c.values())


def _with_shards(config: Path, shards: int) -> None:
    text = config.read_text(encoding="utf-8")
    before = text[text.index("[execution]\nshards = ") :].split("\n", 2)[1]
    config.write_text(text.replace(before, f"shards = {shards}", 1), encoding="utf-8")


@pytest.fixture
def pg_campaign(
    campaign: Path,
    own_database: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> tuple[str, Path]:
    """The example campaign on PostgreSQL with 2 workers and 4 shards per channel, under
    a name of the test's own, as an import reference to a pipeline pointed at the
    shared sandbox (not a rehearsal); and its file, to edit."""
    name = "pgh_" + request.node.name.removeprefix("test_")[:40]
    reference = example_on_postgres(campaign, name, own_database, tmp_path, monkeypatch)
    return reference, campaign


def _send_opened(campaign: str, opened: dict[str, object], *, attempts: int = 3) -> None:
    """Every shard open_run reported, each retried, as Prefect maps them (the count is
    the number of shards reported)."""
    shards_of = opened["shards"]
    assert isinstance(shards_of, dict)
    for channel, shards in shards_of.items():
        for shard in shards:
            for _ in range(attempts):
                try:
                    tasks.send_shard(campaign, str(opened["run_id"]), channel, shard, len(shards))
                    break
                except ShardIncomplete:
                    continue


# -- the shards of a run are the ledger's, not the configuration's of the moment --------


def test_postgres_a_run_resumed_after_its_shards_changed_reports_the_runs_shards(
    pg_campaign: tuple[str, Path],
) -> None:
    """A first attempt of the logical date split the run into 6 shards; the campaign's
    file then says 4 (edited, or the CLI split it by its own rule) and the date is run
    again: the run keeps its 6 shards, so open_run must report 6, or shards 4 and 5 are
    never sent."""
    reference, config = pg_campaign
    _with_shards(config, 6)
    first = tasks.open_run(reference, DATE)
    assert first["shards"]["sms"] == list(range(6))
    _with_shards(config, 4)  # the first attempt died before sending; the file is edited
    again = tasks.open_run(reference, DATE)
    assert again["status"] == "resumed"
    assert again["shards"]["sms"] == list(range(6))
    _send_opened(reference, again)
    _assert_each_once(shared_sandbox())
    finished = tasks.finish_run(reference, str(again["run_id"]))
    assert finished["finished"] is True  # partial: the example's bad rows, none owed


# -- the sandbox switch and hostile references ------------------------------------------


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, body: str) -> None:
    (tmp_path / f"{name}.py").write_text(body, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_the_switch_on_never_lets_a_pipeline_built_in_python_send_for_real(
    campaign: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``CAMPAIGNKIT_SANDBOX=1`` promises that nothing reaches a real provider; a
    campaign named as a Pipeline built in Python (the switch cannot re-point it) must
    be refused, not run against its real providers and real ledger."""
    _module(
        tmp_path,
        monkeypatch,
        "ck_red_direct",
        "from campaignkit import Pipeline, load_config\n"
        "def campaign():\n"
        f"    c = load_config({str(campaign)!r})\n"
        "    return Pipeline(c.name, c.source, c.channels, execution=c.execution,\n"
        "                    schedule=c.schedule, base_dir=c.base_dir,\n"
        "                    env={'EMAIL_API_TOKEN': 'x', 'SMS_API_TOKEN': 'y'})\n",
    )
    with pytest.raises(ConfigError, match="CAMPAIGNKIT_SANDBOX"):
        tasks.open_run("ck_red_direct:campaign", DATE)
    assert not (campaign.parent / ".campaignkit" / "ledger.db").exists()
    # A pipeline the switch made (from a configuration) is a rehearsal: it runs.
    _module(
        tmp_path,
        monkeypatch,
        "ck_red_configured",
        f"from campaignkit import Pipeline\ncampaign = Pipeline.from_file({str(campaign)!r})\n",
    )
    assert tasks.load("ck_red_configured:campaign").rehearsal


# -- a send task killed mid-shard, then its retry -------------------------------------------

SEND_TASK = Path(__file__).parent / "orchestrator_send.py"


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with Sandbox(["sendgrid", "twilio", "expo"]) as sandbox:
        yield sandbox


def _campaign_at(
    box: Sandbox, config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> str:
    """An import reference to the campaign pointed at ``box`` (a sandbox of the test's,
    which a task process reaches over loopback), recording into its real ledger (SQLite
    beside the file), with the switch off; importable by task processes too."""
    _module(
        tmp_path,
        monkeypatch,
        name,
        "import attrs\n"
        "from campaignkit import Pipeline, Rate, load_config\n"
        f"OPTIONS = { ({p: box.channel_options(p) for p in ('sendgrid', 'twilio', 'expo')})!r}\n"
        "def campaign():\n"
        f"    config = load_config({str(config)!r})\n"
        "    channels = tuple(attrs.evolve(c, rate=Rate(), options={**c.options,\n"
        "        **OPTIONS[c.provider]}) for c in config.channels)\n"
        "    config = attrs.evolve(config, channels=channels)\n"
        "    return Pipeline.from_config(config, rehearsal=False)\n",
    )
    for key, value in box.env(load_config(config)).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(tmp_path), str(SRC)]))
    return f"{name}:campaign"


def test_a_send_task_killed_mid_shard_then_retried_sends_each_message_at_most_once(
    box: Sandbox, campaign: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CAMPAIGNKIT_SANDBOX")
    reference = _campaign_at(box, campaign, tmp_path, monkeypatch, "ck_red_killed")
    opened = tasks.open_run(reference, DATE)
    run_id = str(opened["run_id"])
    twilio = box.servers["twilio"]
    twilio.faults.latency = 0.03  # the kill lands while requests are in flight
    task = subprocess.Popen(
        [sys.executable, str(SEND_TASK), reference, run_id, "sms", "0", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 15
    while len(twilio.messages) < 20 and time.monotonic() < deadline and task.poll() is None:
        time.sleep(0.01)
    task.kill()  # SIGKILL: no handler runs, the claim and in-flight rows stay
    _, err = task.communicate()
    assert 20 <= len(twilio.messages) < ACCEPTED["twilio"], err.decode()[-2000:]
    twilio.faults.latency = 0.0
    # The orchestrator's retry, in another process (the task's own is dead).
    tasks.send_shard(reference, run_id, "sms", 0, 1, wait=10)
    delivered = Counter(str(m["to"]) for m in twilio.messages)
    results = tasks.channel_results(reference, run_id, "sms")
    assert all(n == 1 for n in delivered.values()), results
    states = results["states"]
    assert "pending" not in states and "in_flight" not in states, results
    # In flight at the kill: unknown (Twilio has no idempotency key), never re-sent.
    assert states.get("unknown", 0) == results["reasons"].get("in_flight_at_crash", 0)
    assert states["sent"] <= len(delivered) <= states["sent"] + states.get("unknown", 0)
    for channel in ("email", "push"):
        tasks.send_shard(reference, run_id, channel, 0, 1)
    assert tasks.finish_run(reference, run_id)["finished"] is True


def test_postgres_a_zombie_send_task_is_fenced_by_its_retry(
    box: Sandbox,
    campaign: Path,
    own_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A send task stalls mid-shard (SIGSTOP: a GC pause, a frozen VM) past its lease;
    the orchestrator retries it; the retry takes the shard over; then the zombie wakes
    up. Nothing may be sent twice beyond what was in flight at the stall, and the
    zombie's late outcomes must not overwrite the retry's."""
    monkeypatch.delenv("CAMPAIGNKIT_SANDBOX")
    text = campaign.read_text(encoding="utf-8").replace(
        "[execution]\nshards = 2\n",
        f'[execution]\nshards = 1\nworkers = 2\nlease_seconds = 1\nledger = "{own_database}"\n',
        1,
    )
    campaign.write_text(text, encoding="utf-8")
    reference = _campaign_at(box, campaign, tmp_path, monkeypatch, "ck_red_zombie")
    opened = tasks.open_run(reference, DATE)
    run_id = str(opened["run_id"])
    twilio = box.servers["twilio"]
    twilio.faults.latency = 0.03
    zombie = subprocess.Popen(
        [sys.executable, str(SEND_TASK), reference, run_id, "sms", "0", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 15
        while len(twilio.messages) < 20 and time.monotonic() < deadline and zombie.poll() is None:
            time.sleep(0.01)
        zombie.send_signal(signal.SIGSTOP)
        stalled = len(twilio.messages)
        assert 20 <= stalled < ACCEPTED["twilio"], "the stall missed the send"
        twilio.faults.latency = 0.0
        tasks.send_shard(reference, run_id, "sms", 0, 1, wait=15)  # waits out the lease
    finally:
        zombie.send_signal(signal.SIGCONT)
        _, err = zombie.communicate(timeout=30)
    delivered = Counter(str(m["to"]) for m in twilio.messages)
    results = tasks.channel_results(reference, run_id, "sms")
    twice = {to for to, n in delivered.items() if n > 1}
    assert all(n <= 2 for n in delivered.values()), results
    # Only what was in flight at the stall may have gone twice (the retry found it in
    # flight: unknown, never re-sent without an idempotency key) -- nothing else.
    assert not twice, (twice, results, err.decode()[-1500:])
    states = results["states"]
    assert "pending" not in states and "in_flight" not in states, results
    assert states["sent"] <= len(delivered) <= states["sent"] + states.get("unknown", 0), results


# -- secrets ---------------------------------------------------------------------------------


def test_no_token_in_any_return_value_exception_or_log(
    box: Sandbox,
    campaign: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Known tokens; servers that echo the request's credentials in their error replies
    (as some proxies do); a transient error (the retry's ShardIncomplete) and a rejected
    token: no task's return value (XCom, metadata), exception or log shows a token."""
    monkeypatch.delenv("CAMPAIGNKIT_SANDBOX")
    secrets_ = {}
    for provider in ("sendgrid", "twilio", "expo"):
        server = box.servers[provider]
        server.token = secrets_[provider] = f"SeCrEt{provider}{secrets.token_hex(8)}"
        server.faults.echo_credentials = True
    reference = _campaign_at(box, campaign, tmp_path, monkeypatch, "ck_red_tokens")
    monkeypatch.setenv("EMAIL_API_TOKEN", "SeCrEtwrong" + secrets.token_hex(8))  # rejected
    box.servers["twilio"].faults.fail_next(503, 503, 500)
    seen: list[str] = []
    caplog.set_level("DEBUG")
    opened = tasks.open_run(reference, DATE)
    seen.append(repr(opened))
    for channel in ("email", "sms", "push"):
        for _ in range(3):
            try:
                seen.append(repr(tasks.send_shard(reference, opened["run_id"], channel, 0, 1)))
                break
            except Exception as exc:  # every exception's text is checked
                seen += [str(exc), repr(exc), repr(exc.__dict__)]
        seen.append(repr(tasks.channel_results(reference, opened["run_id"], channel)))
    try:
        seen.append(repr(tasks.finish_run(reference, opened["run_id"])))
    except Exception as exc:
        seen += [str(exc), repr(exc)]
    seen += [caplog.text, *capfd.readouterr()]
    assert any("401" in text or "unauthor" in text.lower() for text in seen)  # it was rejected
    text = "\n".join(seen)
    assert "SeCrEt" not in text, text[text.find("SeCrEt") - 300 : text.find("SeCrEt") + 100]
    # Nor what the run left on disk: the ledger (its error texts), reports, journals.
    written = [p for p in campaign.parent.rglob("*") if p.is_file() and p.suffix != ".toml"]
    assert any(p.name.startswith("ledger") for p in written)
    assert not [p for p in written if b"SeCrEt" in p.read_bytes()]


# -- several processes on one run at once ---------------------------------------------------


def _task(
    reference: str, run_id: str, channel: str, shard: int, shards: int
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, str(SEND_TASK), reference, run_id, channel, str(shard), str(shards)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def test_sqlite_send_tasks_of_one_run_in_processes_at_once_take_turns(
    box: Sandbox, campaign: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six task processes (three channels, two shards each) started at once on a SQLite
    ledger, with the CLI running the same logical date meanwhile: they take turns
    (none fails), and each message goes once."""
    monkeypatch.delenv("CAMPAIGNKIT_SANDBOX")
    reference = _campaign_at(box, campaign, tmp_path, monkeypatch, "ck_red_turns")
    opened = tasks.open_run(reference, DATE)
    run_id = str(opened["run_id"])
    for server in box.live_servers().values():
        server.faults.latency = 0.005
    procs = [_task(reference, run_id, c, s, 2) for c in ("email", "sms", "push") for s in (0, 1)]
    outs = [p.communicate(timeout=60) for p in procs]
    assert [p.returncode for p in procs] == [0] * 6, [e.decode()[-800:] for _, e in outs]
    delivered = _delivered(box)
    assert {p: sum(c.values()) for p, c in delivered.items()} == ACCEPTED
    assert all(n == 1 for c in delivered.values() for n in c.values())
    assert tasks.finish_run(reference, run_id)["finished"] is True


def _cli_file(box: Sandbox, config: Path) -> None:
    """The campaign's own file pointed at ``box`` (what the CLI reads)."""
    sid = box.channel_options("twilio")["account_sid"]
    text = config.read_text(encoding="utf-8")
    for old, new in (
        ('from_email = "offers@example.com"', 'from_email = "campaigns@sandbox.example"'),
        ('account_sid = "AC00000000000000000000000000000000"', f'account_sid = "{sid}"'),
    ):
        text = text.replace(old, new, 1)
    for channel, provider in (("email", "sendgrid"), ("sms", "twilio"), ("push", "expo")):
        header = f"[channels.{channel}.options]\n"
        url = box.channel_options(provider)["base_url"]
        text = text.replace(header, f'{header}base_url = "{url}"\n', 1)
        rate = 40 if channel == "sms" else 1000  # the CLI still sends when the tasks start
        text = text.replace(
            f"[channels.{channel}]\n",
            f"[channels.{channel}]\nrate = {{ messages_per_second = {rate} }}\n",
            1,
        )
    config.write_text(text, encoding="utf-8")


@pytest.mark.parametrize("cli_first", [False, True], ids=["tasks_first", "cli_first"])
def test_the_cli_running_the_logical_date_while_the_tasks_run_it(
    box: Sandbox, campaign: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cli_first: bool
) -> None:
    """The orchestrator opened the logical date; the CLI runs the same date while the
    send tasks run (started before them, sending, or after them): whoever holds the run,
    the others wait (the tasks) or are refused (the CLI); each message goes once, and
    the orchestrator's finish decides the run."""
    monkeypatch.delenv("CAMPAIGNKIT_SANDBOX")
    _cli_file(box, campaign)
    reference = _campaign_at(box, campaign, tmp_path, monkeypatch, "ck_red_cli")
    opened = tasks.open_run(reference, DATE)
    run_id = str(opened["run_id"])
    for server in box.live_servers().values():
        server.faults.latency = 0.002
    box.servers["twilio"].faults.fail_next(503, 503)
    cli = subprocess.Popen(
        [sys.executable, "-m", "campaignkit", "run", str(campaign), "--logical-date",
         DATE.isoformat(), "--retry-delay", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    while cli_first and not box.servers["sendgrid"].messages and cli.poll() is None:
        time.sleep(0.01)
    procs = [_task(reference, run_id, c, s, 2) for c in ("email", "sms", "push") for s in (0, 1)]
    outs = [p.communicate(timeout=60) for p in procs]
    cli_out, cli_err = cli.communicate(timeout=60)
    # Refused (2: the tasks held the run) or it ran the date (0, or 1: partial).
    assert cli.returncode in (0, 1, 2), cli_err.decode()[-600:]
    failed = [e.decode()[-600:] for p, (_, e) in zip(procs, outs, strict=True) if p.returncode]
    # A task may fail only with what its retry mends (the 503s: ShardIncomplete).
    assert all("ShardIncomplete" in e for e in failed), failed
    for channel in ("email", "sms", "push"):  # the orchestrator's retries
        for shard in (0, 1):
            for _ in range(3):
                try:
                    tasks.send_shard(reference, run_id, channel, shard, 2, wait=30)
                    break
                except ShardIncomplete:
                    continue
    delivered = _delivered(box)
    report = (cli.returncode, cli_out.decode()[-600:], cli_err.decode()[-600:])
    assert {p: sum(c.values()) for p, c in delivered.items()} == ACCEPTED, report
    assert all(n == 1 for c in delivered.values() for n in c.values()), report
    finished = tasks.finish_run(reference, run_id)
    assert finished["status"] == "partial", finished  # the example's bad rows
    sms = tasks.channel_results(reference, run_id, "sms")["states"]
    assert "pending" not in sms and "in_flight" not in sms, sms


def test_postgres_a_shard_beyond_the_runs_split_owes_nothing(pg_campaign: tuple[str, Path]) -> None:
    """The run was split into 4 shards; the campaign's file now says 6 and Airflow, which
    maps the count it parsed, runs shards 4 and 5 too: they hold no delivery, so their
    tasks succeed sending nothing (not fail the DAG run), and every shard the run has
    is still sent."""
    reference, config = pg_campaign
    opened = tasks.open_run(reference, DATE)
    assert opened["shards"]["push"] == [0, 1, 2, 3]
    _with_shards(config, 6)
    for channel in ("email", "sms", "push"):
        for shard in (4, 5):
            tasks.send_shard(reference, str(opened["run_id"]), channel, shard, 6)
    assert sum(len(s.messages) for s in shared_sandbox().live_servers().values()) == 0
    _send_opened(reference, tasks.open_run(reference, DATE))
    _assert_each_once(shared_sandbox())
    # And a shard of a run that is not split (an unknown run's) is still an error.
    with pytest.raises(LedgerError):
        tasks.send_shard(reference, "no-such-run", "push", 0, 4)


def test_postgres_a_send_task_cleared_after_the_run_finished(pg_campaign: tuple[str, Path]) -> None:
    """Twilio down for every attempt: the sms shards run out of retries and finish_run
    records the run. Twilio back, the user clears the sms tasks and the finish: only the
    owed sms are sent, once; the run's status is decided again."""
    reference, _ = pg_campaign
    opened = tasks.open_run(reference, DATE)
    run_id = str(opened["run_id"])
    shared_sandbox().servers["twilio"].faults.fail_next(*([503] * 400))
    _send_opened(reference, opened, attempts=1)
    first = tasks.finish_run(reference, run_id)
    assert first["finished"] is True and first["status"] in {"partial", "failed"}
    assert tasks.finish_run(reference, run_id)["finished"] is False  # idempotent
    _reset(shared_sandbox())
    for shard in opened["shards"]["sms"]:  # the cleared tasks
        tasks.send_shard(reference, run_id, "sms", shard, len(opened["shards"]["sms"]))
    again = tasks.finish_run(reference, run_id)
    assert again["finished"] is True and again["status"] == "partial", again
    delivered = _delivered(shared_sandbox())
    assert {p for p, c in delivered.items() if c} == {"twilio"}  # nothing else was owed
    assert sum(delivered["twilio"].values()) == ACCEPTED["twilio"]
    assert set(delivered["twilio"].values()) == {1}


def test_open_run_twice_at_once_opens_one_run(
    box: Sandbox, campaign: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two extract tasks of one logical date at once (a retry while the first attempt is
    still alive): one run; each either opens or takes it up, or is refused (and its
    retry takes it up); the audience is decided once."""
    monkeypatch.delenv("CAMPAIGNKIT_SANDBOX")
    reference = _campaign_at(box, campaign, tmp_path, monkeypatch, "ck_red_open")
    command = [sys.executable, str(SEND_TASK), reference, "open", DATE.isoformat()]
    procs = [
        subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)
    ]
    outs = [p.communicate(timeout=60) for p in procs]
    opened = [
        json.loads(o.decode().splitlines()[-1])
        for p, (o, _) in zip(procs, outs, strict=True)
        if p.returncode == 0
    ]
    refused = [e.decode() for p, (_, e) in zip(procs, outs, strict=True) if p.returncode]
    assert opened and all("RunInProgress" in e for e in refused), refused
    assert len({o["run_id"] for o in opened}) == 1
    again = tasks.open_run(reference, DATE)  # the refused one's retry
    assert again["status"] == "resumed" and again["run_id"] == opened[0]["run_id"]
    assert sorted(o["status"] for o in opened)[0] in {"opened", "resumed"}
    _send_opened(reference, again)
    delivered = _delivered(box)
    assert {p: sum(c.values()) for p, c in delivered.items()} == ACCEPTED
    assert all(n == 1 for c in delivered.values() for n in c.values())


@pytest.mark.parametrize("value", ["sandbox please", "2", "1;0", "-1"])
def test_a_hostile_switch_value_stops_every_step_before_anything(
    campaign: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    """A value of CAMPAIGNKIT_SANDBOX that is neither on nor off (a typo must not send
    for real): every step refuses it, and no ledger is written."""
    monkeypatch.setenv("CAMPAIGNKIT_SANDBOX", value)
    for step in (
        lambda: tasks.open_run(str(campaign), DATE),
        lambda: tasks.send_shard(str(campaign), "any", "sms", 0, 1),
        lambda: tasks.finish_run(str(campaign), "any"),
        tasks.sandbox,
    ):
        with pytest.raises(ConfigError, match="CAMPAIGNKIT_SANDBOX"):
            step()
    assert not (campaign.parent / ".campaignkit").exists()


def test_hostile_import_references_are_refused_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """References to nothing usable (None, a number, a class, a function returning a
    function) are ConfigErrors; one whose import raises raises (the orchestrator shows
    it); no run is opened."""
    _module(
        tmp_path,
        monkeypatch,
        "ck_red_hostile",
        "import campaignkit\n"
        "NOTHING = None\nNUMBER = 3\nKIND = campaignkit.PipelineConfig\n"
        "def returns_none():\n    return None\n"
        "def returns_function():\n    return returns_none\n",
    )
    _module(tmp_path, monkeypatch, "ck_red_boom", "raise RuntimeError('boom at import')\n")
    for name in ("NOTHING", "NUMBER", "KIND", "returns_none", "returns_function", "missing"):
        with pytest.raises(ConfigError):
            tasks.open_run(f"ck_red_hostile:{name}", DATE)
    with pytest.raises(RuntimeError, match="boom"):
        tasks.describe("ck_red_boom:campaign")


# -- a slice's transient failures stay the slice's when they are sent again -----------------


def _push_rows(config: Path) -> list[tuple[int, str, str, int | None]]:
    """The push deliveries (seq, address, state, batch) in the rehearsal's ledger."""
    db = sqlite3.connect(config.parent / ".campaignkit" / "ledger.sandbox.db")
    try:
        return db.execute(
            "SELECT d.seq, d.address, d.state, d.batch FROM deliveries d JOIN channels c "
            "ON c.run = d.run AND c.code = d.channel WHERE c.channel = 'push' ORDER BY d.seq"
        ).fetchall()
    finally:
        db.close()


def test_transient_failures_sent_again_stay_in_their_shard(campaign: Path) -> None:
    """A first attempt sent the push channel whole (the CLI's, or shards = 1 then) and
    Expo refused part of its first batch with MessageRateExceeded (transient). The next
    attempts are by 2 shards: the shard holding that batch re-sends the failures, which
    fail again; that shard must say so (ShardIncomplete) and its retry must send them,
    rather than the failures moving to the other shard (already done) and never being
    sent again."""
    config = str(campaign)
    opened = tasks.open_run(config, DATE)
    run_id = str(opened["run_id"])
    pending = [row for row in _push_rows(campaign) if row[2] == "pending"]
    first_batch = pending[:100]  # Expo's batch size, in the ledger's order
    a = first_batch[0][0]
    cut = next(i for i, row in enumerate(first_batch) if row[0] % 2 != a % 2)
    refused = {row[1] for row in first_batch[cut:]}  # their first seq is the other parity
    expo = shared_sandbox().servers["expo"]
    expo.ticket_errors.update(dict.fromkeys(refused, "MessageRateExceeded"))
    try:
        with pytest.raises(ShardIncomplete):
            tasks.send_shard(config, run_id, "push", 0, 1)
        tasks.send_shard(config, run_id, "push", 1 - a % 2, 2)  # owes nothing: done
        with pytest.raises(ShardIncomplete):  # re-sent, refused again: still owed
            tasks.send_shard(config, run_id, "push", a % 2, 2)
    finally:
        expo.ticket_errors.clear()
    tasks.send_shard(config, run_id, "push", a % 2, 2)  # the orchestrator's retry
    delivered = Counter(str(m["to"]) for m in expo.messages)
    assert refused <= set(delivered), len(refused - set(delivered))
    assert set(delivered.values()) == {1}
