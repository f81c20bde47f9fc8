"""The ledger's read queries: each takes a read-only connection (see :func:`connect`)."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from .._models import DeliveryResult, Recipient
from .._states import DeliveryCounts, DeliveryStatus, Doubt
from ._schema import load_object, recipient_from_row
from ._sql import PAGE
from ._types import PendingDelivery, Slice, SliceOutcome, SnapshotInfo, Suppression

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

_PENDING = (
    "SELECT d.seq, r.recipient_id, r.data, r.line, d.address, d.attempts, d.batch "
    "FROM deliveries d "
    "JOIN recipients r ON r.run = d.run AND r.seq = d.seq "
    "WHERE d.run = ? AND d.channel = ? AND d.state = 'pending' AND d.seq > ? "
    "ORDER BY d.seq LIMIT ?"
)
# One slice of the pending deliveries (see Slice): by batch, else by seq, modulo.
_PENDING_SLICE = _PENDING.replace(
    "AND d.seq > ?", "AND COALESCE(d.batch, d.seq) % ? = ? AND d.seq > ?"
)
_SNAPSHOT = (
    "SELECT seq, recipient_id, data, line FROM recipients WHERE run = ? AND seq > ? "
    "ORDER BY seq LIMIT ?"
)
_DELIVERIES = (
    "SELECT c.channel, r.recipient_id, d.state, d.reason, d.provider_message_id, "
    "d.attempts, d.error_code, d.error, r.line, d.address, d.receipt FROM deliveries d "
    "JOIN recipients r ON r.run = d.run AND r.seq = d.seq "
    "JOIN channels c ON c.run = d.run AND c.code = d.channel "
)
_ORDER = " ORDER BY d.channel, d.seq"  # primary key order: no sorting
_SUPPRESSIONS = "SELECT kind, address, reason, source FROM suppressions"


def pages(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> Iterator[Sequence[Any]]:
    """Stream ``sql`` (which takes ``params`` + ``seq > ?`` + ``LIMIT ?`` and orders
    by seq, first column) page by page: short read transactions, so that a long
    pass does not hold back WAL checkpoints."""
    last = -1
    while True:
        rows = conn.execute(sql, (*params, last, PAGE)).fetchall()
        yield from rows
        if len(rows) < PAGE:
            return
        last = rows[-1][0]


def pending(
    conn: sqlite3.Connection, run: int, code: int, part: Slice
) -> Iterator[PendingDelivery]:
    """A channel's pending deliveries (see :meth:`SqliteLedger.pending`)."""
    new = tuple.__new__  # PendingDelivery(...) without its Python-level __new__: per row
    if part.count == 1:
        rows = pages(conn, _PENDING, (run, code))
    else:
        rows = pages(conn, _PENDING_SLICE, (run, code, part.count, part.index))
    for seq, rid, data, line, address, attempts, batch in rows:
        yield new(
            PendingDelivery, (seq, recipient_from_row(rid, data, line), address, attempts, batch)
        )


def slice_outcomes(conn: sqlite3.Connection, run: int) -> list[SliceOutcome]:
    """The outcomes of the slices sent since the run was (re)opened, by channel."""
    rows = conn.execute(
        "SELECT outcome FROM slices WHERE run = ? ORDER BY channel, slice_count, slice_index",
        (run,),
    )
    return [SliceOutcome.from_dict(json.loads(text)) for (text,) in rows]


def snapshot(conn: sqlite3.Connection, run: int) -> Iterator[tuple[int, Recipient]]:
    """A run's snapshot in source order, as ``(seq, recipient)``."""
    for seq, rid, data, line in pages(conn, _SNAPSHOT, (run,)):
        yield seq, recipient_from_row(rid, data, line)


def snapshot_info(conn: sqlite3.Connection, run: int) -> SnapshotInfo | None:
    """What the run's extraction recorded with its snapshot (schema 4 on)."""
    row = conn.execute(
        "SELECT s.rows_read, r.recipients, s.rejected, s.reasons, s.rows_per_customer, "
        "s.lines "
        "FROM snapshots s JOIN runs r ON r.id = s.run WHERE s.run = ?",
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


def has_snapshot(conn: sqlite3.Connection, run_id: str) -> bool:
    """Whether run ``run_id`` has a snapshot."""
    row = conn.execute("SELECT recipients FROM runs WHERE run_id = ?", (run_id,)).fetchone()
    return row is not None and row[0] is not None


def is_planned(conn: sqlite3.Connection, run: int, channel: str) -> bool:
    """Whether the channel's plan completed."""
    row = conn.execute(
        "SELECT planned FROM channels WHERE run = ? AND channel = ?", (run, channel)
    ).fetchone()
    return bool(row and row[0])


def next_deferred(conn: sqlite3.Connection, run: int) -> float | None:
    """The earliest time a deferred delivery of the run becomes due, if any."""
    row = conn.execute(
        "SELECT MIN(not_before) FROM deliveries WHERE run = ? AND state = 'deferred'", (run,)
    ).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def suppressions(
    conn: sqlite3.Connection, kind: str | None
) -> list[tuple[str, str, str, str | None]]:
    """``(kind, address, reason, source)`` entries of the suppression list."""
    if kind:
        rows = conn.execute(_SUPPRESSIONS + " WHERE kind = ? ORDER BY address", (kind,))
    else:
        rows = conn.execute(_SUPPRESSIONS + " ORDER BY kind, address")
    return [Suppression(r[0], r[1], r[2], r[3]) for r in rows]


def owed(
    conn: sqlite3.Connection, run: int, code: int, *, failed: bool, unknown: bool, part: Slice
) -> int:
    """How many deliveries of one channel's slice ``part`` a resume would send."""
    row = conn.execute(
        "SELECT COUNT(*) FROM deliveries WHERE run = ? AND channel = ? AND ("
        "state IN ('pending', 'in_flight', 'deferred') "
        "OR (? AND state = 'failed' AND transient = 1) OR (? AND state = 'unknown')) "
        "AND COALESCE(batch, seq) % ? = ?",
        (run, code, failed, unknown, part.count, part.index),
    ).fetchone()
    return int(row[0])


#: A channel's deliveries grouped as :func:`counts_from_rows` reads them (both backends).
COUNTS = (
    "SELECT state, reason, error_code, receipt, COUNT(*) FROM deliveries "
    "WHERE run = ? AND channel = ? GROUP BY state, reason, error_code, receipt"
)


def counts_from_rows(
    rows: Iterable[tuple[str, str | None, str | None, str | None, int]],
) -> DeliveryCounts:
    """:class:`DeliveryCounts` from the rows of :data:`COUNTS`."""
    states: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    codes: Counter[str] = Counter()
    doubts: Counter[Doubt] = Counter()
    receipts: Counter[str] = Counter()
    for state, reason, error_code, receipt, n in rows:
        states[state] += n
        if reason:
            reasons[reason] += n
        if state == DeliveryStatus.UNKNOWN:
            doubts[Doubt(reason or "", error_code or "")] += n
        elif error_code and state != DeliveryStatus.SENT:
            codes[error_code] += n
        if receipt and state == DeliveryStatus.SENT:
            receipts[receipt] += n
    return DeliveryCounts(states, reasons, codes, doubts, receipts)


def counts(conn: sqlite3.Connection, run: int, code: int) -> DeliveryCounts:
    """A channel's deliveries by state and reason (see :meth:`SqliteLedger.counts`)."""
    return counts_from_rows(conn.execute(COUNTS, (run, code)))


def deliveries(conn: sqlite3.Connection, run: int, code: int | None) -> Iterator[DeliveryResult]:
    """Per-recipient outcomes in recipient order (all channels, or the one of ``code``)."""
    if code is None:
        cursor = conn.execute(_DELIVERIES + "WHERE d.run = ?" + _ORDER, (run,))
    else:
        cursor = conn.execute(
            _DELIVERIES + "WHERE d.run = ? AND d.channel = ?" + _ORDER, (run, code)
        )
    for ch, rid, state, reason, pmid, attempts, error_code, error, line, address, got in cursor:
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
