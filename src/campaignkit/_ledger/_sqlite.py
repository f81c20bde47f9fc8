"""The embedded ledger: :class:`SqliteLedger`."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._config import ROWS_PER_CUSTOMER
from .._models import DeliveryResult, DeliveryStatus, Recipient, RejectedRow
from ._claims import Owner, _Heartbeat, _text
from ._connection import _connect, _Writer
from ._protocol import RejectSink
from ._schema import _MIGRATIONS, SCHEMA_VERSION, _dt, _dumps, _loads, _raw, _recipient, _ts
from ._sql import _PAGE, _seq_lists
from ._types import (
    DUPLICATE_ID,
    LedgerError,
    MaxActiveRunsReached,
    PlanRow,
    PlanRules,
    RunInProgress,
    RunOwnershipLost,
    RunRecord,
    SnapshotInfo,
)

__all__ = ["SqliteLedger"]


class SqliteLedger:
    """The embedded ledger: one SQLite file, safe for several processes.

    Reads use a connection per calling thread; writes go through one writer thread
    that commits in batches. :meth:`mark_in_flight` returns once the mark is durable;
    :meth:`record` queues the outcome (durable by the next mark of the same worker,
    or :meth:`flush`).

    ``durable=False`` is for throwaway ledgers (``execution.ledger = false``): no
    ``in_flight`` marks and no syncing, so nothing can be resumed after a crash.
    """

    def __init__(
        self, path: str | Path, *, durable: bool = True, history: str | Path | None = None
    ) -> None:
        self.path = Path(path)
        self.durable = durable
        # Another ledger (read only) whose suppression list and send history the plan
        # rules use instead of this one's: a dry run plans in a scratch ledger.
        self.history = Path(history).resolve() if history is not None else None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = _connect(self.path)
            self._migrate(conn)
            conn.close()
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{self.path}: cannot open the ledger: {exc}") from None
        self._local = threading.local()
        self._writer = _Writer(self.path, durable=durable)
        self._writer.start()
        self._codes: dict[tuple[int, str], int] = {}
        self._runs: dict[str, int] = {}
        self._owners: dict[str, Owner] = {}  # the runs this ledger object has claimed
        self._heartbeats: dict[str, _Heartbeat] = {}

    def __repr__(self) -> str:
        return f"<SqliteLedger {str(self.path)!r}>"

    # -- plumbing ------------------------------------------------------------------------
    def _migrate(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(
                    f"{self.path}: ledger schema {version} is newer than this campaignkit "
                    f"({SCHEMA_VERSION}); upgrade campaignkit"
                )
            for v in range(version + 1, SCHEMA_VERSION + 1):
                step = _MIGRATIONS[v]
                if isinstance(step, str):
                    for statement in step.split(";"):
                        if statement.strip():
                            conn.execute(statement)
                else:
                    step(conn)
                conn.execute(f"PRAGMA user_version = {v}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    @property
    def _read(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = _connect(self.path, durable=self.durable)
            if self.history is not None:
                uri = f"file:{urllib.parse.quote(str(self.history))}?mode=ro"
                conn.execute("ATTACH DATABASE ? AS history", (uri,))
            self._local.conn = conn
        return conn

    def _run_key(self, run_id: str) -> int:
        key = self._runs.get(run_id)
        if key is None:
            row = self._read.execute("SELECT id FROM runs WHERE run_id = ?", (run_id,)).fetchone()
            if row is None:
                raise LedgerError(f"no run {run_id!r} in {self.path}")
            key = self._runs[run_id] = int(row[0])
        return key

    def _channel_code(self, run: int, channel: str) -> int:
        code = self._codes.get((run, channel))
        if code is None:
            conn = self._read
            with conn:
                # One statement, so concurrent channels (threads or processes) never
                # get the same code.
                conn.execute(
                    "INSERT OR IGNORE INTO channels (run, channel, code) "
                    "SELECT ?, ?, COALESCE(MAX(code), -1) + 1 FROM channels WHERE run = ?",
                    (run, channel, run),
                )
                (code,) = conn.execute(
                    "SELECT code FROM channels WHERE run = ? AND channel = ?", (run, channel)
                ).fetchone()
            self._codes[(run, channel)] = int(code)
        return int(code)

    def close(self) -> None:
        """Flush pending writes, give up the claims on unfinished runs (they stay
        ``running`` for a resume) and close."""
        for run_id in list(self._owners):
            self.release_run(run_id)
        self._writer.ops.put(None)
        self._writer.join()
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None
        if self._writer.error is not None:
            raise LedgerError(f"ledger write failed: {self._writer.error}")

    def flush(self) -> None:
        """Wait until every queued write is committed."""
        self._writer.submit(lambda conn: None, wait=True)

    # -- runs ----------------------------------------------------------------------------
    @staticmethod
    def _run(row: Sequence[Any]) -> RunRecord:
        return RunRecord(
            run_id=row[0],
            pipeline=row[1],
            logical_date=_dt(row[2]),  # type: ignore[arg-type]
            status=row[3],
            fingerprint=row[4],
            config_file=row[5],
            created_at=_dt(row[6]),  # type: ignore[arg-type]
            finished_at=_dt(row[7]),
            pid=row[8],
            recipients=row[9],
            report=row[10],
            owner=Owner.from_text(row[11]) or Owner.legacy(row[8]),
            heartbeat=row[12],
        )

    _RUN_COLUMNS = (
        "run_id, pipeline, logical_date, status, fingerprint, config_file, created_at, "
        "finished_at, pid, recipients, report, owner, heartbeat"
    )

    def _claim(self, run_id: str, decide: Any) -> RunRecord:
        """Make this process the owner of ``run_id``: ``decide(conn, owner)`` checks and
        writes inside one ``BEGIN IMMEDIATE`` transaction, so that claims are serialised
        with every other process's; what it raises aborts the claim."""
        owner = Owner.claim()
        conn = _connect(self.path)
        try:
            conn.execute("BEGIN IMMEDIATE")
            decide(conn, owner)
            conn.execute("UPDATE runs SET heartbeat = ? WHERE run_id = ?", (time.time(), run_id))
            conn.execute("COMMIT")
        except BaseException:
            owner.release()
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        finally:
            conn.close()
        self._owners[run_id] = owner
        self._heartbeats[run_id] = _Heartbeat(self.path, run_id, owner)
        return self.get_run(run_id)

    def begin_run(
        self,
        *,
        run_id: str,
        pipeline: str,
        logical_date: datetime,
        fingerprint: str,
        config_file: str | None,
        max_active_runs: int | None,
    ) -> RunRecord:
        """Record a new ``running`` run owned by this process, atomically with the
        ``max_active_runs`` check.

        A run counts as active while its status is ``running`` and its owner is alive
        (a run whose process died is not active: it waits to be resumed).

        Raises:
            MaxActiveRunsReached: the pipeline already has that many active runs.
            RunInProgress: ``run_id`` exists and a live process owns it.
            LedgerError: ``run_id`` exists.
        """

        def decide(conn: sqlite3.Connection, owner: Owner) -> None:
            existing = conn.execute(
                f"SELECT {self._RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if existing is not None:
                run = self._run(existing)
                if run.in_progress:
                    raise RunInProgress(_busy(run))
                raise LedgerError(f"run {run_id!r} already exists")
            if max_active_runs is not None:
                active = [
                    run
                    for row in conn.execute(
                        f"SELECT {self._RUN_COLUMNS} FROM runs "
                        "WHERE pipeline = ? AND status = 'running'",
                        (pipeline,),
                    )
                    if (run := self._run(row)).in_progress
                ]
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
                    _ts(logical_date),
                    fingerprint,
                    config_file,
                    _ts(datetime.now(UTC)),
                    owner.pid,
                    owner.to_text(),
                ),
            )

        return self._claim(run_id, decide)

    def record_run(
        self,
        *,
        run_id: str,
        pipeline: str,
        logical_date: datetime,
        status: str,
        fingerprint: str,
        report: str | None = None,
    ) -> RunRecord:
        """Record a finished run that sent nothing (e.g. ``skipped_late``)."""
        now = _ts(datetime.now(UTC))
        with self._read as conn:
            conn.execute(
                "INSERT INTO runs (run_id, pipeline, logical_date, status, fingerprint, "
                "created_at, finished_at, report) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (run_id, pipeline, _ts(logical_date), status, fingerprint, now, now, report),
            )
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunRecord:
        """The run ``run_id``.

        Raises:
            LedgerError: no such run.
        """
        row = self._read.execute(
            f"SELECT {self._RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        if row is None:
            raise LedgerError(f"no run {run_id!r} in {self.path}")
        return self._run(row)

    def find_runs(self, pipeline: str, logical_date: datetime | None = None) -> list[RunRecord]:
        """Runs of ``pipeline`` (for one logical date if given), oldest first."""
        if logical_date is None:
            rows = self._read.execute(
                f"SELECT {self._RUN_COLUMNS} FROM runs WHERE pipeline = ? "
                "ORDER BY logical_date, id",
                (pipeline,),
            )
        else:
            rows = self._read.execute(
                f"SELECT {self._RUN_COLUMNS} FROM runs WHERE pipeline = ? AND logical_date = ? "
                "ORDER BY id",
                (pipeline, _ts(logical_date)),
            )
        return [self._run(r) for r in rows]

    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        if pipeline is None:
            rows = self._read.execute(
                f"SELECT {self._RUN_COLUMNS} FROM runs ORDER BY id DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._read.execute(
                f"SELECT {self._RUN_COLUMNS} FROM runs WHERE pipeline = ? ORDER BY id DESC LIMIT ?",
                (pipeline, limit),
            )
        return [self._run(r) for r in rows]

    def claim_run(self, run_id: str) -> RunRecord:
        """Make this process the owner of ``run_id`` and mark it ``running`` (to resume
        it). Decided in one write transaction: of several processes claiming at the
        same instant, one gets the run and the others :class:`RunInProgress`.

        Raises:
            RunInProgress: another live process owns the run.
            LedgerError: no such run.
        """

        def decide(conn: sqlite3.Connection, owner: Owner) -> None:
            row = conn.execute(
                f"SELECT {self._RUN_COLUMNS} FROM runs WHERE run_id = ?", (run_id,)
            ).fetchone()
            if row is None:
                raise LedgerError(f"no run {run_id!r} in {self.path}")
            run = self._run(row)
            if run.in_progress:
                raise RunInProgress(_busy(run))
            conn.execute(
                "UPDATE runs SET status = 'running', pid = ?, owner = ?, finished_at = NULL "
                "WHERE run_id = ?",
                (owner.pid, owner.to_text(), run_id),
            )

        return self._claim(run_id, decide)

    def release_run(self, run_id: str) -> None:
        """Give up the claim on ``run_id`` without finishing it (it stays ``running``
        for a resume, which any process may then claim)."""
        owner = self._let_go(run_id)
        if owner is not None:
            owner.release()

    def _let_go(self, run_id: str) -> Owner | None:
        """Stop the run's heartbeat; return its owner (still held) if this ledger had it."""
        heartbeat = self._heartbeats.pop(run_id, None)
        if heartbeat is not None:
            heartbeat.stop()
        return self._owners.pop(run_id, None)

    def _owns(self, conn: sqlite3.Connection, run: int, run_id: str) -> bool:
        owner = self._owners.get(run_id)
        if owner is None:
            return False
        row = conn.execute("SELECT owner FROM runs WHERE id = ?", (run,)).fetchone()
        return row is not None and row[0] == owner.text

    def delete_run(self, run_id: str) -> None:
        """Remove a run and everything recorded for it (dry runs clean up with it)."""
        run = self._run_key(run_id)
        self.flush()
        with self._read as conn:
            for table in ("deliveries", "recipients", "channels", "snapshots"):
                conn.execute(f"DELETE FROM {table} WHERE run = ?", (run,))
            conn.execute("DELETE FROM runs WHERE id = ?", (run,))
        self._runs.pop(run_id, None)
        self._codes = {k: v for k, v in self._codes.items() if k[0] != run}

    def finish_run(self, run_id: str, status: str, report: str) -> None:
        """Record a run's final status and report (after flushing its deliveries), and
        give up the claim on it.

        Raises:
            RunOwnershipLost: another process owns the run now; nothing was recorded.
        """
        self.flush()
        owner = self._let_go(run_id)
        try:
            with self._read as conn:
                changed = conn.execute(
                    "UPDATE runs SET status = ?, finished_at = ?, report = ?, pid = NULL, "
                    "owner = NULL WHERE run_id = ? AND owner IS ?",
                    (status, _ts(datetime.now(UTC)), report, run_id, _text(owner)),
                ).rowcount
        finally:
            if owner is not None:
                owner.release()
        if not changed:
            raise RunOwnershipLost(f"run {run_id!r} is owned by another process now")

    # -- snapshot ------------------------------------------------------------------------
    def write_snapshot(
        self,
        run_id: str,
        recipients: Iterable[Recipient],
        *,
        rows_per_customer: str = "one",
        rejects: RejectSink | None = None,
    ) -> int:
        """Store the run's extracted segment, in order; returns how many recipients it
        holds.

        Every stored row has its own position (``seq``), from which the idempotency
        keys of its deliveries derive. ``rows_per_customer`` is the identity rule:
        ``"one"``: a customer id is on one row; a later row with an id already stored
        is not kept, it is handed to ``rejects`` as a ``duplicate_id`` rejected row
        naming the line of the first (repeats are found in SQL, after the rows are
        stored: nothing is kept in memory per id); ``"many"``: every row is a
        recipient of its own (one row per device of a customer).

        Written in one transaction, with the extraction's counts (rows read, rejected,
        by reason: those of ``rejects``, which extraction fills as it reads): a crash
        leaves no partial snapshot, and a resumed run reports what its extraction read.
        """
        if rows_per_customer not in ROWS_PER_CUSTOMER:
            raise ValueError(f"rows_per_customer: expected one or many, got {rows_per_customer!r}")
        run = self._run_key(run_id)
        conn = self._read
        n = 0
        dumps = _dumps

        def rows() -> Iterator[tuple[int, int, str, str, int]]:
            nonlocal n
            for r in recipients:
                data = dumps([r.email, r.phone, r.push_token, r.attributes, r.consent])
                yield run, n, r.id, data, r.line
                n += 1

        with conn:
            conn.execute("DELETE FROM recipients WHERE run = ?", (run,))
            conn.executemany(
                "INSERT INTO recipients (run, seq, recipient_id, data, line) "
                "VALUES (?, ?, ?, ?, ?)",
                rows(),
            )
            repeats = self._reject_repeats(conn, run, rejects) if rows_per_customer == "one" else 0
            stored = n - repeats
            lines: Mapping[str, int] | None = None
            if rejects is not None:
                rejected, reasons = rejects.rejected, dict(rejects.reasons)
                lines = rejects.line_counts()
            else:
                rejected, reasons = repeats, ({DUPLICATE_ID: repeats} if repeats else {})
            conn.execute(
                "INSERT OR REPLACE INTO snapshots (run, rows_per_customer, rows_read, rejected, "
                "reasons, lines) VALUES (?, ?, ?, ?, ?, ?)",
                (
                    run,
                    rows_per_customer,
                    stored + rejected,
                    rejected,
                    json.dumps(reasons),
                    None if lines is None else json.dumps(dict(lines)),
                ),
            )
            conn.execute("UPDATE runs SET recipients = ? WHERE id = ?", (stored, run))
        return stored

    @staticmethod
    def _reject_repeats(conn: sqlite3.Connection, run: int, rejects: RejectSink | None) -> int:
        """Remove the rows of run ``run`` whose customer id an earlier row has, handing
        each to ``rejects``; returns how many. One sort of the run's ids in SQLite (a
        temporary table of the repeated ids), a second pass only if there are repeats."""
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS ck_repeats (recipient_id TEXT PRIMARY KEY, "
            "first INTEGER NOT NULL, line INTEGER NOT NULL) WITHOUT ROWID"
        )
        conn.execute("DELETE FROM temp.ck_repeats")
        found = conn.execute(
            "INSERT INTO temp.ck_repeats SELECT recipient_id, MIN(seq), 0 FROM recipients "
            "WHERE run = ? GROUP BY recipient_id HAVING COUNT(*) > 1",
            (run,),
        ).rowcount
        if found <= 0:
            return 0
        conn.execute(
            "UPDATE temp.ck_repeats SET line = (SELECT r.line FROM recipients r "
            "WHERE r.run = ? AND r.seq = ck_repeats.first)",
            (run,),
        )
        later = (
            "FROM recipients r JOIN temp.ck_repeats k ON k.recipient_id = r.recipient_id "
            "WHERE r.run = ? AND r.seq > k.first"
        )
        if rejects is not None:
            for rid, data, line, first_line in conn.execute(
                f"SELECT r.recipient_id, r.data, r.line, k.line {later} ORDER BY r.seq", (run,)
            ):
                where = f"on line {first_line}" if first_line else "earlier in the segment"
                rejects.reject(
                    RejectedRow(
                        line,
                        DUPLICATE_ID,
                        f"customer id {rid!r} already {where}",
                        "id",
                        _raw(_recipient(rid, data, line)),
                    )
                )
        removed = conn.execute(
            "DELETE FROM recipients WHERE run = ? AND seq IN (SELECT r.seq " + later + ")",
            (run, run),
        ).rowcount
        conn.execute("DELETE FROM temp.ck_repeats")
        return int(removed)

    def snapshot_info(self, run_id: str) -> SnapshotInfo | None:
        """What the run's extraction recorded with its snapshot; ``None`` if it has
        none, or one written before schema 4 (then its idempotency keys derive from
        recipient ids, as they did when it was written)."""
        run = self._run_key(run_id)
        row = self._read.execute(
            "SELECT s.rows_read, r.recipients, s.rejected, s.reasons, s.rows_per_customer, "
            "s.lines "
            "FROM snapshots s JOIN runs r ON r.id = s.run WHERE s.run = ?",
            (run,),
        ).fetchone()
        if row is None:
            return None
        return SnapshotInfo(
            rows_read=int(row[0]),
            recipients=int(row[1] or 0),
            rejected=int(row[2]),
            rejected_reasons={str(k): int(v) for k, v in json.loads(row[3]).items()},
            rows_per_customer=str(row[4]),
            lines=None if row[5] is None else {str(k): int(v) for k, v in _loads(row[5]).items()},
        )

    def has_snapshot(self, run_id: str) -> bool:
        row = self._read.execute(
            "SELECT recipients FROM runs WHERE run_id = ?", (run_id,)
        ).fetchone()
        return row is not None and row[0] is not None

    def _pages(self, sql: str, params: tuple[Any, ...]) -> Iterator[Sequence[Any]]:
        """Stream ``sql`` (which takes ``params`` + ``seq > ?`` + ``LIMIT ?`` and orders
        by seq, first column) page by page: short read transactions, so that a long
        pass does not hold back WAL checkpoints."""
        conn = _connect(self.path)
        try:
            last = -1
            while True:
                rows = conn.execute(sql, (*params, last, _PAGE)).fetchall()
                yield from rows
                if len(rows) < _PAGE:
                    return
                last = rows[-1][0]
        finally:
            conn.close()

    def snapshot(self, run_id: str) -> Iterator[tuple[int, Recipient]]:
        """The snapshot in source order, as ``(seq, recipient)``; streamed."""
        run = self._run_key(run_id)
        for seq, rid, data, line in self._pages(
            "SELECT seq, recipient_id, data, line FROM recipients WHERE run = ? AND seq > ? "
            "ORDER BY seq LIMIT ?",
            (run,),
        ):
            yield seq, _recipient(rid, data, line)

    # -- deliveries ----------------------------------------------------------------------
    def is_planned(self, run_id: str, channel: str) -> bool:
        """Whether :meth:`plan` completed for this channel."""
        run = self._run_key(run_id)
        row = self._read.execute(
            "SELECT planned FROM channels WHERE run = ? AND channel = ?", (run, channel)
        ).fetchone()
        return bool(row and row[0])

    def plan(self, run_id: str, channel: str, rows: Iterable[PlanRow], rules: PlanRules) -> None:
        """Record the channel's audience, one row per recipient, then apply the rules
        that need the whole audience or other runs, in order, in one transaction; marks
        the channel planned.

        ``rows`` are ``(seq, reason, address, filtered, not_before)``: ``reason`` is a
        skip reason decided per recipient (address, consent, suppression files) or
        ``None``; ``address`` the normalized address; ``filtered`` whether the segment
        filter rejected the recipient; ``not_before`` the epoch time before which
        quiet hours defer the message.

        Then, among recipients not yet skipped: ``suppressed`` (the ledger's
        suppression list of ``rules.kind``, or the ``history`` ledger's),
        ``duplicate`` (the same address earlier in the segment), ``filtered``,
        ``frequency_capped`` (``rules.cap`` sends on this channel name since
        ``rules.cap_since``, in other runs or in the ``history`` ledger),
        ``over_target`` (beyond ``rules.target``, in segment order or a seeded
        sample) and ``deferred``
        (quiet hours: sent by a later resume once due).
        """
        run = self._run_key(run_id)
        code = self._channel_code(run, channel)
        now = time.time()
        conn = self._read
        live = "run = ? AND channel = ? AND state = 'pending'"
        key = (run, code)
        # E-mail addresses match case-insensitively; phone numbers and tokens exactly.
        addr = "lower(address)" if rules.kind == "email" else "address"
        # Whether any pending row is filtered or has a not-before time: a rule that
        # cannot match any row is not run (each one is a pass over the channel).
        seen_filtered = seen_not_before = False

        def inserts() -> Iterator[tuple[Any, ...]]:
            nonlocal seen_filtered, seen_not_before
            for seq, reason, address, filtered, not_before in rows:
                flag = int(filtered)
                if not reason:
                    seen_filtered = seen_filtered or flag == 1
                    seen_not_before = seen_not_before or not_before is not None
                yield (
                    run,
                    code,
                    seq,
                    "skipped" if reason else "pending",
                    reason,
                    address,
                    flag,
                    not_before,
                    now,
                )

        with conn:
            conn.execute("DELETE FROM deliveries WHERE run = ? AND channel = ?", key)
            conn.executemany(
                "INSERT INTO deliveries (run, channel, seq, state, reason, address, filtered, "
                "not_before, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                inserts(),
            )

            def skip(reason: str, where: str, params: Sequence[Any] = ()) -> None:
                conn.execute(
                    f"UPDATE deliveries SET state = 'skipped', reason = ? WHERE {live} AND {where}",
                    (reason, *key, *params),
                )

            # Suppressions and earlier sends: this ledger's, or the history ledger's.
            past = "history." if self.history is not None else ""
            if conn.execute(
                f"SELECT 1 FROM {past}suppressions WHERE kind = ? LIMIT 1", (rules.kind,)
            ).fetchone():
                skip(
                    "suppressed",
                    f"{addr} IN (SELECT address FROM {past}suppressions WHERE kind = ?)",
                    (rules.kind,),
                )
            skip(
                "duplicate",
                f"seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER (PARTITION BY {addr} "
                f"ORDER BY seq) AS n FROM deliveries WHERE {live}) WHERE n > 1)",
                key,
            )
            if seen_filtered:
                skip("filtered", "filtered = 1")
            if rules.cap is not None:
                # The channel's runs first (CROSS JOIN keeps that order), then each
                # one's rows by primary key: never the other channels' rows.
                skip(
                    "frequency_capped",
                    f"{addr} IN (SELECT {addr.replace('address', 'd.address')} "
                    f"FROM {past}channels c CROSS JOIN {past}deliveries d "
                    "ON d.run = c.run AND d.channel = c.code WHERE c.channel = ? "
                    "AND c.run != ? AND d.state = 'sent' AND d.updated_at >= ? "
                    f"GROUP BY {addr.replace('address', 'd.address')} HAVING COUNT(*) >= ?)",
                    # (this run is not in a history ledger: -1 excludes no run there)
                    (channel, run if not past else -1, rules.cap_since, rules.cap),
                )
            if rules.target is not None:
                order = "seq"
                if rules.sample_seed is not None:  # a seeded, deterministic shuffle
                    salt = int(rules.sample_seed) % 4294967296
                    order = f"(seq * 2654435761 + {salt}) % 4294967296, seq"
                skip(
                    "over_target",
                    f"seq NOT IN (SELECT seq FROM deliveries WHERE {live} ORDER BY {order} "
                    "LIMIT ?)",
                    (*key, rules.target),
                )
            if seen_not_before:
                conn.execute(
                    "UPDATE deliveries SET state = 'deferred', reason = 'deferred' "
                    f"WHERE {live} AND not_before > ?",
                    (*key, now),
                )
            conn.execute(
                "UPDATE channels SET planned = 1 WHERE run = ? AND channel = ?", (run, channel)
            )

    def release_deferred(self, run_id: str, channel: str, *, now: float | None = None) -> int:
        """Deferred deliveries whose time has come become ``pending``; returns how many."""
        run = self._run_key(run_id)
        code = self._channel_code(run, channel)
        with self._read as conn:
            return conn.execute(
                "UPDATE deliveries SET state = 'pending', reason = NULL "
                "WHERE run = ? AND channel = ? AND state = 'deferred' AND not_before <= ?",
                (run, code, time.time() if now is None else now),
            ).rowcount

    def next_deferred(self, run_id: str) -> float | None:
        """The earliest time a deferred delivery of the run becomes due, if any."""
        run = self._run_key(run_id)
        row = self._read.execute(
            "SELECT MIN(not_before) FROM deliveries WHERE run = ? AND state = 'deferred'", (run,)
        ).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # -- suppression -------------------------------------------------------------------
    def suppress(self, kind: str, address: str, *, reason: str, source: str | None = None) -> None:
        """Add ``address`` (normalized) to the suppression list of ``kind`` (``email``,
        ``phone``, ``push_token``); later runs skip it as ``suppressed``."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT OR IGNORE INTO suppressions VALUES (?, ?, ?, ?, ?)",
                (kind, address, reason, source, _ts(datetime.now(UTC))),
            )

        self._writer.submit(op, wait=False)

    def suppressions(self, kind: str | None = None) -> list[tuple[str, str, str, str | None]]:
        """``(kind, address, reason, source)`` entries of the suppression list."""
        self.flush()
        sql = "SELECT kind, address, reason, source FROM suppressions"
        if kind:
            rows = self._read.execute(sql + " WHERE kind = ? ORDER BY address", (kind,))
        else:
            rows = self._read.execute(sql + " ORDER BY kind, address")
        return [(r[0], r[1], r[2], r[3]) for r in rows]

    def pending(
        self, run_id: str, channel: str
    ) -> Iterator[tuple[int, Recipient, str, int, int | None]]:
        """Pending deliveries in recipient order: ``(seq, recipient, address, attempts,
        batch)``; streamed. ``batch`` identifies the request a delivery was last part of
        (``None`` if never sent): members of a batch must be re-sent together, so that
        a provider's idempotency key for the request stays the same."""
        run = self._run_key(run_id)
        code = self._channel_code(run, channel)
        for seq, rid, data, line, address, attempts, batch in self._pages(
            "SELECT d.seq, r.recipient_id, r.data, r.line, d.address, d.attempts, d.batch "
            "FROM deliveries d "
            "JOIN recipients r ON r.run = d.run AND r.seq = d.seq "
            "WHERE d.run = ? AND d.channel = ? AND d.state = 'pending' AND d.seq > ? "
            "ORDER BY d.seq LIMIT ?",
            (run, code),
        ):
            yield seq, _recipient(rid, data, line), address, attempts, batch

    def mark_in_flight(self, run_id: str, channel: str, seqs: Sequence[int]) -> None:
        """Mark deliveries in flight as one batch (its id is its first seq); returns
        when the mark is durable (a no-op for a ledger that is not durable)."""
        if not self.durable:
            return
        run = self._run_key(run_id)
        code = self._channel_code(run, channel)
        now = time.time()
        batch = min(seqs) if seqs else None
        lists = list(_seq_lists(seqs))

        lost = False

        def op(conn: sqlite3.Connection) -> None:
            nonlocal lost
            # Fenced: only the run's owner marks (and then sends). Not raised here, so
            # that the other writes of the same group commit are kept.
            if not self._owns(conn, run, run_id):
                lost = True
                return
            for marks, values in lists:  # one statement per list, not per delivery
                conn.execute(
                    "UPDATE deliveries SET state = 'in_flight', updated_at = ?, batch = ? "
                    f"WHERE run = ? AND channel = ? AND seq IN ({marks})",
                    (now, batch, run, code, *values),
                )

        self._writer.submit(op, wait=True)
        if lost:
            raise RunOwnershipLost(f"run {run_id!r} is owned by another process now")

    def record(
        self, run_id: str, channel: str, rows: Sequence[tuple[int, DeliveryResult, str, bool]]
    ) -> None:
        """Queue outcomes ``(seq, result, state, transient)``; ``transient`` marks a
        failure that ``retry-failed`` may re-drive. Durable by the next
        :meth:`mark_in_flight` or :meth:`flush`."""
        run = self._run_key(run_id)
        code = self._channel_code(run, channel)
        now = time.time()
        # A delivery's last outcome is the one that stays (as with one UPDATE per row).
        last = {
            seq: (
                state,
                r.reason,
                r.attempts,
                int(transient),
                r.provider_message_id,
                r.error_code,
                r.error,
                now,
                run,
                code,
            )
            for seq, r, state, transient in rows
        }
        # Deliveries with the same outcome (a batch sent in one request usually shares
        # it, provider message id included) are updated by one statement.
        groups: dict[tuple[Any, ...], list[int]] = {}
        for seq, values in last.items():
            same = groups.get(values)
            if same is None:
                groups[values] = [seq]
            else:
                same.append(seq)
        singles = [(*values, seqs[0]) for values, seqs in groups.items() if len(seqs) == 1]
        lists = [
            (values, marks, seq_list)
            for values, seqs in groups.items()
            if len(seqs) > 1
            for marks, seq_list in _seq_lists(seqs)
        ]
        update = (
            "UPDATE deliveries SET state = ?, reason = ?, attempts = ?, transient = ?, "
            "provider_message_id = ?, error_code = ?, error = ?, updated_at = ? "
            "WHERE run = ? AND channel = ? AND seq "
        )

        def op(conn: sqlite3.Connection) -> None:
            for values, marks, seq_list in lists:
                conn.execute(f"{update}IN ({marks})", (*values, *seq_list))
            if singles:
                conn.executemany(f"{update}= ?", singles)

        self._writer.submit(op, wait=False)

    def resolve_in_flight(self, run_id: str, channel: str, *, resend: bool) -> int:
        """Settle deliveries left ``in_flight`` by a crash: back to ``pending`` when
        ``resend`` (the provider de-duplicates by idempotency key), else ``unknown``.
        Returns how many there were."""
        run = self._run_key(run_id)
        code = self._channel_code(run, channel)
        self.flush()
        with self._read as conn:
            cur = conn.execute(
                "UPDATE deliveries SET state = ?, reason = ? "
                "WHERE run = ? AND channel = ? AND state = 'in_flight'",
                (*(("pending", None) if resend else ("unknown", "in_flight_at_crash")), run, code),
            )
            return cur.rowcount

    def requeue(self, run_id: str, channel: str, *, failed: bool, unknown: bool) -> int:
        """Put deliveries back to ``pending``: transient failures (``failed``) and/or
        ``unknown`` ones. Permanent failures are never requeued. Returns the count."""
        run = self._run_key(run_id)
        code = self._channel_code(run, channel)
        self.flush()
        which = [
            *(["(state = 'failed' AND transient = 1)"] if failed else []),
            *(["state = 'unknown'"] if unknown else []),
        ]
        if not which:
            return 0
        with self._read as conn:  # one pass over the channel's rows
            return conn.execute(
                "UPDATE deliveries SET state = 'pending', reason = NULL "
                f"WHERE run = ? AND channel = ? AND ({' OR '.join(which)})",
                (run, code),
            ).rowcount

    def owed(self, run_id: str, channels: Sequence[str], *, failed: bool, unknown: bool) -> int:
        """How many deliveries a resume of these channels would send: ``pending``,
        ``in_flight`` and ``deferred`` ones, and transient failures (``failed``) and
        ``unknown`` ones if asked. A channel not planned yet counts as owed (a resume
        plans and sends it)."""
        run = self._run_key(run_id)
        self.flush()
        total = 0
        for channel in channels:
            if not self.is_planned(run_id, channel):
                return total + 1
            row = self._read.execute(
                "SELECT COUNT(*) FROM deliveries WHERE run = ? AND channel = ? AND ("
                "state IN ('pending', 'in_flight', 'deferred') "
                "OR (? AND state = 'failed' AND transient = 1) OR (? AND state = 'unknown'))",
                (run, self._channel_code(run, channel), failed, unknown),
            ).fetchone()
            total += int(row[0])
        return total

    def counts(self, run_id: str, channel: str) -> dict[str, int]:
        """Deliveries by state, by ``reason:<reason>``, by ``code:<error code>`` (failed
        and skipped ones: a sent or unknown delivery failed nothing) and, for ``unknown``
        ones, by ``unknown:<reason>:<last error code>`` (why it is in doubt)."""
        run = self._run_key(run_id)
        code = self._channel_code(run, channel)
        self.flush()
        out: dict[str, int] = {}
        for state, reason, error_code, n in self._read.execute(
            "SELECT state, reason, error_code, COUNT(*) FROM deliveries "
            "WHERE run = ? AND channel = ? GROUP BY state, reason, error_code",
            (run, code),
        ):
            out[state] = out.get(state, 0) + n
            if reason:
                out[f"reason:{reason}"] = out.get(f"reason:{reason}", 0) + n
            if state == "unknown":
                key = f"unknown:{reason or ''}:{error_code or ''}"
                out[key] = out.get(key, 0) + n
            elif error_code and state != "sent":
                out[f"code:{error_code}"] = out.get(f"code:{error_code}", 0) + n
        return out

    def deliveries(self, run_id: str, channel: str | None = None) -> Iterator[DeliveryResult]:
        """Per-recipient outcomes in recipient order (all channels, or one), with the
        source line and the address (rows of one customer id tell apart by them)."""
        run = self._run_key(run_id)
        self.flush()
        where, params = "d.run = ?", [run]
        if channel is not None:
            where += " AND d.channel = ?"
            params.append(self._channel_code(run, channel))
        cursor = _connect(self.path).execute(
            "SELECT c.channel, r.recipient_id, d.state, d.reason, d.provider_message_id, "
            "d.attempts, d.error_code, d.error, r.line, d.address FROM deliveries d "
            "JOIN recipients r ON r.run = d.run AND r.seq = d.seq "
            "JOIN channels c ON c.run = d.run AND c.code = d.channel "
            f"WHERE {where} ORDER BY d.channel, d.seq",  # primary key order: no sorting
            params,
        )
        try:
            for ch, rid, state, reason, pmid, attempts, code, error, line, address in cursor:
                yield DeliveryResult(
                    channel=ch,
                    recipient_id=rid,
                    status=DeliveryStatus(state),
                    reason=reason,
                    provider_message_id=pmid,
                    attempts=attempts,
                    error_code=code,
                    error=error,
                    line=line,
                    address=address,
                )
        finally:
            cursor.connection.close()


def _busy(run: RunRecord) -> str:
    who = run.owner.describe() if run.owner is not None else "another process"
    return f"run {run.run_id!r} is being run by {who}; nothing was done by this one"
