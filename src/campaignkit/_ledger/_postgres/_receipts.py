"""The PostgreSQL side of :class:`~campaignkit._ledger._receipts.ReceiptBook`: its
transactions on the ledger's pool, retried on a new connection if one breaks."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .._receipts import Statement

__all__ = ["LOCK_TIMEOUT_MS", "PostgresReceiptDb"]

#: How long a receipt's write waits for a lock (as SQLite's busy timeout).
LOCK_TIMEOUT_MS = 10_000

_T = TypeVar("_T")
Conn = Any


class PostgresReceiptDb:
    """Receipts' transactions through ``do`` (a ledger's ``op(conn)`` runner)."""

    def __init__(self, do: Callable[[Callable[[Conn], Any]], Any], location: str) -> None:
        self._do = do
        self._location = location

    @property
    def location(self) -> str:
        return self._location

    def transact(self, work: Callable[[Statement], _T]) -> _T:
        def op(conn: Conn) -> _T:
            with conn.transaction(), conn.cursor() as cursor:
                # A lock held longer than this (another writer's long transaction) fails
                # the write, and the receiver answers "try again" in time (Twilio waits
                # 15 s) rather than keeping the provider, and a server thread, waiting.
                cursor.execute(f"SET LOCAL lock_timeout = {LOCK_TIMEOUT_MS}")

                def run(sql: str, args: Sequence[Any]) -> tuple[list[tuple[Any, ...]], int]:
                    cursor.execute(sql.replace("?", "%s"), tuple(args))
                    rows = cursor.fetchall() if cursor.description is not None else []
                    return rows, cursor.rowcount

                return work(run)

        result: _T = self._do(op)
        return result
