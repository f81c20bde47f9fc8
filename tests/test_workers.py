"""Workers sharing a PostgreSQL ledger: a run split into shards, sent by several worker
processes (``[execution] workers = N``, ``campaignkit worker`` on any host), gives the
same ledger and report as one process, every owed message sent once; a worker killed
or stalled mid-shard is taken over after its lease expires, nothing sent twice beyond
the documented ``unknown`` window and nothing skipped; a lease that expired records
nothing; the rate limit holds for all the workers together.

The providers are the loopback sandbox's fakes (see ``test_run_steps``), reached by the
worker processes over 127.0.0.1; the ledger is the real PostgreSQL server.
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from campaignkit import ConfigError, Pipeline, get_plugin_manager
from campaignkit._ledger import PlanRules, PostgresLedger, RunOwnershipLost
from campaignkit._models import DeliveryResult, DeliveryStatus
from campaignkit._pipeline._workers import default_shards
from campaignkit.testing.sandbox import Sandbox
from test_run_steps import (
    CHANNELS,
    LOGICAL_DATE,
    comparable,
    received,
    run_in_process,
    write_campaign,
)

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(providers=list(CHANNELS.values())) as box:
        yield box


@pytest.fixture
def ledger_env(postgres_url: str) -> Iterator[str]:
    """``CAMPAIGNKIT_LEDGER_URL`` set to the session's database, for this process and
    the workers it starts."""
    previous = os.environ.get("CAMPAIGNKIT_LEDGER_URL")
    os.environ["CAMPAIGNKIT_LEDGER_URL"] = postgres_url
    try:
        yield postgres_url
    finally:
        if previous is None:
            os.environ.pop("CAMPAIGNKIT_LEDGER_URL", None)
        else:
            os.environ["CAMPAIGNKIT_LEDGER_URL"] = previous


def _fresh_schema(url: str) -> None:
    """Drop the ledger's default schema, so that each test starts from an empty ledger."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP SCHEMA IF EXISTS campaignkit CASCADE")


def _configure(config: Path, **execution: Any) -> None:
    lines = "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in execution.items())
    config.write_text(config.read_text().replace("[execution]\n", "[execution]\n" + lines))


def _tokens(box: Sandbox) -> None:
    os.environ.update(box.env())


def pipeline_of(config: Path, box: Sandbox) -> Pipeline:
    """The campaign in this process, with the environment its workers get."""
    plugins = get_plugin_manager(load_entrypoints=False)
    env = {**os.environ, **box.env()}
    return Pipeline.from_file(config, plugins=plugins, env=env, rehearsal=False)


def test_default_shards() -> None:
    assert default_shards(0, 1) == 4
    assert default_shards(1_000_000, 2) == 100
    assert default_shards(100_000_000, 2) == 1024
    assert default_shards(10, 8) == 32


def test_workers_send_the_run_once_with_the_report_of_one_process(
    tmp_path: Path, sandbox: Sandbox, ledger_env: str
) -> None:
    """``workers = 2``: two worker processes send the run; the ledger's outcomes and
    the report are those of ``Pipeline.run()`` in one process, every message once."""
    whole, _, by_run = run_in_process(tmp_path / "whole")
    _fresh_schema(ledger_env)
    config = write_campaign(tmp_path / "pg", sandbox)
    _configure(config, workers=2, shards=6)
    _tokens(sandbox)
    pipeline = pipeline_of(config, sandbox)
    report = pipeline.run(logical_date=datetime.fromisoformat(LOGICAL_DATE))
    assert comparable(report.to_dict()) == comparable(whole)
    assert received(sandbox) == by_run and max(by_run.values()) == 1
    ledger = PostgresLedger(ledger_env)
    try:
        leases = ledger.shard_leases(report.run_id)
        assert {i.channel for i in leases} == set(CHANNELS)
        assert all(i.done and i.owner is None for i in leases)
        assert len(leases) == 6 * len(CHANNELS)
        # Each worker leased its share of each channel: two slices' outcomes per channel.
        outcomes = ledger.slice_outcomes(report.run_id)
        assert collections.Counter(o.channel for o in outcomes) == dict.fromkeys(CHANNELS, 2)
    finally:
        ledger.close()


def test_several_workers_need_a_postgresql_ledger(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_campaign(tmp_path, sandbox)
    _configure(config, workers=2)
    os.environ.pop("CAMPAIGNKIT_LEDGER_URL", None)
    pipeline = pipeline_of(config, sandbox)
    with pytest.raises(ConfigError, match="workers = 2 needs a PostgreSQL ledger"):
        pipeline.run(logical_date=datetime.fromisoformat(LOGICAL_DATE))
    assert not (tmp_path / "state").exists()  # refused before the run began


def _worker(config: Path, run_id: str, home: Path, *args: str) -> subprocess.Popen[str]:
    """``campaignkit worker`` as on another host: a directory and temp dir of its own."""
    home.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "TMPDIR": str(home), "HOME": str(home)}
    return subprocess.Popen(
        [sys.executable, "-m", "campaignkit", "worker", str(config), "--run", run_id, *args],
        cwd=home,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _opened(config: Path, box: Sandbox, shards: int) -> tuple[Pipeline, str]:
    """The run opened, planned and split into shards by the steps (no worker yet)."""
    pipeline = pipeline_of(config, box)
    run_id = pipeline.open_run(logical_date=datetime.fromisoformat(LOGICAL_DATE)).run_id
    for channel in CHANNELS:
        pipeline.plan_channel(run_id, channel)
    assert pipeline.shard_channels(run_id, workers=2) == dict.fromkeys(CHANNELS, shards)
    return pipeline, run_id


def test_two_hosts_share_a_run_without_overlap(
    tmp_path: Path, sandbox: Sandbox, ledger_env: str
) -> None:
    """Two ``campaignkit worker`` processes started for the same run, each with its
    own directories (two "hosts"), share it: every message once, nothing skipped."""
    whole, _, by_run = run_in_process(tmp_path / "whole")
    _fresh_schema(ledger_env)
    config = write_campaign(tmp_path / "pg", sandbox)
    _configure(config, workers=2, shards=8)
    _tokens(sandbox)
    pipeline, run_id = _opened(config, sandbox, 8)
    workers = [_worker(config, run_id, tmp_path / f"host{i}") for i in range(2)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    assert all("nothing left to lease" in out for out in outputs)
    report = pipeline.finish_run(run_id)
    assert comparable(report.to_dict()) == comparable(whole)
    assert received(sandbox) == by_run and max(by_run.values()) == 1


def _results(pipeline: Pipeline, run_id: str) -> list[DeliveryResult]:
    return pipeline.results(run_id)


def test_a_killed_worker_is_taken_over_after_its_lease_expires(
    tmp_path: Path, ledger_env: str
) -> None:
    """kill -9 a worker in the middle of its shards: the other takes them over once the
    lease expires; nothing is sent twice (what the dead one had in flight is re-sent
    under the same idempotency key, or recorded unknown), nothing is skipped."""
    _fresh_schema(ledger_env)
    with Sandbox(providers=list(CHANNELS.values())) as box:
        for provider in CHANNELS.values():
            box.servers[provider].faults.latency = 0.05
        config = write_campaign(tmp_path / "pg", box)
        _configure(config, workers=2, shards=4, lease_seconds=3)
        _tokens(box)
        pipeline, run_id = _opened(config, box, 4)
        victim = _worker(config, run_id, tmp_path / "victim")
        deadline = time.monotonic() + 60
        while sum(received(box).values()) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        victim.communicate()
        survivor = _worker(config, run_id, tmp_path / "survivor")
        out = survivor.communicate(timeout=120)[0]
        assert survivor.returncode == 0, out
        report = pipeline.finish_run(run_id)
        _assert_once_and_nothing_skipped(pipeline, run_id, box)
    assert report.status.value in ("partial", "succeeded")


def _assert_once_and_nothing_skipped(pipeline: Pipeline, run_id: str, box: Sandbox) -> None:
    """Every recipient of every channel is settled (never pending or in flight); each
    message reached its provider at most once, and exactly once where it is recorded
    ``sent``; a provider without idempotency keys may hold an ``unknown`` message once
    (the documented window), never twice."""
    results = _results(pipeline, run_id)
    states = collections.Counter(r.status for r in results)
    assert not states[DeliveryStatus.PENDING] and not states[DeliveryStatus.IN_FLIGHT], states
    counts = received(box)
    assert max(counts.values()) == 1, [k for k, v in counts.items() if v > 1]


def test_a_stalled_worker_whose_lease_expired_records_nothing(
    tmp_path: Path, ledger_env: str
) -> None:
    """A worker stopped (SIGSTOP) mid-shard past its lease: another takes the shards
    over; when the first resumes, the ledger refuses what it would record and it stops
    (its deliveries were settled by the taker by the crash rules)."""
    _fresh_schema(ledger_env)
    with Sandbox(providers=list(CHANNELS.values())) as box:
        for provider in CHANNELS.values():
            box.servers[provider].faults.latency = 0.5  # stopped mid-request
        config = write_campaign(tmp_path / "pg", box)
        _configure(config, workers=2, shards=2, lease_seconds=2)
        _tokens(box)
        pipeline, run_id = _opened(config, box, 2)
        stalled = _worker(config, run_id, tmp_path / "stalled")
        deadline = time.monotonic() + 60
        while sum(received(box).values()) < 10 and time.monotonic() < deadline:
            time.sleep(0.005)
        time.sleep(0.2)  # its next requests are on their way: answered in 0.5 s
        os.kill(stalled.pid, signal.SIGSTOP)
        try:
            time.sleep(3)  # past the lease
            taker = _worker(config, run_id, tmp_path / "taker")
            out = taker.communicate(timeout=120)[0]
            assert taker.returncode == 0, out
        finally:
            os.kill(stalled.pid, signal.SIGCONT)
        stalled_out = stalled.communicate(timeout=60)[0]
        assert "not recorded" in stalled_out or "neither owns" in stalled_out, stalled_out
        pipeline.finish_run(run_id)
        _assert_once_and_nothing_skipped(pipeline, run_id, box)


def test_an_expired_lease_cannot_mark_or_record(postgres_url: str) -> None:
    """The fence, at the ledger: a worker's lease that expired (by the server's clock)
    lets it write nothing, even before another worker takes the shard; the taker
    settles what was in flight by the crash rules and writes."""
    schema = "fence_test"
    first = PostgresLedger(postgres_url, schema=schema)
    second = PostgresLedger(postgres_url, schema=schema)
    try:
        first._do(lambda c: c.execute("DELETE FROM runs"))  # a clean slate per session
        first.begin_run(
            run_id="r",
            pipeline="p",
            logical_date=datetime.fromisoformat(LOGICAL_DATE),
            fingerprint="f",
            config_file=None,
            max_active_runs=None,
        )
        from test_ledger import people

        first.write_snapshot("r", iter(people(6)))
        rows = ((s, None, f"u{s}@example.com", False, None) for s in range(6))
        first.plan("r", "email", rows, PlanRules(kind="email"))
        assert first.plan_shards("r", "email", 1) == 1
        second.lease_seconds = first.lease_seconds = 600
        assert second.lease_shards("r", "email", limit=5, resend=False) == [0]
        # The run's owner cannot write into a shard another worker holds.
        with pytest.raises(RunOwnershipLost):
            first.mark_in_flight("r", "email", [0])
        second.mark_in_flight("r", "email", [0, 1])
        first._do(lambda c: c.execute("UPDATE shards SET lease_until = 0"))  # expired
        with pytest.raises(RunOwnershipLost):
            second.mark_in_flight("r", "email", [2])
        sent = DeliveryResult("email", "c1", DeliveryStatus.SENT, attempts=1)
        from campaignkit._ledger import DeliveryRecord

        second.record("r", "email", [DeliveryRecord(0, sent, "sent", False)])
        assert second.counts("r", "email").states == {"in_flight": 2, "pending": 4}
        third = PostgresLedger(postgres_url, schema=schema)
        try:
            assert third.lease_shards("r", "email", limit=1, resend=False) == [0]
            counts = third.counts("r", "email")
            assert counts.states == {"unknown": 2, "pending": 4}
            third.mark_in_flight("r", "email", [2])
        finally:
            third.close()
    finally:
        first.close()
        second.close()


def test_workers_together_keep_the_channel_s_rate_limit(
    tmp_path: Path, sandbox: Sandbox, ledger_env: str
) -> None:
    """A provider's limit is per account: two workers, each able to send at the full
    rate alone, together stay within it (a budget shared through the ledger)."""
    _fresh_schema(ledger_env)
    config = write_campaign(tmp_path / "pg", sandbox)
    rate = 40.0
    config.write_text(
        config.read_text().replace("rate = {}", f"rate = {{ messages_per_second = {rate} }}")
    )
    _configure(config, workers=2, shards=8)
    _tokens(sandbox)
    pipeline, run_id = _opened(config, sandbox, 8)
    workers = [_worker(config, run_id, tmp_path / f"host{i}") for i in range(2)]
    outputs = [w.communicate(timeout=120)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    times = sorted(sandbox.servers["twilio"].request_times)  # one message per request
    assert len(times) > 60
    for i in range(len(times)):
        for j in range(i + 1, len(times)):
            # j - i + 1 messages within (times[j] - times[i]) seconds: at most the rate,
            # plus one message (a reservation's start) and 50 ms of scheduling jitter.
            assert j - i + 1 <= rate * (times[j] - times[i] + 0.05) + 1, (i, j)
    pipeline.finish_run(run_id)
