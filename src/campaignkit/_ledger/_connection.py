"""Opening the ledger's SQLite connections, and the single writer thread."""

from __future__ import annotations

import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

from ._errors import LedgerError

__all__: list[str] = []


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
