"""The PostgreSQL ledger's writer thread: in-flight marks and outcomes, group-committed.

Sending threads hand their marks and outcomes to one thread, which takes everything
queued meanwhile and writes it in one transaction, pipelined: the outcomes of many
calls as one ``UPDATE ... FROM unnest`` (:func:`._deliveries.outcome_update`), then
each fenced mark. A group holding a mark, or a durable flush, commits durably; a
group of outcomes only commits without waiting for the server's disk. Since the
server's log is written in order, an outcome is durable by the next mark or flush
(SQLite's rule), and a mark waits in its group for the outcomes queued before it.

A mark's caller waits for its group; a recording caller does not. A group that
fails (after the retries a broken connection gets) fails its waiters, and if it held
outcomes the writer keeps the error: every later call raises it, so that nothing is
sent while outcomes may be lost (their deliveries stay ``in_flight``, which a resume
settles by the crash rules, as after a crash).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from .._errors import LedgerError
from .._types import DeliveryRecord
from . import _deliveries

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    Pool = ConnectionPool[psycopg.Connection[Any]]

__all__ = ["Mark", "OutcomeWriter"]

#: Attempts a group gets when its connection broke (the server restarted): the pool
#: opens a new one. Marks and outcomes set values, so writing them again is harmless.
ATTEMPTS = 3
#: Seconds between those attempts (times the attempt number).
RETRY_DELAY = 0.5


@attrs.define
class Mark:
    """A queued in-flight mark, and (once written) whether the run's owner made it."""

    owner: str
    run: int
    code: int
    seqs: Sequence[int]
    now: float
    mine: bool = False


@attrs.define
class _Item:
    """One queued request: outcomes, a mark, or a barrier (``mark`` and ``rows`` unset)."""

    rows: Sequence[DeliveryRecord] = ()
    key: tuple[int, int] = (0, 0)
    now: float = 0.0
    mark: Mark | None = None
    durable: bool = False
    done: threading.Event | None = None
    error: LedgerError | None = None


class OutcomeWriter(threading.Thread):
    """The writer thread of one :class:`PostgresLedger` (see the module docstring).

    ``errors`` are the driver's exceptions, ``wrap`` turns one into the ledger's
    :class:`LedgerError` (without the URL's secrets).
    """

    def __init__(
        self,
        pool: Pool,
        errors: tuple[type[BaseException], ...],
        wrap: Callable[[BaseException], LedgerError],
    ) -> None:
        super().__init__(name="ck-ledger-pg-writer", daemon=True)
        self._pool, self._errors, self._wrap = pool, errors, wrap
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        #: Set when a group holding outcomes failed: raised by every later call.
        self.error: LedgerError | None = None
        self._stopped = False

    # -- callers' side -------------------------------------------------------------------
    def record(self, run: int, code: int, rows: Sequence[DeliveryRecord], now: float) -> None:
        """Queue outcomes; they are written with the next group."""
        self._check()
        if rows:
            self._queue.put(_Item(rows=rows, key=(run, code), now=now))

    def mark(self, mark: Mark) -> bool:
        """Write ``mark`` (after everything queued before it), durably; returns whether
        the run's owner made it."""
        self._wait(_Item(mark=mark, durable=True))
        return mark.mine

    def sync(self, *, durable: bool) -> None:
        """Return once everything queued so far is committed (durably if ``durable``):
        reads then see it."""
        self._wait(_Item(durable=durable))

    def stop(self) -> None:
        """Write what is queued, then end the thread."""
        self._stopped = True
        if self.is_alive():
            self._queue.put(None)
            self.join()

    def _wait(self, item: _Item) -> None:
        if self._stopped and item.mark is None and self.error is None:
            return  # everything queued was written when it stopped
        self._check()
        item.done = threading.Event()
        self._queue.put(item)
        item.done.wait()
        if item.error is not None:
            raise item.error
        self._check()

    def _check(self) -> None:
        if self.error is not None:
            raise LedgerError(f"ledger outcomes could not be written: {self.error}")
        if self._stopped:
            raise LedgerError("the ledger is closed")

    # -- the thread ----------------------------------------------------------------------
    def run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group, stop = self._take([first])
            self._write(group)
            if stop:
                return

    def _take(self, group: list[_Item]) -> tuple[list[_Item], bool]:
        """``group`` and everything queued meanwhile (group commit); whether to stop."""
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return group, False
            if item is None:
                return group, True
            group.append(item)

    def _write(self, group: list[_Item]) -> None:
        error: LedgerError | None = None
        for attempt in range(1, ATTEMPTS + 1):
            try:
                self._commit(group)
                error = None
                break
            except self._errors as exc:
                error = self._wrap(exc)
                if not _broken(exc) or attempt == ATTEMPTS:
                    break
                time.sleep(RETRY_DELAY * attempt)
        if error is not None and any(item.rows for item in group):
            self.error = error
        for item in group:
            if item.done is not None:
                item.error = error
                item.done.set()

    def _commit(self, group: list[_Item]) -> None:
        """One transaction, pipelined: the outcomes, then the marks."""
        marks = [item.mark for item in group if item.mark is not None]
        durable = any(item.durable for item in group)
        outcomes = _deliveries.outcome_rows(
            (item.key, item.rows, item.now) for item in group if item.rows
        )
        if not (outcomes or marks):
            if durable:
                with self._pool.connection() as conn:
                    conn.execute(_deliveries.FLUSH)
            return
        with self._pool.connection() as conn:
            with conn.transaction():
                if not durable:
                    conn.execute(_deliveries.LAZY)
                if outcomes:
                    conn.execute(_deliveries.OUTCOMES, outcomes)
                cursors = [conn.execute(*_deliveries.mark_statement(m)) for m in marks]
            for mark, cursor in zip(marks, cursors, strict=True):
                row = cursor.fetchone()
                mark.mine = row is not None and bool(row[0])


def _broken(exc: BaseException) -> bool:
    """Whether ``exc`` says the connection is gone (worth a new one), not the SQL wrong."""
    return type(exc).__name__ in {"OperationalError", "PoolTimeout"}
