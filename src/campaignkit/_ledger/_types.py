"""The ledger's values: what callers hand it and get back, and its state names."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

import attrs

from .._models import DeliveryResult, Recipient
from .._states import ACTIVE_STATUSES
from ._claims import Owner

__all__ = [
    "DUPLICATE_ID",
    "WHOLE",
    "DeliveryRecord",
    "LeaseInfo",
    "PendingDelivery",
    "PlanRow",
    "PlanRules",
    "RunRecord",
    "Slice",
    "SliceOutcome",
    "SnapshotInfo",
    "Suppression",
]

#: Reason code of a row whose customer id an earlier row has (``rows_per_customer = "one"``).
DUPLICATE_ID = "duplicate_id"


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


def _count(instance: Slice, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"a slice count must be a positive integer, not {value!r}")


def _index(instance: Slice, attribute: attrs.Attribute[int], value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < instance.count:
        raise ValueError(f"a slice index must be in 0..{instance.count - 1}, not {value!r}")


@attrs.frozen
class Slice:
    """A share of a channel's planned deliveries, for sending by several workers.

    Slice ``index`` of ``count`` holds the deliveries whose request (batch) id, or
    position in the snapshot when never sent, is ``index`` modulo ``count``: the
    slices of one count share nothing and cover everything, and the members of a
    batch (re-sent together, under the same idempotency keys) are in one slice.
    ``Slice()`` is the whole channel.
    """

    count: int = attrs.field(default=1, validator=_count, kw_only=True)
    index: int = attrs.field(default=0, validator=_index, kw_only=True)

    def __str__(self) -> str:
        return f"{self.index + 1}/{self.count}"

    @classmethod
    def parse(cls, text: str) -> Slice:
        """``"2/4"`` (the second of four, 1-based as written) as ``Slice(index=1, count=4)``.

        Raises:
            ValueError: not ``N/M`` with ``1 <= N <= M``.
        """
        number, sep, total = text.partition("/")
        try:
            return cls(index=int(number) - 1, count=int(total)) if sep else cls(index=-1)
        except ValueError:
            raise ValueError(f"expected a slice as N/M (e.g. 2/4), not {text!r}") from None


#: The whole of a channel, as one slice.
WHOLE = Slice()


@attrs.frozen
class SliceOutcome:
    """What one send of a slice of a channel did, beyond its deliveries' states.

    The ledger keeps the last outcome of each slice since the run was (re)opened;
    finishing the run reads them (who stopped early and why, what crashed), so that
    the steps of a run can run in different processes.

    Attributes:
        channel: the channel.
        slice: which share of it.
        started_at, finished_at: when the send started and ended.
        requests: requests made to the provider.
        retries: retry rounds waited for.
        stopped: why it stopped before sending everything owed (``timed_out``,
            ``cancelled``, ``credentials rejected (401)``, ``ownership_lost``).
        error: what crashed the send (``"Type: message"``), if something did.
        canary: it sent to at most a limit of recipients (a canary).
    """

    channel: str
    slice: Slice
    started_at: datetime
    finished_at: datetime
    requests: int = 0
    retries: int = 0
    stopped: str | None = None
    error: str | None = None
    canary: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "channel": self.channel,
            "slice": [self.slice.index, self.slice.count],
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "requests": self.requests,
            "retries": self.retries,
            "stopped": self.stopped,
            "error": self.error,
            "canary": self.canary,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SliceOutcome:
        index, count = data["slice"]
        return cls(
            channel=str(data["channel"]),
            slice=Slice(index=int(index), count=int(count)),
            started_at=datetime.fromisoformat(data["started_at"]),
            finished_at=datetime.fromisoformat(data["finished_at"]),
            requests=int(data["requests"]),
            retries=int(data["retries"]),
            stopped=data.get("stopped"),
            error=data.get("error"),
            canary=bool(data.get("canary")),
        )


class DeliveryRecord(NamedTuple):
    """An outcome to record for one delivery (:meth:`Ledger.record`)."""

    seq: int
    result: DeliveryResult
    #: the delivery's new state (a :class:`DeliveryStatus` value)
    state: str
    #: a failure that retry-failed may re-drive (retries exhausted, credentials)
    transient: bool


class Suppression(NamedTuple):
    """An entry of the suppression list."""

    kind: str
    address: str
    reason: str
    source: str | None


@attrs.frozen
class LeaseInfo:
    """A shard of a channel as the ledger has it (for ``campaignkit status`` and tests).

    Attributes:
        channel, shard: which shard.
        done: nothing is owed in it any more (until a resume puts something back).
        owner: the worker holding its lease (an :class:`Owner`'s text), if any.
        expires_in: seconds until that lease expires (negative: expired).
        leases: how many times it was leased (more than once: taken over or resumed).
    """

    channel: str
    shard: int
    done: bool
    owner: str | None
    expires_in: float | None
    leases: int
