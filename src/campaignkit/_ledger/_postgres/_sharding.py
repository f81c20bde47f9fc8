""":class:`Sharding`, the part of :class:`PostgresLedger` that workers use: shards,
leases and their heartbeat, the fenced writes (marks and outcomes), and the shared
rate budget (the SQL is in :mod:`._leases`)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from .._claims import Owner
from .._errors import RunOwnershipLost
from .._types import DeliveryRecord, LeaseInfo
from . import _deliveries, _leases

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[Any]

__all__ = ["LEASE_SECONDS", "LeaseBeat", "Sharding"]

log = logging.getLogger("campaignkit")

_T = TypeVar("_T")

#: How long a lease lasts unless renewed (its holder renews it every third of that).
LEASE_SECONDS = 30.0


class LeaseBeat(threading.Thread):
    """Renews the leases a ledger object holds every third of their length, so that
    they expire only when the worker stops (killed, hung, cut off from the server)."""

    def __init__(self, ledger: Sharding, seconds: float) -> None:
        super().__init__(name="ck-lease-heartbeat", daemon=True)
        self.ledger, self.seconds = ledger, seconds
        self._stop_event = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._stop_event.wait(self.seconds / 3):
            try:
                self.ledger.renew_leases()
            except Exception as exc:  # the server is away: try again at the next beat
                log.warning("could not renew leases: %s", exc)

    def stop(self) -> None:
        self._stop_event.set()


class Sharding:
    """Shards and leases (a mixin of :class:`PostgresLedger`; see :mod:`._leases`).

    A ledger object leases as one worker: one :class:`Owner` for all its leases,
    renewed by one :class:`LeaseBeat` thread while it holds any.
    """

    lease_seconds: float = LEASE_SECONDS
    _owners: dict[str, Owner]
    _worker: Owner | None = None
    _lease_beat: LeaseBeat | None = None
    _held: dict[tuple[int, int], set[int]]
    _lost: set[str]

    durable: bool

    if TYPE_CHECKING:

        def _do(
            self,
            op: Callable[[Conn], _T],
            *,
            again: Callable[[Conn], _T] | None = None,
            lazy: bool = False,
            durable: bool = False,
        ) -> _T: ...

        def _key(self, run_id: str, channel: str) -> tuple[int, int]: ...

        def _run_key(self, run_id: str) -> int: ...

    def _init_sharding(self) -> None:
        self._held = {}
        self._lost = set()
        self._held_lock = threading.Lock()

    def _stop_sharding(self) -> None:
        if self._lease_beat is not None:
            self._lease_beat.stop()
        if self._worker is not None:
            self._worker.release()

    # -- fence ---------------------------------------------------------------------------
    def _fence(self, run_id: str, channel: str, seqs: Sequence[int]) -> _deliveries.Fence:
        run, code = self._key(run_id, channel)
        owner = self._owners.get(run_id)
        return _deliveries.fence_params(
            "" if owner is None else owner.text,
            "" if self._worker is None else self._worker.token,
            run,
            code,
            seqs,
        )

    def _fenced_out(self, run_id: str) -> RunOwnershipLost:
        return RunOwnershipLost(
            f"run {run_id!r}: this process neither owns the run nor holds a live lease "
            "on these deliveries (another process took them over)"
        )

    def mark_in_flight(self, run_id: str, channel: str, seqs: Sequence[int]) -> None:
        """Mark deliveries in flight as one batch (its id is its first seq); returns
        once committed (a no-op for a ledger that is not durable). Fenced: only by the
        holder of the deliveries' shard leases, or the run's owner where no live lease
        holds them (see :mod:`._leases`).

        Raises:
            RunOwnershipLost: the fence refused (nothing marked), or an outcome of
                this run was refused since the last mark.
        """
        if not self.durable:
            return
        fence = self._fence(run_id, channel, seqs)
        now = time.time()
        if run_id in self._lost or not self._do(
            lambda c: _deliveries.mark_in_flight(c, fence, now), durable=True
        ):
            raise self._fenced_out(run_id)

    def record(self, run_id: str, channel: str, rows: Sequence[DeliveryRecord]) -> None:
        """Record outcomes ``(seq, result, state, transient)`` (one statement);
        ``transient`` marks a failure that ``retry-failed`` may re-drive. Committed
        at once, durable by the next :meth:`mark_in_flight` or :meth:`flush`. Fenced
        as marks are: outcomes the fence refuses are not written (their deliveries
        stay ``in_flight``, for the new holder to settle by the crash rules) and the
        next mark raises :class:`RunOwnershipLost`."""
        now = time.time()

        def fence(seqs: Sequence[int]) -> _deliveries.Fence:
            return self._fence(run_id, channel, seqs)

        if not self._do(lambda c: _deliveries.record_outcomes(c, fence, rows, now), lazy=True):
            log.error(
                "%s/%s: %d outcome(s) not recorded: %s",
                run_id,
                channel,
                len(rows),
                self._fenced_out(run_id),
            )
            self._lost.add(run_id)

    # -- shards --------------------------------------------------------------------------
    def plan_shards(self, run_id: str, channel: str, count: int) -> int:
        """Split the channel's deliveries into ``count`` shards by a stable hash of the
        recipient, once (a channel split before keeps its count, which is returned)."""
        if count < 1:
            raise ValueError(f"a shard count must be positive, not {count}")
        run, code = self._key(run_id, channel)
        return self._do(lambda c: _leases.plan_shards(c, run, code, count))

    def lease_shards(
        self,
        run_id: str,
        channel: str,
        *,
        limit: int,
        resend: bool,
        only: Sequence[int] | None = None,
    ) -> list[int]:
        """Lease up to ``limit`` free shards of the channel (among ``only`` if given)
        for this ledger object (a worker) while the run is ``running``; shards taken
        over from an expired lease have their ``in_flight`` deliveries settled first
        (``resend``: back to ``pending``, for a provider with idempotency keys; else
        ``unknown``)."""
        run, code = self._key(run_id, channel)
        worker = self._worker_identity()
        shards = self._do(
            lambda c: _leases.lease(
                c,
                run,
                code,
                token=worker.token,
                owner=worker.text,
                limit=limit,
                seconds=self.lease_seconds,
                resend=resend,
                only=only,
            )
        )
        if shards:
            self._lost.discard(run_id)
            with self._held_lock:
                self._held.setdefault((run, code), set()).update(shards)
                if self._lease_beat is None:  # one beat, however many threads lease
                    self._lease_beat = LeaseBeat(self, self.lease_seconds)
        return shards

    def _worker_identity(self) -> Owner:
        """This ledger object's one worker identity, made by the first lease. Under the
        lock: a worker's channel threads lease at the same instant, and a second identity
        would fence the first one's threads out of the shards they leased (and leave
        those leased, unrenewed, until they expire)."""
        with self._held_lock:
            if self._worker is None:
                self._worker = Owner.claim()
            return self._worker

    def release_shards(self, run_id: str, channel: str, shards: Sequence[int]) -> int:
        """Let go of this worker's leases on ``shards`` (those with nothing owed left
        are done); returns how many it still held."""
        run, code = self._key(run_id, channel)
        with self._held_lock:
            self._held.get((run, code), set()).difference_update(shards)
        if self._worker is None or not shards:
            return 0
        token = self._worker.token
        return self._do(lambda c: _leases.release(c, run, code, shards, token))

    def renew_leases(self) -> None:
        """Extend this worker's live leases (the :class:`LeaseBeat` calls it); a lease
        found expired is dropped from those held."""
        if self._worker is None:
            return
        token, seconds = self._worker.token, self.lease_seconds
        renewed = set(self._do(lambda c: _leases.renew(c, token, seconds)))
        with self._held_lock:
            for (run, code), shards in self._held.items():
                shards.intersection_update(s for r, c, s in renewed if (r, c) == (run, code))

    def shard_leases(self, run_id: str) -> list[LeaseInfo]:
        """The run's shards and their leases, by channel and shard."""
        run = self._run_key(run_id)
        return self._do(lambda c: _leases.lease_table(c, run))

    def requeue_shard(self, run_id: str, channel: str, shard: int) -> int:
        """Put the shard's transient failures back to ``pending`` (leasable again)."""
        run, code = self._key(run_id, channel)
        return self._do(lambda c: _leases.requeue_shard(c, run, code, shard))

    def shard_failures(self, run_id: str, channel: str, shard: int) -> int:
        """The shard's transient failures (what a retry would send again)."""
        run, code = self._key(run_id, channel)
        return self._do(lambda c: _leases.shard_failures(c, run, code, shard))

    def reopen_shards(self, run_id: str, channel: str) -> None:
        """Make the channel's shards leasable again (a resume put deliveries back)."""
        run, code = self._key(run_id, channel)
        self._do(lambda c: _leases.reopen(c, run, code))

    # -- the shared rate budget ----------------------------------------------------------
    def reserve_budget(self, name: str, cost: float) -> float:
        """Reserve ``cost`` seconds of the shared budget ``name``; returns how far
        ahead of now the reservation starts (see :func:`._leases.reserve`)."""
        return self._do(lambda c: _leases.reserve(c, name, cost))

    def hold_budget(self, name: str, seconds: float) -> None:
        """Hold the shared budget ``name`` for ``seconds`` (a provider's 429)."""
        self._do(lambda c: _leases.throttle(c, name, seconds))
