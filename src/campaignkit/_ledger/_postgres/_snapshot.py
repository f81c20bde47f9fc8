"""Writing a run's recipient snapshot in PostgreSQL, with ``COPY ... FROM STDIN``.

The same rules as :func:`campaignkit._ledger._snapshot.write_snapshot`: one
transaction (a crash or a broken source leaves no partial snapshot), every row its
own ``seq``, repeated customer ids found in SQL after the rows are stored.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from ..._models import Recipient, RejectedRow
from .._protocol import RejectSink
from .._schema import dumps, raw_cells, recipient_from_row
from .._types import DUPLICATE_ID

if TYPE_CHECKING:
    import psycopg

__all__ = ["reject_repeats", "write_snapshot"]

_COPY = "COPY recipients (run, seq, recipient_id, data, line) FROM STDIN"
#: The rows of run %s whose customer id an earlier row has, with the first one's line.
_REPEATS = (
    "SELECT seq, recipient_id, data, line, first_line FROM ("
    "SELECT seq, recipient_id, data, line, "
    "first_value(line) OVER w AS first_line, row_number() OVER w AS n "
    "FROM recipients WHERE run = %s "
    "WINDOW w AS (PARTITION BY recipient_id ORDER BY seq)) t WHERE n > 1 ORDER BY seq"
)


def write_snapshot(
    conn: psycopg.Connection[Any],
    run: int,
    recipients: Iterable[Recipient],
    rows_per_customer: str,
    rejects: RejectSink | None,
) -> int:
    """Store run ``run``'s recipients and the extraction's counts, in one transaction;
    returns how many recipients it holds (see the SQLite ledger's)."""
    n = 0
    with conn.transaction():
        conn.execute("DELETE FROM recipients WHERE run = %s", (run,))
        with conn.cursor() as cursor, cursor.copy(_COPY) as copy:
            for r in recipients:
                data = dumps([r.email, r.phone, r.push_token, r.attributes, r.consent])
                copy.write_row((run, n, r.id, data, r.line))
                n += 1
        repeats = reject_repeats(conn, run, rejects) if rows_per_customer == "one" else 0
        stored = n - repeats
        lines: Mapping[str, int] | None = None
        if rejects is not None:
            rejected, reasons = rejects.rejected, dict(rejects.reasons)
            lines = rejects.line_counts()
        else:
            rejected, reasons = repeats, ({DUPLICATE_ID: repeats} if repeats else {})
        conn.execute(
            "INSERT INTO snapshots (run, rows_per_customer, rows_read, rejected, reasons, lines) "
            "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (run) DO UPDATE SET "
            "rows_per_customer = EXCLUDED.rows_per_customer, rows_read = EXCLUDED.rows_read, "
            "rejected = EXCLUDED.rejected, reasons = EXCLUDED.reasons, lines = EXCLUDED.lines",
            (
                run,
                rows_per_customer,
                stored + rejected,
                rejected,
                json.dumps(reasons),
                None if lines is None else json.dumps(dict(lines)),
            ),
        )
        conn.execute("UPDATE runs SET recipients = %s WHERE id = %s", (stored, run))
    return stored


def reject_repeats(conn: psycopg.Connection[Any], run: int, rejects: RejectSink | None) -> int:
    """Remove the rows of run ``run`` whose customer id an earlier row has, handing
    each to ``rejects``; returns how many."""
    later: list[int] = []
    for seq, rid, data, line, first_line in conn.execute(_REPEATS, (run,)):
        later.append(seq)
        if rejects is None:
            continue
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
    if later:
        conn.execute(
            "DELETE FROM recipients WHERE run = %s AND seq = ANY(%s::bigint[])", (run, later)
        )
    return len(later)
