"""One vocabulary for the states of runs and deliveries, and the reasons behind them.

Every part that speaks of a state (the ledger, the schedule, the engine, the reports
and the CLI) uses these names. A run::

    running -> succeeded | partial | failed | timed_out | cancelled | deferred | canary
    (a scheduled run due too long ago is recorded as skipped_late and never runs)

A delivery (one recipient on one channel)::

    pending -> in_flight -> sent | failed | unknown
    pending -> skipped (reason)             (selection decided not to send)
    pending -> deferred -> pending          (quiet hours; released when they are over)
    failed (transient) -> pending           (retry-failed)
    in_flight -> pending | unknown          (resume after a crash, by policy)
    unknown -> pending                      (resume --resend-unknown)

After ``sent``, the provider's receipts (webhooks, polls) say what became of it::

    sent -> undelivered < delivered < bounced < unsubscribed < complained

A delivery's receipt is the highest of the receipts that arrived, in that order (a
tie: the later event), so that the same receipt twice changes nothing and receipts
arriving in any order end in the same state.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType

import attrs

__all__ = [
    "ACTIVE_STATUSES",
    "FINAL_DELIVERY_STATES",
    "RECEIPT_RANKS",
    "RESUMABLE_STATUSES",
    "SUPPRESSING_RECEIPTS",
    "UNFINISHED_STATUSES",
    "DeliveryCounts",
    "DeliveryStatus",
    "Doubt",
    "Reason",
    "ReceiptStatus",
    "RunStatus",
]


class RunStatus(enum.StrEnum):
    """The state of a run: ``running`` while it is sent, then how it ended."""

    RUNNING = "running"  # being sent, or its process died while sending (to be resumed)
    SUCCEEDED = "succeeded"  # every recipient was sent or deliberately skipped
    PARTIAL = "partial"  # some deliveries failed
    FAILED = "failed"  # the run could not complete (e.g. a channel crashed)
    TIMED_OUT = "timed_out"  # the execution deadline passed; the rest is pending
    CANCELLED = "cancelled"  # interrupted; the rest is pending
    DEFERRED = "deferred"  # quiet hours hold messages back; a later resume sends them
    CANARY = "canary"  # a --limit run: the rest is pending for the full run
    SKIPPED_LATE = "skipped_late"  # a scheduled run was due too long ago and was not sent


#: A run being sent (or whose process died while sending: then it awaits a resume).
ACTIVE_STATUSES = frozenset({RunStatus.RUNNING})
#: Finished runs with messages still owed: running the logical date again resumes them.
RESUMABLE_STATUSES = frozenset(
    {
        RunStatus.TIMED_OUT,
        RunStatus.CANCELLED,
        RunStatus.FAILED,
        RunStatus.DEFERRED,
        RunStatus.CANARY,
    }
)

#: Runs that running their logical date again takes up (resumes): going, or owing.
UNFINISHED_STATUSES = ACTIVE_STATUSES | RESUMABLE_STATUSES


class DeliveryStatus(enum.StrEnum):
    """State of one recipient on one channel (the ledger's delivery states).

    ``sent``, ``failed`` and ``skipped`` are final. ``pending`` waits to be sent (by
    this run, or by a resume); ``in_flight`` was handed to the provider and has no
    answer yet; ``unknown`` was in flight when a run crashed, or its request ended in
    doubt (a timeout, a lost connection, a 5xx), with a provider that has no
    idempotency keys: it may or may not have been delivered.
    """

    SENT = "sent"
    FAILED = "failed"
    SKIPPED = "skipped"
    PENDING = "pending"
    IN_FLIGHT = "in_flight"
    UNKNOWN = "unknown"
    DEFERRED = "deferred"


#: The delivery states a run does not change again (short of retry-failed).
FINAL_DELIVERY_STATES = frozenset(
    {DeliveryStatus.SENT, DeliveryStatus.FAILED, DeliveryStatus.SKIPPED}
)


class ReceiptStatus(enum.StrEnum):
    """What a provider's receipt says became of a ``sent`` delivery."""

    UNDELIVERED = "undelivered"  # a temporary failure (soft bounce, deferral): may yet arrive
    DELIVERED = "delivered"  # the recipient's server, carrier or push service took it
    BOUNCED = "bounced"  # a permanent failure (hard bounce, unknown number, unregistered device)
    UNSUBSCRIBED = "unsubscribed"  # the recipient opted out (unsubscribe link, STOP)
    COMPLAINED = "complained"  # the recipient reported it as spam


#: The order receipts win in: a delivery keeps the highest it was told of.
RECEIPT_RANKS: Mapping[str, int] = MappingProxyType(
    {status.value: rank for rank, status in enumerate(ReceiptStatus, start=1)}
)

#: Receipts that put the address on the suppression list.
SUPPRESSING_RECEIPTS = frozenset(
    {ReceiptStatus.BOUNCED, ReceiptStatus.UNSUBSCRIBED, ReceiptStatus.COMPLAINED}
)


class Reason(enum.StrEnum):
    """Reason codes recorded with failed and skipped deliveries.

    Providers' own codes are kept in :attr:`DeliveryResult.error_code`.
    """

    PERMANENT_ERROR = "permanent_error"
    INVALID_ADDRESS = "invalid_address"
    SUPPRESSED = "suppressed"
    DUPLICATE = "duplicate"
    FILTERED = "filtered"
    FREQUENCY_CAPPED = "frequency_capped"
    DEFERRED = "deferred"
    RETRIES_EXHAUSTED = "retries_exhausted"
    MISSING_ADDRESS = "missing_address"
    NO_CONSENT = "no_consent"
    OVER_TARGET = "over_target"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"
    RENDER_ERROR = "render_error"
    IN_DOUBT = "in_doubt"


@attrs.frozen
class Doubt:
    """Why deliveries are ``unknown``: their reason and the last error code."""

    reason: str = ""
    code: str = ""

    def __str__(self) -> str:
        """``reason (code)``, or the one that is set (``in doubt`` when neither is)."""
        if self.reason and self.code:
            return f"{self.reason} ({self.code})"
        return self.reason or self.code or "in doubt"


def _frozen(value: Mapping[str, int]) -> Mapping[str, int]:
    return MappingProxyType(dict(value))


def _frozen_doubts(value: Mapping[Doubt, int]) -> Mapping[Doubt, int]:
    return MappingProxyType(dict(value))


@attrs.frozen
class DeliveryCounts:
    """One channel's deliveries counted by state, as the ledger has them.

    Attributes:
        states: deliveries by :class:`DeliveryStatus` (only states that occur).
        reasons: deliveries by reason code (skipped ones, failed ones, and deferred
            and unknown ones that carry a reason).
        error_codes: failed and skipped deliveries by their last error code (a sent or
            unknown delivery failed nothing).
        doubts: ``unknown`` deliveries by :class:`Doubt` (why each is in doubt).
        receipts: ``sent`` deliveries by their :class:`ReceiptStatus` (those with a
            receipt; :attr:`awaiting_receipt` counts the others).
    """

    states: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen)
    reasons: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen)
    error_codes: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen)
    doubts: Mapping[Doubt, int] = attrs.field(factory=dict, converter=_frozen_doubts)
    receipts: Mapping[str, int] = attrs.field(factory=dict, converter=_frozen)

    def __getitem__(self, state: str) -> int:
        """Deliveries in ``state`` (0 when there are none)."""
        return self.states.get(state, 0)

    @property
    def total(self) -> int:
        """Every delivery of the channel."""
        return sum(self.states.values())

    @property
    def awaiting_receipt(self) -> int:
        """``sent`` deliveries no receipt has been recorded for yet."""
        return max(0, self[DeliveryStatus.SENT] - sum(self.receipts.values()))

    @property
    def eligible(self) -> int:
        """Deliveries selection decided to send: ``pending`` or ``deferred``."""
        return self[DeliveryStatus.PENDING] + self[DeliveryStatus.DEFERRED]
