"""Hostile tests of workers sharing a PostgreSQL ledger (issue 12): the CLI's
``[execution] workers = N`` and ``campaignkit worker`` on the real path (real
PostgreSQL, worker processes, the loopback sandbox), under what users do to them:
quiet hours, interrupts, crashes, resumes while workers live, a missing token.

Each test says the claim it attacks; a test of a bug not fixed here is skipped with
a reason that starts with ``BUG:``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from campaignkit._ledger import PostgresLedger
from campaignkit._models import DeliveryStatus
from campaignkit.testing.sandbox import Sandbox
from test_run_steps import CHANNELS, LOGICAL_DATE, received, write_campaign
from test_workers import (
    _assert_once_and_nothing_skipped,
    _configure,
    _fresh_schema,
    _opened,
    _tokens,
    _worker,
    ledger_env,
    pipeline_of,
    sandbox,
)

__all__ = ["ledger_env", "sandbox"]  # fixtures, used by name

pytestmark = pytest.mark.timeout(300)


def _cli(
    config: Path, box: Sandbox, *args: str, timeout: float = 120, env: dict[str, str] | None = None
) -> tuple[int | None, str]:
    """``campaignkit ARGS`` in a session of its own; ``(None, output)`` if it did not
    end within ``timeout`` (then it and the workers it started are killed)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignkit", *args],
        cwd=config.parent,
        env=env if env is not None else {**os.environ, **box.env(), "COLUMNS": "200"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        out = proc.communicate(timeout=timeout)[0]
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        return None, proc.communicate()[0]
    return proc.returncode, out


def _states(config: Path, box: Sandbox, run_id: str) -> collections.Counter[DeliveryStatus]:
    return collections.Counter(r.status for r in pipeline_of(config, box).results(run_id))


def _latest_run(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT run_id FROM campaignkit.runs ORDER BY id DESC LIMIT 1")
        found = row.fetchone()
    assert found is not None
    return str(found[0])


def _quiet_now(config: Path, channel: str) -> None:
    """Quiet hours on ``channel`` that hold every recipient for hours from now."""
    now = datetime.now(UTC)
    start, end = (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=3))
    table = (
        f"\n[channels.{channel}.quiet_hours]\n"
        f'start = "{start}"\nend = "{end.strftime("%H:%M")}"\ntimezone = "UTC"\n'
    )
    text = config.read_text()
    marker = f"[channels.{channel}.template]"
    config.write_text(text.replace(marker, table.lstrip() + "\n" + marker))


def test_quiet_hours_do_not_keep_the_workers_waiting(
    tmp_path: Path, sandbox: Sandbox, ledger_env: str
) -> None:
    """``campaignkit run`` with workers and a channel in quiet hours: as with one
    process, the run ends with the held messages ``deferred`` (a resume sends them
    later); the workers do not wait hours for the window to end."""
    _fresh_schema(ledger_env)
    config = write_campaign(tmp_path / "pg", sandbox)
    _configure(config, workers=2, shards=4)
    _quiet_now(config, "sms")
    code, out = _cli(
        config, sandbox, "run", str(config), "--logical-date", LOGICAL_DATE, timeout=60
    )
    assert code is not None, "the run was still waiting after 60 s:\n" + out[-3000:]
    assert code in (0, 1), out
    states = _states(config, sandbox, _latest_run(ledger_env))
    assert states[DeliveryStatus.DEFERRED] > 0, states
    assert not states[DeliveryStatus.PENDING] and not states[DeliveryStatus.IN_FLIGHT], states
    assert max(received(sandbox).values()) == 1


def test_workers_get_the_environment_the_campaign_was_given(
    tmp_path: Path, sandbox: Sandbox, postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """``Pipeline.from_file(..., env=...)`` with the tokens and the ledger's URL in
    ``env`` alone (an orchestrator's task, its secrets not in ``os.environ``): the
    workers it starts read the same environment, so they send the run; none of them
    exits with a configuration error, leaving the whole run to the parent."""
    _fresh_schema(postgres_url)
    for name in [*sandbox.env(), "CAMPAIGNKIT_LEDGER_URL"]:
        os.environ.pop(name, None)
    config = write_campaign(tmp_path / "pg", sandbox)
    _configure(config, workers=2, shards=4)
    from campaignkit import Pipeline, get_plugin_manager

    env = {**sandbox.env(), "CAMPAIGNKIT_LEDGER_URL": postgres_url}
    plugins = get_plugin_manager(load_entrypoints=False)
    pipeline = Pipeline.from_file(config, plugins=plugins, env=env, rehearsal=False)
    with caplog.at_level("WARNING", logger="campaignkit"):
        report = pipeline.run(logical_date=datetime.fromisoformat(LOGICAL_DATE))
    assert max(received(sandbox).values()) == 1
    said = [r.getMessage() for r in caplog.records]
    assert not [m for m in said if "exited with status" in m or "stopped early" in m], said
    assert report.status.value == "partial"  # the refused addresses, as in one process


def test_a_worker_s_channel_threads_lease_as_one_worker(postgres_url: str) -> None:
    """A worker leases each channel in a thread of its own, all on one ledger object:
    their first leases, at the same instant, are all this worker's (one token), so
    each thread may mark what it leased and let it go; none is fenced out by its own
    worker, its shards left leased until they expire."""
    import threading

    from campaignkit._ledger import PlanRules
    from test_ledger import people

    schema = "hostile_threads"
    setup, worker = (PostgresLedger(postgres_url, schema=schema) for _ in range(2))
    channels = [f"c{i}" for i in range(8)]
    try:
        setup.begin_run(
            run_id="r",
            pipeline="p",
            logical_date=datetime.fromisoformat(LOGICAL_DATE),
            fingerprint="f",
            config_file=None,
            max_active_runs=None,
        )
        setup.write_snapshot("r", iter(people(4)))
        for name in channels:
            rows = ((s, None, f"u{s}@example.com", False, None) for s in range(4))
            setup.plan("r", name, rows, PlanRules(kind="email"))
            setup.plan_shards("r", name, 1)
        for name in channels:  # the channels' keys known: the leases start at once
            worker.counts("r", name)
        barrier = threading.Barrier(len(channels))
        failures: list[str] = []

        def one(name: str) -> None:
            barrier.wait()
            assert worker.lease_shards("r", name, limit=1, resend=False) == [0]
            try:
                worker.mark_in_flight("r", name, [0])
            except Exception as exc:
                failures.append(f"{name}: {exc}")
            worker.release_shards("r", name, [0])

        threads = [threading.Thread(target=one, args=(name,)) for name in channels]
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads switch as often as on a loaded host
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            sys.setswitchinterval(interval)
        assert not failures, failures
        assert not [i for i in setup.shard_leases("r") if i.owner is not None]
    finally:
        setup.close()
        worker.close()


@contextlib.contextmanager
def _slow_box() -> Iterator[Sandbox]:
    """The providers, each request answered in 0.3 s (some are always in flight)."""
    with Sandbox(providers=list(CHANNELS.values())) as box:
        for provider in CHANNELS.values():
            box.servers[provider].faults.latency = 0.3
        yield box


def _wait_received(box: Sandbox, count: int, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while sum(received(box).values()) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    assert sum(received(box).values()) >= count


def _settled(config: Path, box: Sandbox, run_id: str) -> collections.Counter[DeliveryStatus]:
    """The run's states, none ``in_flight``; and no shard left leased."""
    states = _states(config, box, run_id)
    assert not states[DeliveryStatus.IN_FLIGHT], states
    ledger = PostgresLedger(os.environ["CAMPAIGNKIT_LEDGER_URL"])
    try:
        held = [i for i in ledger.shard_leases(run_id) if i.owner is not None]
    finally:
        ledger.close()
    assert not held, held
    return states


def test_sigterm_to_a_worker_finishes_in_flight_requests_and_lets_go(
    tmp_path: Path, ledger_env: str
) -> None:
    """SIGTERM to ``campaignkit worker`` mid-shard: it exits 3, its in-flight requests
    recorded (nothing ``in_flight``), its leases let go (another worker need not wait
    for them to expire), and the next worker sends the rest once."""
    _fresh_schema(ledger_env)
    with _slow_box() as box:
        config = write_campaign(tmp_path / "pg", box)
        _configure(config, workers=2, shards=4, lease_seconds=60)
        _tokens(box)
        pipeline, run_id = _opened(config, box, 4)
        worker = _worker(config, run_id, tmp_path / "w1")
        _wait_received(box, 10)
        worker.send_signal(signal.SIGTERM)
        out = worker.communicate(timeout=60)[0]
        assert worker.returncode == 3, out
        states = _settled(config, box, run_id)
        assert states[DeliveryStatus.PENDING], states  # stopped early
        started = time.monotonic()
        rest = _worker(config, run_id, tmp_path / "w2")
        assert rest.communicate(timeout=120)[0] is not None and rest.returncode == 0
        assert time.monotonic() - started < 30  # not the 60 s of a lease let lapse
        pipeline.finish_run(run_id)
        _assert_once_and_nothing_skipped(pipeline, run_id, box)


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM])
def test_interrupting_a_run_with_workers(
    tmp_path: Path, ledger_env: str, how: signal.Signals
) -> None:
    """``campaignkit run`` with ``workers = 2`` interrupted mid-send: Ctrl-C (SIGINT to
    the whole process group, workers included) or SIGTERM to the run's process alone.
    It ends (exit 3) without hanging, nothing left ``in_flight`` or leased; a resume
    then sends what is left, each message once."""
    _fresh_schema(ledger_env)
    with _slow_box() as box:
        config = write_campaign(tmp_path / "pg", box)
        _configure(config, workers=2, shards=4)
        env = {**os.environ, **box.env(), "COLUMNS": "200"}
        command = ["run", str(config), "--logical-date", LOGICAL_DATE]
        proc = subprocess.Popen(
            [sys.executable, "-m", "campaignkit", *command],
            cwd=config.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
            # A terminal's Ctrl-C reaches a process that does not ignore SIGINT: a
            # process started in the background (a CI script run with `&`) inherits
            # it ignored, and Python then leaves it so.
            preexec_fn=_sigint_default,
        )
        try:
            _wait_received(box, 10)
            if how == signal.SIGINT:
                os.killpg(proc.pid, signal.SIGINT)
            else:
                proc.send_signal(signal.SIGTERM)
            out = proc.communicate(timeout=60)[0]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 3, out[-3000:]
        run_id = _latest_run(ledger_env)
        _settled(config, box, run_id)
        code, out = _cli(config, box, "resume", str(config), run_id, env=env)
        assert code in (0, 1), out[-3000:]
        states = _settled(config, box, run_id)
        assert not states[DeliveryStatus.PENDING], states
        assert max(received(box).values()) == 1


def test_a_resume_waits_for_live_workers_and_takes_over_from_dead_ones(
    tmp_path: Path, ledger_env: str
) -> None:
    """``campaignkit resume`` (and ``run`` of the same logical date) while a worker
    sends is refused, nothing sent; once that worker is killed (its leases still live
    by the clock), a resume takes the run over: everything sent once, nothing left
    pending, in flight or leased."""
    _fresh_schema(ledger_env)
    with _slow_box() as box:
        config = write_campaign(tmp_path / "pg", box)
        _configure(config, workers=2, shards=4, lease_seconds=60)
        _tokens(box)
        pipeline, run_id = _opened(config, box, 4)
        pipeline.ledger().close()
        worker = _worker(config, run_id, tmp_path / "w1")
        try:
            _wait_received(box, 5)
            code, out = _cli(config, box, "resume", str(config), run_id)
            assert code == 2 and "being sent by worker" in out, out[-3000:]
            code, out = _cli(config, box, "run", str(config), "--logical-date", LOGICAL_DATE)
            assert code == 2 and "being sent by worker" in out, out[-3000:]
        finally:
            os.kill(worker.pid, signal.SIGKILL)
            worker.communicate()
        code, out = _cli(config, box, "resume", str(config), run_id, timeout=150)
        assert code in (0, 1), out[-3000:]
        states = _settled(config, box, run_id)
        assert not states[DeliveryStatus.PENDING], states
        assert max(received(box).values()) == 1


def test_a_run_sent_by_workers_says_what_it_sent(
    tmp_path: Path, sandbox: Sandbox, ledger_env: str
) -> None:
    """``campaignkit resume`` of a run whose workers send everything: its summary
    counts what they settled this time (the workers' progress reaches the run's
    process), not ``0`` per channel as if nothing had been sent; the same count tells
    the CLI whether an error came before or after sending (exit 2 or 3)."""
    _fresh_schema(ledger_env)
    config = write_campaign(tmp_path / "pg", sandbox)
    _configure(config, workers=2, shards=4)
    _tokens(sandbox)
    pipeline, run_id = _opened(config, sandbox, 4)
    code, out = _cli(config, sandbox, "resume", str(config), run_id)
    assert code == 1, out[-3000:]  # partial: the refused addresses
    line = next(x for x in out.splitlines() if x.startswith("This time:"))
    settled = collections.Counter(
        r.channel
        for r in pipeline.results(run_id)
        if r.status in (DeliveryStatus.SENT, DeliveryStatus.FAILED)
    )
    assert all(settled[channel] > 50 for channel in CHANNELS), settled
    for channel in CHANNELS:
        assert f"{channel} {settled[channel]}" in line, line


def test_a_lease_that_lapsed_while_its_worker_was_stopped_is_settled_by_the_next(
    tmp_path: Path, ledger_env: str
) -> None:
    """A worker stopped (SIGSTOP) mid-request past its lease while no other worker
    runs: when it resumes, its outcomes are fenced out and it lets its shards go. Its
    deliveries left ``in_flight`` must still be settled by the crash rules when the
    next worker leases those shards; else they stay ``in_flight`` for ever, the shards
    never become done, and every worker (and the run's process) waits for ever."""
    _fresh_schema(ledger_env)
    with _slow_box() as box:
        config = write_campaign(tmp_path / "pg", box)
        _configure(config, workers=2, shards=2, lease_seconds=2)
        _tokens(box)
        pipeline, run_id = _opened(config, box, 2)
        stalled = _worker(config, run_id, tmp_path / "stalled")
        _wait_received(box, 10)
        time.sleep(0.1)  # requests on their way: answered in 0.3 s
        os.kill(stalled.pid, signal.SIGSTOP)
        time.sleep(4)  # past the lease; nobody takes it over meanwhile
        os.kill(stalled.pid, signal.SIGCONT)
        try:
            stalled_out = stalled.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            stalled.kill()
            out = stalled.communicate()[0]
            pytest.fail("the stalled worker was still waiting after 60 s:\n" + out[-2000:])
        assert "not recorded" in stalled_out or "neither owns" in stalled_out, stalled_out
        nxt = _worker(config, run_id, tmp_path / "next")
        try:
            out = nxt.communicate(timeout=60)[0]
        except subprocess.TimeoutExpired:
            nxt.kill()
            out = nxt.communicate()[0]
            pytest.fail("the next worker was still waiting after 60 s:\n" + out[-2000:])
        assert nxt.returncode == 0, out
        pipeline.finish_run(run_id)
        _assert_once_and_nothing_skipped(pipeline, run_id, box)


def test_workers_on_runs_with_nothing_for_them_exit_cleanly(
    tmp_path: Path, sandbox: Sandbox, ledger_env: str
) -> None:
    """A worker for a run not split into shards, for a finished run, or for
    ``latest`` when nothing runs: it ends at once (exit 0), says why, sends nothing."""
    _fresh_schema(ledger_env)
    config = write_campaign(tmp_path / "pg", sandbox)
    _configure(config, workers=2)
    _tokens(sandbox)
    pipeline = pipeline_of(config, sandbox)
    run_id = pipeline.open_run(logical_date=datetime.fromisoformat(LOGICAL_DATE)).run_id
    for channel in CHANNELS:
        pipeline.plan_channel(run_id, channel)
    code, out = _cli(config, sandbox, "worker", str(config), "--run", run_id, timeout=60)
    assert code == 0 and "not split into shards" in out, out
    for channel in CHANNELS:
        pipeline.send_slice(run_id, channel)
    pipeline.finish_run(run_id)
    code, out = _cli(config, sandbox, "worker", str(config), "--run", run_id, timeout=60)
    assert code == 0, out
    code, out = _cli(config, sandbox, "worker", str(config), timeout=60)
    assert code == 0 and "No running run" in out, out
    assert max(received(sandbox).values()) == 1


def test_a_worker_s_ledger_errors_do_not_show_the_password(
    tmp_path: Path, sandbox: Sandbox, postgres_url: str
) -> None:
    """A worker that cannot reach the ledger (wrong password, server away) says so
    without the URL's password, at any verbosity."""
    import urllib.parse

    config = write_campaign(tmp_path / "pg", sandbox)
    parts = urllib.parse.urlsplit(postgres_url)
    secret = "s3cr3t-pw-hostile"
    host = f"ck_user:{secret}@127.0.0.1:{parts.port or 5432}"
    bad = urllib.parse.urlunsplit(parts._replace(netloc=host))
    away = urllib.parse.urlunsplit(parts._replace(netloc=f"ck_user:{secret}@127.0.0.1:9"))
    for url in (bad, away):
        env = {**os.environ, **sandbox.env(), "CAMPAIGNKIT_LEDGER_URL": url}
        for verbosity in ([], ["-vv"]):
            code, out = _cli(config, sandbox, *verbosity, "worker", str(config), env=env)
            assert code == 2, out
            assert secret not in out, out


def test_a_canary_then_the_full_run_with_workers(
    tmp_path: Path, sandbox: Sandbox, ledger_env: str
) -> None:
    """``campaignkit run --limit 5`` with ``workers = 2`` (the canary is sent by the
    run's process), then the same logical date again: the workers send the rest, each
    message once, nothing left pending, in flight or leased."""
    _fresh_schema(ledger_env)
    config = write_campaign(tmp_path / "pg", sandbox)
    _configure(config, workers=2, shards=4)
    run = ["run", str(config), "--logical-date", LOGICAL_DATE]
    code, out = _cli(config, sandbox, *run, "--limit", "5")
    assert code in (0, 1), out[-3000:]
    canary = sum(received(sandbox).values())
    assert 0 < canary <= 5 * len(CHANNELS)
    code, out = _cli(config, sandbox, *run)
    assert code == 1, out[-3000:]  # partial: the refused addresses
    states = _settled(config, sandbox, _latest_run(ledger_env))
    assert not states[DeliveryStatus.PENDING], states
    assert sum(received(sandbox).values()) > 250 and max(received(sandbox).values()) == 1


def test_workers_under_faulty_providers_send_once_and_keep_tokens_out(
    tmp_path: Path, sandbox: Sandbox, ledger_env: str
) -> None:
    """``campaignkit run`` with ``workers = 2``, retries with delay 0, providers that
    answer 5xx, drop connections, lose answers of accepted requests, rate limit (429)
    and echo the credentials in their errors: the run ends, nothing pending, in flight
    or leased, each message reached its provider at most once, and no token appears
    in what the run and its workers print."""
    _fresh_schema(ledger_env)
    for provider in CHANNELS.values():
        faults = sandbox.servers[provider].faults
        faults.seed, faults.error_rate, faults.drop_rate = 7, 0.15, 0.05
        faults.lost_rate, faults.rate_limit, faults.retry_after = 0.05, 200.0, 0.2
        faults.echo_credentials = True
    config = write_campaign(tmp_path / "pg", sandbox)
    _configure(config, workers=2, shards=4)
    code, out = _cli(config, sandbox, "-v", "run", str(config), "--logical-date", LOGICAL_DATE)
    assert code in (0, 1), out[-3000:]
    states = _settled(config, sandbox, _latest_run(ledger_env))
    assert not states[DeliveryStatus.PENDING], states
    assert max(received(sandbox).values()) == 1
    for token in sandbox.env().values():
        assert token not in out


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def test_a_run_whose_worker_is_killed_sends_everything_once(
    tmp_path: Path, ledger_env: str
) -> None:
    """``campaignkit run`` with ``workers = 2``, one of its workers killed (-9)
    mid-send: the run ends without hanging, what the dead worker held is taken over
    once its leases expire, nothing left pending, in flight or leased, nothing sent
    twice (its in-flight requests re-sent under the same idempotency key, or
    ``unknown``)."""
    _fresh_schema(ledger_env)
    with _slow_box() as box:
        config = write_campaign(tmp_path / "pg", box)
        _configure(config, workers=2, shards=4, lease_seconds=3)
        env = {**os.environ, **box.env(), "COLUMNS": "200"}
        command = ["run", str(config), "--logical-date", LOGICAL_DATE]
        proc = subprocess.Popen(
            [sys.executable, "-m", "campaignkit", *command],
            cwd=config.parent,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            _wait_received(box, 10)
            workers = _children(proc.pid)
            assert len(workers) == 2, workers
            os.kill(workers[0], signal.SIGKILL)
            out = proc.communicate(timeout=120)[0]
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
        assert proc.returncode == 1, out[-3000:]  # partial: refused addresses, unknown
        states = _settled(config, box, _latest_run(ledger_env))
        assert not states[DeliveryStatus.PENDING], states
        assert max(received(box).values()) == 1
