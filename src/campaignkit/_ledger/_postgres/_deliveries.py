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

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .._types import DeliveryRecord, Slice
from ._leases import FENCE

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[Any]

#: The parameters of the fence of a write (see :func:`fence_params`).
Fence = dict[str, Any]

__all__ = [
    "FLUSH",
    "Fence",
    "fence_params",
    "mark_in_flight",
    "record_outcomes",
    "release_deferred",
    "requeue",
    "resolve_in_flight",
    "suppress",
]

#: Mark, if the fence (:data:`._leases.FENCE`) lets the caller write the deliveries;
#: returns whether it did.
_MARK = (
    "WITH " + FENCE + ", "
    "marked AS (UPDATE deliveries SET state = 'in_flight', updated_at = %(now)s, "
    "batch = COALESCE(batch, %(batch)s) WHERE run = %(run)s AND channel = %(code)s "
    "AND seq = ANY(%(seqs)s::bigint[]) AND (SELECT mine FROM fence)) "
    "SELECT mine FROM fence"
)
#: A durable commit (an id given to the transaction): everything committed before it
#: (outcomes committed lazily included) is on the server's disk when it returns.
FLUSH = "SELECT pg_current_xact_id()"
#: Outcomes, fenced as marks are (the seqs, then one array per column); returns
#: whether the fence let the caller write them.
_OUTCOMES = (
    "WITH " + FENCE + ", "
    "written AS (UPDATE deliveries AS d SET state = v.state, reason = v.reason, "
    "attempts = v.attempts, transient = v.transient, provider_message_id = v.pmid, "
    "error_code = v.code, error = v.error, updated_at = %(now)s "
    "FROM (SELECT set_config('synchronous_commit', 'off', true)) AS lazy, "
    "unnest(%(seqs)s::bigint[], %(states)s::text[], %(reasons)s::text[], "
    "%(attempts)s::int[], %(transients)s::int[], %(pmids)s::text[], %(codes)s::text[], "
    "%(errors)s::text[]) AS v(seq, state, reason, attempts, transient, pmid, code, error) "
    "WHERE d.run = %(run)s AND d.channel = %(code)s AND d.seq = v.seq "
    "AND (SELECT mine FROM fence)) "
    "SELECT mine FROM fence"
)
_REQUEUE = (
    "UPDATE deliveries SET state = 'pending', reason = NULL "
    "WHERE run = %s AND channel = %s AND ((%s AND state = 'failed' AND transient = 1) "
    "OR (%s AND state = 'unknown')) AND COALESCE(batch, seq) %% %s = %s"
)


def suppress(
    conn: Conn, kind: str, address: str, reason: str, source: str | None, now: str
) -> None:
    """Add ``address`` to the suppression list of ``kind`` (kept if already there)."""
    conn.execute(
        "INSERT INTO suppressions VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
        (kind, address, reason, source, now),
    )


def fence_params(owner: str, token: str, run: int, code: int, seqs: Sequence[int]) -> Fence:
    """The parameters of :data:`._leases.FENCE` (``owner``: the run's owner text the
    caller holds, or ``""``; ``token``: its worker token, or ``""``)."""
    return {"owner": owner, "token": token, "run": run, "code": code, "seqs": list(seqs)}


def mark_in_flight(conn: Conn, fence: Fence, now: float) -> bool:
    """Mark the deliveries of ``fence`` in flight as one batch (its id is its first
    seq) if the fence lets the caller; returns whether it did (else nothing is marked)."""
    seqs = fence["seqs"]
    batch = min(seqs) if seqs else None
    row = conn.execute(_MARK, {**fence, "now": now, "batch": batch}).fetchone()
    return row is not None and bool(row[0])


def record_outcomes(
    conn: Conn, fence: Callable[[Sequence[int]], Fence], rows: Sequence[DeliveryRecord], now: float
) -> bool:
    """Record outcomes ``(seq, result, state, transient)`` if the fence (built by
    ``fence(seqs)``) lets the caller; a delivery's last outcome in ``rows`` is the one
    that stays. Returns whether they were written."""
    last = {seq: (state, r, transient) for seq, r, state, transient in rows}
    if not last:
        return True
    names = ("states", "reasons", "attempts", "transients", "pmids", "codes", "errors")
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for state, r, transient in last.values():
        values = (
            state,
            r.reason,
            r.attempts,
            int(transient),
            r.provider_message_id,
            r.error_code,
            r.error,
        )
        for name, value in zip(names, values, strict=True):
            columns[name].append(value)
    row = conn.execute(_OUTCOMES, {**fence(list(last)), **columns, "now": now}).fetchone()
    return row is not None and bool(row[0])


def resolve_in_flight(conn: Conn, run: int, code: int, *, resend: bool) -> int:
    """Settle deliveries left ``in_flight``: ``pending`` if ``resend``, else ``unknown``."""
    state, reason = ("pending", None) if resend else ("unknown", "in_flight_at_crash")
    return conn.execute(
        "UPDATE deliveries SET state = %s, reason = %s "
        "WHERE run = %s AND channel = %s AND state = 'in_flight'",
        (state, reason, run, code),
    ).rowcount


def requeue(conn: Conn, run: int, code: int, *, failed: bool, unknown: bool, part: Slice) -> int:
    """Put transient failures (``failed``) and/or ``unknown`` deliveries of slice
    ``part`` back to ``pending``, in one pass over the channel's rows."""
    args = (run, code, failed, unknown, part.count, part.index)
    return conn.execute(_REQUEUE, args).rowcount


def release_deferred(conn: Conn, run: int, code: int, now: float) -> int:
    """Deferred deliveries whose time has come become ``pending``."""
    return conn.execute(
        "UPDATE deliveries SET state = 'pending', reason = NULL "
        "WHERE run = %s AND channel = %s AND state = 'deferred' AND not_before <= %s",
        (run, code, now),
    ).rowcount
