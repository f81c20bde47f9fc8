"""The interface the core uses: :class:`Ledger`, and :class:`RejectSink`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Protocol

from .._models import DeliveryResult, Recipient, RejectedRow
from .._states import DeliveryCounts
from ._types import (
    WHOLE,
    DeliveryRecord,
    LeaseInfo,
    PendingDelivery,
    PlanRow,
    PlanRules,
    RunRecord,
    Slice,
    SliceOutcome,
    SnapshotInfo,
)

__all__ = ["Ledger", "RejectSink", "ShardedLedger", "sharded"]


class RejectSink(Protocol):
    """Where :meth:`SqliteLedger.write_snapshot` hands the rows it rejects (a repeated
    customer id), and where it reads how many rows the source rejected, so that the
    snapshot records the extraction's counts in its own transaction."""

    @property
    def rejected(self) -> int:
        """Rows rejected so far (by the source, and handed to :meth:`reject`)."""
        ...

    @property
    def reasons(self) -> Mapping[str, int]:
        """Rows rejected so far, by reason."""
        ...

    def line_counts(self) -> Mapping[str, int] | None:
        """How the source's physical lines were accounted for, if it counts them."""
        ...

    def reject(self, row: RejectedRow) -> None:
        """Record a rejected row (``rejected.csv``) and count it."""
        ...


class Ledger(Protocol):
    """What the core needs from a ledger; :class:`SqliteLedger` is the embedded one.

    A backend stores runs (with the process that owns each), each run's recipient
    snapshot and one delivery per recipient and channel, and applies the plan rules
    (:class:`PlanRules`) over a channel's whole audience. Nothing here names a
    database: a server backend implements the same methods.
    """

    @property
    def location(self) -> str:
        """Where the ledger is (a file, a database), for messages."""
        ...

    # -- runs
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
        """Record a new ``running`` run owned by this process (checks ``max_active_runs``)."""
        ...

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
        ...

    def get_run(self, run_id: str) -> RunRecord:
        """The run ``run_id`` (:class:`LedgerError` if there is none)."""
        ...

    def find_runs(self, pipeline: str, logical_date: datetime | None = None) -> list[RunRecord]:
        """Runs of ``pipeline`` (for one logical date if given), oldest first."""
        ...

    def list_runs(self, pipeline: str | None = None, limit: int = 50) -> list[RunRecord]:
        """The most recent runs, newest first."""
        ...

    def claim_run(self, run_id: str, *, unfinished: bool = False) -> RunRecord:
        """Make this process the owner of ``run_id`` (to resume it); with
        ``unfinished``, only a run still ``running`` (decided with the claim)."""
        ...

    def release_run(self, run_id: str) -> None:
        """Give up the claim on ``run_id`` without finishing it."""
        ...

    def finish_run(self, run_id: str, status: str, report: str) -> None:
        """Record a run's final status and report, and give up the claim on it."""
        ...

    # -- snapshot
    def write_snapshot(
        self,
        run_id: str,
        recipients: Iterable[Recipient],
        *,
        rows_per_customer: str = "one",
        rejects: RejectSink | None = None,
    ) -> int:
        """Store the run's extracted segment, in order; returns how many it holds."""
        ...

    def has_snapshot(self, run_id: str) -> bool:
        """Whether the run's snapshot is written."""
        ...

    def snapshot_info(self, run_id: str) -> SnapshotInfo | None:
        """What the run's extraction recorded with its snapshot."""
        ...

    def snapshot(self, run_id: str) -> Iterator[tuple[int, Recipient]]:
        """The snapshot in source order, as ``(seq, recipient)``; streamed."""
        ...

    # -- planning
    def is_planned(self, run_id: str, channel: str) -> bool:
        """Whether :meth:`plan` completed for this channel."""
        ...

    def plan(self, run_id: str, channel: str, rows: Iterable[PlanRow], rules: PlanRules) -> None:
        """Record the channel's audience and apply the plan rules, in one transaction."""
        ...

    def release_deferred(self, run_id: str, channel: str, *, now: float | None = None) -> int:
        """Deferred deliveries whose time has come become ``pending``; returns how many."""
        ...

    def next_deferred(self, run_id: str) -> float | None:
        """The earliest time a deferred delivery of the run becomes due, if any."""
        ...

    # -- suppression
    def suppress(self, kind: str, address: str, *, reason: str, source: str | None = None) -> None:
        """Add ``address`` to the suppression list of ``kind``."""
        ...

    def suppressions(self, kind: str | None = None) -> list[tuple[str, str, str, str | None]]:
        """``(kind, address, reason, source)`` entries of the suppression list
        (:class:`Suppression` values)."""
        ...

    # -- sending
    def pending(
        self,
        run_id: str,
        channel: str,
        part: Slice = WHOLE,
        *,
        shards: Sequence[int] | None = None,
    ) -> Iterator[PendingDelivery]:
        """Pending deliveries, ``(seq, recipient, address, attempts, batch)``; streamed;
        only those of slice ``part`` when given (see :class:`Slice`), and of
        ``shards`` (leased by a worker) when given."""
        ...

    def record_slice(self, run_id: str, outcome: SliceOutcome) -> None:
        """Record what a send of one slice did, replacing its earlier outcome."""
        ...

    def slice_outcomes(self, run_id: str) -> list[SliceOutcome]:
        """The outcomes of the slices sent since the run was last (re)opened."""
        ...

    def clear_slices(self, run_id: str) -> None:
        """Forget the slices' outcomes: the run is (re)opened for a new attempt."""
        ...

    def mark_in_flight(self, run_id: str, channel: str, seqs: Sequence[int]) -> None:
        """Mark deliveries in flight as one batch; returns when the mark is durable."""
        ...

    def record(self, run_id: str, channel: str, rows: Sequence[DeliveryRecord]) -> None:
        """Queue outcomes ``(seq, result, state, transient)``."""
        ...

    def flush(self) -> None:
        """Wait until every queued write is committed."""
        ...

    def resolve_in_flight(self, run_id: str, channel: str, *, resend: bool) -> int:
        """Settle deliveries left ``in_flight`` by a crash; returns how many."""
        ...

    def requeue(
        self, run_id: str, channel: str, *, failed: bool, unknown: bool, part: Slice = WHOLE
    ) -> int:
        """Put transient failures and/or ``unknown`` deliveries (of slice ``part``)
        back to ``pending``."""
        ...

    # -- reading outcomes
    def owed(
        self,
        run_id: str,
        channels: Sequence[str],
        *,
        failed: bool,
        unknown: bool,
        part: Slice = WHOLE,
    ) -> int:
        """How many deliveries (of slice ``part``) a resume of these channels would send."""
        ...

    def counts(self, run_id: str, channel: str) -> DeliveryCounts:
        """The channel's deliveries counted by state, reason, error code and doubt."""
        ...

    def deliveries(self, run_id: str, channel: str | None = None) -> Iterator[DeliveryResult]:
        """Per-recipient outcomes in recipient order (all channels, or one)."""
        ...

    def close(self) -> None:
        """Flush pending writes, give up the claims on unfinished runs, and close."""
        ...


class ShardedLedger(Ledger, Protocol):
    """A ledger that several worker processes can share (PostgreSQL): each channel's
    deliveries split into shards, which workers lease; marks and outcomes fenced by
    the leases; a rate budget shared by the workers (see the deployment docs)."""

    lease_seconds: float

    def plan_shards(self, run_id: str, channel: str, count: int) -> int:
        """Split the channel's deliveries into ``count`` shards, once; returns the count."""
        ...

    def lease_shards(
        self,
        run_id: str,
        channel: str,
        *,
        limit: int,
        resend: bool,
        only: Sequence[int] | None = None,
    ) -> list[int]:
        """Lease up to ``limit`` free shards of the channel (among ``only`` if given),
        settling those taken over."""
        ...

    def requeue_shard(self, run_id: str, channel: str, shard: int) -> int:
        """Put the shard's transient failures back to ``pending`` (leasable again)."""
        ...

    def shard_failures(self, run_id: str, channel: str, shard: int) -> int:
        """The shard's transient failures (what a retry would send again)."""
        ...

    def release_shards(self, run_id: str, channel: str, shards: Sequence[int]) -> int:
        """Let go of this worker's leases on ``shards``."""
        ...

    def shard_leases(self, run_id: str) -> list[LeaseInfo]:
        """The run's shards and their leases."""
        ...

    def reopen_shards(self, run_id: str, channel: str) -> None:
        """Make the channel's shards leasable again."""
        ...

    def reserve_budget(self, name: str, cost: float) -> float:
        """Reserve ``cost`` seconds of the shared rate budget ``name``."""
        ...

    def hold_budget(self, name: str, seconds: float) -> None:
        """Hold the shared rate budget ``name`` for ``seconds``."""
        ...


def sharded(ledger: Ledger) -> ShardedLedger | None:
    """``ledger`` as a :class:`ShardedLedger`, or ``None`` if it cannot be shared by
    workers (SQLite: one process sends a run)."""
    return ledger if hasattr(ledger, "lease_shards") else None  # type: ignore[return-value]
