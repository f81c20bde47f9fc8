"""The durable delivery ledger: runs, each run's recipient snapshot, one row per delivery.

:class:`Ledger` is the interface the core uses (:mod:`._protocol`): the values it
takes and gives are in :mod:`._types`, what it raises in :mod:`._errors`, so that a
server database can be added behind it. The embedded implementation is
:class:`SqliteLedger` (stdlib ``sqlite3``, WAL), built from modules by
responsibility below; the shared one is :class:`PostgresLedger` (:mod:`._postgres`,
the ``postgres`` extra). :func:`open_ledger` (:mod:`._open`) opens either, by
location (a path, ``sqlite:///path``, ``postgresql://...``), as a :class:`Ledger`;
:func:`scratch_ledger` (:mod:`._scratch`) a throwaway one beside it, where a dry run plans.
The SQLite modules:

- :mod:`._schema`: the schema, versioned in ``PRAGMA user_version`` and migrated on
  open, and the stored values' formats;
- :mod:`._connection`: :func:`connect`, the one way a connection is opened (read-only
  ones refuse every write), and the single writer thread;
- :mod:`._claims` and :mod:`._runs`: who owns a run, and the runs' rows;
- :mod:`._snapshot`: a run's recipient snapshot;
- :mod:`._selection`: the plan rules, one function per rule;
- :mod:`._deliveries` and :mod:`._queries`: the writes of sending, and the reads.

Delivery states (their names are :mod:`campaignkit._states`)::

    pending -> in_flight -> sent | failed | unknown
    pending -> skipped (reason)             (selection decided not to send)
    pending -> deferred -> pending          (quiet hours; released when they are over)
    failed (transient, retries exhausted) -> pending        (retry-failed)
    in_flight -> pending | unknown          (resume after a crash, by policy)
    unknown -> pending                      (resume --resend-unknown)

``in_flight`` is committed before a request leaves and the outcome after it: a
single writer thread commits both in batched transactions (group commit), and a
worker does not send until its ``in_flight`` mark is durable. After a crash at
most one batch per worker thread is ``in_flight``.
"""

from __future__ import annotations

from ._claims import HEARTBEAT_SECONDS, LEASE_SECONDS, Owner
from ._connection import connect
from ._errors import LedgerError, MaxActiveRunsReached, RunInProgress, RunOwnershipLost
from ._open import open_ledger, open_receipt_book
from ._postgres import PostgresLedger, is_postgres_url
from ._protocol import Ledger, RejectSink, ShardedLedger, sharded
from ._receipts import ReceiptBook
from ._schema import SCHEMA_VERSION
from ._scratch import scratch_ledger
from ._sqlite import SqliteLedger
from ._types import (
    DUPLICATE_ID,
    DeliveryRecord,
    LeaseInfo,
    PendingDelivery,
    PlanRow,
    PlanRules,
    RunRecord,
    Slice,
    SliceOutcome,
    SnapshotInfo,
    Suppression,
)

__all__ = [
    "DUPLICATE_ID",
    "HEARTBEAT_SECONDS",
    "LEASE_SECONDS",
    "SCHEMA_VERSION",
    "DeliveryRecord",
    "LeaseInfo",
    "Ledger",
    "LedgerError",
    "MaxActiveRunsReached",
    "Owner",
    "PendingDelivery",
    "PlanRow",
    "PlanRules",
    "PostgresLedger",
    "ReceiptBook",
    "RejectSink",
    "RunInProgress",
    "RunOwnershipLost",
    "RunRecord",
    "ShardedLedger",
    "Slice",
    "SliceOutcome",
    "SnapshotInfo",
    "SqliteLedger",
    "Suppression",
    "connect",
    "is_postgres_url",
    "open_ledger",
    "open_receipt_book",
    "scratch_ledger",
    "sharded",
]
