"""Delivery receipts in the ledger: stored once, applied to their delivery, suppressing.

One implementation for both backends: :class:`ReceiptBook` speaks SQL that SQLite and
PostgreSQL both accept, through a :class:`ReceiptDb` (a transaction and a statement
runner; ``?`` placeholders, turned into ``%s`` for PostgreSQL).

Every event is stored in ``receipts`` under its key (``INSERT ... ON CONFLICT DO
NOTHING``): the same event twice (a provider's retry, a replay) is recorded once and
does nothing the second time, unless it is a dead letter whose delivery is known by then
(then it is matched, as :meth:`ReceiptBook.rematch` would). A stored event then finds
its delivery by the reference the provider echoed back (``<seq>.<run id>``:
:attr:`campaignkit.Message.reference`), by primary key, and is applied only when that
delivery's recorded message id is the event's (and, for a message id a batch's
recipients share, its address): a reference alone proves nothing. No index on message
ids is needed, so sends pay nothing for receipts. The delivery's ``receipt`` is the
highest receipt it was told of (:data:`campaignkit._states.RECEIPT_RANKS`; a tie: the
later event, then the greater key), decided inside the ``UPDATE`` itself, so that
concurrent receivers and events in any order end in the same state. An event whose
message is not in the ledger (yet: a callback may outrun the send's own write) stays
``matched = 0``, the dead letters, and :meth:`ReceiptBook.rematch` tries them again.
Bounces, complaints and opt-outs add the address to the suppression list, with ``receipt
<key>`` as the source: the stored event is the audit trail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar

from .._receipt_types import ReceiptEvent, ReceiptTally, StoredReceipt
from .._states import RECEIPT_RANKS, SUPPRESSING_RECEIPTS

__all__ = ["ReceiptBook", "ReceiptDb", "Statement"]

#: Runs one statement: returns the rows (a list) and the rowcount.
Statement = Callable[[str, Sequence[Any]], tuple[list[tuple[Any, ...]], int]]

_T = TypeVar("_T")
_E164 = re.compile(r"\+[1-9][0-9]{1,14}")

_RANK = (
    "(CASE receipt "
    + " ".join(f"WHEN '{name}' THEN {rank}" for name, rank in RECEIPT_RANKS.items())
    + " ELSE 0 END)"
)
_STORE = (
    "INSERT INTO receipts (key, provider, channel, message_id, reference, address, kind, "
    "status, occurred_at, reason, raw, received_at, matched, run, channel_code, seq) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (key) DO NOTHING"
)
# The delivery a reference names (primary key lookups: runs.run_id is unique).
_REFERENCED = (
    "SELECT d.run, d.channel, d.seq, d.address, d.provider_message_id FROM runs r "
    "JOIN channels c ON c.run = r.id AND c.channel = ? "
    "JOIN deliveries d ON d.run = r.id AND d.channel = c.code AND d.seq = ? "
    "WHERE r.run_id = ?"
)
_APPLY = (
    "UPDATE deliveries SET receipt = ?, receipt_at = ?, receipt_key = ? "
    "WHERE run = ? AND channel = ? AND seq = ? AND (receipt IS NULL OR "
    "(" + _RANK + " < ? OR (" + _RANK + " = ? AND (receipt_at < ? OR "
    "(receipt_at = ? AND receipt_key < ?)))))"
)
_MATCHED = "UPDATE receipts SET matched = ?, run = ?, channel_code = ?, seq = ? WHERE key = ?"
# A dead letter received again (the provider's retry, a poll's fetch: the same key).
_REVIVED = _MATCHED + " AND matched = 0"
_SUPPRESS = (
    "INSERT INTO suppressions (kind, address, reason, source, created_at) "
    "VALUES (?, ?, ?, ?, ?) ON CONFLICT DO NOTHING"
)
_COLUMNS = (
    "r.key, r.provider, r.channel, r.status, r.occurred_at, r.received_at, r.message_id, "
    "r.address, r.reason, r.matched, runs.run_id"
)
_LIST = f"SELECT {_COLUMNS} FROM receipts r LEFT JOIN runs ON runs.id = r.run "
# Newest first, within a window: the dead letters that can still match are recent ones
# (a callback that outran its send's write); old ones never starve them.
_UNMATCHED = (
    "SELECT key, provider, channel, message_id, reference, address, kind, status, "
    "occurred_at, reason FROM receipts WHERE matched = 0 AND received_at >= ? "
    "ORDER BY received_at DESC, key LIMIT ?"
)
_AWAITING = (
    "SELECT d.provider_message_id, d.seq, r.run_id FROM deliveries d "
    "JOIN channels c ON c.run = d.run AND c.code = d.channel "
    "JOIN runs r ON r.id = d.run "
    "WHERE r.pipeline = ? AND c.channel = ? AND d.state = 'sent' AND d.receipt IS NULL "
    "AND d.provider_message_id IS NOT NULL AND d.updated_at BETWEEN ? AND ? "
    "ORDER BY d.updated_at LIMIT ?"
)

_RUN_COUNTS = (
    "SELECT c.channel, d.receipt, COUNT(*) FROM deliveries d "
    "JOIN channels c ON c.run = d.run AND c.code = d.channel "
    "JOIN runs r ON r.id = d.run "
    "WHERE r.run_id = ? AND d.state = 'sent' GROUP BY c.channel, d.receipt ORDER BY c.channel"
)

#: A dead letter (0), a matched receipt (1), one that needs no delivery (2: an opt-out by
#: address), and a dead letter nothing can ever match (3: no reference, an address that
#: is no phone number), which :meth:`ReceiptBook.rematch` does not try again.
_UNMATCHED_STATE, _MATCHED_DELIVERY, _MATCHED_ADDRESS, _HOPELESS = 0, 1, 2, 3
#: The dead letters (both kinds), for counting and listing.
_DEAD = "matched IN (0, 3)"

#: What an event applies to: the address an opt-out suppresses, or a delivery (its
#: run, channel code, seq, and the address it was sent to).
_Target = str | tuple[int, int, int, str | None]


def _hopeless(event: ReceiptEvent) -> bool:
    """Whether nothing can ever match the event (no usable reference; an opt-out whose
    address is not one): it is kept and counted, but never tried again."""
    if event.inbound:
        return True  # its address was checked when it came: it does not change
    seq, _, run_id = (event.reference or "").partition(".")
    return not (seq.isascii() and seq.isdigit() and len(seq) < 19 and run_id)


def _matched(target: _Target) -> tuple[int, int | None, int | None, int | None]:
    """``receipts``' ``matched, run, channel_code, seq`` for an event's target."""
    if isinstance(target, str):
        return (_MATCHED_ADDRESS, None, None, None)
    return (_MATCHED_DELIVERY, target[0], target[1], target[2])


class ReceiptDb(Protocol):
    """What :class:`ReceiptBook` needs of a backend."""

    @property
    def location(self) -> str:
        """Where the ledger is, for messages (no password)."""
        ...

    def transact(self, work: Callable[[Statement], _T]) -> _T:
        """``work`` in one transaction, committed durably when it returns, rolled back
        if it raises (and run again on a new connection if the connection broke).

        Raises:
            LedgerError: the transaction failed (nothing of it was committed).
        """
        ...


def _stamp(value: datetime) -> str:
    """A UTC time as text that sorts as the time does (``%Y`` would write year 999
    as ``999``, which sorts after ``2026`` and which ``strptime`` cannot read back)."""
    utc = value.astimezone(UTC)
    return f"{utc.year:04d}-" + utc.strftime("%m-%dT%H:%M:%S.%fZ")


def _same_address(kind: str, a: str | None, b: str | None) -> bool:
    if a is None or b is None:
        return False
    return a.lower() == b.lower() if kind == "email" else a == b


class ReceiptBook:
    """Records receipts into a ledger and answers what they said.

    Thread-safe: a receiver's threads share one book. Open it with
    :meth:`campaignkit.receipts.open_receipts` (or a ledger's ``receipt_book()``).
    """

    def __init__(
        self,
        db: ReceiptDb,
        *,
        clock: Callable[[], datetime] | None = None,
        closer: Callable[[], None] | None = None,
    ) -> None:
        self._db = db
        self._clock = clock or (lambda: datetime.now(UTC))
        self._closer = closer

    def __repr__(self) -> str:
        return f"<ReceiptBook {self.location}>"

    @property
    def location(self) -> str:
        """The ledger the receipts go to (without a password)."""
        return self._db.location

    def close(self) -> None:
        """Close the book's connection (and the ledger it opened, if it did)."""
        if self._closer is not None:
            self._closer()

    def __enter__(self) -> ReceiptBook:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------
    def record(self, channel: str, events: Sequence[ReceiptEvent]) -> ReceiptTally:
        """Store ``events`` (received on ``channel``'s route) and apply the new ones,
        in one transaction: when this returns, they are durable.

        Raises:
            LedgerError (or the driver's error): nothing of the batch was recorded;
                the caller answers so that the provider retries.
        """
        received = self._clock()

        def work(run: Statement) -> ReceiptTally:
            tally = ReceiptTally(received=len(events))
            for event in events:
                target = self._target(run, channel, event)  # found first: stored with it
                _, stored = run(_STORE, self._row(channel, event, received, target))
                if stored:
                    tally += ReceiptTally(recorded=1) + self._apply(run, event, target)
                elif target is not None:  # a dead letter again, whose delivery is known now
                    _, revived = run(_REVIVED, (*_matched(target), event.key))
                    if revived:
                        tally += self._apply(run, event, target)
            return tally

        return self._db.transact(work)

    def rematch(self, limit: int = 10_000, *, within_hours: float = 48.0) -> ReceiptTally:
        """Match the dead letters again (their message may have been recorded since),
        the newest first, those received in the last ``within_hours``; returns what
        that applied (``matched``) and how many are still unmatched."""
        since = _stamp(self._clock() - timedelta(hours=within_hours))

        def work(run: Statement) -> ReceiptTally:
            tally = ReceiptTally()
            rows, _ = run(_UNMATCHED, (since, limit))
            for key, provider, channel, mid, ref, address, kind, status, at, reason in rows:
                event = ReceiptEvent(
                    provider=provider,
                    key=key,
                    status=status,
                    occurred_at=datetime.strptime(at, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC),
                    message_id=mid,
                    reference=ref,
                    address=address,
                    kind=kind,
                    reason=reason or "",
                )
                target = self._target(run, channel, event)
                if target is not None:
                    run(_MATCHED, (*_matched(target), event.key))
                tally += self._apply(run, event, target)
            return tally

        return self._db.transact(work)

    def _row(
        self, channel: str, e: ReceiptEvent, received: datetime, target: _Target | None
    ) -> tuple[Any, ...]:
        if target is not None:
            matched = _matched(target)
        else:
            matched = (_HOPELESS if _hopeless(e) else _UNMATCHED_STATE, None, None, None)
        return (
            e.key,
            e.provider,
            channel,
            e.message_id,
            e.reference,
            e.address,
            e.kind,
            e.status.value,
            _stamp(e.occurred_at),
            e.reason,
            e.raw,
            _stamp(received),
            *matched,
        )

    def _target(self, run: Statement, channel: str, event: ReceiptEvent) -> _Target | None:
        """What the event applies to: the address an opt-out suppresses, or the
        delivery its reference names (``None``: a dead letter, for now)."""
        if not event.inbound:
            return self._referenced(run, channel, event)
        address = event.address or ""
        if event.kind == "email":
            address = address.strip().lower()
        if not address or (event.kind == "phone" and not _E164.fullmatch(address)):
            return None  # kept aside: a person should look
        return address

    def _apply(self, run: Statement, event: ReceiptEvent, target: _Target | None) -> ReceiptTally:
        """Apply a new event to its target (its row in ``receipts`` says it matched)."""
        if target is None:
            return ReceiptTally(unmatched=1)
        now = _stamp(self._clock())
        source = f"receipt {event.key}"
        if isinstance(target, str):  # an opt-out: it concerns the address
            _, added = run(_SUPPRESS, (event.kind, target, event.status.value, source, now))
            return ReceiptTally(matched=1, suppressed=added)
        d_run, code, seq, sent_to = target
        rank = RECEIPT_RANKS[event.status.value]
        at = _stamp(event.occurred_at)
        _, applied = run(
            _APPLY,
            (event.status.value, at, event.key, d_run, code, seq, rank, rank, at, at, event.key),
        )
        added = 0
        if event.status in SUPPRESSING_RECEIPTS and sent_to:
            key = sent_to.lower() if event.kind == "email" else sent_to
            _, added = run(_SUPPRESS, (event.kind, key, event.status.value, source, now))
        return ReceiptTally(applied=applied, matched=1, suppressed=added)

    def _referenced(
        self, run: Statement, channel: str, event: ReceiptEvent
    ) -> tuple[int, int, int, str | None] | None:
        """The delivery the event's reference names on ``channel``, if its message id
        is the event's (else the event is not about it, or its send's outcome is not
        written yet: a dead letter until :meth:`rematch`)."""
        seq, _, run_id = (event.reference or "").partition(".")
        if not (seq.isascii() and seq.isdigit() and len(seq) < 19 and run_id):
            return None
        rows, _ = run(_REFERENCED, (channel, int(seq), run_id))
        if len(rows) != 1 or not event.message_id or rows[0][4] != event.message_id:
            return None
        d_run, code, d_seq, address, _ = rows[0]
        if event.kind == "email" and not _same_address(event.kind, address, event.address):
            return None  # one request's message id is its recipients': the address tells
        return d_run, code, d_seq, address

    # -- reading ---------------------------------------------------------------------
    def _read(self, sql: str, args: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._db.transact(lambda run: run(sql, args)[0])

    def unmatched_count(self) -> int:
        """Receipts kept aside: no delivery of theirs is in the ledger."""
        rows = self._read("SELECT COUNT(*) FROM receipts WHERE " + _DEAD, ())
        return int(rows[0][0])

    def latest(self, *, unmatched: bool = False, limit: int = 100) -> list[StoredReceipt]:
        """The latest receipts, newest first (only the dead letters with ``unmatched``)."""
        where = "WHERE r." + _DEAD + " " if unmatched else ""
        sql = _LIST + where + "ORDER BY r.received_at DESC, r.key LIMIT ?"
        rows = self._read(sql, (limit,))
        return [
            StoredReceipt(
                key=k,
                provider=p,
                channel=c,
                status=s,
                occurred_at=o,
                received_at=r,
                message_id=m,
                address=a,
                reason=reason or "",
                matched=matched in (_MATCHED_DELIVERY, _MATCHED_ADDRESS),
                run_id=run_id,
            )
            for k, p, c, s, o, r, m, a, reason, matched, run_id in rows
        ]

    def awaiting(
        self, pipeline: str, channel: str, *, sent_after: float, sent_before: float, limit: int
    ) -> list[tuple[str, str]]:
        """``(message id, reference)`` of the channel's ``sent`` deliveries with no
        receipt yet, sent between the two Unix times (what a poll asks about)."""
        rows = self._read(_AWAITING, (pipeline, channel, sent_after, sent_before, limit))
        return [(str(mid), f"{seq}.{run_id}") for mid, seq, run_id in rows]

    def run_counts(self, run_id: str) -> dict[str, dict[str, int]]:
        """A run's ``sent`` deliveries per channel by receipt (``awaiting``: none yet)."""
        rows = self._read(_RUN_COUNTS, (run_id,))
        out: dict[str, dict[str, int]] = {}
        for channel, receipt, n in rows:
            out.setdefault(channel, {})[receipt or "awaiting"] = int(n)
        return out

    def counts(self) -> dict[str, int]:
        """Stored receipts by status, and the dead letters as ``unmatched``."""
        rows = self._read(
            "SELECT status, " + _DEAD + ", COUNT(*) FROM receipts GROUP BY status, " + _DEAD, ()
        )
        out: dict[str, int] = {}
        for status, unmatched, n in rows:
            name = "unmatched" if unmatched else str(status)
            out[name] = out.get(name, 0) + int(n)
        return out
