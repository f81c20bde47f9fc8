"""The PostgreSQL ledger's reads; long ones are streamed page by page, each page on a
connection taken from the pool and given back (a stream holds none between pages).

A page is a keyset query (the rows after the last one seen, in the stream's order),
read by the ledger's ``_do``: if the connection breaks under it, the same page is
read again on a fresh connection, so a stream survives a restart of the server and
neither skips nor repeats a row (:mod:`._reconnect`)."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from ..._models import DeliveryResult, Recipient
from ..._states import DeliveryCounts, DeliveryStatus
from .._queries import COUNTS, counts_from_rows
from .._schema import load_object, recipient_from_row
from .._sql import PAGE
from .._types import PendingDelivery, Slice, SliceOutcome, SnapshotInfo, Suppression

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[Any]
    Rows = list[tuple[Any, ...]]
    #: Runs a read on a connection of the pool, again after a break (the ledger's ``_do``).
    Do = Callable[[Callable[[Conn], Rows]], Rows]

__all__ = [
    "counts",
    "deliveries",
    "has_snapshot",
    "is_planned",
    "next_deferred",
    "owed",
    "pending",
    "slice_outcomes",
    "snapshot",
    "snapshot_info",
    "suppressions",
]

# A page of pending deliveries, then their recipients: the page is taken first (an
# index range scan from where the last page ended), and each of its rows looks up its
# recipient by key. Joined the other way round, a planner that misjudges the snapshot's
# size reads the run's whole snapshot for every page (96 ms a page at 50,000
# recipients, where this takes 3 ms).
_PENDING = (
    "SELECT d.seq, r.recipient_id, r.data, r.line, d.address, d.attempts, d.batch "
    "FROM (SELECT run, seq, address, attempts, batch FROM deliveries "
    "WHERE run = %s AND channel = %s AND state = 'pending' AND seq > %s "
    "ORDER BY seq LIMIT %s) AS d "
    "JOIN recipients r ON r.run = d.run AND r.seq = d.seq ORDER BY d.seq"
)
# One slice of the pending deliveries (see Slice): by batch, else by seq, modulo.
_PENDING_SLICE = _PENDING.replace(
    "AND seq > %s", "AND COALESCE(batch, seq) %% %s = %s AND seq > %s"
)
# The pending deliveries of one shard (leased by a worker), read in seq order along
# the shard index: one shard at a time, never a scan of the channel per page.
_PENDING_SHARD = _PENDING.replace("AND seq > %s", "AND shard = %s AND seq > %s")
_SNAPSHOT = (
    "SELECT seq, recipient_id, data, line FROM recipients WHERE run = %s AND seq > %s "
    "ORDER BY seq LIMIT %s"
)
_DELIVERIES = (
    "SELECT d.channel, d.seq, c.channel, r.recipient_id, d.state, d.reason, "
    "d.provider_message_id, d.attempts, d.error_code, d.error, r.line, d.address, d.receipt "
    "FROM deliveries d "
    "JOIN recipients r ON r.run = d.run AND r.seq = d.seq "
    "JOIN channels c ON c.run = d.run AND c.code = d.channel "
)
_AFTER = "(d.channel, d.seq) > (%s, %s) ORDER BY d.channel, d.seq LIMIT %s"
_ALL_CHANNELS = _DELIVERIES + "WHERE d.run = %s AND " + _AFTER
_ONE_CHANNEL = _DELIVERIES + "WHERE d.run = %s AND d.channel = %s AND " + _AFTER
_SUPPRESSIONS = "SELECT kind, address, reason, source FROM suppressions"


def pages(
    do: Do, sql: str, params: tuple[Any, ...], after: Callable[[Sequence[Any]], tuple[Any, ...]]
) -> Iterator[Sequence[Any]]:
    """Stream ``sql`` (which takes ``params``, then where to start, then ``LIMIT``)
    page by page, each read by ``do``; ``after(row)`` is where the page after ``row``
    starts."""
    start: tuple[Any, ...] = after((-1, -1))
    while True:
        rows = do(functools.partial(_fetch, sql=sql, params=(*params, *start, PAGE)))
        yield from rows
        if len(rows) < PAGE:
            return
        start = after(rows[-1])


def _fetch(conn: Conn, *, sql: str, params: tuple[Any, ...]) -> Rows:
    return conn.execute(sql, params).fetchall()


def _by_seq(row: Sequence[Any]) -> tuple[Any, ...]:
    return (row[0],)


def _by_channel_seq(row: Sequence[Any]) -> tuple[Any, ...]:
    return (row[0], row[1])


def pending(
    do: Do, run: int, code: int, part: Slice, shards: Sequence[int] | None = None
) -> Iterator[PendingDelivery]:
    """A channel's pending deliveries (see ``Ledger.pending``)."""
    new = tuple.__new__
    rows: Iterator[Sequence[Any]]
    if shards is not None:
        if part.count != 1:
            raise ValueError("pending: a slice or shards, not both")
        rows = (
            row
            for shard in sorted(shards)
            for row in pages(do, _PENDING_SHARD, (run, code, shard), _by_seq)
        )
    elif part.count == 1:
        rows = pages(do, _PENDING, (run, code), _by_seq)
    else:
        rows = pages(do, _PENDING_SLICE, (run, code, part.count, part.index), _by_seq)
    for seq, rid, data, line, address, attempts, batch in rows:
        yield new(
            PendingDelivery, (seq, recipient_from_row(rid, data, line), address, attempts, batch)
        )


def snapshot(do: Do, run: int) -> Iterator[tuple[int, Recipient]]:
    """A run's snapshot in source order, as ``(seq, recipient)``."""
    for seq, rid, data, line in pages(do, _SNAPSHOT, (run,), _by_seq):
        yield seq, recipient_from_row(rid, data, line)


def deliveries(do: Do, run: int, code: int | None) -> Iterator[DeliveryResult]:
    """Per-recipient outcomes in recipient order (all channels, or the one of ``code``)."""
    if code is None:
        rows = pages(do, _ALL_CHANNELS, (run,), _by_channel_seq)
    else:
        rows = pages(do, _ONE_CHANNEL, (run, code), _by_channel_seq)
    for row in rows:
        _, _, ch, rid, state, reason, pmid, attempts, error_code, error, line, address, got = row
        yield DeliveryResult(
            channel=ch,
            recipient_id=rid,
            status=DeliveryStatus(state),
            reason=reason,
            provider_message_id=pmid,
            attempts=attempts,
            error_code=error_code,
            error=error,
            line=line,
            address=address,
            receipt=got,
        )


def slice_outcomes(conn: Conn, run: int) -> list[SliceOutcome]:
    """The outcomes of the slices sent since the run was (re)opened, by channel."""
    rows = conn.execute(
        'SELECT outcome FROM slices WHERE run = %s ORDER BY channel COLLATE "C", '
        "slice_count, slice_index",
        (run,),
    )
    return [SliceOutcome.from_dict(json.loads(text)) for (text,) in rows]


def snapshot_info(conn: Conn, run: int) -> SnapshotInfo | None:
    """What the run's extraction recorded with its snapshot."""
    row = conn.execute(
        "SELECT s.rows_read, r.recipients, s.rejected, s.reasons, s.rows_per_customer, "
        "s.lines FROM snapshots s JOIN runs r ON r.id = s.run WHERE s.run = %s",
        (run,),
    ).fetchone()
    if row is None:
        return None
    return SnapshotInfo(
        rows_read=int(row[0]),
        recipients=int(row[1] or 0),
        rejected=int(row[2]),
        rejected_reasons={str(k): int(v) for k, v in json.loads(row[3]).items()},
        rows_per_customer=str(row[4]),
        lines=None if row[5] is None else {str(k): int(v) for k, v in load_object(row[5]).items()},
    )


def has_snapshot(conn: Conn, run_id: str) -> bool:
    """Whether run ``run_id`` has a snapshot."""
    row = conn.execute("SELECT recipients FROM runs WHERE run_id = %s", (run_id,)).fetchone()
    return row is not None and row[0] is not None


def is_planned(conn: Conn, run: int, channel: str) -> bool:
    """Whether the channel's plan completed."""
    row = conn.execute(
        "SELECT planned FROM channels WHERE run = %s AND channel = %s", (run, channel)
    ).fetchone()
    return bool(row and row[0])


def next_deferred(conn: Conn, run: int) -> float | None:
    """The earliest time a deferred delivery of the run becomes due, if any."""
    row = conn.execute(
        "SELECT MIN(not_before) FROM deliveries WHERE run = %s AND state = 'deferred'", (run,)
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def suppressions(conn: Conn, kind: str | None) -> list[tuple[str, str, str, str | None]]:
    """``(kind, address, reason, source)`` entries of the suppression list (ordered as
    SQLite orders them: by code point)."""
    if kind:
        rows = conn.execute(
            _SUPPRESSIONS + ' WHERE kind = %s ORDER BY address COLLATE "C"', (kind,)
        )
    else:
        rows = conn.execute(_SUPPRESSIONS + ' ORDER BY kind COLLATE "C", address COLLATE "C"')
    return [Suppression(r[0], r[1], r[2], r[3]) for r in rows]


def owed(conn: Conn, run: int, code: int, *, failed: bool, unknown: bool, part: Slice) -> int:
    """How many deliveries of one channel's slice ``part`` a resume would send."""
    row = conn.execute(
        "SELECT COUNT(*) FROM deliveries WHERE run = %s AND channel = %s AND ("
        "state IN ('pending', 'in_flight', 'deferred') "
        "OR (%s AND state = 'failed' AND transient = 1) OR (%s AND state = 'unknown')) "
        "AND COALESCE(batch, seq) %% %s = %s",
        (run, code, failed, unknown, part.count, part.index),
    ).fetchone()
    return 0 if row is None else int(row[0])


def counts(conn: Conn, run: int, code: int) -> DeliveryCounts:
    """A channel's deliveries by state and reason (see ``Ledger.counts``)."""
    return counts_from_rows(conn.execute(COUNTS.replace("?", "%s"), (run, code)))
