"""The ledger's bulk writes keep the per-row semantics: plan rules (against a model),
statements over lists of deliveries (both backends), and the schema 3 migration."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignkit import DeliveryResult, DeliveryStatus, Recipient
from campaignkit._ledger import SCHEMA_VERSION, Ledger, PlanRules, SqliteLedger, _sql
from campaignkit._ledger._schema import MIGRATIONS
from conftest import Backend

DAY = datetime(2026, 1, 1, tzinfo=UTC)
FUTURE = 4_000_000_000.0


def begin(ledger: Ledger, run_id: str, n: int) -> None:
    ledger.begin_run(
        run_id=run_id,
        pipeline="p",
        logical_date=DAY,
        fingerprint="f",
        config_file=None,
        max_active_runs=None,
    )
    ledger.write_snapshot(run_id, (Recipient(f"c{i}") for i in range(n)))


def plan_all(ledger: Ledger, run_id: str, channel: str, n: int) -> None:
    """Every recipient pending, each with its own address."""
    rows = ((s, None, f"u{s}@x.com", False, None) for s in range(n))
    ledger.plan(run_id, channel, rows, PlanRules(kind="email"))


def states(ledger: Ledger, run_id: str, channel: str) -> dict[int, tuple[str, str | None]]:
    return {
        int(r.recipient_id[1:]): (r.status.value, r.reason)
        for r in ledger.deliveries(run_id, channel)
    }


def columns(backend: Backend, run_id: str, channel: str) -> dict[int, tuple[Any, ...]]:
    rows = backend.sql(
        "SELECT d.seq, d.state, d.reason, d.attempts, d.transient, d.provider_message_id, "
        "d.error_code, d.error, d.batch FROM deliveries d JOIN runs r ON r.id = d.run "
        "JOIN channels c ON c.run = d.run AND c.code = d.channel "
        "WHERE r.run_id = ? AND c.channel = ?",
        (run_id, channel),
    )
    return {row[0]: tuple(row[1:]) for row in rows}


# -- plan rules against a model ------------------------------------------------------------
ADDRESSES = ["a@example.com", "A@Example.com", "b@example.com", "+15005550006", None]
row = st.tuples(
    st.sampled_from([None, None, None, "no_consent"]),
    st.sampled_from(ADDRESSES),
    st.booleans(),
    st.sampled_from([None, None, 0.0, FUTURE]),
)


def key(kind: str, address: str | None) -> str | None:
    """How the rules compare addresses (ASCII here, as SQLite's ``lower``)."""
    if address is None or kind != "email":
        return address
    return address.lower()


def model(
    kind: str,
    rows: list[tuple[str | None, str | None, bool, float | None]],
    suppressed: set[str],
    history: dict[str | None, int],
    rules: PlanRules,
    now: float,
) -> dict[int, tuple[str, str | None]]:
    out: dict[int, tuple[str, str | None]] = {
        seq: (("skipped", reason) if reason else ("pending", None))
        for seq, (reason, *_) in enumerate(rows)
    }

    def live() -> list[int]:
        return [s for s, (state, _) in out.items() if state == "pending"]

    for s in live():
        k = key(kind, rows[s][1])
        if k is not None and k in suppressed:
            out[s] = ("skipped", "suppressed")
    first: set[str | None] = set()
    for s in live():
        k = key(kind, rows[s][1])
        if k in first:
            out[s] = ("skipped", "duplicate")
        first.add(k)
    for s in live():
        if rows[s][2]:
            out[s] = ("skipped", "filtered")
    if rules.cap is not None:
        for s in live():
            k = key(kind, rows[s][1])
            if k is not None and history.get(k, 0) >= rules.cap:
                out[s] = ("skipped", "frequency_capped")
    if rules.target is not None:
        order = sorted(live())
        if rules.sample_seed is not None:
            salt = rules.sample_seed % 4294967296
            order.sort(key=lambda s: ((s * 2654435761 + salt) % 4294967296, s))
        for s in order[rules.target :]:
            out[s] = ("skipped", "over_target")
    for s in live():
        not_before = rows[s][3]
        if not_before is not None and not_before > now:
            out[s] = ("deferred", "deferred")
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    kind=st.sampled_from(["email", "phone"]),
    rows=st.lists(row, max_size=14),
    history_rows=st.lists(st.sampled_from(ADDRESSES), max_size=8),
    other_channel_rows=st.lists(st.sampled_from(ADDRESSES), max_size=4),
    suppressed=st.sets(st.sampled_from([a for a in ADDRESSES if a]), max_size=2),
    cap=st.one_of(st.none(), st.integers(1, 2)),
    window_open=st.booleans(),
    target=st.one_of(st.none(), st.integers(0, 6)),
    seed=st.one_of(st.none(), st.integers(0, 2**40)),
)
def test_plan_rules_match_the_model(
    backend: Backend,
    kind: str,
    rows: list[tuple[str | None, str | None, bool, float | None]],
    history_rows: list[str | None],
    other_channel_rows: list[str | None],
    suppressed: set[str],
    cap: int | None,
    window_open: bool,
    target: int | None,
    seed: int | None,
) -> None:
    ledger = backend.fresh().open()
    # Earlier runs: sends on this channel name count for the cap, others do not.
    for run_id, channel, addresses in (
        ("h1", "ch", history_rows),
        ("h2", "other", other_channel_rows),
    ):
        begin(ledger, run_id, len(addresses))
        ledger.plan(
            run_id,
            channel,
            ((s, None, a, False, None) for s, a in enumerate(addresses)),
            PlanRules(kind="phone"),  # exact addresses; repeats are skipped
        )
        seqs = [s for s, *_ in ledger.pending(run_id, channel)]
        ledger.mark_in_flight(run_id, channel, seqs)
        sent = DeliveryResult(channel, "x", DeliveryStatus.SENT, None, "pm", 1)
        ledger.record(run_id, channel, [(s, sent, "sent", False) for s in seqs])
    for address in suppressed:
        ledger.suppress(kind, address, reason="test")
    ledger.flush()
    history: dict[str | None, int] = {}
    for s, (state, _) in states(ledger, "h1", "ch").items():
        if state == "sent":  # (the duplicate rule skipped some of them)
            k = key(kind, history_rows[s])
            history[k] = history.get(k, 0) + 1
    rules = PlanRules(
        kind=kind,
        cap=cap,
        cap_since=0.0 if window_open else FUTURE,
        target=target,
        sample_seed=seed,
    )
    begin(ledger, "r", len(rows))
    now = time.time()
    ledger.plan("r", "ch", ((s, *r) for s, r in enumerate(rows)), rules)
    expected = model(
        kind,
        rows,
        suppressed,  # stored as given (normalized by the caller)
        history if window_open else {},
        rules,
        now,
    )
    assert states(ledger, "r", "ch") == expected
    assert ledger.is_planned("r", "ch")
    ledger.close()


def test_plan_of_a_channel_that_was_planned_before_replaces_its_rows(backend: Backend) -> None:
    ledger = backend.open()
    begin(ledger, "r", 3)
    rules = PlanRules(kind="email")
    ledger.plan("r", "e", ((s, None, f"u{s}@x.com", True, FUTURE) for s in range(3)), rules)
    assert set(states(ledger, "r", "e").values()) == {("skipped", "filtered")}
    ledger.plan("r", "e", ((s, None, f"u{s}@x.com", False, None) for s in range(3)), rules)
    assert set(states(ledger, "r", "e").values()) == {("pending", None)}
    ledger.close()


# -- in-flight marks and outcomes by list ---------------------------------------------------
def outcome(i: int) -> tuple[str, DeliveryResult, bool]:
    """A few shared outcomes and some unique ones (a provider id per message)."""
    if i == 0:
        return "sent", DeliveryResult("e", "x", DeliveryStatus.SENT, None, "batch-id", 1), False
    if i == 1:
        result = DeliveryResult("e", "x", DeliveryStatus.FAILED, "permanent_error", None, 2, "21")
        return "failed", result, False
    if i == 2:
        result = DeliveryResult("e", "x", DeliveryStatus.PENDING, None, None, 1, "503", "busy")
        return "pending", result, False
    if i == 3:
        result = DeliveryResult("e", "x", DeliveryStatus.FAILED, "permanent_error", None, 3, "503")
        return "failed", result, True
    return "sent", DeliveryResult("e", "x", DeliveryStatus.SENT, None, f"id-{i}", 1), False


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    n=st.integers(1, 40),
    batches=st.lists(
        st.lists(st.tuples(st.integers(0, 39), st.integers(0, 8)), min_size=1, max_size=20),
        max_size=4,
    ),
    in_max=st.sampled_from([1, 2, 4, 512]),
)
def test_marks_and_outcomes_by_list_match_one_update_per_row(
    backend: Backend, n: int, batches: list[list[tuple[int, int]]], in_max: int
) -> None:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(_sql, "IN_MAX", in_max)  # lists of a few values: many of them
        store = backend.fresh()
        ledger = store.open()
        begin(ledger, "r", n)
        plan_all(ledger, "r", "e", n)
        initial: tuple[Any, ...] = ("pending", None, 0, 0, None, None, None, None)
        expected = dict.fromkeys(range(n), initial)
        for batch in batches:
            entries = [(s % n, o) for s, o in batch]
            seqs = list(dict.fromkeys(s for s, _ in entries))  # unique, in order
            ledger.mark_in_flight("r", "e", seqs)
            first = min(seqs)
            for s in seqs:  # a delivery keeps the batch id it was first sent under
                kept = expected[s][7] if expected[s][7] is not None else first
                expected[s] = ("in_flight", *expected[s][1:7], kept)
            rows = []
            for s, o in entries:  # a seq may come twice: its last outcome stays
                state, result, transient = outcome(o)
                rows.append((s, result, state, transient))
                expected[s] = (
                    state,
                    result.reason,
                    result.attempts,
                    int(transient),
                    result.provider_message_id,
                    result.error_code,
                    result.error,
                    expected[s][7],
                )
            ledger.record("r", "e", rows)
        ledger.flush()
        assert columns(store, "r", "e") == expected
        ledger.close()


def test_large_batches_cross_the_list_size(backend: Backend) -> None:
    ledger = backend.open()
    n = 1500
    begin(ledger, "r", n)
    plan_all(ledger, "r", "e", n)
    seqs = list(range(3, n, 2))  # 749, not contiguous: two lists of 512
    ledger.mark_in_flight("r", "e", seqs)
    got = columns(backend, "r", "e")
    assert {s for s, c in got.items() if c[0] == "in_flight"} == set(seqs)
    assert {got[s][-1] for s in seqs} == {3}
    sent = DeliveryResult("e", "x", DeliveryStatus.SENT, None, "batch-id", 1)
    ledger.record("r", "e", [(s, sent, "sent", False) for s in seqs[:700]])
    failed = outcome(1)[1]
    ledger.record("r", "e", [(s, failed, "failed", False) for s in seqs[700:]])
    ledger.flush()
    counts = ledger.counts("r", "e")
    assert (counts["sent"], counts["failed"], counts["pending"]) == (700, 49, n - 749)
    assert ledger.resolve_in_flight("r", "e", resend=False) == 0
    ledger.close()


def test_mark_in_flight_of_nothing_still_waits_for_queued_outcomes(backend: Backend) -> None:
    ledger = backend.open()
    begin(ledger, "r", 2)
    plan_all(ledger, "r", "e", 2)
    ledger.mark_in_flight("r", "e", [0])
    ledger.record("r", "e", [(0, outcome(0)[1], "sent", False)])
    ledger.mark_in_flight("r", "e", [])
    assert columns(backend, "r", "e")[0][0] == "sent"  # committed before it returned
    ledger.close()


# -- schema 3 ----------------------------------------------------------------------------
def v2_ledger(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    for v in (1, 2):
        for statement in MIGRATIONS[v].split(";"):
            if statement.strip():
                conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    conn.execute(
        "INSERT INTO runs (id, run_id, pipeline, logical_date, status, fingerprint, created_at) "
        "VALUES (1, 'old', 'p', '2026-01-01T00:00:00.000000Z', 'cancelled', 'f', "
        "'2026-01-01T00:00:00.000000Z')"
    )
    conn.execute("INSERT INTO channels VALUES (1, 'e', 0, 1)")
    for seq, state in enumerate(["sent", "pending", "in_flight", "skipped"]):
        conn.execute(
            "INSERT INTO recipients VALUES (1, ?, ?, ?)",
            (seq, f"c{seq}", __import__("marshal").dumps((None,) * 5 + (seq,))),
        )
        conn.execute(
            "INSERT INTO deliveries (run, channel, seq, state, address) VALUES (1, 0, ?, ?, ?)",
            (seq, state, f"u{seq}@x.com"),
        )
    conn.close()


def test_a_schema_2_ledger_is_migrated_and_keeps_its_deliveries(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    v2_ledger(path)
    ledger = SqliteLedger(path)
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    indexes = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert not {i for i in indexes if i.startswith("deliveries_")}
    conn.close()
    assert states(ledger, "old", "e") == {
        0: ("sent", None),
        1: ("pending", None),
        2: ("in_flight", None),
        3: ("skipped", None),
    }
    assert ledger.resolve_in_flight("old", "e", resend=True) == 1
    assert [s for s, *_ in ledger.pending("old", "e")] == [1, 2]
    ledger.close()


def test_hot_queries_stay_within_the_run(tmp_path: Path) -> None:
    """Every query on deliveries finds its rows by primary key: never a scan of the
    whole table (all runs), nor a sort for the report."""
    path = tmp_path / "l.db"
    ledger = SqliteLedger(path)
    begin(ledger, "r", 3)
    plan_all(ledger, "r", "e", 3)
    statements: list[str] = []
    conn = sqlite3.connect(path)
    for traced in (ledger._read, ledger._write):  # reads, and the writes callers wait for
        traced.set_trace_callback(statements.append)
    ledger.plan(
        "r",
        "e",
        ((s, None, f"u{s}@x.com", s == 1, FUTURE if s == 2 else None) for s in range(3)),
        PlanRules("email", cap=1, target=1, sample_seed=3),
    )
    ledger.release_deferred("r", "e")
    ledger.next_deferred("r")
    ledger.resolve_in_flight("r", "e", resend=False)
    ledger.requeue("r", "e", failed=True, unknown=True)
    ledger.counts("r", "e")
    for traced in (ledger._read, ledger._write):
        traced.set_trace_callback(None)
    plans = []
    for sql in statements:
        if "deliveries" not in sql or sql.startswith(("INSERT", "BEGIN", "COMMIT")):
            continue
        plan = [r[3] for r in conn.execute(f"EXPLAIN QUERY PLAN {sql}")]
        plans.append(plan)
        for step in plan:
            assert not step.startswith("SCAN d") and step != "SCAN deliveries", (sql, plan)
    assert len(plans) >= 10
    ledger.close()
    conn.close()
