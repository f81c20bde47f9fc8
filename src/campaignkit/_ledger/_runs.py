"""Runs in SQLite: their rows, and the writes that decide who owns one.

Each claim (:func:`insert_run`, :func:`take_run`) checks and writes inside the
caller's ``BEGIN IMMEDIATE`` transaction, so that claims are serialised with every
other process's (see :mod:`campaignkit._ledger._claims`).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._states import ACTIVE_STATUSES
from ._claims import Owner, owner_text
from ._errors import LedgerError, MaxActiveRunsReached, RunInProgress
from ._schema import parse_timestamp, timestamp
from ._types import RunRecord, SliceOutcome

__all__ = [
    "SELECT_RUNS",
    "active_runs",
    "busy_message",
    "channel_code",
    "check_claimable",
    "clear_slices",
    "delete_run",
    "find_runs",
    "finish_run",
    "get_run",
    "insert_run",
    "let_go",
    "recent_runs",
    "record_run",
    "record_slice",
    "run_record",
    "take_run",
]

#: The columns :func:`run_record` reads, in its order.
_RUN_COLUMNS = (
    "run_id, pipeline, logical_date, status, fingerprint, config_file, created_at, "
    "finished_at, pid, recipients, report, owner, heartbeat"
)
SELECT_RUNS = "SELECT " + _RUN_COLUMNS + " FROM runs "
_BY_ID = SELECT_RUNS + "WHERE run_id = ?"
_ACTIVE = SELECT_RUNS + "WHERE pipeline = ? AND status = 'running'"
#: The run queries of :func:`active_runs`: (by pipeline, by logical date) -> statement.
_FIND = {
    (False, False): SELECT_RUNS + "ORDER BY id DESC LIMIT ?",
    (True, False): SELECT_RUNS + "WHERE pipeline = ? ORDER BY logical_date, id",
    (True, True): SELECT_RUNS + "WHERE pipeline = ? AND logical_date = ? ORDER BY id",
}
_RECENT = SELECT_RUNS + "WHERE pipeline = ? ORDER BY id DESC LIMIT ?"


def run_record(row: Sequence[Any]) -> RunRecord:
    """A row of :data:`SELECT_RUNS` as a :class:`RunRecord`."""
    return RunRecord(
        run_id=row[0],
        pipeline=row[1],
        logical_date=parse_timestamp(row[2]),  # type: ignore[arg-type]
        status=row[3],
        fingerprint=row[4],
        config_file=row[5],
        created_at=parse_timestamp(row[6]),  # type: ignore[arg-type]
        finished_at=parse_timestamp(row[7]),
        pid=row[8],
        recipients=row[9],
        report=row[10],
        owner=Owner.from_text(row[11]) or Owner.legacy(row[8]),
        heartbeat=row[12],
    )


def get_run(conn: sqlite3.Connection, run_id: str) -> RunRecord | None:
    """The run ``run_id``, if there is one."""
    row = conn.execute(_BY_ID, (run_id,)).fetchone()
    return None if row is None else run_record(row)


def find_runs(
    conn: sqlite3.Connection, pipeline: str, logical_date: datetime | None
) -> list[RunRecord]:
    """Runs of ``pipeline`` (for one logical date if given), oldest first."""
    if logical_date is None:
        rows = conn.execute(_FIND[True, False], (pipeline,))
    else:
        rows = conn.execute(_FIND[True, True], (pipeline, timestamp(logical_date)))
    return [run_record(r) for r in rows]


def recent_runs(conn: sqlite3.Connection, pipeline: str | None, limit: int) -> list[RunRecord]:
    """The most recent runs (of ``pipeline``, or all), newest first."""
    if pipeline is None:
        rows = conn.execute(_FIND[False, False], (limit,))
    else:
        rows = conn.execute(_RECENT, (pipeline, limit))
    return [run_record(r) for r in rows]


def active_runs(conn: sqlite3.Connection, pipeline: str) -> list[RunRecord]:
    """The runs of ``pipeline`` that a live process is sending now."""
    return [
        run for row in conn.execute(_ACTIVE, (pipeline,)) if (run := run_record(row)).in_progress
    ]


def insert_run(
    conn: sqlite3.Connection,
    owner: Owner,
    *,
    run_id: str,
    pipeline: str,
    logical_date: datetime,
    fingerprint: str,
    config_file: str | None,
    max_active_runs: int | None,
) -> None:
    """Record a new ``running`` run owned by ``owner`` (see :meth:`SqliteLedger.begin_run`)."""
    existing = get_run(conn, run_id)
    if existing is not None:
        if existing.in_progress:
            raise RunInProgress(busy_message(existing))
        raise LedgerError(f"run {run_id!r} already exists")
    if max_active_runs is not None:
        active = active_runs(conn, pipeline)
        if len(active) >= max_active_runs:
            names = ", ".join(r.run_id for r in active)
            raise MaxActiveRunsReached(
                f"{pipeline}: max_active_runs={max_active_runs} reached ({names})"
            )
    conn.execute(
        "INSERT INTO runs (run_id, pipeline, logical_date, status, fingerprint, "
        "config_file, created_at, pid, owner) "
        "VALUES (?, ?, ?, 'running', ?, ?, ?, ?, ?)",
        (
            run_id,
            pipeline,
            timestamp(logical_date),
            fingerprint,
            config_file,
            timestamp(datetime.now(UTC)),
            owner.pid,
            owner.to_text(),
        ),
    )


def check_claimable(
    run: RunRecord | None, run_id: str, where: str | Path, *, unfinished: bool = False
) -> None:
    """Raise why ``run`` cannot be claimed now: it does not exist, a live process owns
    it, or (with ``unfinished``) it is not ``running`` any more."""
    if run is None:
        raise LedgerError(f"no run {run_id!r} in {where}")
    if run.in_progress:
        raise RunInProgress(busy_message(run))
    if unfinished and run.status not in ACTIVE_STATUSES:
        raise LedgerError(
            f"run {run_id!r} is finished ({run.status}); reopen it (reopen_run) to "
            "send what it still owes"
        )


def take_run(
    conn: sqlite3.Connection, owner: Owner, run_id: str, path: Path, *, unfinished: bool = False
) -> None:
    """Make ``owner`` the owner of ``run_id`` and mark it ``running`` (see
    :meth:`SqliteLedger.claim_run`); with ``unfinished``, only a ``running`` run."""
    run = get_run(conn, run_id)
    check_claimable(run, run_id, path, unfinished=unfinished)
    conn.execute(
        "UPDATE runs SET status = 'running', pid = ?, owner = ?, finished_at = NULL "
        "WHERE run_id = ?",
        (owner.pid, owner.to_text(), run_id),
    )


def record_run(
    conn: sqlite3.Connection,
    run_id: str,
    pipeline: str,
    logical_date: datetime,
    status: str,
    fingerprint: str,
    report: str | None,
) -> None:
    """Record a finished run that sent nothing."""
    now = timestamp(datetime.now(UTC))
    conn.execute(
        "INSERT INTO runs (run_id, pipeline, logical_date, status, fingerprint, "
        "created_at, finished_at, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (run_id, pipeline, timestamp(logical_date), status, fingerprint, now, now, report),
    )


def finish_run(
    conn: sqlite3.Connection, run_id: str, status: str, report: str, owner: Owner | None
) -> bool:
    """Record a run's final status and report if ``owner`` still owns it; returns
    whether it did."""
    return bool(
        conn.execute(
            "UPDATE runs SET status = ?, finished_at = ?, report = ?, pid = NULL, "
            "owner = NULL WHERE run_id = ? AND owner IS ?",
            (status, timestamp(datetime.now(UTC)), report, run_id, owner_text(owner)),
        ).rowcount
    )


def let_go(conn: sqlite3.Connection, run_id: str, owner: Owner) -> None:
    """Record that ``owner`` no longer works on ``run_id`` (if it still owns it): the
    run stays ``running`` and any process may claim it at once, this one's next step
    in another process included. The pid goes too: a run with a pid and no owner is
    one recorded before owners were, owned by that pid while it runs (so a process
    that let go would still hold the run as long as it lives)."""
    conn.execute(
        "UPDATE runs SET owner = NULL, pid = NULL WHERE run_id = ? AND owner = ?",
        (run_id, owner.to_text()),
    )


def record_slice(conn: sqlite3.Connection, run: int, outcome: SliceOutcome) -> None:
    """Record what a send of one slice did, replacing that slice's earlier outcome."""
    conn.execute(
        "INSERT OR REPLACE INTO slices (run, channel, slice_index, slice_count, outcome) "
        "VALUES (?, ?, ?, ?, ?)",
        (
            run,
            outcome.channel,
            outcome.slice.index,
            outcome.slice.count,
            json.dumps(outcome.to_dict()),
        ),
    )


def clear_slices(conn: sqlite3.Connection, run: int) -> None:
    """Forget a run's slice outcomes (it is (re)opened for a new attempt)."""
    conn.execute("DELETE FROM slices WHERE run = ?", (run,))


def delete_run(conn: sqlite3.Connection, run: int) -> None:
    """Remove run ``run`` and everything recorded for it."""
    conn.execute("DELETE FROM deliveries WHERE run = ?", (run,))
    conn.execute("DELETE FROM recipients WHERE run = ?", (run,))
    conn.execute("DELETE FROM channels WHERE run = ?", (run,))
    conn.execute("DELETE FROM snapshots WHERE run = ?", (run,))
    conn.execute("DELETE FROM slices WHERE run = ?", (run,))
    conn.execute("DELETE FROM runs WHERE id = ?", (run,))


def channel_code(conn: sqlite3.Connection, run: int, channel: str) -> int:
    """The number that stands for ``channel`` in run ``run``'s deliveries (given on
    first use)."""
    # One statement, so concurrent channels (threads or processes) never get the
    # same code.
    conn.execute(
        "INSERT OR IGNORE INTO channels (run, channel, code) "
        "SELECT ?, ?, COALESCE(MAX(code), -1) + 1 FROM channels WHERE run = ?",
        (run, channel, run),
    )
    (code,) = conn.execute(
        "SELECT code FROM channels WHERE run = ? AND channel = ?", (run, channel)
    ).fetchone()
    return int(code)


def busy_message(run: RunRecord) -> str:
    """Why a run cannot be claimed: a live process owns it."""
    who = run.owner.describe() if run.owner is not None else "another process"
    return f"run {run.run_id!r} is being run by {who}; nothing was done by this one"
