"""The shared ledger: :class:`PostgresLedger`, the ledger's tables in a PostgreSQL schema.

The class holds the pool and the run and channel keys; the SQL lives in the modules
by responsibility, as for SQLite: :mod:`._runs` (runs, claims, heartbeat),
:mod:`._snapshot`, :mod:`._selection` (the plan rules), :mod:`._deliveries`
(writes) and :mod:`._queries` (reads).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from ..._config import ROWS_PER_CUSTOMER
from ..._models import DeliveryResult, Recipient
from ..._states import DeliveryCounts
from .._claims import Owner
from .._errors import LedgerError, RunOwnershipLost
from .._protocol import RejectSink
from .._schema import timestamp
from .._types import (
    WHOLE,
    PendingDelivery,
    PlanRow,
    PlanRules,
    RunRecord,
    Slice,
    SliceOutcome,
    SnapshotInfo,
)
from . import _deliveries, _queries, _runs, _selection, _snapshot
from ._connect import (
    load_driver,
    open_pool,
    quote_ident,
    redact_url,
    session_settings,
    url_secrets,
    wrap,
)
from ._receipts import PostgresReceiptDb
from ._reconnect import OneShot, Reconnecting, planned, stored_snapshot
from ._schema import migrate
from ._sharding import Sharding

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[Any]

__all__ = ["PostgresLedger"]

log = logging.getLogger("campaignkit")

_T = TypeVar("_T")
#: Connections a ledger object opens at most (its sending threads share them).
MAX_CONNECTIONS = 16


class PostgresLedger(Sharding):
    """The shared ledger: its tables in the PostgreSQL schema ``schema`` of the
    database at ``url`` (created and migrated on open), for processes on any hosts.

    Every write is committed before the method returns (:meth:`record` included,
    durable by the next mark or :meth:`flush`); claims are decided in one transaction with the run's
    row locked; :meth:`mark_in_flight` is fenced by the run's owner. ``history``: the
    schema (of the same database) whose suppression list and send history the plan
    rules consult instead of this one's (a dry run plans in a scratch schema).
    ``durable=False``: no ``in_flight`` marks and commits that do not wait for the
    server's disk (throwaway ledgers).

    The URL's password never shows: not in :attr:`location`, ``repr`` or errors.
    """

    def __init__(
        self,
        url: str,
        *,
        schema: str = "campaignkit",
        durable: bool = True,
        history: str | None = None,
    ) -> None:
        self._driver = load_driver()
        quote_ident(schema)
        if history is not None:
            quote_ident(history)
        self.schema, self.durable, self.history = schema, durable, history
        self.url = redact_url(url)  # as shown; the real one is kept by the pool only
        self._error = wrap(self.location, url_secrets(url))
        self._codes: dict[tuple[int, str], int] = {}
        self._runs: dict[str, int] = {}
        self._owners: dict[str, Owner] = {}  # the runs this ledger object has claimed
        self._heartbeats: dict[str, _runs.Heartbeat] = {}
        self._init_sharding()
        extra = {} if "connect_timeout" in url else {"connect_timeout": 10}
        self._retry = Reconnecting(self.location, url_secrets(url), self._driver)
        self._retry.settings = session_settings(schema, durable=durable)
        try:
            with self._driver.psycopg.connect(url, autocommit=True, **extra) as conn:
                migrate(conn, schema, self.location)
            self._pool = open_pool(
                self._driver, url, configure=self._retry.configure, max_size=MAX_CONNECTIONS
            )
        except self._driver.errors as exc:
            raise self._error(exc) from None
        self._retry.pool = self._pool

    def __repr__(self) -> str:
        return f"<PostgresLedger {self.url!r} schema={self.schema!r}>"

    @property
    def location(self) -> str:
        """Where the ledger is (the database, without its password, and the schema)."""
        return f"{self.url} (schema {self.schema})"

    # -- plumbing ------------------------------------------------------------------------
    def _do(
        self,
        op: Callable[[Conn], _T],
        *,
        again: Callable[[Conn], _T] | None = None,
        lazy: bool = False,
        durable: bool = False,
    ) -> _T:
        """``op(conn)`` on a connection of the pool (autocommit); if the connection
        breaks, ``again`` (default: ``op``) on a fresh one, for a while (see
        :mod:`._reconnect`); the driver's errors as :class:`LedgerError`.

        ``lazy``: ``op`` commits without waiting for the server's disk (kept, to be
        written again if the server crashes); ``durable``: its commit makes what was
        committed lazily before it durable."""
        ticket = self._retry.ticket() if durable and self.durable else 0
        result = self._retry.run(op, again=again)
        if lazy and self.durable:
            self._retry.wrote_lazily(op)
        elif ticket:
            self._retry.durable_since(ticket)
        return result

    def _stream(self, rows: Iterator[_T]) -> Iterator[_T]:
        """A stream's rows (its pages are read with :meth:`_do`, retried alike)."""
        with self._retry.streaming():
            yield from rows

    def _run_key(self, run_id: str) -> int:
        key = self._runs.get(run_id)
        if key is None:
            row = self._do(
                lambda c: c.execute("SELECT id FROM runs WHERE run_id = %s", (run_id,)).fetchone()
            )
            if row is None:
                raise LedgerError(f"no run {run_id!r} in {self.location}")
            key = self._runs[run_id] = int(row[0])
        return key

    def _channel_code(self, run: int, channel: str) -> int:
        code = self._codes.get((run, channel))
        if code is None:
            code = self._codes[(run, channel)] = self._do(
                lambda c: _runs.channel_code(c, run, channel)
            )
        return code

    def _key(self, run_id: str, channel: str) -> tuple[int, int]:
        run = self._run_key(run_id)
        return run, self._channel_code(run, channel)

    def receipt_db(self) -> PostgresReceiptDb:
        """Where a receipt book records receipts: this ledger's pool."""
        return PostgresReceiptDb(self._do, self.location)

    def close(self) -> None:
        """Give up the claims on unfinished runs (they stay ``running`` for a resume)
        and close the pool."""
        for run_id in list(self._owners):
            self.release_run(run_id)
        self._stop_sharding()
        self._pool.close()

    def flush(self) -> None:
        """Make every write committed so far durable (outcomes are committed without
        waiting for the server's disk: see :mod:`._deliveries`)."""
        if self.durable:
            self._do(lambda c: c.execute(_deliveries.FLUSH), durable=True)

    # -- runs ----------------------------------------------------------------------------
    def _claim(self, run_id: str, decide: Callable[[Conn, Owner], None]) -> RunRecord:
        try:
            owner = _runs.claim(self._do, run_id, decide)
        except self._driver.errors as exc:
            raise self._error(exc) from None
        self._owners[run_id] = owner
        self._lost.discard(run_id)
        self._heartbeats[run_id] = _runs.Heartbeat(self._pool, run_id, owner, self._driver.errors)
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
        """Record a new ``running`` run owned by this process, in one transaction with
        the ``max_active_runs`` check (an advisory lock per pipeline: across hosts).

        Raises:
            MaxActiveRunsReached: the pipeline already has that many active runs.
            RunInProgress: ``run_id`` exists and a live process owns it.
            LedgerError: ``run_id`` exists.
        """
        decide = functools.partial(
            _runs.insert_run,
            run_id=run_id,
            pipeline=pipeline,
            logical_date=logical_date,
            fingerprint=fingerprint,
            config_file=config_file,
            max_active_runs=max_active_runs,
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
        self._do(
            lambda c: _runs.record_run(
                c, run_id, pipeline, logical_date, status, fingerprint, report
            )
        )
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunRecord:
        """The run ``run_id`` (:class:`LedgerError` if there is none)."""
        run = self._do(lambda c: _runs.get_run(c, run_id))
        if run is None:
            raise LedgerError(f"no run {run_id!r} in {self.location}")
        return run

    def find_runs(self, pipeline: str, logical_date: datetime | None = None) -> list[RunRecord]:
        """Runs of ``pipeline`` (for one logical date if given), oldest first."""
        return self._do(lambda c: _runs.find_runs(c, pipeline, logical_date))

    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        return self._do(lambda c: _runs.recent_runs(c, pipeline, limit))

    def claim_run(self, run_id: str, *, unfinished: bool = False) -> RunRecord:
        """Make this process the owner of ``run_id`` and mark it ``running`` (to resume
        it), the run's row locked: of several processes claiming at once, on any
        hosts, one gets the run and the others :class:`RunInProgress`."""
        return self._claim(
            run_id,
            lambda conn, owner: _runs.take_run(
                conn, owner, run_id, self.location, unfinished=unfinished
            ),
        )

    def release_run(self, run_id: str) -> None:
        """Give up the claim on ``run_id`` without finishing it (it stays ``running``
        for a resume, which any process may then claim at once)."""
        owner = self._let_go(run_id)
        if owner is None:
            return
        try:
            self._do(lambda c: _runs.let_go(c, run_id, owner))
        except LedgerError as exc:  # never hide what made us let go
            log.warning(
                "%s: could not record that this process let run %s go: %s",
                self.location,
                run_id,
                exc,
            )
        finally:
            owner.release()

    def _let_go(self, run_id: str) -> Owner | None:
        heartbeat = self._heartbeats.pop(run_id, None)
        if heartbeat is not None:
            heartbeat.stop()
        return self._owners.pop(run_id, None)

    def delete_run(self, run_id: str) -> None:
        """Remove a run and everything recorded for it (dry runs clean up with it)."""
        run = self._run_key(run_id)
        self._do(lambda c: _runs.delete_run(c, run))
        self._runs.pop(run_id, None)
        self._codes = {k: v for k, v in self._codes.items() if k[0] != run}

    def finish_run(self, run_id: str, status: str, report: str) -> None:
        """Record a run's final status and report, and give up the claim on it.

        Raises:
            RunOwnershipLost: another process owns the run now; nothing was recorded.
        """
        owner = self._let_go(run_id)
        finish = functools.partial(
            _runs.finish_run,
            run_id=run_id,
            status=status,
            report=report,
            owner=owner,
            finished_at=timestamp(datetime.now(UTC)),
        )
        try:
            changed = self._do(finish, again=functools.partial(finish, retried=True))
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
        """Store the run's extracted segment, in order (``COPY``, one transaction);
        returns how many recipients it holds (see ``SqliteLedger.write_snapshot``)."""
        if rows_per_customer not in ROWS_PER_CUSTOMER:
            raise ValueError(f"rows_per_customer: expected one or many, got {rows_per_customer!r}")
        run = self._run_key(run_id)
        rows = OneShot(recipients)

        def write(conn: Conn) -> int:
            return _snapshot.write_snapshot(conn, run, rows, rows_per_customer, rejects)

        def again(conn: Conn) -> int:
            stored = stored_snapshot(conn, run, rows, self.location)
            return write(conn) if stored is None else stored

        return self._do(write, again=again)

    def snapshot_info(self, run_id: str) -> SnapshotInfo | None:
        """What the run's extraction recorded with its snapshot."""
        run = self._run_key(run_id)
        return self._do(lambda c: _queries.snapshot_info(c, run))

    def has_snapshot(self, run_id: str) -> bool:
        """Whether the run's snapshot is written."""
        return self._do(lambda c: _queries.has_snapshot(c, run_id))

    def snapshot(self, run_id: str) -> Iterator[tuple[int, Recipient]]:
        """The snapshot in source order, as ``(seq, recipient)``; streamed."""
        run = self._run_key(run_id)
        yield from self._stream(_queries.snapshot(self._do, run))

    # -- deliveries ----------------------------------------------------------------------
    def is_planned(self, run_id: str, channel: str) -> bool:
        """Whether :meth:`plan` completed for this channel."""
        run = self._run_key(run_id)
        return self._do(lambda c: _queries.is_planned(c, run, channel))

    def plan(self, run_id: str, channel: str, rows: Iterable[PlanRow], rules: PlanRules) -> None:
        """Record the channel's audience (``COPY``) and apply the plan rules of
        :mod:`._selection`, in one transaction; marks the channel planned (see
        ``SqliteLedger.plan``)."""
        key = self._key(run_id, channel)
        now = time.time()
        once = OneShot(rows)

        def write(conn: Conn) -> None:
            _selection.plan(conn, key, channel, once, rules, now=now, history=self.history)

        def again(conn: Conn) -> None:
            if not planned(conn, key[0], channel, once, self.location):
                write(conn)

        self._do(write, again=again)

    def release_deferred(self, run_id: str, channel: str, *, now: float | None = None) -> int:
        """Deferred deliveries whose time has come become ``pending``; returns how many."""
        run, code, when = *self._key(run_id, channel), time.time() if now is None else now
        n = self._do(lambda c: _deliveries.release_deferred(c, run, code, when))
        if n:
            self.reopen_shards(run_id, channel)
        return n

    def next_deferred(self, run_id: str) -> float | None:
        """The earliest time a deferred delivery of the run becomes due, if any."""
        run = self._run_key(run_id)
        return self._do(lambda c: _queries.next_deferred(c, run))

    # -- suppression ---------------------------------------------------------------------
    def suppress(self, kind: str, address: str, *, reason: str, source: str | None = None) -> None:
        """Add ``address`` (normalized) to the suppression list of ``kind``."""
        now = timestamp(datetime.now(UTC))
        self._do(lambda c: _deliveries.suppress(c, kind, address, reason, source, now))

    def suppressions(self, kind: str | None = None) -> list[tuple[str, str, str, str | None]]:
        """``(kind, address, reason, source)`` entries of the suppression list."""
        return self._do(lambda c: _queries.suppressions(c, kind))

    def pending(
        self,
        run_id: str,
        channel: str,
        part: Slice = WHOLE,
        *,
        shards: Sequence[int] | None = None,
    ) -> Iterator[PendingDelivery]:
        """Pending deliveries in recipient order, ``(seq, recipient, address, attempts,
        batch)``; streamed; only those of slice ``part`` if given, and of ``shards``."""
        run, code = self._key(run_id, channel)
        yield from self._stream(_queries.pending(self._do, run, code, part, shards))

    def record_slice(self, run_id: str, outcome: SliceOutcome) -> None:
        """Record what a send of one slice did, replacing its earlier outcome."""
        run = self._run_key(run_id)
        self._do(lambda c: _runs.record_slice(c, run, outcome))

    def slice_outcomes(self, run_id: str) -> list[SliceOutcome]:
        """The outcomes of the slices sent since the run was last (re)opened."""
        run = self._run_key(run_id)
        return self._do(lambda c: _queries.slice_outcomes(c, run))

    def clear_slices(self, run_id: str) -> None:
        """Forget the slices' outcomes: the run is (re)opened for a new attempt."""
        run = self._run_key(run_id)
        self._do(lambda c: _runs.clear_slices(c, run))

    def resolve_in_flight(self, run_id: str, channel: str, *, resend: bool) -> int:
        """Settle deliveries left ``in_flight`` by a crash: back to ``pending`` when
        ``resend``, else ``unknown``. Returns how many there were."""
        run, code = self._key(run_id, channel)
        settled = self._do(lambda c: _deliveries.resolve_in_flight(c, run, code, resend=resend))
        self.reopen_shards(run_id, channel)
        return settled

    def requeue(
        self, run_id: str, channel: str, *, failed: bool, unknown: bool, part: Slice = WHOLE
    ) -> int:
        """Put transient failures (``failed``) and/or ``unknown`` deliveries (of slice
        ``part``) back to ``pending`` (never permanent failures). Returns the count."""
        run, code = self._key(run_id, channel)
        if not (failed or unknown):
            return 0
        requeue = functools.partial(
            _deliveries.requeue, run=run, code=code, failed=failed, unknown=unknown, part=part
        )
        n = self._do(requeue)
        self.reopen_shards(run_id, channel)
        return n

    def owed(
        self,
        run_id: str,
        channels: Sequence[str],
        *,
        failed: bool,
        unknown: bool,
        part: Slice = WHOLE,
    ) -> int:
        """How many deliveries (of slice ``part``) a resume of these channels would
        send (a channel not planned yet counts as owed); see ``SqliteLedger.owed``."""
        run = self._run_key(run_id)
        total = 0
        for channel in channels:
            if not self.is_planned(run_id, channel):
                return total + 1
            code = self._channel_code(run, channel)
            owed = functools.partial(
                _queries.owed, run=run, code=code, failed=failed, unknown=unknown, part=part
            )
            total += self._do(owed)
        return total

    def counts(self, run_id: str, channel: str) -> DeliveryCounts:
        """The channel's deliveries by state, reason, error code and doubt."""
        run, code = self._key(run_id, channel)
        return self._do(lambda c: _queries.counts(c, run, code))

    def deliveries(self, run_id: str, channel: str | None = None) -> Iterator[DeliveryResult]:
        """Per-recipient outcomes in recipient order (all channels, or one)."""
        run = self._run_key(run_id)
        code = None if channel is None else self._channel_code(run, channel)
        yield from self._stream(_queries.deliveries(self._do, run, code))
