"""Run semantics through the ledger: once per logical date, resume, schedules."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pluggy

from campaignkit import (
    Channel,
    Execution,
    Pipeline,
    RunStatus,
    Schedule,
    Template,
    get_plugin_manager,
)
from campaignkit._ledger import MaxActiveRunsReached
from campaignkit.testing import StaticSource, recording_plugin

DAY = datetime(2026, 3, 1, tzinfo=UTC)


def source(n: int = 5) -> StaticSource:
    return StaticSource.from_dicts(
        {"id": f"c{i}", "email": f"u{i}@example.com", "consent": {"email": True}} for i in range(n)
    )


def pipeline(tmp_path: Path, pm: pluggy.PluginManager, **kw: Any) -> Pipeline:
    options = kw.pop("options", {})
    ch = Channel(
        name="email",
        provider="recording",
        template=Template(body="hi"),
        options=options,
        batch_size=kw.pop("batch_size", None),
        concurrency=kw.pop("concurrency", 2),
    )
    return Pipeline(
        "runs_test",
        kw.pop("src", None) or source(),
        [ch],
        plugins=pm,
        env={},
        base_dir=tmp_path,
        sleep=kw.pop("sleep", lambda s: None),
        **kw,
    )


def test_a_logical_date_is_sent_once(
    tmp_path: Path, pm: pluggy.PluginManager, recorder: Any
) -> None:
    p = pipeline(tmp_path, pm)
    first = p.run(logical_date=DAY)
    assert first.run_id == "runs_test__20260301T000000Z"
    assert first.channels["email"].sent == 5
    again = p.run(logical_date=DAY)
    assert again.run_id == first.run_id and again.channels["email"].sent == 5
    assert recorder.outbox.count == 5  # nothing sent the second time
    forced = p.run(logical_date=DAY, force=True)
    assert forced.run_id == "runs_test__20260301T000000Z__2"
    assert recorder.outbox.count == 10
    assert [r.run_id for r in p.runs()] == [forced.run_id, first.run_id]


def test_a_replay_is_never_mistaken_for_a_send(
    tmp_path: Path, pm: pluggy.PluginManager, recorder: Any
) -> None:
    p = pipeline(tmp_path, pm)
    canary = p.run(logical_date=DAY, limit=2)
    assert not canary.replayed and recorder.outbox.count == 2
    full = p.run(logical_date=DAY)  # resumes the canary: sends the rest
    assert not full.replayed and recorder.outbox.count == 5
    assert full.to_dict()["replayed"] is False
    again = p.run(logical_date=DAY)
    assert again.replayed and again.to_dict()["replayed"] is True
    assert again.run_id == full.run_id and again.channels["email"].sent == 5
    for replay in (
        p.resume(full.run_id),
        p.retry_failed(full.run_id),
        p.resume(full.run_id, resend_unknown=True),
    ):
        assert replay.replayed and replay.status == full.status
    assert recorder.outbox.count == 5
    assert p.runs()[0].status == "succeeded"  # a replay leaves the run as it was


def test_manual_run_uses_the_latest_complete_interval(
    tmp_path: Path, pm: pluggy.PluginManager
) -> None:
    report = pipeline(tmp_path, pm).run()
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    yesterday = today - timedelta(days=1)
    assert report.run_id in (
        f"runs_test__{yesterday:%Y%m%dT%H%M%SZ}",
        f"runs_test__{today:%Y%m%dT%H%M%SZ}",
    )  # midnight race


def test_timeout_leaves_the_rest_pending_and_resume_sends_it_once(
    tmp_path: Path,
) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    # One flaky address keeps the run waiting for a retry past the deadline.
    p = pipeline(
        tmp_path,
        pm,
        src=source(40),
        batch_size=5,
        concurrency=1,
        options={"flaky": {"u0@example.com": 1}},
        sleep=lambda s: __import__("time").sleep(0.3),
        execution=Execution(timeout_seconds=0.2),
    )
    first = p.run(logical_date=DAY)
    assert first.status is RunStatus.TIMED_OUT
    email = first.channels["email"]
    assert email.pending >= 1 and email.sent + email.pending == 40
    sent_before = rec.outbox.count
    # Running the logical date again resumes it (no deadline this time).
    p.execution = Execution()
    done = p.run(logical_date=DAY)
    assert done.run_id == first.run_id
    assert (done.channels["email"].sent, done.channels["email"].pending) == (40, 0)
    addresses = [m.address for m in rec.outbox.messages]
    assert len(addresses) == len(set(addresses)) == 40
    assert rec.outbox.count - sent_before == email.pending


def test_retry_failed_redrives_only_transient_failures(tmp_path: Path) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    p = pipeline(tmp_path, pm, options={"flaky": {"u1@example.com": 3}, "fail": ["u2@example.com"]})
    first = p.run(logical_date=DAY)
    assert first.channels["email"].reasons == {"retries_exhausted": 1, "permanent_error": 1}
    second = p.retry_failed(first.run_id)
    email = second.channels["email"]
    assert (email.sent, email.failed) == (4, 1)  # the permanent failure stays failed
    assert sorted(m.address for m in rec.outbox.messages).count("u1@example.com") == 1


def test_run_scheduled_catchup_and_lateness(tmp_path: Path, pm: pluggy.PluginManager) -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    now = datetime(2026, 3, 4, 12, tzinfo=UTC)
    catchup = Schedule(cron="@daily", start_date=start, catchup=True)
    p = pipeline(tmp_path / "a", pm, schedule=catchup)
    done = p.run_scheduled(now=now)
    assert [r.run_id[-16:] for r in done.reports] == [
        "20260301T000000Z",
        "20260302T000000Z",
        "20260303T000000Z",
    ]
    assert p.run_scheduled(now=now).reports == ()  # nothing due twice
    assert done.next_due == datetime(2026, 3, 5, tzinfo=UTC)

    no_catchup = Schedule(cron="@daily", start_date=start, catchup=False)
    assert [
        r.run_id[-16:]
        for r in pipeline(tmp_path / "b", pm, schedule=no_catchup).run_scheduled(now=now).reports
    ] == ["20260303T000000Z"]

    late = Schedule(cron="@daily", start_date=start, catchup=True, max_lateness_minutes=24 * 60)
    p = pipeline(tmp_path / "c", pm, schedule=late)
    result = p.run_scheduled(now=now)
    assert [r.run_id[-16:] for r in result.reports] == ["20260303T000000Z"]
    assert [i.start.day for i in result.skipped] == [1, 2]
    statuses = {r.run_id[-16:]: r.status for r in p.runs()}
    assert statuses["20260301T000000Z"] == "skipped_late"


def test_depends_on_past_blocks_after_a_failure(tmp_path: Path) -> None:
    rec = recording_plugin()
    pm = get_plugin_manager(load_entrypoints=False, plugins=[rec])
    start = datetime(2026, 3, 1, tzinfo=UTC)
    p = pipeline(
        tmp_path,
        pm,
        schedule=Schedule(cron="@daily", start_date=start, catchup=True),
        execution=Execution(depends_on_past=True),
        options={"fail": ["u0@example.com"]},
    )
    result = p.run_scheduled(now=datetime(2026, 3, 3, 1, tzinfo=UTC))
    assert [r.status for r in result.reports] == [RunStatus.PARTIAL]
    assert [b.cause for b in result.blocked] == ["depends_on_past"]


MAX_ACTIVE_WORKER = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, UTC
    from campaignkit import Channel, Execution, Pipeline, Template, get_plugin_manager
    from campaignkit.testing import StaticSource, recording_plugin
    from campaignkit._ledger import MaxActiveRunsReached

    class Slow(recording_plugin().notifier_class):
        name = "slow"
        def send_batch(self, conn, messages):
            time.sleep(float(sys.argv[3]))
            return super().send_batch(conn, messages)

    class Plugin:
        from campaignkit import hookimpl
        @hookimpl
        def campaignkit_register_channels(self, register):
            register(Slow)

    row = {"id": "a", "email": "a@example.com", "consent": {"email": True}}
    src = StaticSource.from_dicts([row])
    channel = Channel(name="email", provider="slow", template=Template(body="x"))
    p = Pipeline("shared", src, [channel],
                 plugins=get_plugin_manager(load_entrypoints=False, plugins=[Plugin()]), env={},
                 base_dir=sys.argv[1], execution=Execution(max_active_runs=1))
    try:
        p.run(logical_date=datetime.fromisoformat(sys.argv[2]))
        print("ran")
    except MaxActiveRunsReached as exc:
        print("refused:", exc)
    """
)


def test_max_active_runs_across_two_processes(tmp_path: Path) -> None:
    script = tmp_path / "worker.py"
    script.write_text(MAX_ACTIVE_WORKER)
    slow = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path), "2026-03-01T00:00:00+00:00", "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    ledger_db = tmp_path / ".campaignkit" / "ledger.db"
    import sqlite3
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # wait until the first run is recorded as running
        if ledger_db.exists():
            try:
                with sqlite3.connect(ledger_db) as c:
                    if c.execute("SELECT COUNT(*) FROM runs WHERE status='running'").fetchone()[0]:
                        break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, str(script), str(tmp_path), "2026-03-02T00:00:00+00:00", "0"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    out, _ = slow.communicate(timeout=60)
    assert out.strip() == "ran"
    assert second.stdout.startswith("refused: shared: max_active_runs=1 reached"), second.stderr
    _ = MaxActiveRunsReached  # the exception users catch
