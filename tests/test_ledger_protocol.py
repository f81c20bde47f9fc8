"""The ledger package's contracts: the ``Ledger`` protocol is what callers use and what
``SqliteLedger`` implements; reads go through connections that refuse writes.

(mypy checks ``SqliteLedger`` and ``PostgresLedger`` against ``Ledger`` in the source:
``open_ledger`` returns either as the other.)
"""

from __future__ import annotations

import inspect
import re
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

import campaignkit
from campaignkit import DeliveryResult, DeliveryStatus, Recipient
from campaignkit._ledger import (
    Ledger,
    LedgerError,
    PlanRules,
    PostgresLedger,
    ShardedLedger,
    SqliteLedger,
    connect,
    open_ledger,
)

SRC = Path(campaignkit.__file__).parent
DAY = datetime(2026, 1, 1, tzinfo=UTC)
WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE", "CREATE", "DROP", "ALTER")


def members(cls: type) -> set[str]:
    return {name for name in vars(cls) if not name.startswith("_")}


@pytest.mark.parametrize("backend", [SqliteLedger, PostgresLedger], ids=["sqlite", "postgres"])
def test_sqlite_ledger_has_every_protocol_member_with_its_signature(backend: type) -> None:
    for name in members(Ledger):
        expected, actual = getattr(Ledger, name), getattr(backend, name)
        if isinstance(expected, property):
            assert isinstance(actual, property), name
            continue
        assert inspect.signature(actual) == inspect.signature(expected), name


def test_the_protocol_names_no_database() -> None:
    for name in members(Ledger):
        member = getattr(Ledger, name)
        function = member.fget if isinstance(member, property) else member
        for annotation in function.__annotations__.values():
            assert "sqlite" not in str(annotation).lower(), (name, annotation)


def test_callers_use_only_what_the_protocol_has() -> None:
    """Every method called on a ledger outside the ledger package is in the protocol
    (a second backend then serves every caller)."""
    called: set[str] = set()
    sharding: set[str] = set()
    for path in SRC.rglob("*.py"):
        if "_ledger" in path.relative_to(SRC).parts[:1]:
            continue
        calls = set(re.findall(r"\bledger(?:\(\))?\.([a-z_]+)\(", path.read_text()))
        if path.name in SHARDED_CALLERS:
            sharding |= calls - members(Ledger)
        else:
            called |= calls
    assert called, "no calls found: the pattern no longer matches the callers"
    assert called <= members(Ledger), called - members(Ledger)
    # The workers' calls (after sharded(ledger) said it can) are ShardedLedger's, which
    # the PostgreSQL ledger has.
    assert sharding, "no sharded calls found: the pattern no longer matches the workers"
    assert sharding <= members(ShardedLedger), sharding - members(ShardedLedger)
    assert members(ShardedLedger) <= set(dir(PostgresLedger))


#: Modules that call a ledger's sharding methods (on a ShardedLedger).
SHARDED_CALLERS = {"_workers.py", "_run_steps.py"}


def test_open_ledger_opens_the_sqlite_ledger(tmp_path: Path) -> None:
    ledger = open_ledger(tmp_path / "l.db")
    try:
        assert isinstance(ledger, SqliteLedger)
        assert ledger.location == str(tmp_path / "l.db")
        assert ledger.list_runs() == []
    finally:
        ledger.close()


def test_open_ledger_opens_sqlite_by_url_or_path(tmp_path: Path) -> None:
    for location in (f"sqlite:///{tmp_path}/u.db", tmp_path / "p.db", str(tmp_path / "s.db")):
        ledger = open_ledger(location)
        try:
            assert isinstance(ledger, SqliteLedger)
            assert Path(ledger.location).name == Path(str(location)).name
        finally:
            ledger.close()
    with pytest.raises(LedgerError, match="no schemas"):
        open_ledger(tmp_path / "x.db", schema="s")
    with pytest.raises(LedgerError, match="sqlite:///path"):
        open_ledger("sqlite://memory")


def test_open_ledger_opens_the_postgres_ledger(postgres_url: str) -> None:
    for url in (postgres_url, postgres_url.replace("postgresql://", "postgres://", 1)):
        ledger = open_ledger(url, schema="opened", durable=False)
        try:
            assert isinstance(ledger, PostgresLedger)
            assert ledger.location.endswith("(schema opened)")
            assert ledger.list_runs() == []
        finally:
            ledger.close()


def test_a_password_in_the_url_never_shows(postgres_url: str) -> None:
    """Not in repr, location or an error: the server refuses the password here (or
    trusts it: then the schema name is refused before any statement)."""
    password = "s3cr3t-Pa55word"
    url = postgres_url.replace("://", f"://postgres:{password}@", 1)
    url = url.replace("@postgres@", "@")  # (a URL with a user already)
    refused = ""
    try:
        ledger = open_ledger(url, schema="pw")
    except LedgerError as exc:
        refused = str(exc)
    if refused:
        assert password not in refused and "***" in refused
    else:
        try:
            shown = f"{ledger!r} {ledger.location}"
            assert password not in shown and ":***@" in shown
            with pytest.raises(LedgerError) as error:
                ledger.get_run("nope")
            assert password not in str(error.value)
        finally:
            ledger.close()
    with pytest.raises(LedgerError) as unreachable:
        open_ledger(f"postgresql://u:{password}@127.0.0.1:1/db?connect_timeout=2")
    assert password not in str(unreachable.value)
    assert "u:***@127.0.0.1:1" in str(unreachable.value)


def test_without_the_extra_a_postgres_url_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(LedgerError, match=re.escape("pip install 'campaignkit[postgres]'")):
        open_ledger("postgresql://u:pw@127.0.0.1:1/db")


def test_importing_campaignkit_does_not_import_psycopg() -> None:
    code = (
        "import sys, campaignkit, campaignkit._ledger, campaignkit.cli\n"
        "assert not [m for m in sys.modules if m.startswith('psycopg')], sorted(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_read_only_connection_refuses_a_write(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    SqliteLedger(path).close()
    reader, writer = connect(path, readonly=True), connect(path)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            reader.execute("INSERT INTO suppressions VALUES ('email', 'a@x.com', 'r', NULL, 't')")
        with writer:
            writer.execute("INSERT INTO suppressions VALUES ('email', 'a@x.com', 'r', NULL, 't')")
        assert reader.execute("SELECT COUNT(*) FROM suppressions").fetchone()[0] == 1
    finally:
        reader.close()
        writer.close()


def test_the_ledger_reads_through_a_connection_that_never_writes(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "l.db")
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        ledger._read.execute("DELETE FROM runs")
    statements: list[str] = []
    ledger._read.set_trace_callback(statements.append)
    ledger.begin_run(
        run_id="r",
        pipeline="p",
        logical_date=DAY,
        fingerprint="f",
        config_file=None,
        max_active_runs=1,
    )
    recipients = [Recipient(f"c{i}", f"u{i}@x.com", None, None, {}, {}, i + 2) for i in range(3)]
    ledger.write_snapshot("r", recipients)
    rows = [(seq, None, r.email, False, None) for seq, r in ledger.snapshot("r")]
    ledger.plan("r", "e", rows, PlanRules("email", cap=1, cap_since=0.0, target=2))
    ledger.release_deferred("r", "e")
    for delivery in list(ledger.pending("r", "e")):  # named values
        seq = delivery.seq
        assert delivery.address == delivery.recipient.email
        ledger.mark_in_flight("r", "e", [seq])
        sent = DeliveryResult("e", f"c{seq}", DeliveryStatus.SENT, None, f"m{seq}", 1)
        ledger.record("r", "e", [(seq, sent, "sent", False)])
    ledger.suppress("email", "u0@x.com", reason="bounce")
    ledger.requeue("r", "e", failed=True, unknown=True)
    ledger.resolve_in_flight("r", "e", resend=False)
    counts = ledger.counts("r", "e")
    assert counts.states == {"sent": 2, "skipped": 1}
    assert counts.reasons == {"over_target": 1}
    assert ledger.owed("r", ["e"], failed=True, unknown=True) == 0
    assert [s.address for s in ledger.suppressions()] == ["u0@x.com"]
    assert len(list(ledger.deliveries("r"))) == 3
    ledger.finish_run("r", "succeeded", "{}")
    assert ledger.get_run("r").status == "succeeded"
    ledger._read.set_trace_callback(None)
    ledger.close()
    assert statements
    assert not [s for s in statements if s.lstrip().upper().startswith(WRITES)]
