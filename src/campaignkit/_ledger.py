"""The durable delivery ledger: runs, each run's recipient snapshot, one row per delivery.

The embedded implementation is SQLite (stdlib ``sqlite3``, WAL). The schema is
versioned in ``PRAGMA user_version`` and migrated on open. :class:`Ledger` is the
interface the core uses, so that a server database can be added later.

Delivery states::

    pending -> in_flight -> sent | failed | unknown
    pending -> skipped (reason)             (selection decided not to send)
    pending -> deferred -> pending          (quiet hours; released when they are over)
    failed (transient, retries exhausted) -> pending        (retry-failed)
    in_flight -> pending | unknown          (resume after a crash, by policy)
    unknown -> pending                      (resume --resend-unknown)

``in_flight`` is committed before a request leaves and the outcome after it: a
single writer thread commits both in batched transactions (group commit), and a
worker does not send until its ``in_flight`` mark is durable. After a crash at
most one batch per worker thread is ``in_flight``.
"""

from __future__ import annotations

import json
import marshal
import queue
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import attrs

from ._claims import HEARTBEAT_SECONDS, Owner
from ._config import ROWS_PER_CUSTOMER
from ._models import DeliveryResult, DeliveryStatus, Recipient, RejectedRow
from .exceptions import CampaignKitError

__all__ = [
    "DeliveryState",
    "Ledger",
    "LedgerError",
    "MaxActiveRunsReached",
    "PlanRow",
    "PlanRules",
    "RejectSink",
    "RunInProgress",
    "RunOwnershipLost",
    "RunRecord",
    "SnapshotInfo",
    "SqliteLedger",
]

SCHEMA_VERSION = 5
#: Reason code of a row whose customer id an earlier row has (``rows_per_customer = "one"``).
DUPLICATE_ID = "duplicate_id"
_PAGE = 2000  # rows per read transaction when streaming
_IN_MAX = 512  # values per ``seq IN (...)`` list (older SQLite allows 999 parameters)
_MARKS = {1 << k: ", ".join("?" * (1 << k)) for k in range(_IN_MAX.bit_length())}


def _seq_lists(seqs: Sequence[int]) -> Iterator[tuple[str, list[int]]]:
    """``seqs`` in lists of at most ``_IN_MAX``, as ``(placeholders, values)`` for a
    ``seq IN (placeholders)`` clause. A list is padded to a power of two by repeating
    its last value (harmless in an ``IN``), so that a handful of statements are
    prepared and then reused from the connection's statement cache."""
    for i in range(0, len(seqs), _IN_MAX):
        part = list(seqs[i : i + _IN_MAX])
        size = 1 << (len(part) - 1).bit_length()
        part.extend([part[-1]] * (size - len(part)))
        yield _MARKS[size], part


class LedgerError(CampaignKitError):
    """The ledger cannot be opened or used (corrupt file, newer schema, unknown run)."""


class MaxActiveRunsReached(LedgerError):
    """Starting a run would exceed the pipeline's ``max_active_runs``."""


class RunInProgress(LedgerError):
    """Another live process owns the run (it is sending it now); nothing was done."""


class RunOwnershipLost(LedgerError):
    """This process no longer owns the run it was sending: it stops without recording."""


class DeliveryState:
    """Delivery states as stored (short strings)."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"
    DEFERRED = "deferred"

    FINAL = frozenset({SENT, FAILED, SKIPPED})


#: A run being sent (or whose process died while sending: then it awaits a resume).
ACTIVE_STATUSES = frozenset({"running"})
#: Finished runs with messages still owed: running the logical date again resumes them.
RESUMABLE_STATUSES = frozenset({"timed_out", "cancelled", "failed", "deferred", "canary"})


#: A recipient's row as selection decided it: (seq, skip reason, normalized address,
#: filtered by the segment filter, quiet hours' not-before epoch time).
PlanRow = tuple[int, str | None, str | None, bool, float | None]


@attrs.frozen
class PlanRules:
    """The audience rules :meth:`SqliteLedger.plan` applies in SQL.

    Attributes:
        kind: the suppression list consulted (the channel's address field).
        cap, cap_since: at most ``cap`` sends per address on this channel name since
            epoch time ``cap_since`` (other runs); ``None`` for no cap.
        target: at most this many recipients (``target_customers``).
        sample_seed: pick the target by a seeded sample instead of segment order.
    """

    kind: str
    cap: int | None = None
    cap_since: float = 0.0
    target: int | None = None
    sample_seed: int | None = None


@attrs.frozen
class RunRecord:
    """A run as the ledger knows it."""

    run_id: str
    pipeline: str
    logical_date: datetime
    status: str
    fingerprint: str
    created_at: datetime
    finished_at: datetime | None = None
    pid: int | None = None
    config_file: str | None = None
    recipients: int | None = None
    report: str | None = None  # the last report, as JSON
    owner: Owner | None = None
    heartbeat: float | None = None  # when its owner last said it was alive (epoch s)

    @property
    def in_progress(self) -> bool:
        """Whether a live process is sending the run now (``running`` with a live owner);
        a ``running`` run whose process died is not: it waits to be resumed."""
        return (
            self.status in ACTIVE_STATUSES
            and self.owner is not None
            and self.owner.alive(self.heartbeat)
        )


@attrs.frozen
class SnapshotInfo:
    """What the extraction of a run recorded with its snapshot (schema 4 on).

    Attributes:
        rows_read: rows (records) the source yielded, rejected ones included.
        recipients: recipients stored in the snapshot.
        rejected: rows rejected (by the source, or as ``duplicate_id``).
        rejected_reasons: rejected rows by reason.
        rows_per_customer: the identity rule the snapshot was written with.
        lines: how the file's physical lines were accounted for (``SourceLines``
            fields), for sources that count them.
    """

    rows_read: int
    recipients: int
    rejected: int
    rejected_reasons: Mapping[str, int]
    rows_per_customer: str
    lines: Mapping[str, int] | None = None


class RejectSink(Protocol):
    """Where :meth:`SqliteLedger.write_snapshot` hands the rows it rejects (a repeated
    customer id), and where it reads how many rows the source rejected, so that the
    snapshot records the extraction's counts in its own transaction."""

    @property
    def rejected(self) -> int:
        """Rows rejected so far (by the source, and handed to :meth:`reject`)."""
        ...

    @property
    def reasons(self) -> Mapping[str, int]:
        """Rows rejected so far, by reason."""
        ...

    def line_counts(self) -> Mapping[str, int] | None:
        """How the source's physical lines were accounted for, if it counts them."""
        ...

    def reject(self, row: RejectedRow) -> None:
        """Record a rejected row (``rejected.csv``) and count it."""
        ...


class Ledger(Protocol):
    """What the core needs from a ledger (see :class:`SqliteLedger`)."""

    def begin_run(
        self,
        *,
        run_id: str,
        pipeline: str,
        logical_date: datetime,
        fingerprint: str,
        config_file: str | None,
        max_active_runs: int | None,
    ) -> RunRecord: ...
    def get_run(self, run_id: str) -> RunRecord: ...
    def find_runs(self, pipeline: str, logical_date: datetime | None = None) -> list[RunRecord]: ...
    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]: ...
    def claim_run(self, run_id: str) -> RunRecord: ...
    def release_run(self, run_id: str) -> None: ...
    def finish_run(self, run_id: str, status: str, report: str) -> None: ...
    def write_snapshot(
        self,
        run_id: str,
        recipients: Iterable[Recipient],
        *,
        rows_per_customer: str = "one",
        rejects: RejectSink | None = None,
    ) -> int: ...
    def has_snapshot(self, run_id: str) -> bool: ...
    def snapshot_info(self, run_id: str) -> SnapshotInfo | None: ...
    def snapshot(self, run_id: str) -> Iterator[tuple[int, Recipient]]: ...
    def is_planned(self, run_id: str, channel: str) -> bool: ...
    def plan(
        self, run_id: str, channel: str, rows: Iterable[PlanRow], rules: PlanRules
    ) -> None: ...
    def release_deferred(self, run_id: str, channel: str, *, now: float | None = None) -> int: ...
    def suppress(
        self, kind: str, address: str, *, reason: str, source: str | None = None
    ) -> None: ...
    def pending(
        self, run_id: str, channel: str
    ) -> Iterator[tuple[int, Recipient, str, int, int | None]]: ...
    def mark_in_flight(self, run_id: str, channel: str, seqs: Sequence[int]) -> None: ...
    def record(
        self, run_id: str, channel: str, rows: Sequence[tuple[int, DeliveryResult, str, bool]]
    ) -> None: ...
    def flush(self) -> None: ...
    def resolve_in_flight(self, run_id: str, channel: str, *, resend: bool) -> int: ...
    def requeue(self, run_id: str, channel: str, *, failed: bool, unknown: bool) -> int: ...
    def owed(
        self, run_id: str, channels: Sequence[str], *, failed: bool, unknown: bool
    ) -> int: ...
    def counts(self, run_id: str, channel: str) -> dict[str, int]: ...
    def deliveries(self, run_id: str, channel: str | None = None) -> Iterator[DeliveryResult]: ...
    def close(self) -> None: ...


def _loads(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def _ts(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _dt(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _migrate_4(conn: sqlite3.Connection) -> None:
    """Schema 4: snapshots in a stable format, with their extraction counts.

    Schema 3 stored each recipient with :mod:`marshal`, whose format belongs to the
    Python version that wrote it. Every stored recipient is converted here, by the
    Python that opens the ledger first after the upgrade: this is the one place that
    still reads ``marshal``. The recipient's source line moves to a column of its own.
    Runs snapshotted before keep their recipient-id idempotency keys (no ``snapshots``
    row), so that a resume after the upgrade re-sends in-flight messages with the keys
    they left with.
    """
    conn.execute(
        "CREATE TABLE snapshots (run INTEGER PRIMARY KEY, rows_per_customer TEXT NOT NULL, "
        "rows_read INTEGER NOT NULL, rejected INTEGER NOT NULL, reasons TEXT NOT NULL)"
    )
    conn.execute("ALTER TABLE recipients ADD COLUMN line INTEGER NOT NULL DEFAULT 0")

    def convert(data: bytes) -> str:
        email, phone, token, attributes, consent, _ = marshal.loads(data)  # noqa: S302 - ours
        return _dumps([email, phone, token, attributes, consent])

    def line(data: bytes) -> int:
        return int(marshal.loads(data)[5])  # noqa: S302 - ours

    conn.create_function("ck_v3_line", 1, line, deterministic=True)
    conn.create_function("ck_v3_data", 1, convert, deterministic=True)
    try:
        conn.execute(
            "UPDATE recipients SET line = ck_v3_line(data), data = ck_v3_data(data) "
            "WHERE typeof(data) = 'blob'"
        )
    finally:
        conn.create_function("ck_v3_line", 1, None)
        conn.create_function("ck_v3_data", 1, None)


_MIGRATIONS: dict[int, str | Callable[[sqlite3.Connection], None]] = {
    1: """
    CREATE TABLE runs (
        id INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        pipeline TEXT NOT NULL,
        logical_date TEXT NOT NULL,
        status TEXT NOT NULL,
        fingerprint TEXT NOT NULL,
        config_file TEXT,
        created_at TEXT NOT NULL,
        finished_at TEXT,
        pid INTEGER,
        recipients INTEGER,
        report TEXT
    );
    CREATE INDEX runs_by_date ON runs (pipeline, logical_date);
    CREATE TABLE recipients (
        run INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        recipient_id TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (run, seq)
    ) WITHOUT ROWID;
    CREATE TABLE channels (
        run INTEGER NOT NULL,
        channel TEXT NOT NULL,
        code INTEGER NOT NULL,
        planned INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (run, channel),
        UNIQUE (run, code)
    ) WITHOUT ROWID;
    CREATE TABLE deliveries (
        run INTEGER NOT NULL,
        channel INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        transient INTEGER NOT NULL DEFAULT 0,
        provider_message_id TEXT,
        error_code TEXT,
        error TEXT,
        updated_at REAL,
        PRIMARY KEY (run, channel, seq)
    ) WITHOUT ROWID;
    CREATE INDEX deliveries_by_state ON deliveries (run, channel, state, seq);
    """,
    2: """
    ALTER TABLE deliveries ADD COLUMN address TEXT;
    ALTER TABLE deliveries ADD COLUMN filtered INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN not_before REAL;
    ALTER TABLE deliveries ADD COLUMN batch INTEGER;
    CREATE INDEX deliveries_by_address ON deliveries (address, state);
    CREATE TABLE suppressions (
        kind TEXT NOT NULL,
        address TEXT NOT NULL,
        reason TEXT NOT NULL,
        source TEXT,
        created_at TEXT NOT NULL,
        PRIMARY KEY (kind, address)
    ) WITHOUT ROWID;
    """,
    # Cheaper deliveries: every state change rewrote an entry in both indexes. No query
    # looks deliveries up by address, and every query by state is within one run's
    # channel, which the primary key finds: a scan of that range costs a resume (or
    # a channel's start) less than the index cost every delivery.
    3: """
    DROP INDEX IF EXISTS deliveries_by_address;
    DROP INDEX IF EXISTS deliveries_by_state;
    """,
    4: _migrate_4,
    # The owner of a run (campaignkit._claims.Owner as JSON) and its heartbeat: claims
    # are decided by them.
    # How a snapshot's physical lines were accounted for (SourceLines as JSON).
    5: """
    ALTER TABLE runs ADD COLUMN owner TEXT;
    ALTER TABLE runs ADD COLUMN heartbeat REAL;
    ALTER TABLE snapshots ADD COLUMN lines TEXT;
    """,
}


class _Writer(threading.Thread):
    """The single writing thread: runs queued operations in batched transactions."""

    def __init__(self, path: Path, *, durable: bool) -> None:
        super().__init__(name="ck-ledger-writer", daemon=True)
        self.path = path
        self.durable = durable
        self.ops: queue.SimpleQueue[tuple[Any, threading.Event | None] | None] = queue.SimpleQueue()
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = _connect(self.path, durable=self.durable)
        try:
            while True:
                item = self.ops.get()
                if item is None:
                    return
                batch = [item]
                while True:  # group commit: take everything queued meanwhile
                    try:
                        nxt = self.ops.get_nowait()
                    except queue.Empty:
                        break
                    if nxt is None:
                        self.ops.put(None)
                        break
                    batch.append(nxt)
                try:
                    with conn:
                        for op, _ in batch:
                            op(conn)
                except BaseException as exc:  # surfaced to waiters and on flush()
                    self.error = exc
                for _, done in batch:
                    if done is not None:
                        done.set()
        finally:
            conn.close()

    def submit(self, op: Any, *, wait: bool) -> None:
        if self.error is not None:
            raise LedgerError(f"ledger write failed: {self.error}") from self.error
        done = threading.Event() if wait else None
        self.ops.put((op, done))
        if done is not None:
            done.wait()
            if self.error is not None:
                raise LedgerError(f"ledger write failed: {self.error}") from self.error


def _connect(path: Path, *, durable: bool = True) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: every commit survives a crash of the process (not of the machine).
    conn.execute(f"PRAGMA synchronous={'NORMAL' if durable else 'OFF'}")
    conn.execute("PRAGMA foreign_keys=ON")
    conn.isolation_level = "DEFERRED"
    return conn


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
            conn.execute(
                "UPDATE runs SET heartbeat = ? WHERE run_id = ?", (time.time(), run_id)
            )
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


def _json_encoder() -> Callable[[Any], str]:
    """A compact, ASCII JSON encoder (any string survives, lone surrogates included).

    ``json.JSONEncoder.encode`` builds a C encoder on every call, a third of the cost
    for a small object written once per recipient: the C encoder is made once here and
    called directly, unless it is unavailable or does not write what the public
    encoder writes (then the public one is used)."""
    public = json.JSONEncoder(separators=(",", ":"), check_circular=False, allow_nan=False).encode
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return public

    def default(o: Any) -> Any:
        raise TypeError(f"Object of type {type(o).__name__} is not JSON serializable")

    try:
        c_encoder = make(
            None, default, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
        )

        def encode(o: Any, _join: Callable[[Any], str] = "".join, _c: Any = c_encoder) -> str:
            return _join(_c(o, 0))

        sample = ["a\u00e9\ud800\x00", None, "t", {"k": "v", "n": 1}, {"email": True}, 7]
        if encode(sample) != public(sample):
            return public
    except Exception:  # another Python's private encoder: the public one will do
        return public
    return encode


#: A recipient as stored (schema 4): a compact JSON array ``[email, phone, push_token,
#: attributes, consent]`` (ASCII: any string survives), its id and line in columns.
_dumps = _json_encoder()
_decode = json.JSONDecoder().raw_decode


def _recipient(rid: str, data: str, line: int) -> Recipient:
    email, phone, token, attributes, consent = _decode(data)[0]
    return Recipient(rid, email, phone, token, attributes, consent, line)


def _raw(r: Recipient) -> tuple[str, ...]:
    """A stored recipient's values as ``name=value`` cells (a rejected row's raw values)."""
    cells = [f"id={r.id}"]
    cells += [f"{f}={v}" for f in ("email", "phone", "push_token") if (v := getattr(r, f))]
    cells += [f"{k}={v}" for k, v in r.attributes.items()]
    cells += [f"consent.{k}={'yes' if v else 'no'}" for k, v in r.consent.items()]
    return tuple(cells)


class _Heartbeat(threading.Thread):
    """Says every :data:`HEARTBEAT_SECONDS` that the owner of a run is alive, so that
    a process on another host can tell a live owner from a dead one (see
    :meth:`Owner.alive`). Stops when the run is let go or its owner changed."""

    def __init__(self, path: Path, run_id: str, owner: Owner) -> None:
        super().__init__(name="ck-ledger-heartbeat", daemon=True)
        self.path, self.run_id, self.owner = path, run_id, owner.to_text()
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stop_event.wait(HEARTBEAT_SECONDS):
            try:
                conn = _connect(self.path)
                try:
                    with conn:
                        beat = conn.execute(
                            "UPDATE runs SET heartbeat = ? WHERE run_id = ? AND owner = ?",
                            (time.time(), self.run_id, self.owner),
                        )
                finally:
                    conn.close()
            except sqlite3.Error:  # busy or gone: try again at the next beat
                continue
            if beat.rowcount == 0:  # no longer ours: nothing to say
                return

    def stop(self) -> None:
        self._stop_event.set()


def _text(owner: Owner | None) -> str | None:
    return None if owner is None else owner.to_text()


def _busy(run: RunRecord) -> str:
    who = run.owner.describe() if run.owner is not None else "another process"
    return f"run {run.run_id!r} is being run by {who}; nothing was done by this one"
