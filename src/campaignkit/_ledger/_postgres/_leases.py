"""Shards and leases in PostgreSQL: how several worker processes, on any hosts, share
the sending of a run without sending anything twice or skipping anyone.

- :func:`plan_shards` splits a channel's deliveries into ``count`` shards by a stable
  hash of the recipient's id (``hashtextextended``, PostgreSQL's hash for partitions:
  the same id gives the same shard on every server version and platform).
- :func:`lease` gives a worker up to ``limit`` free shards (never leased, let go, or
  whose lease expired) with ``SELECT ... FOR UPDATE SKIP LOCKED``: workers leasing at
  the same instant take different shards and never wait for one another. Leases last
  ``seconds`` by the **database server's clock**, so the hosts' clocks do not matter;
  the worker renews them (:func:`renew`) while it works.
- A shard taken over from an expired lease first has its ``in_flight`` deliveries
  settled by the crash rules, in the same transaction: back to ``pending`` (re-sent as
  the same batch, under the same idempotency keys) where the provider has them, else
  ``unknown`` (``in_flight_at_crash``) until ``--resend-unknown``.
- Marks and outcomes are **fenced** (:data:`FENCE`): a delivery is written only by the
  holder of its shard's live lease, or, where no live lease holds the shard, by the
  run's owner (one process sending a run, as before shards). A worker whose lease
  expired writes nothing, even before another worker takes the shard.
- :func:`reserve` is the shared rate budget: one row per channel, a GCRA reservation
  by the server's clock, so that all workers together keep a provider's limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .._types import LeaseInfo

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[Any]

__all__ = [
    "FENCE",
    "busy_leases",
    "lease",
    "lease_table",
    "plan_shards",
    "release",
    "renew",
    "reopen",
    "reserve",
    "throttle",
]

#: The database server's clock, in epoch seconds (leases and budgets use it alone).
NOW = "extract(epoch FROM clock_timestamp())"

#: Whether the deliveries ``seq = ANY(%(seqs)s)`` of channel ``%(code)s`` of run
#: ``%(run)s`` may be written by the caller: each one's shard is leased to the caller
#: (token ``%(token)s``) and the lease is live, or no live lease holds the shard and
#: the caller owns the run (owner text ``%(owner)s``, ``''`` for a worker).
#:
#: The rows decided on are locked for the statement, so that what they say holds until
#: it commits: the shards' rows ``FOR KEY SHARE`` (a take-over's ``FOR UPDATE SKIP
#: LOCKED`` passes them by; renewals and releases do not wait), and, for the run's owner
#: only, the run's row ``FOR SHARE`` (a claim, which locks it for update, waits for the
#: write or comes first and is seen). A worker never locks the run's row: the workers of
#: a run do not contend on it.
FENCE = (
    "run_row AS (SELECT owner = %(owner)s AS owns FROM runs "
    "WHERE id = %(run)s AND %(owner)s <> '' FOR SHARE), "
    "touched AS (SELECT DISTINCT shard FROM deliveries WHERE run = %(run)s "
    "AND channel = %(code)s AND seq = ANY(%(seqs)s::bigint[])), "
    "held AS (SELECT shard, token, lease_until FROM shards WHERE run = %(run)s "
    "AND channel = %(code)s AND shard IN (SELECT shard FROM touched) FOR KEY SHARE), "
    "fence AS (SELECT COALESCE(bool_and(CASE "
    "WHEN s.token = %(token)s AND s.lease_until > " + NOW + " THEN TRUE "
    "WHEN s.token IS NOT NULL AND s.lease_until > " + NOW + " THEN FALSE "
    "ELSE COALESCE((SELECT owns FROM run_row), FALSE) END), TRUE) AS mine "
    "FROM touched t LEFT JOIN held s ON s.shard = t.shard)"
)

_LEASE = (
    "WITH live AS (SELECT 1 FROM runs WHERE id = %(run)s AND status = 'running' FOR SHARE), "
    "free AS (SELECT shard, COALESCE(token <> %(token)s OR lease_until <= " + NOW + ", FALSE) "
    "AS expired FROM shards "
    "WHERE run = %(run)s AND channel = %(code)s AND NOT done "
    "AND (token IS NULL OR lease_until <= " + NOW + " OR token = %(token)s) "
    "AND (%(only)s::int[] IS NULL OR shard = ANY(%(only)s::int[])) "
    "AND EXISTS (SELECT 1 FROM live) "
    "ORDER BY shard LIMIT %(limit)s FOR UPDATE SKIP LOCKED) "
    "UPDATE shards s SET token = %(token)s, owner = %(owner)s, "
    "lease_until = " + NOW + " + %(seconds)s, leases = s.leases + 1 "
    "FROM free WHERE s.run = %(run)s AND s.channel = %(code)s AND s.shard = free.shard "
    "RETURNING s.shard, free.expired"
)
_SETTLE = (
    "UPDATE deliveries SET state = %s, reason = %s "
    "WHERE run = %s AND channel = %s AND shard = ANY(%s::int[]) AND state = 'in_flight'"
)
_RELEASE = (
    "UPDATE shards s SET token = NULL, owner = NULL, lease_until = NULL, "
    "done = NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.run = s.run "
    "AND d.channel = s.channel AND d.shard = s.shard "
    "AND (d.state IN ('pending', 'in_flight') "
    "OR (d.state = 'deferred' AND d.not_before <= " + NOW + "))) "
    "WHERE s.run = %s AND s.channel = %s AND s.shard = ANY(%s::int[]) AND s.token = %s "
    "AND s.lease_until > " + NOW
)
_RESERVE = (
    "INSERT INTO rate_budgets AS b (name, tat) VALUES (%(name)s, " + NOW + " + %(cost)s) "
    "ON CONFLICT (name) DO UPDATE SET tat = GREATEST(b.tat, " + NOW + ") + %(cost)s "
    "RETURNING b.tat - %(cost)s - " + NOW
)


def plan_shards(conn: Conn, run: int, code: int, count: int) -> int:
    """Split the channel's deliveries into ``count`` shards, once: a channel split
    before keeps its shards (returns their count)."""
    with conn.transaction():
        conn.execute("SELECT 1 FROM channels WHERE run = %s AND code = %s FOR UPDATE", (run, code))
        row = conn.execute(
            "SELECT COUNT(*) FROM shards WHERE run = %s AND channel = %s", (run, code)
        ).fetchone()
        if row is not None and row[0]:
            return int(row[0])
        conn.execute(
            "UPDATE deliveries d SET shard = (hashtextextended(r.recipient_id, 0) "
            "& 2147483647) %% %s FROM recipients r "
            "WHERE d.run = %s AND d.channel = %s AND r.run = d.run AND r.seq = d.seq",
            (count, run, code),
        )
        conn.execute(
            "INSERT INTO shards (run, channel, shard) "
            "SELECT %s, %s, g FROM generate_series(0, %s - 1) AS g",
            (run, code, count),
        )
        conn.execute("ANALYZE deliveries")
    return count


def lease(
    conn: Conn,
    run: int,
    code: int,
    *,
    token: str,
    owner: str,
    limit: int,
    seconds: float,
    resend: bool,
    only: Sequence[int] | None = None,
) -> list[int]:
    """Lease up to ``limit`` free shards of the channel (only while the run is
    ``running``); those taken over from an expired lease have their ``in_flight``
    deliveries settled by the crash rules first (``resend``: back to ``pending``, else
    ``unknown``). Returns the shards leased, in order. Shards the caller holds already
    are leased again: a lease retried after its commit was lost (a server restart)
    finds what the first try took; but the caller's own lease that expired is taken
    over as any other (its outcomes were fenced out as it lapsed: what it left
    ``in_flight`` is settled). ``only``: lease among these shards only."""
    params = {
        "only": None if only is None else list(only),
        "run": run,
        "code": code,
        "token": token,
        "owner": owner,
        "limit": limit,
        "seconds": seconds,
    }
    with conn.transaction():
        rows = conn.execute(_LEASE, params).fetchall()
        expired = [int(shard) for shard, was_expired in rows if was_expired]
        if expired:
            state, reason = ("pending", None) if resend else ("unknown", "in_flight_at_crash")
            conn.execute(_SETTLE, (state, reason, run, code, expired))
    return sorted(int(shard) for shard, _ in rows)


def renew(conn: Conn, token: str, seconds: float) -> list[tuple[int, int, int]]:
    """Extend the live leases of ``token`` by ``seconds``; returns ``(run, channel,
    shard)`` of those renewed (an expired lease is lost: never renewed)."""
    rows = conn.execute(
        "UPDATE shards SET lease_until = " + NOW + " + %s "
        "WHERE token = %s AND lease_until > " + NOW + " RETURNING run, channel, shard",
        (seconds, token),
    ).fetchall()
    return [(int(r), int(c), int(s)) for r, c, s in rows]


def release(conn: Conn, run: int, code: int, shards: Sequence[int], token: str) -> int:
    """Let go of the leases of ``token`` on ``shards``; a shard with nothing owed now
    is ``done``: deferred deliveries not yet due (quiet hours) do not keep it open, or
    the workers would wait hours for them where one process ends the run ``deferred``
    (their release, by a resume, reopens the shards). Returns how many were still
    held.

    A lease that expired is not let go: it stays as it is, so that whoever leases the
    shard next sees it taken over from an expired lease and settles what its holder
    left ``in_flight`` (outcomes fenced out as it lapsed). Cleared, the shard would look
    never leased, those deliveries would stay ``in_flight`` for ever and the shard
    never be done: every worker would wait for it."""
    return conn.execute(_RELEASE, (run, code, list(shards), token)).rowcount


def requeue_shard(conn: Conn, run: int, code: int, shard: int) -> int:
    """Put the shard's transient failures back to ``pending`` and make it leasable
    again if any were; returns how many."""
    with conn.transaction():
        count = conn.execute(
            "UPDATE deliveries SET state = 'pending', reason = NULL WHERE run = %s "
            "AND channel = %s AND shard = %s AND state = 'failed' AND transient = 1",
            (run, code, shard),
        ).rowcount
        if count:
            conn.execute(
                "UPDATE shards SET done = FALSE WHERE run = %s AND channel = %s AND shard = %s",
                (run, code, shard),
            )
    return count


def shard_failures(conn: Conn, run: int, code: int, shard: int) -> int:
    """The shard's transient failures: what a retry would send again."""
    row = conn.execute(
        "SELECT COUNT(*) FROM deliveries WHERE run = %s AND channel = %s AND shard = %s "
        "AND state = 'failed' AND transient = 1",
        (run, code, shard),
    ).fetchone()
    return 0 if row is None else int(row[0])


def reopen(conn: Conn, run: int, code: int) -> None:
    """A resume put deliveries of the channel back to ``pending``: its shards are
    leasable again."""
    conn.execute("UPDATE shards SET done = FALSE WHERE run = %s AND channel = %s", (run, code))


def busy_leases(conn: Conn, run_id: str) -> list[str]:
    """The owners (as text) of the live leases of run ``run_id``."""
    rows = conn.execute(
        "SELECT DISTINCT s.owner FROM shards s JOIN runs r ON r.id = s.run "
        "WHERE r.run_id = %s AND s.token IS NOT NULL AND s.lease_until > " + NOW,
        (run_id,),
    )
    return [str(owner) for (owner,) in rows if owner]


def lease_table(conn: Conn, run: int) -> list[LeaseInfo]:
    """The run's shards, by channel and shard."""
    rows = conn.execute(
        "SELECT c.channel, s.shard, s.done, s.owner, s.lease_until - " + NOW + ", s.leases "
        "FROM shards s JOIN channels c ON c.run = s.run AND c.code = s.channel "
        "WHERE s.run = %s ORDER BY c.channel, s.shard",
        (run,),
    )
    return [
        LeaseInfo(ch, int(sh), bool(done), owner, None if left is None else float(left), int(n))
        for ch, sh, done, owner, left, n in rows
    ]


def reserve(conn: Conn, name: str, cost: float) -> float:
    """Reserve ``cost`` seconds of the budget ``name`` (GCRA: a theoretical arrival
    time advanced by each reservation); returns how far ahead of now the reservation
    starts (the caller waits that long, less the burst it allows)."""
    row = conn.execute(_RESERVE, {"name": name, "cost": cost}).fetchone()
    return 0.0 if row is None else float(row[0])


def throttle(conn: Conn, name: str, seconds: float) -> None:
    """A provider answered 429: hold the budget ``name`` for ``seconds``, for everyone."""
    conn.execute(
        "INSERT INTO rate_budgets AS b (name, tat) VALUES (%(name)s, " + NOW + " + %(s)s) "
        "ON CONFLICT (name) DO UPDATE SET tat = GREATEST(b.tat, " + NOW + " + %(s)s)",
        {"name": name, "s": seconds},
    )
