"""The audience rules a channel's plan applies in PostgreSQL: one function per rule.

The same rules, in the same order and with the same results, as
:mod:`campaignkit._ledger._selection` (see there); each is one statement over the
channel's rows. The audience is loaded with ``COPY``. Suppressions and earlier
sends are read from the ledger's own tables, or from another schema's (``history``:
a dry run plans in a scratch schema and consults the real one).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

from .._types import PlanRow, PlanRules
from ._connect import quote_ident

if TYPE_CHECKING:
    import psycopg

    Conn = psycopg.Connection[Any]

__all__ = [
    "defer_quiet_hours",
    "plan",
    "skip_duplicates",
    "skip_filtered",
    "skip_frequency_capped",
    "skip_over_target",
    "skip_suppressed",
]

#: A channel's rows still to send (parameters: run, channel code).
_LIVE = "run = %s AND channel = %s AND state = 'pending'"
_SKIP = "UPDATE deliveries SET state = 'skipped', reason = %s WHERE " + _LIVE + " AND "
#: The sample order of ``target_customers`` with a seed (parameter: the salt).
_SAMPLE_ORDER = "(seq * 2654435761 + %s) %% 4294967296, seq"
_COPY = (
    "COPY deliveries (run, channel, seq, state, reason, address, filtered, not_before, "
    "updated_at) FROM STDIN"
)

#: A channel's key: (run, channel code).
Key = tuple[int, int]


def address_key(kind: str, *, joined: bool = False) -> str:
    """The SQL expression two deliveries' addresses are compared by (e-mail addresses
    case-insensitively); ``joined``: of the ``d`` table of a join."""
    column = "d.address" if joined else "address"
    return "lower(" + column + ")" if kind == "email" else column


def past_tables(history: str | None) -> str:
    """Where suppressions and earlier sends are read: this schema, or ``history``."""
    return "" if history is None else quote_ident(history) + "."


def _skip(conn: Conn, key: Key, reason: str, where: str, params: Sequence[Any] = ()) -> None:
    conn.execute(_SKIP + where, (reason, *key, *params))


def insert_audience(conn: Conn, key: Key, rows: Iterable[PlanRow], now: float) -> tuple[bool, bool]:
    """Replace the channel's rows by ``rows``; returns whether a pending row is
    ``filtered`` and whether one has a not-before time."""
    run, code = key
    seen_filtered = seen_not_before = False
    conn.execute("DELETE FROM deliveries WHERE run = %s AND channel = %s", key)
    with conn.cursor() as cursor, cursor.copy(_COPY) as copy:
        for seq, reason, address, filtered, not_before in rows:
            if not reason:
                seen_filtered = seen_filtered or bool(filtered)
                seen_not_before = seen_not_before or not_before is not None
            state = "skipped" if reason else "pending"
            copy.write_row(
                (run, code, seq, state, reason, address, bool(filtered), not_before, now)
            )
    # Fresh statistics: the rules' joins are planned for the rows just loaded (with
    # none, PostgreSQL takes the tables for nearly empty and joins row by row).
    conn.execute("ANALYZE deliveries, recipients")
    return seen_filtered, seen_not_before


def skip_suppressed(conn: Conn, key: Key, kind: str, *, history: str | None) -> None:
    """``suppressed``: the address is on the suppression list of ``kind``."""
    past = past_tables(history)
    if conn.execute(
        "SELECT 1 FROM " + past + "suppressions WHERE kind = %s LIMIT 1", (kind,)
    ).fetchone():
        where = address_key(kind) + " IN (SELECT address FROM " + past + "suppressions "
        _skip(conn, key, "suppressed", where + "WHERE kind = %s)", (kind,))


def skip_duplicates(conn: Conn, key: Key, kind: str) -> None:
    """``duplicate``: the same address is earlier in the segment."""
    _skip(
        conn,
        key,
        "duplicate",
        "seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER (PARTITION BY "
        + address_key(kind)
        + " ORDER BY seq) AS n FROM deliveries WHERE "
        + _LIVE
        + ") t WHERE n > 1)",
        key,
    )


def skip_filtered(conn: Conn, key: Key) -> None:
    """``filtered``: the segment filter rejected the recipient."""
    _skip(conn, key, "filtered", "filtered")


def skip_frequency_capped(
    conn: Conn, key: Key, channel: str, rules: PlanRules, *, history: str | None
) -> None:
    """``frequency_capped``: ``rules.cap`` sends to the address on this channel name
    since ``rules.cap_since``, in other runs (or in the ``history`` schema)."""
    past = past_tables(history)
    joined = address_key(rules.kind, joined=True)
    where = (
        address_key(rules.kind) + " IN (SELECT " + joined + " FROM " + past + "channels c "
        "JOIN " + past + "deliveries d ON d.run = c.run AND d.channel = c.code "
        "WHERE c.channel = %s AND c.run != %s AND d.state = 'sent' AND d.updated_at >= %s "
        "GROUP BY " + joined + " HAVING COUNT(*) >= %s)"
    )
    # (this run is not in a history schema: -1 excludes no run there)
    run = -1 if history is not None else key[0]
    _skip(conn, key, "frequency_capped", where, (channel, run, rules.cap_since, rules.cap))


def skip_over_target(conn: Conn, key: Key, rules: PlanRules) -> None:
    """``over_target``: beyond ``rules.target`` recipients, in segment order or a
    seeded, deterministic sample."""
    select = "seq NOT IN (SELECT seq FROM deliveries WHERE " + _LIVE + " ORDER BY "
    if rules.sample_seed is None:
        _skip(conn, key, "over_target", select + "seq LIMIT %s)", (*key, rules.target))
    else:
        salt = int(rules.sample_seed) % 4294967296
        where = select + _SAMPLE_ORDER + " LIMIT %s)"
        _skip(conn, key, "over_target", where, (*key, salt, rules.target))


def defer_quiet_hours(conn: Conn, key: Key, now: float) -> None:
    """``deferred``: quiet hours hold the message until its not-before time."""
    conn.execute(
        "UPDATE deliveries SET state = 'deferred', reason = 'deferred' WHERE "
        + _LIVE
        + " AND not_before > %s",
        (*key, now),
    )


def plan(
    conn: Conn,
    key: Key,
    channel: str,
    rows: Iterable[PlanRow],
    rules: PlanRules,
    *,
    now: float,
    history: str | None,
) -> None:
    """Record the channel's audience and apply the rules, in order, in one
    transaction; marks the channel planned."""
    with conn.transaction():
        # Rules over the whole channel: the server's parallel workers, if it has them.
        conn.execute("SET LOCAL max_parallel_workers_per_gather TO DEFAULT")
        seen_filtered, seen_not_before = insert_audience(conn, key, rows, now)
        skip_suppressed(conn, key, rules.kind, history=history)
        skip_duplicates(conn, key, rules.kind)
        if seen_filtered:
            skip_filtered(conn, key)
        if rules.cap is not None:
            skip_frequency_capped(conn, key, channel, rules, history=history)
        if rules.target is not None:
            skip_over_target(conn, key, rules)
        if seen_not_before:
            defer_quiet_hours(conn, key, now)
        conn.execute(
            "UPDATE channels SET planned = TRUE WHERE run = %s AND channel = %s", (key[0], channel)
        )
