"""The PostgreSQL ledger's writes to deliveries once they are planned.

An in-flight mark is one statement, fenced by the run's owner, over an array of
seqs, committed durably before the request leaves. Outcomes are one ``UPDATE ...
FROM unnest(...)`` per group of calls (:mod:`._writer` takes them from every sending
thread), committed without waiting for the server's disk (:data:`LAZY`) unless the
group holds a mark or a flush: the next durable commit (a mark, :data:`FLUSH`) makes
them durable too, since the server's log is written in order. This is SQLite's rule
(an outcome is durable by the next mark or flush); an outcome lost in a crash of the
server leaves its delivery ``in_flight``, which a resume settles by the crash rules.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .._types import DeliveryRecord

if TYPE_CHECKING:
    import psycopg

    from ._writer import Mark

    Conn = psycopg.Connection[Any]

__all__ = [
    "FLUSH",
    "LAZY",
    "OUTCOMES",
    "mark_statement",
    "outcome_rows",
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
#: The rest of the transaction commits without waiting for the server's disk.
LAZY = "SET LOCAL synchronous_commit TO off"
#: Outcomes of any runs and channels, one row each (parameters: :func:`outcome_rows`).
OUTCOMES = (
    "UPDATE deliveries AS d SET state = v.state, reason = v.reason, attempts = v.attempts, "
    "transient = v.transient, provider_message_id = v.pmid, error_code = v.code, "
    "error = v.error, updated_at = v.at "
    "FROM unnest(%s::bigint[], %s::int[], %s::bigint[], %s::text[], %s::text[], %s::int[], "
    "%s::int[], %s::text[], %s::text[], %s::text[], %s::float8[]) "
    "AS v(run, channel, seq, state, reason, attempts, transient, pmid, code, error, at) "
    "WHERE d.run = v.run AND d.channel = v.channel AND d.seq = v.seq"
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


def mark_statement(mark: Mark) -> tuple[str, tuple[Any, ...]]:
    """The fenced statement marking ``mark``'s deliveries in flight as one batch (its
    id is its first seq), and its parameters; its one row says whether the owner
    made it (else nothing is marked)."""
    batch = min(mark.seqs) if mark.seqs else None
    run = mark.run
    return _MARK, (mark.owner, run, mark.now, batch, run, mark.code, list(mark.seqs))


def outcome_rows(
    calls: Iterable[tuple[tuple[int, int], Sequence[DeliveryRecord], float]],
) -> tuple[list[Any], ...]:
    """The :data:`OUTCOMES` parameters (one array per column) for the outcomes of
    ``calls`` (``((run, channel code), rows, when)``, in the order they were made): a
    delivery's last outcome is the one that stays; rows sorted by key, so that
    concurrent groups lock deliveries in one order. Empty if there are none."""
    last: dict[tuple[int, int, int], tuple[Any, ...]] = {}
    for (run, code), rows, now in calls:
        for seq, r, state, transient in rows:
            last[(run, code, seq)] = (
                state,
                r.reason,
                r.attempts,
                int(transient),
                r.provider_message_id,
                r.error_code,
                r.error,
                now,
            )
    if not last:
        return ()
    columns: tuple[list[Any], ...] = tuple([] for _ in range(11))
    for key in sorted(last):
        for column, value in zip(columns, (*key, *last[key]), strict=True):
            column.append(value)
    return columns


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
