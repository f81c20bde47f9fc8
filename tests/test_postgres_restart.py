"""The PostgreSQL ledger survives a restart of its server (issue 12, "restart PostgreSQL").

A private PostgreSQL 15 is started for this module (``initdb`` and ``pg_ctl`` from
:data:`PG_BIN`, as the ``postgres`` OS user when we are root; a data directory, a
free port on 127.0.0.1 and the socket directory in a temporary directory; stopped and
removed after), so that restarting it never disturbs the shared server the other tests
use. Then, on the real path:

- a campaign (a few thousand recipients, the loopback sandbox's fake providers) runs
  with its ledger there and the server is restarted in the middle of the send
  (``pg_ctl restart -m fast``, and ``-m immediate``, a crash): the run finishes, every
  recipient got each message exactly once (counted at the fake providers), the ledger
  says so, nothing is left in flight or pending;
- each write of the ledger, blocked on a lock when the server restarts (so that it
  surely breaks in the middle), is retried on a fresh connection and done once; a
  retry after a try whose commit was not heard of recognises it;
- a stream broken between two pages neither skips nor repeats a delivery;
- the heartbeat thread beats again after the outage.

Skipped, with the reason, without the binaries or psycopg, unless
``CAMPAIGNKIT_REQUIRE_POSTGRES=1``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from campaignkit import Pipeline, get_plugin_manager
from campaignkit._ledger import LedgerError, PlanRules, open_ledger
from campaignkit._models import DeliveryResult, DeliveryStatus, Recipient
from campaignkit.testing.sandbox import Sandbox
from conftest import REQUIRE_POSTGRES

PG_BIN = Path(os.environ.get("CAMPAIGNKIT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
LOGICAL_DATE = datetime(2026, 6, 1, tzinfo=UTC)
N = 2000
RULES = PlanRules(kind="email")


def _unavailable(why: str) -> None:
    reason = f"PostgreSQL restart tests skipped: {why}"
    if REQUIRE_POSTGRES:
        pytest.fail(f"{reason}; CAMPAIGNKIT_REQUIRE_POSTGRES=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@attrs.define
class Server:
    """A private PostgreSQL server that tests may restart."""

    root: Path
    port: int
    options: str = ""

    @property
    def data(self) -> Path:
        return self.root / "data"

    def command(self, tool: str, *args: str) -> None:
        argv = [str(PG_BIN / tool), *args]
        if os.geteuid() == 0:  # initdb and postgres refuse to run as root
            argv = ["runuser", "-u", "postgres", "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=60)

    def ctl(self, *args: str) -> None:
        self.command("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-w", *args)

    def restart(self, mode: str = "fast") -> None:
        self.ctl("restart", "-m", mode)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """The URL of a new, empty database on this server."""
        import psycopg

        name = f"t_{secrets.token_hex(5)}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        _unavailable("psycopg is not installed (pip install 'campaignkit[postgres]')")
    if not (PG_BIN / "pg_ctl").exists() or not (PG_BIN / "initdb").exists():
        _unavailable(f"no initdb and pg_ctl in {PG_BIN} (set CAMPAIGNKIT_TEST_PG_BIN)")
    root = Path(tempfile.mkdtemp(prefix="ck-pg-restart-"))
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    port = _free_port()
    options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off"
    server = Server(root, port, options)
    try:
        server.command("initdb", "-D", str(server.data), "-U", "postgres", "-A", "trust", "-N")
        server.ctl("start", "-o", server.options)
    except (OSError, subprocess.SubprocessError) as exc:
        shutil.rmtree(root, ignore_errors=True)
        _unavailable(f"could not start a private PostgreSQL ({exc})")
    try:
        yield server
    finally:
        try:
            server.ctl("stop", "-m", "immediate")
        finally:
            shutil.rmtree(root, ignore_errors=True)


# -- helpers -------------------------------------------------------------------------------
def across_restart(server: Server, url: str, locks: str, *ops: Callable[[], Any]) -> list[Any]:
    """``ops``, each in a thread of its own, while ``locks`` (statements run by another
    connection, in a transaction) block them all, and the server restarts under them:
    their results."""
    import psycopg

    holder = psycopg.connect(url)
    holder.execute("SET search_path TO campaignkit")
    holder.execute(locks)
    with concurrent.futures.ThreadPoolExecutor(len(ops)) as pool:
        futures = [pool.submit(op) for op in ops]
        deadline = time.monotonic() + 20
        with psycopg.connect(url, autocommit=True) as watcher:
            while time.monotonic() < deadline:
                [(waiting,)] = watcher.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                ).fetchall()
                if waiting >= len(ops):
                    break
                time.sleep(0.01)
        assert waiting >= len(ops), "the operations were not blocked"
        server.restart("fast")
        holder.close()
        return [f.result(timeout=60) for f in futures]


def recipients(n: int) -> Iterator[Recipient]:
    for i in range(n):
        yield Recipient(id=f"c{i:05d}", email=f"user{i}@example.com", line=i + 2)


def plan_rows(n: int) -> Iterator[tuple[int, None, str, bool, None]]:
    for seq in range(n):
        yield (seq, None, f"user{seq}@example.com", False, None)


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SET search_path TO campaignkit")
        return conn.execute(statement, params).fetchall()


@pytest.fixture
def url(server: Server) -> str:
    return server.new_database()


@pytest.fixture
def ledger(url: str) -> Iterator[Any]:
    from campaignkit._ledger import PostgresLedger

    ledger = PostgresLedger(url)
    yield ledger
    ledger.close()


def begin(ledger: Any, run_id: str = "r") -> None:
    ledger.begin_run(
        run_id=run_id,
        pipeline="p",
        logical_date=LOGICAL_DATE,
        fingerprint="f",
        config_file=None,
        max_active_runs=2,
    )


def sent(seq: int) -> tuple[int, DeliveryResult, str, bool]:
    result = DeliveryResult(
        channel="email",
        recipient_id=f"c{seq:05d}",
        status=DeliveryStatus.SENT,
        provider_message_id=f"m{seq}",
        attempts=1,
    )
    return (seq, result, "sent", False)


def planned_run(ledger: Any, n: int = 10) -> None:
    begin(ledger)
    ledger.write_snapshot("r", recipients(n))
    ledger.plan("r", "email", plan_rows(n), RULES)


# -- each write, broken in the middle by a restart -------------------------------------------
def test_each_write_is_retried_across_a_restart(server: Server, ledger: Any, url: str) -> None:
    """Each write, blocked on a lock when the server restarts (so that its connection
    surely breaks under it), is done once on a fresh connection."""
    begin(ledger, "b")
    late = {"pipeline": "p", "logical_date": LOGICAL_DATE, "fingerprint": "f"}
    stored = across_restart(
        server,
        url,
        "LOCK TABLE runs, suppressions, recipients",
        lambda: begin(ledger, "a"),
        lambda: ledger.record_run(run_id="late", status="skipped_late", **late),
        lambda: ledger.suppress("email", "x@example.com", reason="stop"),
        lambda: ledger.write_snapshot("b", recipients(50)),
    )[-1]
    assert ledger.get_run("a").in_progress and ledger.get_run("late").status == "skipped_late"
    assert ledger.suppressions("email") == [("email", "x@example.com", "stop", None)]
    assert stored == 50 and ledger.snapshot_info("b").recipients == 50
    ledger.release_run("a")
    across_restart(
        server,
        url,
        "LOCK TABLE runs, deliveries",
        lambda: ledger.claim_run("a"),
        lambda: ledger.plan("b", "email", plan_rows(50), RULES),
    )
    assert ledger.get_run("a").in_progress and ledger.counts("b", "email").states["pending"] == 50
    across_restart(
        server,
        url,
        "LOCK TABLE runs, deliveries",
        lambda: ledger.finish_run("a", "succeeded", '{"ok": 1}'),
        lambda: ledger.mark_in_flight("b", "email", [0, 1]),
    )
    across_restart(
        server, url, "LOCK TABLE deliveries", lambda: ledger.record("b", "email", [sent(0)])
    )
    run = ledger.get_run("a")
    assert (run.status, run.report, run.owner) == ("succeeded", '{"ok": 1}', None)
    states = dict(sql(url, "SELECT seq, state FROM deliveries WHERE seq < 3 ORDER BY seq"))
    assert states == {0: "sent", 1: "in_flight", 2: "pending"}


def test_a_snapshot_broken_while_its_rows_are_read_stores_nothing_and_says_so(
    server: Server, ledger: Any
) -> None:
    """The source's rows cannot be read twice: the run stops, nothing half stored."""
    begin(ledger)

    def breaking() -> Iterator[Recipient]:
        for i, r in enumerate(recipients(100)):
            if i == 50:
                server.restart("fast")
            yield r

    with pytest.raises(LedgerError, match="nothing was stored"):
        ledger.write_snapshot("r", breaking())
    assert not ledger.has_snapshot("r")
    assert ledger.write_snapshot("r", recipients(100)) == 100  # the resume's


def test_a_retry_recognises_its_own_earlier_commit(ledger: Any, url: str) -> None:
    """What a try whose commit was not heard of left is recognised by the retry (the
    retries run here on their own: a real break cannot be timed after a commit)."""
    from campaignkit._ledger._postgres import _runs
    from campaignkit._ledger._postgres._reconnect import OneShot, planned, stored_snapshot

    planned_run(ledger, 10)
    ledger._do(lambda c: None)
    key = ledger._run_key("r")
    assert ledger._do(lambda c: stored_snapshot(c, key, OneShot(()), "x")) == 10
    assert ledger._do(lambda c: planned(c, key, "email", OneShot(()), "x"))
    owner = ledger._owners["r"]
    # a claim retried by its own owner finds it done; another owner's claim is refused
    claimed = ledger._do(lambda c: _runs.get_run(c, "r"))
    assert claimed.owner.token == owner.token
    finish = {"run_id": "r", "status": "partial", "report": "{}", "finished_at": "T"}
    assert ledger._do(lambda c: _runs.finish_run(c, owner=owner, **finish))
    assert ledger._do(lambda c: _runs.finish_run(c, owner=owner, retried=True, **finish))
    assert not ledger._do(
        lambda c: _runs.finish_run(c, owner=owner, retried=True, **{**finish, "report": "[]"})
    )
    record = {"run_id": "late", "pipeline": "p", "logical_date": LOGICAL_DATE}
    record |= {"status": "skipped_late", "fingerprint": "f", "report": None}
    ledger._do(lambda c: _runs.record_run(c, **record))
    ledger._do(lambda c: _runs.record_run(c, **record))  # the same: a no-op
    with pytest.raises(LedgerError, match="already exists"):
        ledger._do(lambda c: _runs.record_run(c, **{**record, "fingerprint": "g"}))


def test_outcomes_lost_in_a_crash_of_the_server_are_written_again(
    server: Server, ledger: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """``-m immediate`` may lose outcomes committed lazily: they are written again
    before the restarted server is used."""
    planned_run(ledger, 10)
    ledger.mark_in_flight("r", "email", list(range(10)))
    ledger.record("r", "email", [sent(seq) for seq in range(10)])
    server.restart("immediate")
    with caplog.at_level(logging.WARNING, logger="campaignkit"):
        counts = ledger.counts("r", "email")
    assert counts.states == {"sent": 10}
    assert "wrote again 1 recent outcome write" in caplog.text
    ledger.flush()  # durable now: nothing is kept to be written again
    assert ledger._retry.lazy == []


def test_a_stream_broken_between_pages_neither_skips_nor_repeats(
    server: Server, ledger: Any, url: str
) -> None:
    from campaignkit._ledger._sql import PAGE

    n = PAGE * 2 + 17
    planned_run(ledger, n)
    stream = ledger.pending("r", "email")
    seqs = [next(stream).seq for _ in range(PAGE)]  # the first page
    [rest] = across_restart(server, url, "LOCK TABLE deliveries", lambda: [p.seq for p in stream])
    seqs += rest
    assert seqs == list(range(n))


def test_the_heartbeat_beats_again_after_the_server_restarted(
    server: Server, ledger: Any, url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from campaignkit._ledger import _claims

    monkeypatch.setattr(_claims, "HEARTBEAT_SECONDS", 0.1)
    begin(ledger)
    heartbeat = ledger._heartbeats["r"]
    server.restart("fast")
    after = time.time()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        [(beat,)] = sql(url, "SELECT heartbeat FROM runs WHERE run_id = 'r'")
        if beat > after:
            break
        time.sleep(0.1)
    assert beat > after and heartbeat.is_alive()


def test_an_operation_gives_up_when_the_server_stays_away(
    server: Server, ledger: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Past RECONNECT_SECONDS the error is the ledger's, with one warning, no password."""
    from campaignkit._ledger._postgres import _reconnect

    monkeypatch.setattr(_reconnect, "RECONNECT_SECONDS", 0.5)
    begin(ledger)
    server.ctl("stop", "-m", "fast")
    try:
        with caplog.at_level(logging.WARNING, logger="campaignkit"), pytest.raises(LedgerError):
            ledger.get_run("r")
    finally:
        server.ctl("start", "-o", server.options)
    assert caplog.text.count("lost the connection to the ledger") == 1
    monkeypatch.undo()  # the default patience: the pool reconnects with a backoff
    assert ledger.get_run("r").in_progress  # back


# -- a campaign, the server restarted in the middle of the send ------------------------------
CHANNELS = {"email": "sendgrid", "push": "onesignal"}


def write_campaign(directory: Path, box: Sandbox, n: int) -> Path:
    lines = ["customer_id,email,phone,push_token,first_name,ok"]
    for i in range(n):
        token = f"00000000-0000-4000-8000-{i:012d}"
        lines.append(f"c{i:05d},user{i}@example.com,+1415{2000000 + i:07d},{token},N{i},yes")
    (directory / "segment.csv").write_text("\n".join(lines) + "\n")
    text = (
        '[pipeline]\nname = "restart"\n\n[source]\ntype = "csv"\npath = "segment.csv"\n\n'
        '[source.columns]\nid = "customer_id"\n\n[source.consent]\n'
        'email = "ok"\npush = "ok"\n\n[execution]\noutput_dir = "results"\n\n'
        "[execution.retry]\nretries = 0\ndelay_minutes = 0\n"
    )
    templates = {
        "email": 'subject = "Hi {{ first_name }}"\nbody = "Deals, {{ first_name }}"',
        "push": 'title = "Spring"\nbody = "Hi"',
    }
    for channel, provider in CHANNELS.items():
        options = "".join(
            f"{k} = {json.dumps(v)}\n" for k, v in box.channel_options(provider).items()
        )
        batch = {"email": 10, "push": 10}[channel]
        text += (
            f'\n[channels.{channel}]\nprovider = "{provider}"\nbatch_size = {batch}\n'
            f"concurrency = 2\nrate = {{}}\n\n[channels.{channel}.template]\n"
            f"{templates[channel]}\n\n[channels.{channel}.options]\n{options}"
        )
    path = directory / "campaign.toml"
    path.write_text(text)
    return path


def received(box: Sandbox) -> collections.Counter[tuple[str, str]]:
    return collections.Counter(
        (provider, str(to))
        for provider in CHANNELS.values()
        for m in box.servers[provider].messages
        for to in (m["to"] if isinstance(m["to"], list) else [m["to"]])
    )


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_campaign_finishes_when_the_server_restarts_in_the_middle_of_the_send(
    server: Server, tmp_path: Path, mode: str
) -> None:
    url = server.new_database()
    with Sandbox(providers=list(CHANNELS.values())) as box:
        config = write_campaign(tmp_path, box, N)
        tokens = {f"{c.upper()}_API_TOKEN": box.servers[p].token for c, p in CHANNELS.items()}
        pipeline = Pipeline.from_file(
            config,
            plugins=get_plugin_manager(load_entrypoints=False),
            env={**tokens, "CAMPAIGNKIT_LEDGER_URL": url},
            rehearsal=False,
        )
        outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                outcome["report"] = pipeline.run(logical_date=LOGICAL_DATE)
            except BaseException as exc:  # shown by the assertion below
                outcome["error"] = exc

        runner = threading.Thread(target=run)
        runner.start()
        deadline = time.monotonic() + 30
        while sum(received(box).values()) < N // 2 and time.monotonic() < deadline:
            if not runner.is_alive():
                break
            time.sleep(0.005)
        at = sum(received(box).values())
        server.restart(mode)
        runner.join(60)
        got = received(box)
    assert "error" not in outcome, outcome.get("error")
    assert at, outcome["report"].to_dict()
    assert N // 2 <= at < 2 * N  # restarted in the middle of the send
    report = outcome["report"]
    assert str(report.status) == "succeeded"
    assert {name: r.sent for name, r in report.channels.items()} == dict.fromkeys(CHANNELS, N)
    assert len(got) == 2 * N and max(got.values()) == 1  # each once, nobody skipped
    rows = sql(url, "SELECT state, count(*) FROM deliveries GROUP BY state")
    assert rows == [("sent", 2 * N)]


def test_an_interrupt_during_a_statement_is_an_interrupt_not_a_ledger_error(
    postgres_url: str,
) -> None:
    """Ctrl-C (or a SIGTERM turned into KeyboardInterrupt) during a statement: psycopg
    cancels it on the server and the ledger lets the KeyboardInterrupt through at once
    (never retried as a broken connection, never turned into a LedgerError that a
    caller might log and carry on after)."""
    import _thread

    ledger = open_ledger(postgres_url, schema=f"t_{secrets.token_hex(6)}")
    # Python's own Ctrl-C handler, whatever an earlier test left installed.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        threading.Timer(0.5, _thread.interrupt_main).start()
        started = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            ledger._do(lambda conn: conn.execute("SELECT pg_sleep(10)"))  # type: ignore[attr-defined]
        assert time.monotonic() - started < 5
    finally:
        signal.signal(signal.SIGINT, previous)
        ledger.close()
