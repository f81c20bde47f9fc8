"""How a PostgreSQL ledger is stored: its tables inside one PostgreSQL schema, versioned.

The ledger's schema (a PostgreSQL ``SCHEMA``, ``campaignkit`` unless told) holds a
``schema_version`` table and the ledger's tables, named as the SQLite ledger's
(:mod:`campaignkit._ledger._schema`) with the same columns and stored formats
(timestamps as text, recipients as the same compact JSON), so that both backends
read and write the same values. :func:`migrate` creates the schema if missing and
brings it to :data:`SCHEMA_VERSION` in one transaction, under an advisory lock (of
processes that open a new ledger at once, one migrates and the others wait).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._errors import LedgerError
from .._schema import RECEIPTS_SCHEMA
from ._connect import quote_ident

if TYPE_CHECKING:
    import psycopg

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "migrate"]

#: The version of the PostgreSQL schema (numbered apart from SQLite's).
SCHEMA_VERSION = 3

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE runs (
            id BIGSERIAL PRIMARY KEY,
            run_id TEXT NOT NULL UNIQUE,
            pipeline TEXT NOT NULL,
            logical_date TEXT NOT NULL,
            status TEXT NOT NULL,
            fingerprint TEXT NOT NULL,
            config_file TEXT,
            created_at TEXT NOT NULL,
            finished_at TEXT,
            pid INTEGER,
            recipients BIGINT,
            report TEXT,
            owner TEXT,
            heartbeat DOUBLE PRECISION
        )""",
        "CREATE INDEX runs_by_date ON runs (pipeline, logical_date)",
        """CREATE TABLE recipients (
            run BIGINT NOT NULL,
            seq BIGINT NOT NULL,
            recipient_id TEXT NOT NULL,
            data TEXT NOT NULL,
            line BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (run, seq)
        )""",
        """CREATE TABLE snapshots (
            run BIGINT PRIMARY KEY,
            rows_per_customer TEXT NOT NULL,
            rows_read BIGINT NOT NULL,
            rejected BIGINT NOT NULL,
            reasons TEXT NOT NULL,
            lines TEXT
        )""",
        """CREATE TABLE channels (
            run BIGINT NOT NULL,
            channel TEXT NOT NULL,
            code INTEGER NOT NULL,
            planned BOOLEAN NOT NULL DEFAULT FALSE,
            PRIMARY KEY (run, channel),
            UNIQUE (run, code)
        )""",
        """CREATE TABLE deliveries (
            run BIGINT NOT NULL,
            channel INTEGER NOT NULL,
            seq BIGINT NOT NULL,
            state TEXT NOT NULL,
            reason TEXT,
            attempts INTEGER NOT NULL DEFAULT 0,
            transient INTEGER NOT NULL DEFAULT 0,
            provider_message_id TEXT,
            error_code TEXT,
            error TEXT,
            updated_at DOUBLE PRECISION,
            address TEXT,
            filtered BOOLEAN NOT NULL DEFAULT FALSE,
            not_before DOUBLE PRECISION,
            batch BIGINT,
            PRIMARY KEY (run, channel, seq)
        )""",
        """CREATE TABLE suppressions (
            kind TEXT NOT NULL,
            address TEXT NOT NULL,
            reason TEXT NOT NULL,
            source TEXT,
            created_at TEXT NOT NULL,
            PRIMARY KEY (kind, address)
        )""",
        """CREATE TABLE slices (
            run BIGINT NOT NULL,
            channel TEXT NOT NULL,
            slice_index INTEGER NOT NULL,
            slice_count INTEGER NOT NULL,
            outcome TEXT NOT NULL,
            PRIMARY KEY (run, channel, slice_index, slice_count)
        )""",
    ),
    # Shards and leases (see ._leases): a delivery's shard, the shards' leases, the
    # shared rate budgets.
    2: (
        "ALTER TABLE deliveries ADD COLUMN shard INTEGER",
        "CREATE INDEX deliveries_by_shard ON deliveries (run, channel, shard, seq) "
        "WHERE shard IS NOT NULL",
        """CREATE TABLE shards (
            run BIGINT NOT NULL,
            channel INTEGER NOT NULL,
            shard INTEGER NOT NULL,
            done BOOLEAN NOT NULL DEFAULT FALSE,
            token TEXT,
            owner TEXT,
            lease_until DOUBLE PRECISION,
            leases INTEGER NOT NULL DEFAULT 0,
            PRIMARY KEY (run, channel, shard)
        )""",
        "CREATE INDEX shards_by_token ON shards (token) WHERE token IS NOT NULL",
        """CREATE TABLE rate_budgets (
            name TEXT PRIMARY KEY,
            tat DOUBLE PRECISION NOT NULL
        )""",
    ),
    # Delivery receipts: the same tables and columns as SQLite's schema 7.
    3: tuple(s.strip() for s in RECEIPTS_SCHEMA.split(";") if s.strip()),
}


def migrate(conn: psycopg.Connection[Any], schema: str, where: str) -> None:
    """Create the ledger's schema if missing and bring it to :data:`SCHEMA_VERSION`,
    in one transaction under an advisory lock (``conn`` is in autocommit mode).

    Raises:
        LedgerError: the ledger's schema is newer than this campaignkit's.
    """
    ident = quote_ident(schema)
    with conn.transaction():
        conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            ("campaignkit:migrate:" + schema,),
        )
        exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (schema,))
        if exists.fetchone() is None:  # (creating needs a privilege using it does not)
            conn.execute("CREATE SCHEMA " + ident)
        conn.execute("SET LOCAL search_path TO " + ident)
        conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        version = int(row[0]) if row is not None and row[0] is not None else 0
        if version > SCHEMA_VERSION:
            raise LedgerError(
                f"{where}: ledger schema {version} is newer than this campaignkit "
                f"({SCHEMA_VERSION}); upgrade campaignkit"
            )
        for v in range(version + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS[v]:
                conn.execute(statement)
        if version < SCHEMA_VERSION:
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))
