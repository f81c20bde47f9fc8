"""Writing a run's recipient snapshot (see :meth:`SqliteLedger.write_snapshot`)."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping

from .._models import Recipient, RejectedRow
from ._protocol import RejectSink
from ._schema import dumps, raw_cells, recipient_from_row
from ._types import DUPLICATE_ID

__all__ = ["reject_repeats", "write_snapshot"]

#: The later rows of a repeated customer id (parameter: the run).
_LATER = (
    "FROM recipients r JOIN temp.ck_repeats k ON k.recipient_id = r.recipient_id "
    "WHERE r.run = ? AND r.seq > k.first"
)


def write_snapshot(
    conn: sqlite3.Connection,
    run: int,
    recipients: Iterable[Recipient],
    rows_per_customer: str,
    rejects: RejectSink | None,
) -> int:
    """Store run ``run``'s recipients and the extraction's counts; returns how many
    recipients it holds.

    Every stored row has its own position (``seq``), from which the idempotency
    keys of its deliveries derive. ``rows_per_customer`` is the identity rule:
    ``"one"``: a customer id is on one row; a later row with an id already stored
    is not kept, it is handed to ``rejects`` as a ``duplicate_id`` rejected row
    naming the line of the first (repeats are found in SQL, after the rows are
    stored: nothing is kept in memory per id); ``"many"``: every row is a
    recipient of its own (one row per device of a customer).

    Written in one transaction, with the extraction's counts (rows read, rejected,
    by reason: those of ``rejects``, which extraction fills as it reads): a crash
    leaves no partial snapshot, and a resumed run reports what its extraction read.
    """
    n = 0

    def rows() -> Iterator[tuple[int, int, str, str, int]]:
        nonlocal n
        for r in recipients:
            data = dumps([r.email, r.phone, r.push_token, r.attributes, r.consent])
            yield run, n, r.id, data, r.line
            n += 1

    with conn:
        conn.execute("DELETE FROM recipients WHERE run = ?", (run,))
        conn.executemany(
            "INSERT INTO recipients (run, seq, recipient_id, data, line) VALUES (?, ?, ?, ?, ?)",
            rows(),
        )
        repeats = reject_repeats(conn, run, rejects) if rows_per_customer == "one" else 0
        stored = n - repeats
        lines: Mapping[str, int] | None = None
        if rejects is not None:
            rejected, reasons = rejects.rejected, dict(rejects.reasons)
            lines = rejects.line_counts()
        else:
            rejected, reasons = repeats, ({DUPLICATE_ID: repeats} if repeats else {})
        conn.execute(
            "INSERT OR REPLACE INTO snapshots (run, rows_per_customer, rows_read, rejected, "
            "reasons, lines) VALUES (?, ?, ?, ?, ?, ?)",
            (
                run,
                rows_per_customer,
                stored + rejected,
                rejected,
                json.dumps(reasons),
                None if lines is None else json.dumps(dict(lines)),
            ),
        )
        conn.execute("UPDATE runs SET recipients = ? WHERE id = ?", (stored, run))
    return stored


def reject_repeats(conn: sqlite3.Connection, run: int, rejects: RejectSink | None) -> int:
    """Remove the rows of run ``run`` whose customer id an earlier row has, handing
    each to ``rejects``; returns how many. One sort of the run's ids in SQLite (a
    temporary table of the repeated ids), a second pass only if there are repeats."""
    conn.execute(
        "CREATE TEMP TABLE IF NOT EXISTS ck_repeats (recipient_id TEXT PRIMARY KEY, "
        "first INTEGER NOT NULL, line INTEGER NOT NULL) WITHOUT ROWID"
    )
    conn.execute("DELETE FROM temp.ck_repeats")
    found = conn.execute(
        "INSERT INTO temp.ck_repeats SELECT recipient_id, MIN(seq), 0 FROM recipients "
        "WHERE run = ? GROUP BY recipient_id HAVING COUNT(*) > 1",
        (run,),
    ).rowcount
    if found <= 0:
        return 0
    conn.execute(
        "UPDATE temp.ck_repeats SET line = (SELECT r.line FROM recipients r "
        "WHERE r.run = ? AND r.seq = ck_repeats.first)",
        (run,),
    )
    if rejects is not None:
        for rid, data, line, first_line in conn.execute(
            "SELECT r.recipient_id, r.data, r.line, k.line " + _LATER + " ORDER BY r.seq", (run,)
        ):
            where = f"on line {first_line}" if first_line else "earlier in the segment"
            rejects.reject(
                RejectedRow(
                    line,
                    DUPLICATE_ID,
                    f"customer id {rid!r} already {where}",
                    "id",
                    raw_cells(recipient_from_row(rid, data, line)),
                )
            )
    removed = conn.execute(
        "DELETE FROM recipients WHERE run = ? AND seq IN (SELECT r.seq " + _LATER + ")",
        (run, run),
    ).rowcount
    conn.execute("DELETE FROM temp.ck_repeats")
    return int(removed)
