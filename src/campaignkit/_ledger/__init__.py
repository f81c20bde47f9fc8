"""The durable delivery ledger: runs, each run's recipient snapshot, one row per delivery.

The embedded implementation is SQLite (stdlib ``sqlite3``, WAL). The schema is
versioned in ``PRAGMA user_version`` and migrated on open. :class:`Ledger` is the
interface the core uses, so that a server database can be added later.

Delivery states::

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
from ._protocol import Ledger, RejectSink
from ._schema import _MIGRATIONS, SCHEMA_VERSION, _json_encoder
from ._sqlite import SqliteLedger
from ._types import (
    ACTIVE_STATUSES,
    DUPLICATE_ID,
    RESUMABLE_STATUSES,
    DeliveryState,
    LedgerError,
    MaxActiveRunsReached,
    PlanRow,
    PlanRules,
    RunInProgress,
    RunOwnershipLost,
    RunRecord,
    SnapshotInfo,
)

__all__ = [
    "ACTIVE_STATUSES",
    "DUPLICATE_ID",
    "HEARTBEAT_SECONDS",
    "LEASE_SECONDS",
    "RESUMABLE_STATUSES",
    "SCHEMA_VERSION",
    "_MIGRATIONS",
    "DeliveryState",
    "Ledger",
    "LedgerError",
    "MaxActiveRunsReached",
    "Owner",
    "PlanRow",
    "PlanRules",
    "RejectSink",
    "RunInProgress",
    "RunOwnershipLost",
    "RunRecord",
    "SnapshotInfo",
    "SqliteLedger",
    "_json_encoder",
]
