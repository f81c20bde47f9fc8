"""Opening the ledger's SQLite connections (:func:`connect`), and the single writer thread."""

from __future__ import annotations

import queue
import sqlite3
import threading
import urllib.parse
from pathlib import Path
from typing import Any

from ._errors import LedgerError

__all__ = ["connect"]


class Writer(threading.Thread):
    """The single writing thread: runs queued operations in batched transactions."""

    def __init__(self, path: Path, *, durable: bool) -> None:
        super().__init__(name="ck-ledger-writer", daemon=True)
        self.path = path
        self.durable = durable
        self.ops: queue.SimpleQueue[tuple[Any, threading.Event | None] | None] = queue.SimpleQueue()
        self.error: BaseException | None = None

    def run(self) -> None:
        conn = connect(self.path, durable=self.durable)
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


def connect(
    path: Path, *, readonly: bool = False, durable: bool = True, history: Path | None = None
) -> sqlite3.Connection:
    """Open a connection to the ledger at ``path``: the one way the ledger opens one.

    Args:
        path: the ledger's file.
        readonly: a connection that refuses every write (``PRAGMA query_only``): the
            ledger reads through such connections only.
        durable: every commit survives a crash of the process (WAL + ``NORMAL``);
            ``False`` for throwaway ledgers (``OFF``: no syncing).
        history: another ledger, attached read only as ``history`` (the suppression
            list and send history a dry run's plan rules consult).
    """
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    # WAL + NORMAL: every commit survives a crash of the process (not of the machine).
    conn.execute("PRAGMA synchronous=NORMAL" if durable else "PRAGMA synchronous=OFF")
    conn.execute("PRAGMA foreign_keys=ON")
    if history is not None:
        uri = f"file:{urllib.parse.quote(str(history))}?mode=ro"
        conn.execute("ATTACH DATABASE ? AS history", (uri,))
    if readonly:  # and in autocommit mode: a refused write leaves no transaction open
        conn.execute("PRAGMA query_only=ON")
    else:
        conn.isolation_level = "DEFERRED"
    return conn
