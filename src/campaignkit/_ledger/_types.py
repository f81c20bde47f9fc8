"""The ledger's values: what callers hand it and get back, and its state names."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import NamedTuple

import attrs

from .._models import Recipient
from ._claims import Owner

__all__ = [
    "ACTIVE_STATUSES",
    "DUPLICATE_ID",
    "RESUMABLE_STATUSES",
    "DeliveryState",
    "PendingDelivery",
    "PlanRow",
    "PlanRules",
    "RunRecord",
    "SnapshotInfo",
    "Suppression",
]

#: Reason code of a row whose customer id an earlier row has (``rows_per_customer = "one"``).
DUPLICATE_ID = "duplicate_id"


class DeliveryState:
    """Delivery states as stored (short strings)."""

    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    UNKNOWN = "unknown"
    DEFERRED = "deferred"

    FINAL = frozenset({SENT, FAILED, SKIPPED})


#: A run being sent (or whose process died while sending: then it awaits a resume).
ACTIVE_STATUSES = frozenset({"running"})
#: Finished runs with messages still owed: running the logical date again resumes them.
RESUMABLE_STATUSES = frozenset({"timed_out", "cancelled", "failed", "deferred", "canary"})


#: A recipient's row as selection decided it: (seq, skip reason, normalized address,
#: filtered by the segment filter, quiet hours' not-before epoch time).
PlanRow = tuple[int, str | None, str | None, bool, float | None]


@attrs.frozen
class PlanRules:
    """The audience rules :meth:`SqliteLedger.plan` applies in SQL.

    Attributes:
        kind: the suppression list consulted (the channel's address field).
        cap, cap_since: at most ``cap`` sends per address on this channel name since
            epoch time ``cap_since`` (other runs); ``None`` for no cap.
        target: at most this many recipients (``target_customers``).
        sample_seed: pick the target by a seeded sample instead of segment order.
    """

    kind: str
    cap: int | None = None
    cap_since: float = 0.0
    target: int | None = None
    sample_seed: int | None = None


@attrs.frozen
class RunRecord:
    """A run as the ledger knows it."""

    run_id: str
    pipeline: str
    logical_date: datetime
    status: str
    fingerprint: str
    created_at: datetime
    finished_at: datetime | None = None
    pid: int | None = None
    config_file: str | None = None
    recipients: int | None = None
    report: str | None = None  # the last report, as JSON
    owner: Owner | None = None
    heartbeat: float | None = None  # when its owner last said it was alive (epoch s)

    @property
    def in_progress(self) -> bool:
        """Whether a live process is sending the run now (``running`` with a live owner);
        a ``running`` run whose process died is not: it waits to be resumed."""
        return (
            self.status in ACTIVE_STATUSES
            and self.owner is not None
            and self.owner.alive(self.heartbeat)
        )


@attrs.frozen
class SnapshotInfo:
    """What the extraction of a run recorded with its snapshot (schema 4 on).

    Attributes:
        rows_read: rows (records) the source yielded, rejected ones included.
        recipients: recipients stored in the snapshot.
        rejected: rows rejected (by the source, or as ``duplicate_id``).
        rejected_reasons: rejected rows by reason.
        rows_per_customer: the identity rule the snapshot was written with.
        lines: how the file's physical lines were accounted for (``SourceLines``
            fields), for sources that count them.
    """

    rows_read: int
    recipients: int
    rejected: int
    rejected_reasons: Mapping[str, int]
    rows_per_customer: str
    lines: Mapping[str, int] | None = None


class PendingDelivery(NamedTuple):
    """A delivery waiting to be sent, as :meth:`Ledger.pending` streams it."""

    seq: int
    recipient: Recipient
    address: str
    attempts: int
    #: The request it was last part of (``None`` if never sent): re-sent together.
    batch: int | None


class Suppression(NamedTuple):
    """An entry of the suppression list."""

    kind: str
    address: str
    reason: str
    source: str | None
