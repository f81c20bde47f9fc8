"""How the ledger is stored: the schema, its migrations and the stored values' formats.

The schema is versioned in ``PRAGMA user_version`` and migrated on open.
"""

from __future__ import annotations

import json
import marshal
import sqlite3
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._models import Recipient
from ._connection import connect
from ._errors import LedgerError

__all__ = ["OPEN_TIMEOUT", "SCHEMA_VERSION", "migrate", "open_and_migrate"]

SCHEMA_VERSION = 7


def load_object(text: str) -> dict[str, Any]:
    value = json.loads(text)
    return value if isinstance(value, dict) else {}


def timestamp(dt: datetime) -> str:
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_timestamp(text: str | None) -> datetime | None:
    if text is None:
        return None
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


#: The receipts' tables and columns, the same for both backends (PostgreSQL's schema 3).
RECEIPTS_SCHEMA = """
    ALTER TABLE deliveries ADD COLUMN receipt TEXT;
    ALTER TABLE deliveries ADD COLUMN receipt_at TEXT;
    ALTER TABLE deliveries ADD COLUMN receipt_key TEXT;
    CREATE TABLE receipts (
        key TEXT PRIMARY KEY,
        provider TEXT NOT NULL,
        channel TEXT NOT NULL,
        message_id TEXT,
        reference TEXT,
        address TEXT,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        occurred_at TEXT NOT NULL,
        reason TEXT,
        raw TEXT,
        received_at TEXT NOT NULL,
        matched INTEGER NOT NULL DEFAULT 0,
        run BIGINT,
        channel_code INTEGER,
        seq BIGINT
    );
    CREATE INDEX receipts_unmatched ON receipts (received_at) WHERE matched = 0
"""


def migrate_4(conn: sqlite3.Connection) -> None:
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
        return dumps([email, phone, token, attributes, consent])

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


MIGRATIONS: dict[int, str | Callable[[sqlite3.Connection], None]] = {
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
    4: migrate_4,
    # The owner of a run (campaignkit._claims.Owner as JSON) and its heartbeat: claims
    # are decided by them.
    # How a snapshot's physical lines were accounted for (SourceLines as JSON).
    5: """
    ALTER TABLE runs ADD COLUMN owner TEXT;
    ALTER TABLE runs ADD COLUMN heartbeat REAL;
    ALTER TABLE snapshots ADD COLUMN lines TEXT;
    """,
    # The last outcome of each slice of a channel sent since the run was (re)opened
    # (campaignkit._ledger.SliceOutcome as JSON): finishing a run reads them, so that
    # a run's steps can run in different processes.
    6: """
    CREATE TABLE slices (
        run INTEGER NOT NULL,
        channel TEXT NOT NULL,
        slice_index INTEGER NOT NULL,
        slice_count INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        PRIMARY KEY (run, channel, slice_index, slice_count)
    ) WITHOUT ROWID;
    """,
    # Delivery receipts (campaignkit._ledger._receipts): every provider event once, by
    # its key, and each delivery's receipt. No index: a receipt names its delivery
    # (its reference: the run and seq), and is checked against the message id.
    7: RECEIPTS_SCHEMA,
}


def json_encoder() -> Callable[[Any], str]:
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
dumps = json_encoder()
decode = json.JSONDecoder().raw_decode


def recipient_from_row(rid: str, data: str, line: int) -> Recipient:
    email, phone, token, attributes, consent = decode(data)[0]
    return Recipient(rid, email, phone, token, attributes, consent, line)


def raw_cells(r: Recipient) -> tuple[str, ...]:
    """A stored recipient's values as ``name=value`` cells (a rejected row's raw values)."""
    cells = [f"id={r.id}"]
    cells += [f"{f}={v}" for f in ("email", "phone", "push_token") if (v := getattr(r, f))]
    cells += [f"{k}={v}" for k, v in r.attributes.items()]
    cells += [f"consent.{k}={'yes' if v else 'no'}" for k, v in r.consent.items()]
    return tuple(cells)


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    """Bring the ledger behind ``conn`` to :data:`SCHEMA_VERSION`, in one transaction.

    Raises:
        LedgerError: the ledger's schema is newer than this campaignkit's.
    """
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{path}: ledger schema {version} is newer than this campaignkit "
                f"({SCHEMA_VERSION}); upgrade campaignkit"
            )
        for v in range(version + 1, SCHEMA_VERSION + 1):
            step = MIGRATIONS[v]
            if isinstance(step, str):
                for statement in step.split(";"):
                    if statement.strip():
                        conn.execute(statement)
            else:
                step(conn)
            conn.execute(f"PRAGMA user_version = {int(v)}")  # a pragma takes no parameter
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


#: How long opening a ledger waits out other processes' locks (as a write does).
OPEN_TIMEOUT = 30.0


def open_and_migrate(path: Path) -> None:
    """Open the ledger and bring it to this version's schema. Processes that open a
    new ledger at the same instant may find it locked before SQLite's busy handler
    applies (switching a new file to WAL, a recovery in progress): they wait and try
    again, up to :data:`OPEN_TIMEOUT`."""
    deadline = time.monotonic() + OPEN_TIMEOUT
    delay = 0.01
    while True:
        conn = None
        try:
            conn = connect(path)
            migrate(conn, path)
            return
        except sqlite3.OperationalError as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            if not busy or time.monotonic() + delay > deadline:
                raise LedgerError(f"{path}: cannot open the ledger: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise LedgerError(f"{path}: cannot open the ledger: {exc}") from None
        finally:
            if conn is not None:
                conn.close()
        time.sleep(delay)
        delay = min(delay * 2, 0.5)
