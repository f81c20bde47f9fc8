"""The PostgreSQL ledger's writes to deliveries once they are planned.

An in-flight mark is one statement over an array of seqs; outcomes are one
``UPDATE ... FROM unnest(...)`` per call, whatever their number (a batch's
outcomes cost one round trip).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._types import DeliveryRecord

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[Any]

__all__ = [
    "mark_in_flight",
    "owner_of",
    "record_outcomes",
    "release_deferred",
    "requeue",
    "resolve_in_flight",
    "suppress",
]

_MARK = (
    "UPDATE deliveries SET state = 'in_flight', updated_at = %s, batch = %s "
    "WHERE run = %s AND channel = %s AND seq = ANY(%s::bigint[])"
)
_OUTCOMES = (
    "UPDATE deliveries AS d SET state = v.state, reason = v.reason, attempts = v.attempts, "
    "transient = v.transient, provider_message_id = v.pmid, error_code = v.code, "
    "error = v.error, updated_at = %s "
    "FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::int[], %s::int[], %s::text[], "
    "%s::text[], %s::text[]) AS v(seq, state, reason, attempts, transient, pmid, code, error) "
    "WHERE d.run = %s AND d.channel = %s AND d.seq = v.seq"
)
_REQUEUE = (
    "UPDATE deliveries SET state = 'pending', reason = NULL "
    "WHERE run = %s AND channel = %s AND ((%s AND state = 'failed' AND transient = 1) "
    "OR (%s AND state = 'unknown'))"
)


def suppress(
    conn: Conn, kind: str, address: str, reason: str, source: str | None, now: str
) -> None:
    """Add ``address`` to the suppression list of ``kind`` (kept if already there)."""
    conn.execute(
        "INSERT INTO suppressions VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (kind, address, reason, source, now),
    )


def owner_of(conn: Conn, run: int) -> str | None:
    """The run's recorded owner, its row share-locked until the transaction ends (a
    claim, which locks it for update, waits for the caller's writes, or came first)."""
    row = conn.execute("SELECT owner FROM runs WHERE id = %s FOR SHARE", (run,)).fetchone()
    return None if row is None else row[0]


def mark_in_flight(conn: Conn, run: int, code: int, seqs: Sequence[int], now: float) -> None:
    """Mark deliveries in flight as one batch (its id is its first seq)."""
    if seqs:
        conn.execute(_MARK, (now, min(seqs), run, code, list(seqs)))


def record_outcomes(
    conn: Conn, run: int, code: int, rows: Sequence[DeliveryRecord], now: float
) -> None:
    """Record outcomes ``(seq, result, state, transient)``; a delivery's last outcome
    in ``rows`` is the one that stays."""
    last = {seq: (state, r, transient) for seq, r, state, transient in rows}
    if not last:
        return
    columns: list[list[Any]] = [[] for _ in range(8)]
    for seq, (state, r, transient) in last.items():
        values = (
            seq,
            state,
            r.reason,
            r.attempts,
            int(transient),
            r.provider_message_id,
            r.error_code,
            r.error,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    conn.execute(_OUTCOMES, (now, *columns, run, code))


def resolve_in_flight(conn: Conn, run: int, code: int, *, resend: bool) -> int:
    """Settle deliveries left ``in_flight``: ``pending`` if ``resend``, else ``unknown``."""
    state, reason = ("pending", None) if resend else ("unknown", "in_flight_at_crash")
    return conn.execute(
        "UPDATE deliveries SET state = %s, reason = %s "
        "WHERE run = %s AND channel = %s AND state = 'in_flight'",
        (state, reason, run, code),
    ).rowcount


def requeue(conn: Conn, run: int, code: int, *, failed: bool, unknown: bool) -> int:
    """Put transient failures (``failed``) and/or ``unknown`` deliveries back to
    ``pending``, in one pass over the channel's rows."""
    return conn.execute(_REQUEUE, (run, code, failed, unknown)).rowcount


def release_deferred(conn: Conn, run: int, code: int, now: float) -> int:
    """Deferred deliveries whose time has come become ``pending``."""
    return conn.execute(
        "UPDATE deliveries SET state = 'pending', reason = NULL "
        "WHERE run = %s AND channel = %s AND state = 'deferred' AND not_before <= %s",
        (run, code, now),
    ).rowcount
