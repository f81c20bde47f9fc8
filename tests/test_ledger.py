"""The ledger: schema, runs, snapshot, delivery state machine (hypothesis); on both
backends (the ``backend`` fixture) except where a test is about SQLite's file."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from campaignkit import DeliveryResult, DeliveryStatus, Recipient
from campaignkit._ledger import (
    SCHEMA_VERSION,
    Ledger,
    LedgerError,
    MaxActiveRunsReached,
    PlanRules,
    RunInProgress,
    RunOwnershipLost,
    SqliteLedger,
    open_ledger,
)
from campaignkit._ledger._postgres import SCHEMA_VERSION as PG_SCHEMA_VERSION
from conftest import Backend

DAY = datetime(2026, 1, 1, tzinfo=UTC)


def begin(ledger: Ledger, run_id: str = "r1", **kw: object) -> None:
    ledger.begin_run(
        run_id=run_id,
        pipeline=str(kw.get("pipeline", "p")),
        logical_date=DAY,
        fingerprint="f",
        config_file=None,
        max_active_runs=kw.get("max_active_runs"),
    )  # type: ignore[arg-type]


def people(n: int) -> list[Recipient]:
    return [
        Recipient(
            f"c{i}",
            f"u{i}@example.com",
            None,
            None,
            {"first_name": f"N{i}"},
            {"email": True},
            i + 2,
        )
        for i in range(n)
    ]


def test_schema_is_versioned_and_a_newer_one_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    SqliteLedger(path).close()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(LedgerError, match="newer than this campaignkit"):
        SqliteLedger(path)


def test_a_newer_postgres_schema_is_refused(postgres_url: str) -> None:
    backend = Backend("postgres", postgres_url, "newer", Path())
    backend.open().close()
    assert backend.sql("SELECT version FROM schema_version") == [(PG_SCHEMA_VERSION,)]
    backend.sql("UPDATE schema_version SET version = ?", (PG_SCHEMA_VERSION + 1,))
    with pytest.raises(LedgerError, match="newer than this campaignkit"):
        backend.open()


def test_not_a_database(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LedgerError, match="cannot open the ledger"):
        SqliteLedger(path)


def test_snapshot_round_trip_and_order(backend: Backend) -> None:
    ledger = backend.open()
    begin(ledger)
    rs = people(4500)
    assert ledger.write_snapshot("r1", iter(rs)) == 4500
    back = list(ledger.snapshot("r1"))
    assert [s for s, _ in back] == list(range(4500))
    assert [r for _, r in back] == rs
    ledger.close()


def test_snapshot_is_all_or_nothing(backend: Backend) -> None:
    ledger = backend.open()
    begin(ledger)

    def broken() -> object:
        yield from people(10)
        raise RuntimeError("source broke at line 12")

    with pytest.raises(RuntimeError):
        ledger.write_snapshot("r1", broken())  # type: ignore[arg-type]
    assert not ledger.has_snapshot("r1")
    assert list(ledger.snapshot("r1")) == []
    ledger.close()


def test_max_active_runs_counts_live_running_runs(backend: Backend) -> None:
    ledger = backend.open()
    begin(ledger, "a", max_active_runs=1)
    with pytest.raises(MaxActiveRunsReached, match="max_active_runs=1"):
        begin(ledger, "b", max_active_runs=1)
    begin(ledger, "other", pipeline="q", max_active_runs=1)  # per pipeline
    ledger.finish_run("a", "succeeded", "{}")
    begin(ledger, "b", max_active_runs=1)
    with pytest.raises(RunInProgress, match=r"run 'b' is being run by process \d+"):
        begin(ledger, "b")
    ledger.finish_run("b", "succeeded", "{}")
    with pytest.raises(LedgerError, match="already exists"):
        begin(ledger, "b")
    ledger.close()


def test_run_of_a_dead_process_is_not_active_and_can_be_claimed(backend: Backend) -> None:
    ledger = backend.open()
    begin(ledger, "a", max_active_runs=1)
    # A run recorded by a process that is gone (no such pid).
    backend.sql("UPDATE runs SET pid = 999999999, owner = NULL WHERE run_id = 'a'")
    begin(ledger, "b", max_active_runs=2)
    assert ledger.claim_run("a").status == "running"
    ledger.close()


def test_only_the_owner_marks_in_flight(backend: Backend) -> None:
    """The fence: a ledger whose run another process took over (or that never claimed
    it) marks nothing, and says so."""
    first = backend.open()
    begin(first, "r")
    first.write_snapshot("r", iter(people(3)))
    rows = ((s, None, f"u{s}@example.com", False, None) for s in range(3))
    first.plan("r", "email", rows, PlanRules(kind="email"))
    first.mark_in_flight("r", "email", [0])
    second = backend.open()
    with pytest.raises(RunOwnershipLost):
        second.mark_in_flight("r", "email", [1])  # never claimed it
    # The first owner is taken for gone (no such pid): the second takes the run over.
    backend.sql("UPDATE runs SET pid = 999999999, owner = NULL WHERE run_id = 'r'")
    second.claim_run("r")
    with pytest.raises(RunOwnershipLost):
        first.mark_in_flight("r", "email", [2])
    second.mark_in_flight("r", "email", [1])
    assert second.counts("r", "email").states == {"in_flight": 2, "pending": 1}
    with pytest.raises(RunOwnershipLost):
        first.finish_run("r", "succeeded", "{}")
    first.close()
    second.close()


def test_plan_rules_consult_the_history_ledger(backend: Backend) -> None:
    """A dry run plans in a scratch ledger against the real one's suppression list and
    send history (another SQLite file; another schema of the same database)."""
    real = backend.open()
    begin(real, "h")
    real.write_snapshot("h", iter(people(2)))
    real.plan(
        "h",
        "email",
        ((s, None, f"u{s}@example.com", False, None) for s in range(2)),
        PlanRules(kind="email"),
    )
    real.mark_in_flight("h", "email", [0])
    real.record("h", "email", [(0, result(0, DeliveryStatus.SENT), "sent", False)])
    real.suppress("email", "u1@example.com", reason="bounce")
    real.finish_run("h", "succeeded", "{}")
    real.close()
    scratch_store = backend.fresh()
    past = backend.location if backend.schema is None else backend.schema
    scratch = scratch_store.open(durable=False, history=past)
    begin(scratch, "r")
    scratch.write_snapshot("r", iter(people(3)))
    rows = ((s, None, f"u{s}@example.com", False, None) for s in range(3))
    scratch.plan("r", "email", rows, PlanRules(kind="email", cap=1, cap_since=0.0))
    assert scratch.counts("r", "email").reasons == {"frequency_capped": 1, "suppressed": 1}
    assert scratch.suppressions() == []
    scratch.close()


def result(seq: int, status: DeliveryStatus, *, code: str | None = None) -> DeliveryResult:
    return DeliveryResult(
        "email", f"c{seq}", status, None, "pm" if status == "sent" else None, 1, code
    )


class LedgerMachine(RuleBasedStateMachine):
    """Any interleaving of plan / in-flight / outcome / crash-resolution / requeue keeps
    the ledger's invariants: every recipient has exactly one row, sent is final and is
    never re-queued, permanent failures are never re-queued."""

    N = 12

    def __init__(self, backend: Backend) -> None:
        super().__init__()
        self.ledger = backend.fresh().open()
        begin(self.ledger)
        self.ledger.write_snapshot("r1", iter(people(self.N)))
        self.model: dict[int, str] = {}
        self.transient: dict[int, bool] = {}

    @initialize(skips=st.sets(st.integers(0, N - 1), max_size=4))
    def plan(self, skips: set[int]) -> None:
        self.ledger.plan(
            "r1",
            "email",
            (
                (s, "no_consent" if s in skips else None, f"u{s}@example.com", False, None)
                for s in range(self.N)
            ),
            PlanRules(kind="email"),
        )
        self.model = {s: ("skipped" if s in skips else "pending") for s in range(self.N)}
        self.transient = dict.fromkeys(range(self.N), False)

    def _with(self, state: str) -> list[int]:
        return sorted(s for s, v in self.model.items() if v == state)

    @rule(data=st.data())
    def send_some(self, data: st.DataObject) -> None:
        pending = [s for s, *_ in self.ledger.pending("r1", "email")]
        assert pending == self._with("pending")
        if not pending:
            return
        batch = data.draw(st.lists(st.sampled_from(pending), min_size=1, max_size=4, unique=True))
        self.ledger.mark_in_flight("r1", "email", batch)
        for s in batch:
            self.model[s] = "in_flight"
        outcome = data.draw(st.sampled_from(["sent", "failed", "transient", "exhausted", "crash"]))
        if outcome == "crash":
            return  # no outcome recorded: stays in flight
        rows = []
        for s in batch:
            if outcome == "sent":
                rows.append((s, result(s, DeliveryStatus.SENT), "sent", False))
                self.model[s] = "sent"
            elif outcome == "failed":
                rows.append((s, result(s, DeliveryStatus.FAILED, code="21211"), "failed", False))
                self.model[s], self.transient[s] = "failed", False
            elif outcome == "transient":
                rows.append((s, result(s, DeliveryStatus.PENDING, code="503"), "pending", False))
                self.model[s] = "pending"
            else:
                rows.append((s, result(s, DeliveryStatus.FAILED, code="503"), "failed", True))
                self.model[s], self.transient[s] = "failed", True
        self.ledger.record("r1", "email", rows)

    @rule(resend=st.booleans())
    def crash_and_resolve(self, resend: bool) -> None:
        n = self.ledger.resolve_in_flight("r1", "email", resend=resend)
        assert n == len(self._with("in_flight"))
        for s in self._with("in_flight"):
            self.model[s] = "pending" if resend else "unknown"

    @rule(failed=st.booleans(), unknown=st.booleans())
    def requeue(self, failed: bool, unknown: bool) -> None:
        expected = 0
        for s, v in list(self.model.items()):
            if (failed and v == "failed" and self.transient[s]) or (unknown and v == "unknown"):
                self.model[s] = "pending"
                expected += 1
        assert self.ledger.requeue("r1", "email", failed=failed, unknown=unknown) == expected

    @invariant()
    def rows_match_the_model(self) -> None:
        if not self.model:
            return
        rows = {
            int(r.recipient_id[1:]): r.status.value for r in self.ledger.deliveries("r1", "email")
        }
        assert rows == self.model
        counts = self.ledger.counts("r1", "email")
        assert counts.total == self.N

    def teardown(self) -> None:
        self.ledger.close()


def test_ledger_machine(backend: Backend) -> None:
    run_state_machine_as_test(
        lambda: LedgerMachine(backend),
        settings=settings(max_examples=60, stateful_step_count=20, deadline=None),
    )


def _open_at(path: str, start: float, schema: str | None = None) -> str:
    while time.time() < start:
        time.sleep(0.001)
    try:
        open_ledger(path, schema=schema).close()
    except LedgerError as exc:
        return str(exc)
    return "ok"


def test_processes_opening_a_new_ledger_at_once_all_open_it(backend: Backend) -> None:
    """A new ledger is switched to WAL (SQLite) and migrated by whichever process comes
    first; the others wait for it (they once failed with 'database is locked')."""
    import multiprocessing

    for _attempt in range(1):
        new = backend.fresh()
        start = time.time() + 0.5
        with multiprocessing.get_context("spawn").Pool(8) as pool:
            got = pool.starmap(_open_at, [(new.location, start, new.schema)] * 8)
        assert got == ["ok"] * 8
