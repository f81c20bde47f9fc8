"""One owner per run: processes that enter the same run at the same instant, through
every entry point (run, resume, retry-failed, run --scheduled, the scheduler), send
each owed message once.

Each test starts several real ``campaignkit`` processes (``barrier_cli.py``: imported
first, then all released at one instant) against loopback provider sandboxes whose
latency keeps the winner sending while the others try to claim, and counts what the
fake providers accepted, per address.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import attrs
import pytest

from campaignkit.testing.sandbox import Faults, Sandbox
from conftest import Backend

BARRIER = Path(__file__).with_name("barrier_cli.py")
PROCESSES = 4
N = 40
LOGICAL_DATE = "2026-04-01T00:00:00+00:00"
RUN_ID = "claims__20260401T000000Z"
CHANNELS = {"email": "sendgrid", "sms": "twilio"}
TOKEN_ENV = {"email": "EMAIL_API_TOKEN", "sms": "SMS_API_TOKEN"}
BUSY = "is being run by process"

pytestmark = pytest.mark.timeout(240)


@attrs.frozen
class Exit:
    argv: tuple[str, ...]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"{' '.join(self.argv)} -> {self.code}\n{self.out[-1500:]}\n{self.err[-1500:]}"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(list(CHANNELS.values())) as sandbox:
        # Slow enough that the winner is still sending when the others try to claim.
        sandbox.servers["twilio"].faults = Faults(latency=0.05)
        sandbox.servers["sendgrid"].faults = Faults(latency=0.2)
        yield sandbox


def phone(i: int) -> str:
    return f"+1415{2000000 + i:07d}"


def write_campaign(
    tmp: Path,
    sandbox: Sandbox,
    *,
    schedule: str = "",
    sms_base_url: str | None = None,
) -> Path:
    rows = ["customer_id,first_name,email,phone,opted_in_email,opted_in_sms"]
    rows += [f"c{i:03d},N{i},user{i}@example.com,{phone(i)},yes,yes" for i in range(N)]
    (tmp / "segment.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    text = f"""
[pipeline]
name = "claims"

[source]
type = "csv"
path = "segment.csv"

[source.columns]
id = "customer_id"

[source.consent]
email = "opted_in_email"
sms = "opted_in_sms"

[execution]
state_path = "state/ledger.db"
output_dir = "results"

[execution.retry]
retries = 0
delay_minutes = 0
{schedule}
"""
    for ch, provider in CHANNELS.items():
        options = sandbox.channel_options(provider)
        if ch == "sms" and sms_base_url is not None:
            options["base_url"] = sms_base_url
        table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in options.items())
        body = '"Hi {{ first_name }}"'
        template = f"subject = {body}\nbody = {body}" if ch == "email" else f"body = {body}"
        text += f"""
[channels.{ch}]
provider = "{provider}"
concurrency = 1
batch_size = {10 if ch == "email" else 1}
timeout_seconds = 20
rate = {{}}

[channels.{ch}.template]
{template}

[channels.{ch}.options]
{table}
"""
    path = tmp / "campaign.toml"
    path.write_text(text, encoding="utf-8")
    return path


def environment(sandbox: Sandbox) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_TOKEN")}
    for ch, provider in CHANNELS.items():
        env[TOKEN_ENV[ch]] = sandbox.servers[provider].token
    return env


def spawn(tmp: Path, env: dict[str, str], start: float, argv: tuple[str, ...], n: int) -> Any:
    out = (tmp / f"p{n}.out").open("w")
    err = (tmp / f"p{n}.err").open("w")
    with out, err:
        return subprocess.Popen(
            [sys.executable, str(BARRIER), repr(start), *argv],
            stdout=out,
            stderr=err,
            env=env,
            cwd=tmp,
            stdin=subprocess.DEVNULL,
        )


def together(tmp: Path, env: dict[str, str], *argvs: tuple[str, ...]) -> list[Exit]:
    """Start one process per ``argv``, all entering the command at the same instant."""
    start = time.time() + 2.5  # every interpreter has imported the CLI by then
    procs = [spawn(tmp, env, start, argv, n) for n, argv in enumerate(argvs)]
    exits = []
    try:
        for n, (argv, proc) in enumerate(zip(argvs, procs, strict=True)):
            code = proc.wait(timeout=120)
            exits.append(
                Exit(argv, code, (tmp / f"p{n}.out").read_text(), (tmp / f"p{n}.err").read_text())
            )
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return exits


def received(sandbox: Sandbox) -> dict[str, collections.Counter[str]]:
    """Channel -> address -> messages the fake provider accepted."""
    return {
        ch: collections.Counter(str(m["to"]) for m in sandbox.servers[p].messages)
        for ch, p in CHANNELS.items()
    }


def settle(sandbox: Sandbox) -> None:
    """Let requests a killed process left behind be answered (and recorded)."""
    time.sleep(0.5)
    last = -1
    while (now := sum(len(s.messages) for s in sandbox.servers.values())) != last:
        last = now
        time.sleep(0.5)


def unknown(tmp: Path) -> dict[str, set[str]]:
    """Channel -> recipient ids the ledger records as ``unknown`` (in flight at a crash)."""
    out: dict[str, set[str]] = {ch: set() for ch in CHANNELS}
    with sqlite3.connect(tmp / "state" / "ledger.db") as conn:
        for ch, rid in conn.execute(
            "SELECT c.channel, r.recipient_id FROM deliveries d "
            "JOIN channels c ON c.run = d.run AND c.code = d.channel "
            "JOIN recipients r ON r.run = d.run AND r.seq = d.seq WHERE d.state = 'unknown'"
        ):
            out[ch].add(rid)
    return out


def check_once(sandbox: Sandbox, tmp: Path, exits: list[Exit], *, refused: bool = True) -> None:
    """No address got two messages; every owed one got one, except deliveries the
    ledger records as ``unknown``; with ``refused``, the processes but one were
    refused because another owned the run."""
    got = received(sandbox)
    everyone = "\n".join(map(str, exits))
    for ch, counts in got.items():
        twice = {a: n for a, n in counts.items() if n > 1}
        assert not twice, f"{ch}: sent more than once: {twice}\n{everyone}"
    maybe = unknown(tmp)
    for ch in CHANNELS:
        addresses = {phone(i) if ch == "sms" else f"user{i}@example.com": i for i in range(N)}
        missing = {
            a for a, i in addresses.items() if not got[ch][a] and f"c{i:03d}" not in maybe[ch]
        }
        assert not missing, f"{ch}: never sent: {sorted(missing)}\n{everyone}"
    if refused:
        busy = [e for e in exits if e.code == 2]
        assert all(BUSY in e.err for e in busy), everyone
        assert len(busy) == len(exits) - 1, everyone


def crash(
    tmp: Path, env: dict[str, str], sandbox: Sandbox, config: Path, logical: str = LOGICAL_DATE
) -> None:
    """Start the run and kill -9 it while it sends."""
    proc = spawn(tmp, env, time.time(), ("run", str(config), "--logical-date", logical), 99)
    deadline = time.monotonic() + 60
    while len(sandbox.servers["twilio"].messages) < 5:
        assert proc.poll() is None, (tmp / "p99.err").read_text()
        assert time.monotonic() < deadline, "the run never sent"
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    settle(sandbox)
    with sqlite3.connect(tmp / "state" / "ledger.db") as conn:
        (status,) = conn.execute("SELECT status FROM runs").fetchone()
    assert status == "running"  # the process is gone: the run awaits a resume


def test_simultaneous_runs_of_a_new_logical_date(tmp_path: Path, sandbox: Sandbox) -> None:
    config = write_campaign(tmp_path, sandbox)
    argv = ("run", str(config), "--logical-date", LOGICAL_DATE)
    exits = together(tmp_path, environment(sandbox), *[argv] * PROCESSES)
    check_once(sandbox, tmp_path, exits)
    assert sum(received(sandbox)["sms"].values()) == N
    assert [e.code for e in exits].count(0) == 1, "\n".join(map(str, exits))


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(("resume", "{config}", RUN_ID), id="resume"),
        pytest.param(("run", "{config}", "--logical-date", LOGICAL_DATE), id="run"),
    ],
)
def test_simultaneous_resumes_after_a_crash(
    tmp_path: Path, sandbox: Sandbox, argv: tuple[str, ...]
) -> None:
    config = write_campaign(tmp_path, sandbox)
    env = environment(sandbox)
    crash(tmp_path, env, sandbox, config)
    before = sum(received(sandbox)["sms"].values())
    assert before < N
    command = tuple(a.format(config=config) for a in argv)
    exits = together(tmp_path, env, *[command] * PROCESSES)
    check_once(sandbox, tmp_path, exits)
    assert sum(received(sandbox)["sms"].values()) > before


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_simultaneous_retry_failed(tmp_path: Path, sandbox: Sandbox) -> None:
    # First the SMS provider cannot be reached (nothing sent): transient failures.
    closed = f"http://127.0.0.1:{free_port()}"
    config = write_campaign(tmp_path, sandbox, sms_base_url=closed)
    env = environment(sandbox)
    first = together(tmp_path, env, ("run", str(config), "--logical-date", LOGICAL_DATE))
    assert first[0].code == 1, first[0]
    assert not sandbox.servers["twilio"].messages
    write_campaign(tmp_path, sandbox)  # the provider is back
    argv = ("retry-failed", str(config), RUN_ID, "--channel", "sms")
    exits = together(tmp_path, env, *[argv] * PROCESSES)
    check_once(sandbox, tmp_path, exits)
    assert sum(received(sandbox)["sms"].values()) == N


def daily_schedule(*, end: bool) -> str:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    lines = [
        "[schedule]",
        'cron = "@daily"',
        f'start_date = "{(today - timedelta(days=3)).isoformat()}"',
    ]
    if end:  # the last logical date is due now: the scheduler runs it, then exits
        lines.append(f'end_date = "{(today - timedelta(days=1)).isoformat()}"')
    return "\n".join(lines)


@pytest.mark.parametrize("command", ["scheduled", "scheduler"])
def test_simultaneous_scheduled_runs(tmp_path: Path, sandbox: Sandbox, command: str) -> None:
    config = write_campaign(tmp_path, sandbox, schedule=daily_schedule(end=command == "scheduler"))
    if command == "scheduled":
        argv: tuple[str, ...] = ("run", str(config), "--scheduled")
    else:
        argv = ("scheduler", str(config), "--poll", "0.2")
    exits = together(tmp_path, environment(sandbox), *[argv] * PROCESSES)
    assert all(e.code == 0 for e in exits), "\n".join(map(str, exits))
    got = received(sandbox)
    for ch, counts in got.items():
        assert sorted(counts.values()) == [1] * N, f"{ch}: {counts}\n" + "\n".join(map(str, exits))
    with sqlite3.connect(tmp_path / "state" / "ledger.db") as conn:
        runs = conn.execute("SELECT run_id, status FROM runs").fetchall()
    assert len(runs) == 1 and runs[0][1] == "succeeded", runs


def test_simultaneous_scheduled_runs_resume_an_orphan_once(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config = write_campaign(tmp_path, sandbox, schedule=daily_schedule(end=False))
    env = environment(sandbox)
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    crash(tmp_path, env, sandbox, config, (today - timedelta(days=1)).isoformat())
    exits = together(tmp_path, env, *[("run", str(config), "--scheduled")] * PROCESSES)
    assert all(e.code in (0, 1) for e in exits), "\n".join(map(str, exits))
    check_once(sandbox, tmp_path, exits, refused=False)


# -- the claim itself, many times over, at the ledger ----------------------------------------
def _begin(ledger: Any, run_id: str) -> None:
    ledger.begin_run(
        run_id=run_id,
        pipeline="p",
        logical_date=datetime(2026, 1, 1, tzinfo=UTC),
        fingerprint="f",
        config_file=None,
        max_active_runs=None,
    )


def _claimer(backend: Backend, run_id: str, new: bool, barrier: Any, results: Any) -> None:
    """In a child process: open the ledger, wait for the others, claim, hold briefly."""
    from campaignkit._ledger import LedgerError

    ledger = backend.open()
    ledger.get_run(run_id) if not new else None  # connections are open before the barrier
    barrier.wait()
    try:
        if new:
            _begin(ledger, run_id)
        else:
            ledger.claim_run(run_id)
        results.put("claimed")
        time.sleep(0.3)  # still owning it while the others try
    except LedgerError as exc:
        results.put("refused" if BUSY in str(exc) else f"{type(exc).__name__}: {exc}")
    finally:
        ledger.close()
        os._exit(0)  # like a crash: the run stays "running", owned by a dead process


@pytest.mark.parametrize("new", [False, True], ids=["claim", "begin"])
def test_exactly_one_of_simultaneous_claims_wins(backend: Backend, new: bool) -> None:
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    backend.open().close()
    for round_ in range(15):
        run_id = f"r{round_}"
        if not new:  # a run whose process died
            ledger = backend.open()
            _begin(ledger, run_id)
            ledger.close()
            backend.sql("UPDATE runs SET owner = NULL, pid = 999999999 WHERE run_id = ?", (run_id,))
        barrier, results = ctx.Barrier(PROCESSES), ctx.SimpleQueue()
        procs = [
            ctx.Process(target=_claimer, args=(backend, run_id, new, barrier, results))
            for _ in range(PROCESSES)
        ]
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
        outcomes = sorted(results.get() for _ in procs)
        assert outcomes == ["claimed"] + ["refused"] * (PROCESSES - 1), (round_, outcomes)


# -- owners on other hosts: the heartbeat ---------------------------------------------------
def _owned_elsewhere(backend: Backend, run_id: str, heartbeat: float | None) -> None:
    from campaignkit._ledger import Owner

    other = Owner("t0ken", "another-host", 4242, "boot", 1)
    backend.sql(
        "UPDATE runs SET status = 'running', owner = ?, pid = 4242, heartbeat = ? WHERE run_id = ?",
        (other.to_text(), heartbeat, run_id),
    )


def test_an_owner_on_another_host_is_alive_while_its_heartbeat_is(backend: Backend) -> None:
    from campaignkit._ledger import LEASE_SECONDS, RunInProgress

    ledger = backend.open()
    _begin(ledger, "r")
    ledger.finish_run("r", "cancelled", "{}")
    for heartbeat in (time.time(), None):  # beating now, or an owner that never beat
        _owned_elsewhere(backend, "r", heartbeat)
        with pytest.raises(RunInProgress, match="process 4242 on another-host"):
            ledger.claim_run("r")
    _owned_elsewhere(backend, "r", time.time() - LEASE_SECONDS - 1)  # its host is gone
    assert ledger.claim_run("r").owner.host != "another-host"  # type: ignore[union-attr]
    ledger.close()


def test_the_owner_beats_while_it_holds_the_run(
    backend: Backend, monkeypatch: pytest.MonkeyPatch
) -> None:
    from campaignkit._ledger import _claims

    monkeypatch.setattr(_claims, "HEARTBEAT_SECONDS", 0.05)
    ledger = backend.open()

    def beat() -> float:
        return float(backend.sql("SELECT heartbeat FROM runs")[0][0])

    _begin(ledger, "r")
    first = beat()
    deadline = time.monotonic() + 10
    while beat() == first:
        assert time.monotonic() < deadline, "no heartbeat"
        time.sleep(0.02)
    ledger.finish_run("r", "succeeded", "{}")
    last = beat()
    time.sleep(0.3)
    assert beat() == last  # a finished run is not beaten for
    ledger.close()
