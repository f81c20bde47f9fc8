"""The embedded ledger: :class:`SqliteLedger`, one SQLite file (stdlib ``sqlite3``, WAL).

The class holds the connections and the run and channel keys; the SQL lives in the
modules by responsibility: :mod:`._runs` (runs and claims), :mod:`._snapshot`,
:mod:`._selection` (the plan rules), :mod:`._deliveries` (writes) and
:mod:`._queries` (reads).
"""

from __future__ import annotations

import functools
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

from .._config import ROWS_PER_CUSTOMER
from .._models import DeliveryResult, Recipient
from .._states import DeliveryCounts
from . import _deliveries, _queries, _runs, _selection, _snapshot
from ._claims import Heartbeat, Owner, claim
from ._connection import Writer, connect
from ._errors import LedgerError, RunOwnershipLost
from ._protocol import RejectSink
from ._schema import open_and_migrate, timestamp
from ._types import (
    WHOLE,
    DeliveryRecord,
    PendingDelivery,
    PlanRow,
    PlanRules,
    RunRecord,
    Slice,
    SliceOutcome,
    SnapshotInfo,
)

__all__ = ["SqliteLedger"]

log = logging.getLogger("campaignkit")

_T = TypeVar("_T")


class SqliteLedger:
    """The embedded ledger: one SQLite file, safe for several processes.

    Reads use a read-only connection per calling thread (it refuses every write);
    writes a caller waits for use a read-write connection per calling thread; the
    writes of sending go through one writer thread that commits in batches.
    :meth:`mark_in_flight` returns once the mark is durable; :meth:`record` queues
    the outcome (durable by the next mark of the same worker, or :meth:`flush`).

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
        open_and_migrate(self.path)
        self._local = threading.local()
        self._writer = Writer(self.path, durable=durable)
        self._writer.start()
        self._codes: dict[tuple[int, str], int] = {}
        self._runs: dict[str, int] = {}
        self._owners: dict[str, Owner] = {}  # the runs this ledger object has claimed
        self._heartbeats: dict[str, Heartbeat] = {}

    def __repr__(self) -> str:
        return f"<SqliteLedger {str(self.path)!r}>"

    @property
    def location(self) -> str:
        """Where the ledger is (its file), for messages."""
        return str(self.path)

    # -- plumbing ------------------------------------------------------------------------
    def _connection(self, name: str, *, readonly: bool) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, name, None)
        if conn is None:
            conn = connect(self.path, readonly=readonly, durable=self.durable, history=self.history)
            setattr(self._local, name, conn)
        return conn

    @property
    def _read(self) -> sqlite3.Connection:
        """This thread's read-only connection."""
        return self._connection("conn", readonly=True)

    @property
    def _write(self) -> sqlite3.Connection:
        """This thread's connection for the writes its caller waits for."""
        return self._connection("write_conn", readonly=False)

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
            with self._write as conn:
                code = self._codes[(run, channel)] = _runs.channel_code(conn, run, channel)
        return int(code)

    def _key(self, run_id: str, channel: str) -> tuple[int, int]:
        run = self._run_key(run_id)
        return run, self._channel_code(run, channel)

    def close(self) -> None:
        """Flush pending writes, give up the claims on unfinished runs (they stay
        ``running`` for a resume) and close."""
        for run_id in list(self._owners):
            self.release_run(run_id)
        self._writer.ops.put(None)
        self._writer.join()
        for name in ("conn", "write_conn"):
            conn = getattr(self._local, name, None)
            if conn is not None:
                conn.close()
                setattr(self._local, name, None)
        if self._writer.error is not None:
            raise LedgerError(f"ledger write failed: {self._writer.error}")

    def flush(self) -> None:
        """Wait until every queued write is committed."""
        self._writer.submit(lambda conn: None, wait=True)

    # -- runs ----------------------------------------------------------------------------
    def _claim(self, run_id: str, decide: Callable[[sqlite3.Connection, Owner], None]) -> RunRecord:
        """Make this process the owner of ``run_id`` (see :func:`claim`)."""
        owner = claim(self.path, run_id, decide)
        self._owners[run_id] = owner
        self._heartbeats[run_id] = Heartbeat(self.path, run_id, owner)
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
        with self._write as conn:
            _runs.record_run(conn, run_id, pipeline, logical_date, status, fingerprint, report)
        return self.get_run(run_id)

    def get_run(self, run_id: str) -> RunRecord:
        """The run ``run_id``.

        Raises:
            LedgerError: no such run.
        """
        run = _runs.get_run(self._read, run_id)
        if run is None:
            raise LedgerError(f"no run {run_id!r} in {self.path}")
        return run

    def find_runs(self, pipeline: str, logical_date: datetime | None = None) -> list[RunRecord]:
        """Runs of ``pipeline`` (for one logical date if given), oldest first."""
        return _runs.find_runs(self._read, pipeline, logical_date)

    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        return _runs.recent_runs(self._read, pipeline, limit)

    def claim_run(self, run_id: str, *, unfinished: bool = False) -> RunRecord:
        """Make this process the owner of ``run_id`` and mark it ``running`` (to resume
        it). Decided in one write transaction: of several processes claiming at the
        same instant, one gets the run and the others :class:`RunInProgress`.

        Raises:
            RunInProgress: another live process owns the run.
            LedgerError: no such run; with ``unfinished``, it is not ``running``.
        """
        take = functools.partial(_runs.take_run, run_id=run_id, path=self.path)
        return self._claim(run_id, lambda c, o: take(c, o, unfinished=unfinished))

    def release_run(self, run_id: str) -> None:
        """Give up the claim on ``run_id`` without finishing it (it stays ``running``
        for a resume, which any process may then claim at once; if the ledger cannot
        record that, once this process has exited)."""
        owner = self._let_go(run_id)
        if owner is None:
            return
        try:
            self.flush()
            with self._write as conn:
                _runs.let_go(conn, run_id, owner)
        except (LedgerError, sqlite3.Error) as exc:  # never hide what made us let go
            log.warning(
                "%s: could not record that this process let run %s go: %s", self.path, run_id, exc
            )
        finally:
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
        with self._write as conn:
            _runs.delete_run(conn, run)
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
            with self._write as conn:
                changed = _runs.finish_run(conn, run_id, status, report, owner)
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

        ``rows_per_customer`` is the identity rule (``"one"``: a later row with a
        customer id already stored is handed to ``rejects`` as ``duplicate_id``;
        ``"many"``: every row is a recipient); see :func:`._snapshot.write_snapshot`.
        """
        if rows_per_customer not in ROWS_PER_CUSTOMER:
            raise ValueError(f"rows_per_customer: expected one or many, got {rows_per_customer!r}")
        run = self._run_key(run_id)
        return _snapshot.write_snapshot(self._write, run, recipients, rows_per_customer, rejects)

    def snapshot_info(self, run_id: str) -> SnapshotInfo | None:
        """What the run's extraction recorded with its snapshot; ``None`` if it has
        none, or one written before schema 4 (then its idempotency keys derive from
        recipient ids, as they did when it was written)."""
        return _queries.snapshot_info(self._read, self._run_key(run_id))

    def has_snapshot(self, run_id: str) -> bool:
        """Whether the run's snapshot is written."""
        return _queries.has_snapshot(self._read, run_id)

    def _stream(self, rows: Callable[[sqlite3.Connection], Iterator[_T]]) -> Iterator[_T]:
        """``rows`` read through a connection of their own (a stream outlives a call)."""
        conn = connect(self.path, readonly=True)
        try:
            yield from rows(conn)
        finally:
            conn.close()

    def snapshot(self, run_id: str) -> Iterator[tuple[int, Recipient]]:
        """The snapshot in source order, as ``(seq, recipient)``; streamed."""
        run = self._run_key(run_id)
        yield from self._stream(lambda conn: _queries.snapshot(conn, run))

    # -- deliveries ----------------------------------------------------------------------
    def is_planned(self, run_id: str, channel: str) -> bool:
        """Whether :meth:`plan` completed for this channel."""
        return _queries.is_planned(self._read, self._run_key(run_id), channel)

    def plan(self, run_id: str, channel: str, rows: Iterable[PlanRow], rules: PlanRules) -> None:
        """Record the channel's audience, one row per recipient, then apply the rules
        that need the whole audience or other runs, in order, in one transaction; marks
        the channel planned.

        ``rows`` are ``(seq, reason, address, filtered, not_before)``: ``reason`` is a
        skip reason decided per recipient (address, consent, suppression files) or
        ``None``; ``address`` the normalized address; ``filtered`` whether the segment
        filter rejected the recipient; ``not_before`` the epoch time before which
        quiet hours defer the message.

        Then, among recipients not yet skipped, the rules of :mod:`._selection`
        (``suppressed``, ``duplicate``, ``filtered``, ``frequency_capped``,
        ``over_target``, ``deferred``); suppressions and earlier sends are the
        ``history`` ledger's if there is one.
        """
        key = self._key(run_id, channel)
        now = time.time()
        with self._write as conn:
            _selection.plan(
                conn, key, channel, rows, rules, now=now, history=self.history is not None
            )

    def release_deferred(self, run_id: str, channel: str, *, now: float | None = None) -> int:
        """Deferred deliveries whose time has come become ``pending``; returns how many.
        (By the writer thread: a channel's sending thread opens no write connection.)"""
        run, code, when = *self._key(run_id, channel), time.time() if now is None else now
        done: list[int] = []
        self._writer.submit(
            lambda c: done.append(_deliveries.release_deferred(c, run, code, when)), wait=True
        )
        return done[0]

    def next_deferred(self, run_id: str) -> float | None:
        """The earliest time a deferred delivery of the run becomes due, if any."""
        return _queries.next_deferred(self._read, self._run_key(run_id))

    # -- suppression -------------------------------------------------------------------
    def suppress(self, kind: str, address: str, *, reason: str, source: str | None = None) -> None:
        """Add ``address`` (normalized) to the suppression list of ``kind`` (``email``,
        ``phone``, ``push_token``); later runs skip it as ``suppressed``."""
        now = timestamp(datetime.now(UTC))
        self._writer.submit(_deliveries.suppress(kind, address, reason, source, now), wait=False)

    def suppressions(self, kind: str | None = None) -> list[tuple[str, str, str, str | None]]:
        """``(kind, address, reason, source)`` entries of the suppression list."""
        self.flush()
        return _queries.suppressions(self._read, kind)

    def pending(
        self, run_id: str, channel: str, part: Slice = WHOLE, *, shards: Sequence[int] | None = None
    ) -> Iterator[PendingDelivery]:
        """Pending deliveries in recipient order: ``(seq, recipient, address, attempts,
        batch)``; streamed; only those of slice ``part`` if given. ``batch`` identifies
        the request a delivery was last part of (``None`` if never sent): members of a
        batch must be re-sent together, so that a provider's idempotency key for the
        request stays the same (they are in one slice). A SQLite ledger has no
        shards (several workers need a PostgreSQL ledger): ``shards`` raises."""
        if shards is not None:
            raise LedgerError(f"{self.path}: a SQLite ledger is not split into shards")
        run, code = self._key(run_id, channel)
        yield from self._stream(lambda conn: _queries.pending(conn, run, code, part))

    def record_slice(self, run_id: str, outcome: SliceOutcome) -> None:
        """Record what a send of one slice did (after its deliveries, by the writer
        thread: no connection per sending thread), replacing that slice's earlier
        outcome since the run was (re)opened."""
        run = self._run_key(run_id)
        self._writer.submit(
            functools.partial(_runs.record_slice, run=run, outcome=outcome), wait=True
        )

    def slice_outcomes(self, run_id: str) -> list[SliceOutcome]:
        """The outcomes of the slices sent since the run was last (re)opened."""
        return _queries.slice_outcomes(self._read, self._run_key(run_id))

    def clear_slices(self, run_id: str) -> None:
        """Forget the slices' outcomes: the run is (re)opened for a new attempt."""
        with self._write as conn:
            _runs.clear_slices(conn, self._run_key(run_id))

    def mark_in_flight(self, run_id: str, channel: str, seqs: Sequence[int]) -> None:
        """Mark deliveries in flight as one batch (its id is its first seq); returns
        when the mark is durable (a no-op for a ledger that is not durable)."""
        if not self.durable:
            return
        run, code = self._key(run_id, channel)
        now = time.time()
        lost = False

        def op(conn: sqlite3.Connection) -> None:
            nonlocal lost
            # Fenced: only the run's owner marks (and then sends). Not raised here, so
            # that the other writes of the same group commit are kept.
            if not self._owns(conn, run, run_id):
                lost = True
                return
            _deliveries.mark_in_flight(conn, run, code, seqs, now)

        self._writer.submit(op, wait=True)
        if lost:
            raise RunOwnershipLost(f"run {run_id!r} is owned by another process now")

    def record(self, run_id: str, channel: str, rows: Sequence[DeliveryRecord]) -> None:
        """Queue outcomes ``(seq, result, state, transient)``; ``transient`` marks a
        failure that ``retry-failed`` may re-drive. Durable by the next
        :meth:`mark_in_flight` or :meth:`flush`."""
        run, code = self._key(run_id, channel)
        self._writer.submit(_deliveries.record_outcomes(run, code, rows, time.time()), wait=False)

    def resolve_in_flight(self, run_id: str, channel: str, *, resend: bool) -> int:
        """Settle deliveries left ``in_flight`` by a crash: back to ``pending`` when
        ``resend`` (the provider de-duplicates by idempotency key), else ``unknown``.
        Returns how many there were."""
        run, code = self._key(run_id, channel)
        self.flush()
        with self._write as conn:
            return _deliveries.resolve_in_flight(conn, run, code, resend=resend)

    def requeue(
        self, run_id: str, channel: str, *, failed: bool, unknown: bool, part: Slice = WHOLE
    ) -> int:
        """Put transient failures (``failed``) and/or ``unknown`` deliveries (of slice
        ``part``) back to ``pending``, never permanent failures; returns the count."""
        run, code = self._key(run_id, channel)
        self.flush()
        if not (failed or unknown):
            return 0
        with self._write as conn:  # one pass over the channel's rows
            return _deliveries.requeue(conn, run, code, failed=failed, unknown=unknown, part=part)

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
        send: ``pending``, ``in_flight`` and ``deferred`` ones, transient failures
        (``failed``) and ``unknown`` ones if asked; a channel not planned is owed."""
        run = self._run_key(run_id)
        self.flush()
        total = 0
        for channel in channels:
            if not self.is_planned(run_id, channel):
                return total + 1
            code = self._channel_code(run, channel)
            total += _queries.owed(self._read, run, code, failed=failed, unknown=unknown, part=part)
        return total

    def counts(self, run_id: str, channel: str) -> DeliveryCounts:
        """The channel's deliveries by state, reason, error code (failed and skipped
        ones: a sent or unknown delivery failed nothing) and, for ``unknown`` ones, why
        each is in doubt."""
        run, code = self._key(run_id, channel)
        self.flush()
        return _queries.counts(self._read, run, code)

    def deliveries(self, run_id: str, channel: str | None = None) -> Iterator[DeliveryResult]:
        """Per-recipient outcomes in recipient order (all channels, or one), with the
        source line and the address (rows of one customer id tell apart by them)."""
        run = self._run_key(run_id)
        self.flush()
        code = None if channel is None else self._channel_code(run, channel)
        yield from self._stream(lambda conn: _queries.deliveries(conn, run, code))
