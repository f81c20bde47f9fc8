"""Surviving a restart of the PostgreSQL server: every ledger operation is retried on a
fresh connection when the one it used broke, for :data:`RECONNECT_SECONDS` at most.

When the server restarts (``pg_ctl restart``, a failover, a network cut), every pooled
connection is dead. The pool checks a connection before lending it
(``ConnectionPool.check_connection``) and replaces the dead ones; an operation whose
connection broke while it ran is run again by :meth:`Reconnecting.run`, after a
backoff, on another connection, until it succeeds or the outage outlasts
:data:`RECONNECT_SECONDS` (then :class:`LedgerError`, as before). One warning is
logged per outage, and one note when it is over; neither shows the URL's password.

Running an operation again is safe only if doing it twice is doing it once, since a
statement whose connection broke may or may not have been committed. The ledger's
operations, by that measure:

- **Reads** (and the streams: each page is a keyset query, "the rows after the last
  one seen", so a page read again after a break neither skips nor repeats a row):
  run again as they are.
- **Writes that set values** (an in-flight mark, outcomes, a slice's outcome,
  suppressions, a channel's code, deleting a run): writing the same values twice
  leaves what writing them once leaves, and no other process writes those rows
  meanwhile (the sending thread that marked a batch records it). The counts that
  ``resolve_in_flight``, ``requeue`` and ``release_deferred`` return may then be
  short by what the first, committed, try changed: the states are right.
- **Claims**: run again with the same :class:`Owner` token; a claim that finds the
  run already owned by that token is its own earlier claim, committed before the
  break (:func:`._runs.claim`).
- **finish_run**: a retry that finds the run finished, without an owner, with the
  same status and the same report text (which names the run and when it finished)
  finished it itself (:func:`._runs.finish_run`).
- **record_run**: a retry that finds the same run recorded with the same status,
  fingerprint and report recorded it itself.
- **The snapshot and a channel's plan** are one transaction each fed by a stream
  (the source's rows, the snapshot's) that cannot be read twice: run again only if
  the break came before the stream was read (:class:`OneShot`); otherwise the retry
  looks whether the transaction committed (the snapshot's row, the channel's
  ``planned`` flag) and, if not, raises :class:`LedgerError`: nothing was stored,
  nothing was sent, and the run is resumed like any stopped run.

**Outcomes committed lazily** (``synchronous_commit`` off, see :mod:`._deliveries`)
are durable only once a later durable commit is: a server that *crashes*
(``pg_ctl stop -m immediate``, a power cut) may lose the last ones, although the
ledger said they were recorded, leaving their deliveries ``in_flight``. So the
outcome writes since the last durable commit are kept (:meth:`Reconnecting.lazy`;
an in-flight mark or :meth:`PostgresLedger.flush` drops those it made durable), and
when a new connection finds that the server started since the last one
(``pg_postmaster_start_time()``), they are written again, in order, on it, before
any connection to the restarted server is lent: a later write cannot be overtaken by
an older one. (A ledger that is not ``durable`` keeps nothing: it is a throwaway.)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..._redact import redact
from .._errors import LedgerError
from ._connect import Driver

if TYPE_CHECKING:
    import psycopg
    from psycopg_pool import ConnectionPool

    Conn = psycopg.Connection[Any]
    Pool = ConnectionPool[psycopg.Connection[Any]]

__all__ = ["RECONNECT_SECONDS", "OneShot", "Reconnecting", "planned", "stored_snapshot"]

log = logging.getLogger("campaignkit")

_T = TypeVar("_T")
#: How long an operation is retried while the server cannot be reached.
RECONNECT_SECONDS = 60.0
#: How long one try waits for a connection of the pool (all busy, or none can be made).
POOL_WAIT_SECONDS = 30.0
#: The first wait between tries, doubled after each failed try up to the last.
BACKOFF_SECONDS = (0.05, 2.0)
#: SQLSTATEs that say the connection is gone (the server shut down or restarted, or
#: refuses connections while it starts), besides class 08 (connection exceptions).
_GONE = frozenset({"57P01", "57P02", "57P03"})


class _Broken(Exception):
    """The connection broke under an operation (``error``, the driver's)."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error)
        self.error = error


class OneShot(Generic[_T]):
    """An iterable that can be read once, which says whether it was (then an
    operation it feeds cannot be run again)."""

    def __init__(self, items: Iterable[_T]) -> None:
        self._items = items
        self.started = False

    def __iter__(self) -> Iterator[_T]:
        self.started = True
        return iter(self._items)


def stored_snapshot(conn: Conn, run: int, rows: OneShot[Any], where: str) -> int | None:
    """After a break while run ``run``'s snapshot was stored: how many recipients it
    holds if that transaction committed, ``None`` if it did not and can be run again.

    Raises:
        LedgerError: it did not commit, and its rows were read (they cannot be again).
    """
    row = conn.execute(
        "SELECT r.recipients FROM runs r JOIN snapshots s ON s.run = r.id WHERE r.id = %s",
        (run,),
    ).fetchone()
    if row is not None and row[0] is not None:
        return int(row[0])
    if rows.started:
        raise LedgerError(
            f"{where}: the connection to the ledger broke while the snapshot was stored; "
            "nothing was stored (resume the run)"
        )
    return None


def planned(conn: Conn, run: int, channel: str, rows: OneShot[Any], where: str) -> bool:
    """After a break while ``channel``'s plan was recorded: whether that transaction
    committed (``False``: it did not and can be run again).

    Raises:
        LedgerError: it did not commit, and its rows were read (they cannot be again).
    """
    row = conn.execute(
        "SELECT planned FROM channels WHERE run = %s AND channel = %s", (run, channel)
    ).fetchone()
    if row is not None and row[0]:
        return True
    if rows.started:
        raise LedgerError(
            f"{where}: the connection to the ledger broke while the audience of {channel} "
            "was recorded; nothing was recorded (resume the run)"
        )
    return False


class Reconnecting:
    """Runs operations on the pool's connections, again after a break (module
    docstring); configures every new connection, and writes again what a server
    crash may have lost."""

    def __init__(self, where: str, secrets: tuple[str, ...], driver: Driver) -> None:
        self.where, self.secrets, self.driver = where, secrets, driver
        self.errors = driver.errors
        self._catch: tuple[type[BaseException], ...] = (_Broken, *driver.errors)
        self.pool: Pool | None = None
        self.settings = ""
        self._lock = threading.Lock()
        self._down_since: float | None = None
        self._server_started: Any = None
        self._tickets = itertools.count(1)
        #: Lazily committed writes not known durable yet: (ticket, operation).
        self.lazy: list[tuple[int, Callable[[Conn], object]]] = []
        self._lazy_lock = threading.Lock()

    # -- new connections -----------------------------------------------------------------
    def configure(self, conn: Conn) -> None:
        """Set up a new connection (``search_path``, ...); if the server started since
        the last one, write again on it what may have been lost (module docstring)."""
        conn.execute(self.settings)
        row = conn.execute("SELECT pg_postmaster_start_time()").fetchone()
        started = None if row is None else row[0]
        with self._lock:
            if self._server_started is not None and started != self._server_started:
                self._replay(conn)
            self._server_started = started

    def _replay(self, conn: Conn) -> None:
        with self._lazy_lock:
            pending = list(self.lazy)
        for _, op in pending:
            op(conn)
        if pending:
            log.warning(
                "%s: the server restarted; wrote again %d recent outcome write(s) it may have lost",
                self.where,
                len(pending),
            )

    # -- what is durable -----------------------------------------------------------------
    def ticket(self) -> int:
        """A number after every write that completed before now."""
        return next(self._tickets)

    def wrote_lazily(self, op: Callable[[Conn], object]) -> None:
        """``op`` committed without waiting for the server's disk: keep it."""
        with self._lazy_lock:
            self.lazy.append((self.ticket(), op))

    def durable_since(self, ticket: int) -> None:
        """A durable commit begun after ``ticket`` completed: what was written lazily
        before it is on disk."""
        with self._lazy_lock:
            self.lazy = [entry for entry in self.lazy if entry[0] > ticket]

    # -- running operations --------------------------------------------------------------
    def run(self, op: Callable[[Conn], _T], *, again: Callable[[Conn], _T] | None = None) -> _T:
        """``op(conn)`` on a connection of the pool; after a break, ``again(conn)``
        (default ``op``) on a fresh one, until :data:`RECONNECT_SECONDS` passed.

        Raises:
            LedgerError: the driver's other errors, or the server stayed away.
        """
        deadline: float | None = None
        delay = BACKOFF_SECONDS[0]
        while True:
            left = RECONNECT_SECONDS if deadline is None else deadline - time.monotonic()
            timeout = max(min(left, POOL_WAIT_SECONDS), 0.1)
            try:
                result = self._once(op if deadline is None else (again or op), timeout)
            except self._catch as caught:
                exc = caught.error if isinstance(caught, _Broken) else caught
                gone = isinstance(caught, _Broken) or self.broke(exc)
                if not gone or (deadline is not None and time.monotonic() > deadline):
                    raise self.error(exc) from None
                if deadline is None:
                    deadline = time.monotonic() + RECONNECT_SECONDS
                self._went_down(exc)
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, BACKOFF_SECONDS[1])
                continue
            self._came_back()
            return result

    def _once(self, op: Callable[[Conn], _T], timeout: float | None) -> _T:
        assert self.pool is not None
        with self.pool.connection(timeout=timeout) as conn:
            try:
                return op(conn)
            except self.errors as exc:
                if conn.broken or conn.closed:
                    raise _Broken(exc) from exc
                raise

    def broke(self, exc: BaseException) -> bool:
        """Whether ``exc`` says the connection (or the server) went away, not that the
        statement failed."""
        if isinstance(exc, self.driver.pool.PoolTimeout):
            return True  # no connection could be had: the server is away
        if not isinstance(exc, self.driver.psycopg.OperationalError):
            return False
        sqlstate = getattr(exc, "sqlstate", None)
        # No SQLSTATE: the client's own error (the connection could not be made or used).
        return sqlstate is None or sqlstate in _GONE or sqlstate.startswith("08")

    def error(self, exc: BaseException) -> LedgerError:
        """A :class:`LedgerError` from a driver error, without the URL's secrets."""
        return LedgerError(f"{self.where}: {redact(str(exc).strip(), self.secrets)}")

    def _went_down(self, exc: BaseException) -> None:
        with self._lock:
            if self._down_since is not None:
                return
            self._down_since = time.monotonic()
        log.warning(
            "%s: lost the connection to the ledger (%s); reconnecting for up to %g s",
            self.where,
            (redact(str(exc).strip(), self.secrets) or type(exc).__name__).splitlines()[0],
            RECONNECT_SECONDS,
        )

    def _came_back(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            since, self._down_since = self._down_since, None
        if since is not None:
            log.warning(
                "%s: reconnected to the ledger after %.1f s", self.where, time.monotonic() - since
            )

    @contextlib.contextmanager
    def streaming(self) -> Iterator[None]:
        """Driver errors of a stream as :class:`LedgerError` (pages retry themselves)."""
        try:
            yield
        except self.errors as exc:
            raise self.error(exc) from None
