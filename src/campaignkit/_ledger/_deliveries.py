"""The ledger's writes to deliveries (a channel's rows) once they are planned."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from ._sql import seq_lists
from ._types import DeliveryRecord, Slice

__all__ = [
    "mark_in_flight",
    "record_outcomes",
    "release_deferred",
    "requeue",
    "resolve_in_flight",
    "suppress",
]

# A delivery keeps the batch id it was first sent under: re-sent (a transient failure,
# a crash), it stays in the same slice of every slice count (a slice is its batch id
# modulo the count), even when only some of its batch are re-sent, or the count changed
# since (the CLI sent the whole channel, an orchestrator then sends it in shards).
_MARK = (
    "UPDATE deliveries SET state = 'in_flight', updated_at = ?, batch = COALESCE(batch, ?) "
    "WHERE run = ? AND channel = ? AND seq IN "
)
_OUTCOME = (
    "UPDATE deliveries SET state = ?, reason = ?, attempts = ?, transient = ?, "
    "provider_message_id = ?, error_code = ?, error = ?, updated_at = ? "
    "WHERE run = ? AND channel = ? AND seq "
)
_REQUEUE = (
    "UPDATE deliveries SET state = 'pending', reason = NULL "
    "WHERE run = ? AND channel = ? AND ((? AND state = 'failed' AND transient = 1) "
    "OR (? AND state = 'unknown')) AND COALESCE(batch, seq) % ? = ?"
)


def suppress(
    kind: str, address: str, reason: str, source: str | None, now: str
) -> Callable[[sqlite3.Connection], None]:
    """The write that adds ``address`` to the suppression list, for the writer thread."""

    def op(conn: sqlite3.Connection) -> None:
        conn.execute(
            "INSERT OR IGNORE INTO suppressions VALUES (?, ?, ?, ?, ?)",
            (kind, address, reason, source, now),
        )

    return op


def mark_in_flight(
    conn: sqlite3.Connection, run: int, code: int, seqs: Sequence[int], now: float
) -> None:
    """Mark deliveries in flight as one batch (its id is its first seq; a delivery sent
    before keeps its own): one statement per list of seqs, not per delivery."""
    batch = min(seqs) if seqs else None
    for marks, values in seq_lists(seqs):
        conn.execute(_MARK + "(" + marks + ")", (now, batch, run, code, *values))


def record_outcomes(
    run: int, code: int, rows: Sequence[DeliveryRecord], now: float
) -> Callable[[sqlite3.Connection], None]:
    """The write of outcomes ``(seq, result, state, transient)``, for the writer thread."""
    # A delivery's last outcome is the one that stays (as with one UPDATE per row).
    last = {
        seq: (
            state,
            r.reason,
            r.attempts,
            int(transient),
            r.provider_message_id,
            r.error_code,
            r.error,
            now,
            run,
            code,
        )
        for seq, r, state, transient in rows
    }
    # Deliveries with the same outcome (a batch sent in one request usually shares
    # it, provider message id included) are updated by one statement.
    groups: dict[tuple[Any, ...], list[int]] = {}
    for seq, values in last.items():
        groups.setdefault(values, []).append(seq)
    singles = [(*values, seqs[0]) for values, seqs in groups.items() if len(seqs) == 1]
    lists = [
        (values, marks, seq_list)
        for values, seqs in groups.items()
        if len(seqs) > 1
        for marks, seq_list in seq_lists(seqs)
    ]

    def op(conn: sqlite3.Connection) -> None:
        for values, marks, seq_list in lists:
            conn.execute(_OUTCOME + "IN (" + marks + ")", (*values, *seq_list))
        if singles:
            conn.executemany(_OUTCOME + "= ?", singles)

    return op


def resolve_in_flight(conn: sqlite3.Connection, run: int, code: int, *, resend: bool) -> int:
    """Settle deliveries left ``in_flight``: ``pending`` if ``resend``, else ``unknown``."""
    state, reason = ("pending", None) if resend else ("unknown", "in_flight_at_crash")
    return conn.execute(
        "UPDATE deliveries SET state = ?, reason = ? "
        "WHERE run = ? AND channel = ? AND state = 'in_flight'",
        (state, reason, run, code),
    ).rowcount


def requeue(
    conn: sqlite3.Connection, run: int, code: int, *, failed: bool, unknown: bool, part: Slice
) -> int:
    """Put transient failures (``failed``) and/or ``unknown`` deliveries of slice
    ``part`` back to ``pending``, in one pass over the channel's rows."""
    args = (run, code, failed, unknown, part.count, part.index)
    return conn.execute(_REQUEUE, args).rowcount


def release_deferred(conn: sqlite3.Connection, run: int, code: int, now: float) -> int:
    """Deferred deliveries whose time has come become ``pending``."""
    return conn.execute(
        "UPDATE deliveries SET state = 'pending', reason = NULL "
        "WHERE run = ? AND channel = ? AND state = 'deferred' AND not_before <= ?",
        (run, code, now),
    ).rowcount
