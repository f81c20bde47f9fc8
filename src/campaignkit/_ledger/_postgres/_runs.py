"""Runs in PostgreSQL: their rows, the claims that decide who owns one, the heartbeat.

A claim (:func:`claim` with :func:`insert_run` or :func:`take_run`) is decided in
one transaction: the run's row is locked (``SELECT ... FOR UPDATE``), so of several
processes (on any hosts) claiming at once one gets the run and the others see it
owned; a new run takes an advisory lock on its id, and on its pipeline when
``max_active_runs`` is checked, so that the check and the insert are one step
across hosts. The owner's liveness is :meth:`Owner.alive` (its heartbeat, from
another host), as for SQLite.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from .. import _claims
from .._claims import Owner
from .._errors import LedgerError, MaxActiveRunsReached, RunInProgress
from .._runs import busy_message, check_claimable, run_record
from .._schema import timestamp
from .._types import RunRecord, SliceOutcome
from . import _leases

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    Conn = psycopg.Connection[Any]
    Pool = ConnectionPool[psycopg.Connection[Any]]

    class Do(Protocol):
        """Runs an operation on a connection, ``again`` after a break (``_do``)."""

        def __call__(
            self, op: Callable[[Conn], None], *, again: Callable[[Conn], None] | None = ...
        ) -> None: ...


__all__ = [
    "Heartbeat",
    "channel_code",
    "claim",
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
    "take_run",
]

SELECT_RUNS = (
    "SELECT run_id, pipeline, logical_date, status, fingerprint, config_file, created_at, "
    "finished_at, pid, recipients, report, owner, heartbeat FROM runs "
)
_BY_ID = SELECT_RUNS + "WHERE run_id = %s"
#: An advisory lock of this transaction, on a name within the ledger's schema.
_LOCK = "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || %s, 0))"


def get_run(conn: Conn, run_id: str, *, lock: bool = False) -> RunRecord | None:
    """The run ``run_id``, if there is one (its row locked until commit if ``lock``)."""
    row = conn.execute(_BY_ID + (" FOR UPDATE" if lock else ""), (run_id,)).fetchone()
    return None if row is None else run_record(row)


def find_runs(conn: Conn, pipeline: str, logical_date: datetime | None) -> list[RunRecord]:
    """Runs of ``pipeline`` (for one logical date if given), oldest first."""
    if logical_date is None:
        rows = conn.execute(
            SELECT_RUNS + 'WHERE pipeline = %s ORDER BY logical_date COLLATE "C", id', (pipeline,)
        )
    else:
        rows = conn.execute(
            SELECT_RUNS + "WHERE pipeline = %s AND logical_date = %s ORDER BY id",
            (pipeline, timestamp(logical_date)),
        )
    return [run_record(r) for r in rows]


def recent_runs(conn: Conn, pipeline: str | None, limit: int) -> list[RunRecord]:
    """The most recent runs (of ``pipeline``, or all), newest first."""
    if pipeline is None:
        rows = conn.execute(SELECT_RUNS + "ORDER BY id DESC LIMIT %s", (limit,))
    else:
        rows = conn.execute(
            SELECT_RUNS + "WHERE pipeline = %s ORDER BY id DESC LIMIT %s", (pipeline, limit)
        )
    return [run_record(r) for r in rows]


def insert_run(
    conn: Conn,
    owner: Owner,
    *,
    run_id: str,
    pipeline: str,
    logical_date: datetime,
    fingerprint: str,
    config_file: str | None,
    max_active_runs: int | None,
) -> None:
    """Record a new ``running`` run owned by ``owner`` (see ``begin_run``), in the
    caller's transaction."""
    conn.execute(_LOCK, (":run:" + run_id,))
    existing = get_run(conn, run_id, lock=True)
    if existing is not None:
        if existing.in_progress:
            raise RunInProgress(busy_message(existing))
        raise LedgerError(f"run {run_id!r} already exists")
    if max_active_runs is not None:
        conn.execute(_LOCK, (":pipeline:" + pipeline,))
        rows = conn.execute(SELECT_RUNS + "WHERE pipeline = %s AND status = 'running'", (pipeline,))
        active = [run for row in rows if (run := run_record(row)).in_progress]
        if len(active) >= max_active_runs:
            names = ", ".join(r.run_id for r in active)
            raise MaxActiveRunsReached(
                f"{pipeline}: max_active_runs={max_active_runs} reached ({names})"
            )
    conn.execute(
        "INSERT INTO runs (run_id, pipeline, logical_date, status, fingerprint, "
        "config_file, created_at, pid, owner) "
        "VALUES (%s, %s, %s, 'running', %s, %s, %s, %s, %s)",
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


def take_run(
    conn: Conn, owner: Owner, run_id: str, where: str, *, unfinished: bool = False
) -> None:
    """Make ``owner`` the owner of ``run_id`` and mark it ``running`` (see
    ``claim_run``), in the caller's transaction, the run's row locked; with
    ``unfinished``, only a ``running`` run."""
    run = get_run(conn, run_id, lock=True)
    check_claimable(run, run_id, where, unfinished=unfinished)
    workers = [o for text in _leases.busy_leases(conn, run_id) if (o := Owner.from_text(text))]
    if any(o.alive() for o in workers):
        names = ", ".join(sorted({o.describe() for o in workers}))
        raise RunInProgress(f"run {run_id!r} is being sent by worker(s): {names}")
    conn.execute(
        "UPDATE runs SET status = 'running', pid = %s, owner = %s, finished_at = NULL "
        "WHERE run_id = %s",
        (owner.pid, owner.to_text(), run_id),
    )


def claim(do: Do, run_id: str, decide: Callable[[Conn, Owner], None]) -> Owner:
    """Make this process the owner of ``run_id``: a new :class:`Owner` (held until
    released) if ``decide(conn, owner)``, which checks and writes in one transaction,
    does not raise; what it raises aborts the claim.

    ``do`` runs the transaction, and again if the connection broke: then a run
    already owned by this very owner (the same token) was claimed by the first try,
    whose commit was not heard of, and is not decided again."""
    owner = Owner.claim()

    def first(conn: Conn) -> None:
        with conn.transaction():
            decide(conn, owner)
            conn.execute("UPDATE runs SET heartbeat = %s WHERE run_id = %s", (time.time(), run_id))

    def again(conn: Conn) -> None:
        with conn.transaction():
            run = get_run(conn, run_id, lock=True)
            if run is None or run.owner is None or run.owner.token != owner.token:
                first(conn)

    try:
        do(first, again=again)
    except BaseException:
        owner.release()
        raise
    return owner


class Heartbeat(threading.Thread):
    """Says every :data:`HEARTBEAT_SECONDS` that the owner of a run is alive (see
    :class:`campaignkit._ledger._claims.Heartbeat`); stops when the run is let go or
    its owner changed."""

    def __init__(
        self, pool: Pool, run_id: str, owner: Owner, errors: tuple[type[BaseException], ...]
    ) -> None:
        super().__init__(name="ck-ledger-heartbeat", daemon=True)
        self.pool, self.run_id, self.owner, self.errors = pool, run_id, owner.to_text(), errors
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stop_event.wait(_claims.HEARTBEAT_SECONDS):
            try:
                with self.pool.connection() as conn:
                    beat = conn.execute(
                        "UPDATE runs SET heartbeat = %s WHERE run_id = %s AND owner = %s",
                        (time.time(), self.run_id, self.owner),
                    )
            except self.errors:  # the server is away: try again at the next beat
                continue
            if beat.rowcount == 0:  # no longer ours: nothing to say
                return

    def stop(self) -> None:
        self._stop_event.set()


def record_run(
    conn: Conn,
    run_id: str,
    pipeline: str,
    logical_date: datetime,
    status: str,
    fingerprint: str,
    report: str | None,
) -> None:
    """Record a finished run that sent nothing. Recording the same run (status,
    fingerprint, report) again is a no-op, so that a try whose commit was not heard
    of (the connection broke) can be repeated.

    Raises:
        LedgerError: another run ``run_id`` is recorded.
    """
    now = timestamp(datetime.now(UTC))
    date = timestamp(logical_date)
    inserted = conn.execute(
        "INSERT INTO runs (run_id, pipeline, logical_date, status, fingerprint, "
        "created_at, finished_at, report) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) "
        "ON CONFLICT (run_id) DO NOTHING",
        (run_id, pipeline, date, status, fingerprint, now, now, report),
    ).rowcount
    if inserted:
        return
    run = get_run(conn, run_id)
    same = (pipeline, date, status, fingerprint, report, None)
    if (
        run is None
        or (
            run.pipeline,
            timestamp(run.logical_date),
            run.status,
            run.fingerprint,
            run.report,
            run.owner,
        )
        != same
    ):
        raise LedgerError(f"run {run_id!r} already exists")


def finish_run(
    conn: Conn,
    *,
    run_id: str,
    status: str,
    report: str,
    owner: Owner | None,
    finished_at: str,
    retried: bool = False,
) -> bool:
    """Record a run's final status and report if ``owner`` still owns it; returns
    whether it did.

    ``retried``: an earlier try's commit may not have been heard of (the connection
    broke); a run found finished at ``finished_at`` with this status and report, and
    no owner, was finished by it."""
    if retried:
        row = conn.execute(
            "SELECT status, finished_at, report, owner FROM runs WHERE run_id = %s", (run_id,)
        ).fetchone()
        if row is not None and tuple(row) == (status, finished_at, report, None):
            return True
    return bool(
        conn.execute(
            "UPDATE runs SET status = %s, finished_at = %s, report = %s, pid = NULL, "
            "owner = NULL WHERE run_id = %s AND owner IS NOT DISTINCT FROM %s",
            (status, finished_at, report, run_id, None if owner is None else owner.to_text()),
        ).rowcount
    )


def let_go(conn: Conn, run_id: str, owner: Owner) -> None:
    """Record that ``owner`` no longer works on ``run_id`` (if it still owns it); see
    :func:`campaignkit._ledger._runs.let_go`."""
    conn.execute(
        "UPDATE runs SET owner = NULL, pid = NULL WHERE run_id = %s AND owner = %s",
        (run_id, owner.to_text()),
    )


def record_slice(conn: Conn, run: int, outcome: SliceOutcome) -> None:
    """Record what a send of one slice did, replacing that slice's earlier outcome."""
    conn.execute(
        "INSERT INTO slices (run, channel, slice_index, slice_count, outcome) "
        "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (run, channel, slice_index, slice_count) "
        "DO UPDATE SET outcome = EXCLUDED.outcome",
        (
            run,
            outcome.channel,
            outcome.slice.index,
            outcome.slice.count,
            json.dumps(outcome.to_dict()),
        ),
    )


def clear_slices(conn: Conn, run: int) -> None:
    """Forget a run's slice outcomes (it is (re)opened for a new attempt)."""
    conn.execute("DELETE FROM slices WHERE run = %s", (run,))


def delete_run(conn: Conn, run: int) -> None:
    """Remove run ``run`` and everything recorded for it, in one transaction."""
    with conn.transaction():
        for table in ("deliveries", "recipients", "channels", "snapshots", "slices", "shards"):
            conn.execute("DELETE FROM " + table + " WHERE run = %s", (run,))
        conn.execute("DELETE FROM runs WHERE id = %s", (run,))


def channel_code(conn: Conn, run: int, channel: str) -> int:
    """The number that stands for ``channel`` in run ``run``'s deliveries (given on
    first use; the run's codes are given under an advisory lock, one at a time)."""
    with conn.transaction():
        row = conn.execute(
            "SELECT code FROM channels WHERE run = %s AND channel = %s", (run, channel)
        ).fetchone()
        if row is not None:
            return int(row[0])
        conn.execute(_LOCK, (f":channels:{run}",))
        conn.execute(
            "INSERT INTO channels (run, channel, code) "
            "SELECT %s, %s, COALESCE(MAX(code), -1) + 1 FROM channels WHERE run = %s "
            "ON CONFLICT DO NOTHING",
            (run, channel, run),
        )
        row = conn.execute(
            "SELECT code FROM channels WHERE run = %s AND channel = %s", (run, channel)
        ).fetchone()
    assert row is not None  # inserted above, or by another process before the lock
    return int(row[0])
