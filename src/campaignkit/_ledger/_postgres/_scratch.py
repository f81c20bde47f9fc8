"""A throwaway PostgreSQL ledger beside a real one: :func:`postgres_scratch`.

A dry run must count suppressions and frequency caps exactly as the real run would,
yet never write to (or wait for) the real ledger. So it plans in a scratch ledger of
the same backend whose plan rules read the real ledger's suppression list and send
history (``history``):

- SQLite: a file in a temporary directory, the real file attached read only;
- PostgreSQL: a schema of its own in the real ledger's database (a unique name,
  ``ck_scratch_<hex>``), its rules reading the real schema's tables, dropped when the
  block ends, on error too. The same server answers the same SQL with the same
  results, so a dry run against a shared ledger plans as its run will.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator

from ._connect import load_driver, quote_ident, redact_url, url_secrets, wrap
from ._ledger import PostgresLedger

__all__ = ["SCRATCH_PREFIX", "postgres_scratch"]

log = logging.getLogger("campaignkit")

#: The prefix of a scratch schema's name (the rest is random).
SCRATCH_PREFIX = "ck_scratch_"


@contextlib.contextmanager
def postgres_scratch(url: str, *, real_schema: str = "campaignkit") -> Iterator[PostgresLedger]:
    """A throwaway :class:`PostgresLedger` in a new schema of the database at ``url``,
    reading the suppressions and send history of ``real_schema`` if that exists (it
    is then brought to this version's schema first, as opening it would); the
    scratch schema is dropped when the block ends, whatever happens in it.

    Raises:
        LedgerError: the server cannot be reached, or refuses the schema.
    """
    driver = load_driver()
    error = wrap(redact_url(url), url_secrets(url))
    name = SCRATCH_PREFIX + secrets.token_hex(6)
    history = real_schema if _schema_exists(url, real_schema) else None
    if history is not None:
        PostgresLedger(url, schema=real_schema).close()  # migrated, if older
    ledger: PostgresLedger | None = None
    try:
        ledger = PostgresLedger(url, schema=name, durable=False, history=history)
        yield ledger
    finally:
        try:
            if ledger is not None:
                ledger.close()
        finally:
            try:
                _drop_schema(url, name)
            except driver.errors as exc:
                log.warning("could not drop the scratch schema %s: %s", name, error(exc))


def _schema_exists(url: str, schema: str) -> bool:
    """Whether ``schema`` holds a ledger (its version table) in the database at ``url``."""
    driver = load_driver()
    try:
        with driver.psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            row = conn.execute("SELECT to_regclass(%s)", (quote_ident(schema) + ".schema_version",))
            found = row.fetchone()
    except driver.errors as exc:
        raise wrap(redact_url(url), url_secrets(url))(exc) from None
    return found is not None and found[0] is not None


def _drop_schema(url: str, schema: str) -> None:
    with load_driver().psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
        conn.execute("DROP SCHEMA IF EXISTS " + quote_ident(schema) + " CASCADE")
