"""The SQLite side of :class:`~campaignkit._ledger._receipts.ReceiptBook`: one
connection of its own, one writer at a time (``BEGIN IMMEDIATE``)."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from ._connection import connect
from ._errors import LedgerError
from ._receipts import Statement
from ._schema import open_and_migrate

__all__ = ["BUSY_TIMEOUT_MS", "SqliteReceiptDb"]

_T = TypeVar("_T")

#: How long a receipt's write waits for a campaign's writes to let go of the ledger:
#: less than providers wait for an answer (Twilio: 15 s), so that a receiver answers
#: "try again" (503) in time rather than being cut off.
BUSY_TIMEOUT_MS = 10_000


class SqliteReceiptDb:
    """Receipts' transactions on a SQLite ledger file (thread-safe: one at a time)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        open_and_migrate(path)
        self._path = path
        self._conn = connect(path)
        self._conn.isolation_level = None  # transactions begun here, explicitly
        self._conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        self._lock = threading.Lock()

    @property
    def location(self) -> str:
        return str(self._path)

    def transact(self, work: Callable[[Statement], _T]) -> _T:
        conn = self._conn

        def run(sql: str, args: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
            cursor = conn.execute(sql, tuple(args))
            return cursor.fetchall(), cursor.rowcount

        with self._lock:
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(run)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise LedgerError(f"{self._path}: recording receipts failed: {exc}") from None
        return result

    def close(self) -> None:
        with self._lock:
            self._conn.close()
