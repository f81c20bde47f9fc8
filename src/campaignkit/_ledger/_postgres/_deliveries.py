"""The PostgreSQL ledger's writes to deliveries once they are planned.

An in-flight mark is one statement, fenced by the run's owner, over an array of
seqs, committed durably before the request leaves. Outcomes are one ``UPDATE ...
FROM unnest(...)`` per call, whatever their number, committed without waiting for
the server's disk (``synchronous_commit`` off for that transaction): the next
durable commit (a mark, :data:`FLUSH`) makes them durable too, since the server's
log is written in order. This is SQLite's rule (an outcome is durable by the next
mark or flush); an outcome lost in a crash of the server leaves its delivery
``in_flight``, which a resume settles by the crash rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._types import DeliveryRecord

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[Any]

__all__ = [
    "FLUSH",
    "mark_in_flight",
    "record_outcomes",
    "release_deferred",
    "requeue",
    "resolve_in_flight",
    "suppress",
]

#: Mark (parameters: the owner, the run, then the update's), if the owner recorded for
#: the run is the caller: the run's row share-locked, so that a claim (which locks it
#: for update) waits for the mark or comes first and is seen. Returns whether it was.
_MARK = (
    "WITH fence AS (SELECT owner IS NOT DISTINCT FROM %s AS mine FROM runs "
    "WHERE id = %s FOR SHARE), "
    "marked AS (UPDATE deliveries SET state = 'in_flight', updated_at = %s, batch = %s "
    "WHERE run = %s AND channel = %s AND seq = ANY(%s::bigint[]) "
    "AND (SELECT mine FROM fence)) "
    "SELECT mine FROM fence"
)
#: A durable commit (an id given to the transaction): everything committed before it
#: (outcomes committed lazily included) is on the server's disk when it returns.
FLUSH = "SELECT pg_current_xact_id()"
_OUTCOMES = (
    "UPDATE deliveries AS d SET state = v.state, reason = v.reason, attempts = v.attempts, "
    "transient = v.transient, provider_message_id = v.pmid, error_code = v.code, "
    "error = v.error, updated_at = %s "
    "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS lazy, "
    "unnest(%s::bigint[], %s::text[], %s::text[], %s::int[], %s::int[], %s::text[], "
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


def mark_in_flight(
    conn: Conn, owner: str, run: int, code: int, seqs: Sequence[int], now: float
) -> bool:
    """Mark deliveries in flight as one batch (its id is its first seq) if ``owner``
    owns the run; returns whether it does (else nothing is marked)."""
    batch = min(seqs) if seqs else None
    row = conn.execute(_MARK, (owner, run, now, batch, run, code, list(seqs))).fetchone()
    return row is not None and bool(row[0])


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
