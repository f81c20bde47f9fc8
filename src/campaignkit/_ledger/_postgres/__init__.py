"""The shared ledger on PostgreSQL: :class:`PostgresLedger` (the ``postgres`` extra).

The same :class:`~campaignkit._ledger.Ledger` as the SQLite one, for processes on
several hosts, built from modules by responsibility mirroring the SQLite ones:

- :mod:`._connect`: the driver (psycopg, imported only when a ledger is opened),
  the URL shown without its password, the connection pool;
- :mod:`._schema`: the tables, in a PostgreSQL schema of their own, versioned and
  migrated under an advisory lock;
- :mod:`._runs`: the runs' rows, the claims (row locks, advisory locks per pipeline)
  and the owner's heartbeat;
- :mod:`._snapshot`: a run's recipient snapshot, loaded with ``COPY``;
- :mod:`._selection`: the plan rules, one function per rule;
- :mod:`._deliveries` and :mod:`._queries`: the writes of sending, and the reads;
- :mod:`._ledger`: the class;
- :mod:`._scratch`: a throwaway schema beside a real one (where a dry run plans).

Importing this package does not import psycopg.
"""

from __future__ import annotations

from ._connect import INSTALL, is_postgres_url, redact_url
from ._ledger import PostgresLedger
from ._schema import SCHEMA_VERSION
from ._scratch import SCRATCH_PREFIX, postgres_scratch

__all__ = [
    "INSTALL",
    "SCHEMA_VERSION",
    "SCRATCH_PREFIX",
    "PostgresLedger",
    "is_postgres_url",
    "postgres_scratch",
    "redact_url",
]
