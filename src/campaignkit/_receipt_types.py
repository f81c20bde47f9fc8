"""The values receipts are made of: one provider event, and what recording a batch did."""

from __future__ import annotations

from datetime import UTC, datetime

import attrs

from ._states import ReceiptStatus

__all__ = ["MAX_RAW_CHARS", "MAX_REASON_CHARS", "ReceiptEvent", "ReceiptTally", "StoredReceipt"]

#: How much of a provider's reason text is kept (a hostile sender's essay is cut).
MAX_REASON_CHARS = 500
#: How much of the raw event (JSON text) is kept as the audit trail.
MAX_RAW_CHARS = 4000


def _text(value: object) -> str:
    return value if isinstance(value, str) else ("" if value is None else str(value))


def _reason(value: object) -> str:
    # A remote mail server's words: no control characters (terminal escapes) kept.
    text = _text(value)[:MAX_REASON_CHARS]
    return "".join(c if c.isprintable() else " " for c in text)


def _raw(value: object) -> str:
    return _text(value)[:MAX_RAW_CHARS]


def _aware(value: datetime) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError("a receipt's time must be timezone-aware")
    return value.astimezone(UTC)


@attrs.frozen
class ReceiptEvent:
    """One provider event about one message (or, inbound, about one address).

    Attributes:
        provider: the provider that sent it (``sendgrid``, ``twilio``, ``telnyx``, ``expo``).
        key: unique per event (the provider's event id, or what identifies the event
            when it has none): the same key twice is the same event, recorded once.
        status: what it says became of the message.
        occurred_at: when the provider says it happened (or when it was received,
            for providers that do not say).
        message_id: the provider's message id, as the send recorded it; ``None`` for an
            inbound opt-out (a STOP reply), which concerns an address, not a message.
        reference: the delivery's reference (``<seq>.<run id>``) the provider echoed
            back (see :attr:`campaignkit.Message.reference`): how the event finds its
            delivery, whose message id must then be :attr:`message_id`.
        address: the recipient's address, as the provider gives it (matches a message
            id shared by a batch's recipients; the address an opt-out suppresses).
        kind: the suppression list the address belongs to (``email``, ``phone``,
            ``push_token``).
        reason: the provider's own words or code (``550 5.1.1 user unknown``), cut to
            :data:`MAX_REASON_CHARS`.
        raw: the event as the provider sent it (JSON text), cut to :data:`MAX_RAW_CHARS`:
            the audit trail of what it did.
    """

    provider: str
    key: str
    status: ReceiptStatus = attrs.field(converter=ReceiptStatus)
    occurred_at: datetime = attrs.field(converter=_aware)
    message_id: str | None = None
    reference: str | None = None
    address: str | None = None
    kind: str = "email"
    reason: str = attrs.field(default="", converter=_reason)
    raw: str = attrs.field(default="", converter=_raw, repr=False)

    @property
    def inbound(self) -> bool:
        """An opt-out sent by the recipient (about an address, not a message)."""
        return self.message_id is None


@attrs.frozen
class StoredReceipt:
    """A receipt as the ledger keeps it (``campaignkit receipts list``)."""

    key: str
    provider: str
    channel: str
    status: str
    occurred_at: str
    received_at: str
    message_id: str | None
    address: str | None
    reason: str
    matched: bool
    run_id: str | None = None


@attrs.frozen
class ReceiptTally:
    """What recording a batch of receipts did.

    Attributes:
        received: events in the batch.
        recorded: new events stored (the others were already recorded: duplicates).
        applied: events that changed a delivery's receipt.
        matched: new events whose message was found (applied, or outranked by a
            receipt already there).
        unmatched: new events whose message is not (yet) in the ledger: kept aside and
            matched again later (:meth:`~campaignkit.receipts.ReceiptBook.rematch`).
        suppressed: addresses added to the suppression list.
    """

    received: int = 0
    recorded: int = 0
    applied: int = 0
    matched: int = 0
    unmatched: int = 0
    suppressed: int = 0

    @property
    def duplicates(self) -> int:
        """Events recorded before (a provider's retry, a replay): changed nothing."""
        return self.received - self.recorded

    def __add__(self, other: ReceiptTally) -> ReceiptTally:
        return ReceiptTally(
            *(a + b for a, b in zip(attrs.astuple(self), attrs.astuple(other), strict=True))
        )
