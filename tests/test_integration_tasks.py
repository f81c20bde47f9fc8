"""The orchestrators' shared steps (campaignkit.integrations.tasks) on the path a task
runs: the example campaign against the process's sandbox (CAMPAIGNKIT_SANDBOX=1), a
provider failing until the orchestrator's retry, the CLI and a task on one logical
date, tasks taking turns on a run, and the switch itself."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from campaignkit import Pipeline, Slice, load_config
from campaignkit.cli import main
from campaignkit.exceptions import ConfigError, ShardIncomplete
from campaignkit.integrations import tasks
from campaignkit.integrations.tasks import RunInProgress
from campaignkit.testing.sandbox import Sandbox, shared_sandbox
from conftest import example_on_postgres

EXAMPLE = Path(__file__).parent.parent / "examples" / "multi_channel_campaign"
DATE = datetime(2024, 1, 2, tzinfo=UTC)
#: what the example campaign accepts per provider (its README's demo figures)
ACCEPTED = {"sendgrid": 66, "twilio": 145, "expo": 151}


@pytest.fixture
def campaign(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The example campaign in a folder of its own, split into 2 shards per channel,
    with the sandbox switch on; the shared sandbox's messages and faults reset."""
    folder = tmp_path / "campaign"
    # Not the state a demo run may have left beside the example (its rehearsal ledger).
    shutil.copytree(EXAMPLE, folder, ignore=shutil.ignore_patterns(".campaignkit", "*-results"))
    config = folder / "campaign.toml"
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("[execution]\n", "[execution]\nshards = 2\n", 1), "utf-8")
    monkeypatch.setenv("CAMPAIGNKIT_SANDBOX", "1")
    sandbox = shared_sandbox()
    _reset(sandbox)
    yield str(config)
    _reset(sandbox)


def _reset(sandbox: Sandbox) -> None:
    for server in sandbox.live_servers().values():
        server.messages.clear()
        server.faults.script.clear()  # nothing queued


def _recipients(sandbox: Sandbox) -> dict[str, Counter[str]]:
    """Provider -> how many messages each recipient got."""
    return {
        provider: Counter(str(m["to"]) for m in server.messages)
        for provider, server in sandbox.live_servers().items()
    }


def run_like_an_orchestrator(campaign: str, *, attempts: int = 3) -> dict[str, Any]:
    """Every task of one logical date, each send retried as an orchestrator would."""
    spec = tasks.describe(campaign)
    opened = tasks.open_run(campaign, DATE)
    results: dict[str, Any] = {"opened": opened, "tries": Counter()}
    for channel in spec.channels:
        for shard in opened["shards"][channel.name]:
            for _ in range(attempts):
                results["tries"][channel.name] += 1
                try:
                    tasks.send_shard(campaign, opened["run_id"], channel.name, shard, spec.shards)
                    break
                except ShardIncomplete:
                    continue
        results[channel.results_key] = tasks.channel_results(
            campaign, opened["run_id"], channel.name
        )
    results["finished"] = tasks.finish_run(campaign, opened["run_id"])
    return results


def test_describe_reads_the_campaign_only(campaign: str) -> None:
    spec = tasks.describe(campaign)
    assert spec.name == "multi_channel_marketing_campaign"
    assert spec.extract_task == "load_customer_segment_csv"
    assert [(c.name, c.send_task, c.results_key) for c in spec.channels] == [
        ("email", "send_email_campaign", "email_campaign_results"),
        ("sms", "send_sms_campaign", "sms_campaign_results"),
        ("push", "send_push_notification", "push_notification_results"),
    ]
    assert (spec.retries, spec.retry_delay) == (2, timedelta(minutes=5))
    assert spec.schedule.cron == "@daily" and spec.schedule.catchup is False
    assert spec.max_active_runs == 1 and spec.depends_on_past is False
    assert (spec.shards, spec.parallel_shards) == (2, 1)
    assert tasks.ChannelTask.of("whatsapp").send_task == "send_whatsapp_campaign"


def test_a_whole_run_sends_each_message_once_and_results_come_from_the_ledger(
    campaign: str,
) -> None:
    done = run_like_an_orchestrator(campaign)
    assert done["opened"]["status"] == "opened"
    assert done["opened"]["shards"] == {"email": [0, 1], "sms": [0, 1], "push": [0, 1]}
    counts = _recipients(shared_sandbox())
    assert {p: sum(c.values()) for p, c in counts.items()} == ACCEPTED
    assert all(n == 1 for c in counts.values() for n in c.values())
    assert done["email_campaign_results"]["states"]["sent"] == ACCEPTED["sendgrid"]
    assert done["sms_campaign_results"]["states"]["sent"] == ACCEPTED["twilio"]
    assert done["push_notification_results"]["states"]["sent"] == ACCEPTED["expo"]
    assert done["finished"] == {"run_id": done["opened"]["run_id"], "status": "partial",
                                "finished": True}  # fmt: skip
    # The real ledger was never touched: a rehearsal has its own.
    assert not (Path(campaign).parent / ".campaignkit" / "ledger.db").exists()


def test_a_provider_failing_until_the_retry_gets_each_message_once(campaign: str) -> None:
    shared_sandbox().servers["twilio"].faults.fail_next(503, 503, 503)
    done = run_like_an_orchestrator(campaign)
    assert done["tries"]["sms"] > 2  # a shard failed and was retried
    twilio = _recipients(shared_sandbox())["twilio"]
    assert sum(twilio.values()) == ACCEPTED["twilio"] and set(twilio.values()) == {1}
    assert "503" not in done["sms_campaign_results"]["error_codes"]


def test_a_shard_out_of_retries_fails_and_the_run_is_recorded(campaign: str) -> None:
    shared_sandbox().servers["twilio"].faults.fail_next(*([503] * 400))
    done = run_like_an_orchestrator(campaign, attempts=1)
    sms = done["sms_campaign_results"]
    assert sms["states"].get("sent", 0) == 0, sms
    assert sms["states"]["failed"] >= ACCEPTED["twilio"], sms
    assert done["finished"]["status"] in {"partial", "failed"}
    # Cleared later, once the provider is back: only what the ledger owes is sent.
    _reset(shared_sandbox())
    run_id = done["opened"]["run_id"]
    for shard in (0, 1):
        tasks.send_shard(campaign, run_id, "sms", shard, 2)
    assert tasks.finish_run(campaign, run_id)["finished"] is True
    sent = _recipients(shared_sandbox())
    assert sum(sent["twilio"].values()) == ACCEPTED["twilio"] and set(sent["twilio"].values()) == {
        1
    }
    assert not sent.get("sendgrid") and not sent.get("expo")  # nothing else was owed


def test_the_cli_first_then_the_orchestrator_sends_nothing_more(campaign: str) -> None:
    result = CliRunner().invoke(
        main, ["run", campaign, "--logical-date", DATE.isoformat(), "--retry-delay", "0"]
    )
    assert result.exit_code in (0, 1), result.output  # partial: the example's bad rows
    assert "sandbox" in result.output.lower()  # the switch made it a rehearsal
    done = run_like_an_orchestrator(campaign)
    assert done["opened"]["status"] == "replay"
    assert sum(len(s.messages) for s in shared_sandbox().live_servers().values()) == 0
    assert done["sms_campaign_results"]["states"]["sent"] == ACCEPTED["twilio"]
    assert done["finished"]["finished"] is False


def test_send_tasks_take_turns_on_a_run(campaign: str) -> None:
    opened = tasks.open_run(campaign, DATE)
    ledger = tasks.load(campaign).ledger()
    ledger.claim_run(opened["run_id"])  # another task holds the run
    try:
        with pytest.raises(RunInProgress, match="being run by process"):
            tasks.send_shard(campaign, opened["run_id"], "push", 0, 2, wait=0)
        threading.Timer(1.0, ledger.release_run, args=(opened["run_id"],)).start()
        started = time.monotonic()
        sent = tasks.send_shard(campaign, opened["run_id"], "push", 0, 2, wait=30)
        assert time.monotonic() - started >= 0.9
        assert sent["sent"] > 0
    finally:
        ledger.close()


def test_requeue_and_owed_by_slice_cover_the_channel_once(campaign: str) -> None:
    shared_sandbox().servers["twilio"].faults.fail_next(*([503] * 400))
    opened = tasks.open_run(campaign, DATE)
    for shard in (0, 1):
        with pytest.raises(ShardIncomplete):
            tasks.send_shard(campaign, opened["run_id"], "sms", shard, 2)
    ledger = tasks.load(campaign).ledger()
    try:
        run_id = opened["run_id"]
        whole = ledger.owed(run_id, ["sms"], failed=True, unknown=False)
        parts = [
            ledger.owed(run_id, ["sms"], failed=True, unknown=False, part=Slice(index=i, count=3))
            for i in range(3)
        ]
        assert sum(parts) == whole > 0
        transient = whole - ledger.owed(run_id, ["sms"], failed=False, unknown=False)
        back = [ledger.requeue(run_id, "sms", failed=True, unknown=False,
                               part=Slice(index=i, count=3)) for i in range(3)]  # fmt: skip
        assert sum(back) == transient > 0
        assert ledger.requeue(run_id, "sms", failed=True, unknown=False) == 0
    finally:
        ledger.close()


def test_the_switch_is_on_off_or_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = load_config(EXAMPLE / "campaign.toml")
    for off in ("0", "false", "", "OFF"):
        monkeypatch.setenv("CAMPAIGNKIT_SANDBOX", off)
        assert not Pipeline.from_config(config).rehearsal
    monkeypatch.setenv("CAMPAIGNKIT_SANDBOX", "True")
    pipeline = Pipeline.from_config(config)
    assert pipeline.rehearsal and "ledger.sandbox.db" in str(pipeline.ledger_location)
    monkeypatch.setenv("CAMPAIGNKIT_SANDBOX", "sandbox please")
    with pytest.raises(ConfigError, match="CAMPAIGNKIT_SANDBOX"):
        Pipeline.from_config(config)
    # An explicit choice wins over the switch.
    monkeypatch.setenv("CAMPAIGNKIT_SANDBOX", "1")
    assert not Pipeline.from_config(config, rehearsal=False).rehearsal


def test_a_campaign_by_import_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "my_campaigns.py").write_text(
        "from campaignkit import load_config\n"
        f"def spring():\n    return load_config({str(EXAMPLE / 'campaign.toml')!r})\n"
        f"PATH = {str(EXAMPLE / 'campaign.toml')!r}\n"
        "NOT_ONE = 42\n",
        encoding="utf-8",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert tasks.describe("my_campaigns:spring").name == "multi_channel_marketing_campaign"
    assert tasks.describe("my_campaigns:PATH").name == "multi_channel_marketing_campaign"
    with pytest.raises(ConfigError, match="int"):
        tasks.describe("my_campaigns:NOT_ONE")
    with pytest.raises(ConfigError, match="cannot import"):
        tasks.describe("no_such_module_here:spring")


# -- a run split into shards on PostgreSQL: the tasks of several shards send at once ----


@pytest.fixture
def pg_campaign(
    campaign: str,
    own_database: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> str:
    """The example campaign on this session's PostgreSQL database with 2 workers and 4
    shards per channel, under a name of the test's own (one run per test), as an
    import reference: a pipeline pointed at the shared sandbox that is not a rehearsal
    (a rehearsal records into its own SQLite ledger, where tasks take turns)."""
    name = "pg_" + request.node.name.removeprefix("test_")[:40]
    return example_on_postgres(Path(campaign), name, own_database, tmp_path, monkeypatch)


def send_all_shards(campaign: str, run_id: str, *, attempts: int = 3) -> Counter[str]:
    """Every shard of every channel, two tasks at a time, each retried as an
    orchestrator would; returns the attempts per channel."""
    spec = tasks.describe(campaign)
    tries: Counter[str] = Counter()

    def task(channel: str, shard: int) -> None:
        for _ in range(attempts):
            tries[channel] += 1
            try:
                tasks.send_shard(campaign, run_id, channel, shard, spec.shards)
                return
            except ShardIncomplete:
                continue

    jobs = [(c.name, s) for c in spec.channels for s in range(spec.shards)]
    with ThreadPoolExecutor(max_workers=spec.parallel_shards) as pool:
        list(pool.map(lambda job: task(*job), jobs))
    return tries


def test_postgres_shards_are_leased_by_tasks_sending_at_once(pg_campaign: str) -> None:
    spec = tasks.describe(pg_campaign)
    assert (spec.shards, spec.parallel_shards) == (4, 2)
    assert tasks.load(pg_campaign).sends_in_shards
    opened = tasks.open_run(pg_campaign, DATE)
    assert opened["shards"]["sms"] == [0, 1, 2, 3]
    shared_sandbox().servers["twilio"].faults.fail_next(503, 503)
    tries = send_all_shards(pg_campaign, opened["run_id"])
    assert tries["sms"] > spec.shards  # a shard failed and its retry sent it
    counts = _recipients(shared_sandbox())
    assert {p: sum(c.values()) for p, c in counts.items()} == ACCEPTED
    assert all(n == 1 for c in counts.values() for n in c.values())
    assert tasks.finish_run(pg_campaign, opened["run_id"])["status"] == "partial"
    # The same logical date again: a replay, nothing sent.
    assert tasks.open_run(pg_campaign, DATE)["status"] == "replay"
    send_all_shards(pg_campaign, opened["run_id"])
    assert sum(len(s.messages) for s in shared_sandbox().live_servers().values()) == sum(
        ACCEPTED.values()
    )


def test_postgres_a_shard_leased_elsewhere_waits_for_its_lease(pg_campaign: str) -> None:
    opened = tasks.open_run(pg_campaign, DATE)
    run_id = opened["run_id"]
    other = tasks.load(pg_campaign).ledger()  # another worker, alive, holding shard 0
    try:
        assert other.lease_shards(run_id, "push", limit=1, resend=False, only=[0]) == [0]  # type: ignore[attr-defined]
        with pytest.raises(RunInProgress, match="leased by"):
            tasks.send_shard(pg_campaign, run_id, "push", 0, 4, wait=0)
        threading.Timer(1.0, other.release_shards, args=(run_id, "push", [0])).start()  # type: ignore[attr-defined]
        sent = tasks.send_shard(pg_campaign, run_id, "push", 0, 4, wait=30)
        assert sent["sent"] > 0
        # Done: its task run again sends nothing more.
        before = len(shared_sandbox().servers["expo"].messages)
        tasks.send_shard(pg_campaign, run_id, "push", 0, 4, wait=0)
        assert len(shared_sandbox().servers["expo"].messages) == before
    finally:
        other.close()


def test_a_replay_sends_nothing_even_what_the_finished_run_left_failed(campaign: str) -> None:
    """The CLI's rule for a logical date that ran: a replay. Transient failures its run
    left stay for ``resume --retry-failed`` or a cleared send task, not for a re-run."""
    shared_sandbox().servers["twilio"].faults.fail_next(*([503] * 2000))
    pipeline = Pipeline.from_file(campaign, sleep=lambda seconds: None)
    assert pipeline.rehearsal  # the switch
    report = pipeline.run(logical_date=DATE)
    assert report.channels["sms"].failed >= ACCEPTED["twilio"]
    _reset(shared_sandbox())
    done = run_like_an_orchestrator(campaign)
    assert done["opened"]["status"] == "replay"
    assert done["opened"]["shards"] == {"email": [], "sms": [], "push": []}
    assert _recipients(shared_sandbox()).get("twilio", Counter()) == Counter()
