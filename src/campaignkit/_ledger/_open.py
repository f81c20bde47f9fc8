"""Opening a ledger by where it is: :func:`open_ledger` (SQLite file or PostgreSQL URL)."""

from __future__ import annotations

from pathlib import Path

from ._errors import LedgerError
from ._postgres import PostgresLedger, is_postgres_url
from ._protocol import Ledger
from ._receipt_db import SqliteReceiptDb
from ._receipts import ReceiptBook
from ._sqlite import SqliteLedger

__all__ = ["SQLITE_SCHEME", "open_ledger", "open_receipt_book"]

#: The URL prefix that names a SQLite file (``sqlite:///relative.db``,
#: ``sqlite:////absolute.db``, as SQLAlchemy writes them).
SQLITE_SCHEME = "sqlite:///"


def _sqlite_path(location: str | Path) -> Path:
    text = str(location)
    if text.startswith(SQLITE_SCHEME):
        text = text[len(SQLITE_SCHEME) :]
        if not text:
            raise LedgerError(f"{location}: a SQLite ledger URL names a file (sqlite:///path)")
    elif text.startswith("sqlite:"):
        raise LedgerError(f"{location}: expected sqlite:///path (a SQLite ledger is a file)")
    return Path(text)


def open_ledger(
    location: str | Path,
    *,
    durable: bool = True,
    history: str | Path | None = None,
    schema: str | None = None,
) -> Ledger:
    """Open the ledger at ``location`` as the core sees it.

    ``postgresql://`` (or ``postgres://``) URLs open a :class:`PostgresLedger` (its
    tables in the PostgreSQL schema ``schema``, ``campaignkit`` unless given; the
    ``postgres`` extra); ``sqlite:///path`` or a plain path a :class:`SqliteLedger`.
    ``history``: where the plan rules read suppressions and earlier sends instead
    (another SQLite file; for PostgreSQL, another schema of the same database).

    Raises:
        LedgerError: the ledger cannot be opened (a missing extra, a newer schema, no
            server), or ``schema`` was given for a SQLite ledger.
    """
    if is_postgres_url(location):
        return PostgresLedger(
            str(location),
            schema=schema or "campaignkit",
            durable=durable,
            history=None if history is None else str(history),
        )
    if schema is not None:
        raise LedgerError(f"schema {schema!r}: a SQLite ledger has no schemas (its file is one)")
    path = _sqlite_path(location)
    past = None if history is None else _sqlite_path(history)
    return SqliteLedger(path, durable=durable, history=past)


def open_receipt_book(location: str | Path, *, schema: str | None = None) -> ReceiptBook:
    """A :class:`ReceiptBook` recording into the ledger at ``location`` (as
    :func:`open_ledger` reads it), migrating the ledger to this version's schema.

    Raises:
        LedgerError: the ledger cannot be opened.
    """
    if is_postgres_url(location):
        ledger = PostgresLedger(str(location), schema=schema or "campaignkit")
        return ReceiptBook(ledger.receipt_db(), closer=ledger.close)
    if schema is not None:
        raise LedgerError(f"schema {schema!r}: a SQLite ledger has no schemas (its file is one)")
    db = SqliteReceiptDb(_sqlite_path(location))
    return ReceiptBook(db, closer=db.close)
