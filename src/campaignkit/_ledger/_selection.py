"""The audience rules a channel's plan applies in SQL: one function per rule.

:func:`plan` records the channel's audience (one row per recipient, skip reasons
decided per recipient already), then applies, in order, among the rows still
``pending``: :func:`skip_suppressed`, :func:`skip_duplicates`,
:func:`skip_filtered`, :func:`skip_frequency_capped`, :func:`skip_over_target` and
:func:`defer_quiet_hours`. Each rule is one statement (a pass over the channel's
rows), built from the constant fragments below; every value is a bound parameter.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from ._types import PlanRow, PlanRules

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
_LIVE = "run = ? AND channel = ? AND state = 'pending'"
_SKIP = "UPDATE deliveries SET state = 'skipped', reason = ? WHERE " + _LIVE + " AND "
#: The sample order of ``target_customers`` with a seed (parameter: the salt).
_SAMPLE_ORDER = "(seq * 2654435761 + ?) % 4294967296, seq"

#: A channel's key: (run, channel code).
Key = tuple[int, int]


def address_key(kind: str, *, joined: bool = False) -> str:
    """The SQL expression two deliveries' addresses are compared by: e-mail addresses
    match case-insensitively, phone numbers and tokens exactly. ``joined``: of the
    ``d`` table of a join."""
    column = "d.address" if joined else "address"
    return "lower(" + column + ")" if kind == "email" else column


def past_tables(history: bool) -> str:
    """Where suppressions and earlier sends are read: this ledger's tables, or the
    attached ``history`` ledger's."""
    return "history." if history else ""


def _skip(
    conn: sqlite3.Connection, key: Key, reason: str, where: str, params: Sequence[Any] = ()
) -> None:
    conn.execute(_SKIP + where, (reason, *key, *params))


def insert_audience(
    conn: sqlite3.Connection, key: Key, rows: Iterable[PlanRow], now: float
) -> tuple[bool, bool]:
    """Replace the channel's rows by ``rows``; returns whether a pending row is
    ``filtered`` and whether one has a not-before time (a rule that cannot match any
    row is not run)."""
    run, code = key
    seen_filtered = seen_not_before = False

    def inserts() -> Iterator[tuple[Any, ...]]:
        nonlocal seen_filtered, seen_not_before
        for seq, reason, address, filtered, not_before in rows:
            flag = int(filtered)
            if not reason:
                seen_filtered = seen_filtered or flag == 1
                seen_not_before = seen_not_before or not_before is not None
            yield (
                run,
                code,
                seq,
                "skipped" if reason else "pending",
                reason,
                address,
                flag,
                not_before,
                now,
            )

    conn.execute("DELETE FROM deliveries WHERE run = ? AND channel = ?", key)
    conn.executemany(
        "INSERT INTO deliveries (run, channel, seq, state, reason, address, filtered, "
        "not_before, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        inserts(),
    )
    return seen_filtered, seen_not_before


def skip_suppressed(conn: sqlite3.Connection, key: Key, kind: str, *, history: bool) -> None:
    """``suppressed``: the address is on the suppression list of ``kind``."""
    past = past_tables(history)
    if conn.execute(
        "SELECT 1 FROM " + past + "suppressions WHERE kind = ? LIMIT 1", (kind,)
    ).fetchone():
        where = address_key(kind) + " IN (SELECT address FROM " + past + "suppressions "
        _skip(conn, key, "suppressed", where + "WHERE kind = ?)", (kind,))


def skip_duplicates(conn: sqlite3.Connection, key: Key, kind: str) -> None:
    """``duplicate``: the same address is earlier in the segment."""
    _skip(
        conn,
        key,
        "duplicate",
        "seq IN (SELECT seq FROM (SELECT seq, ROW_NUMBER() OVER (PARTITION BY "
        + address_key(kind)
        + " ORDER BY seq) AS n FROM deliveries WHERE "
        + _LIVE
        + ") WHERE n > 1)",
        key,
    )


def skip_filtered(conn: sqlite3.Connection, key: Key) -> None:
    """``filtered``: the segment filter rejected the recipient."""
    _skip(conn, key, "filtered", "filtered = 1")


def skip_frequency_capped(
    conn: sqlite3.Connection, key: Key, channel: str, rules: PlanRules, *, history: bool
) -> None:
    """``frequency_capped``: ``rules.cap`` sends to the address on this channel name
    since ``rules.cap_since``, in other runs (or in the ``history`` ledger)."""
    past = past_tables(history)
    joined = address_key(rules.kind, joined=True)
    # The channel's runs first (CROSS JOIN keeps that order), then each one's rows by
    # primary key: never the other channels' rows.
    where = (
        address_key(rules.kind) + " IN (SELECT " + joined + " FROM " + past + "channels c "
        "CROSS JOIN " + past + "deliveries d ON d.run = c.run AND d.channel = c.code "
        "WHERE c.channel = ? AND c.run != ? AND d.state = 'sent' AND d.updated_at >= ? "
        "GROUP BY " + joined + " HAVING COUNT(*) >= ?)"
    )
    # (this run is not in a history ledger: -1 excludes no run there)
    run = -1 if history else key[0]
    _skip(conn, key, "frequency_capped", where, (channel, run, rules.cap_since, rules.cap))


def skip_over_target(conn: sqlite3.Connection, key: Key, rules: PlanRules) -> None:
    """``over_target``: beyond ``rules.target`` recipients, in segment order or a
    seeded, deterministic sample."""
    select = "seq NOT IN (SELECT seq FROM deliveries WHERE " + _LIVE + " ORDER BY "
    if rules.sample_seed is None:
        _skip(conn, key, "over_target", select + "seq LIMIT ?)", (*key, rules.target))
    else:
        salt = int(rules.sample_seed) % 4294967296
        where = select + _SAMPLE_ORDER + " LIMIT ?)"
        _skip(conn, key, "over_target", where, (*key, salt, rules.target))


def defer_quiet_hours(conn: sqlite3.Connection, key: Key, now: float) -> None:
    """``deferred``: quiet hours hold the message until its not-before time (a later
    resume sends it once due)."""
    conn.execute(
        "UPDATE deliveries SET state = 'deferred', reason = 'deferred' WHERE "
        + _LIVE
        + " AND not_before > ?",
        (*key, now),
    )


def plan(
    conn: sqlite3.Connection,
    key: Key,
    channel: str,
    rows: Iterable[PlanRow],
    rules: PlanRules,
    *,
    now: float,
    history: bool,
) -> None:
    """Record the channel's audience and apply the rules, in order (see the module
    docstring), in the caller's transaction; marks the channel planned."""
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
    conn.execute("UPDATE channels SET planned = 1 WHERE run = ? AND channel = ?", (key[0], channel))
