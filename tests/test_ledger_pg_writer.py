"""The PostgreSQL ledger's writer thread: a group that cannot be written is not lost
silently (its error is raised by the later calls, and nothing more is marked), and
outcomes queued by many calls are all seen by the reads that follow them."""

from __future__ import annotations

import secrets
import threading

import pytest

from campaignkit import DeliveryResult, DeliveryStatus
from campaignkit._ledger import DeliveryRecord, LedgerError, open_ledger
from test_ledger_writes import begin, plan_all


def sent(seq: int, error: str | None = None) -> DeliveryRecord:
    result = DeliveryResult(
        channel="e",
        recipient_id=f"c{seq}",
        status=DeliveryStatus.SENT,
        provider_message_id=f"m{seq}",
        attempts=1,
        error=error,
    )
    return DeliveryRecord(seq, result, "sent", False)


def test_outcomes_of_many_threads_are_seen_by_counts(postgres_url: str) -> None:
    ledger = open_ledger(postgres_url, schema=f"t_{secrets.token_hex(6)}")
    begin(ledger, "r", 400)
    plan_all(ledger, "r", "e", 400)

    def send(start: int) -> None:
        for seq in range(start, 400, 4):
            ledger.mark_in_flight("r", "e", [seq])
            ledger.record("r", "e", [sent(seq)])

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert ledger.counts("r", "e").states == {"sent": 400}
    ledger.close()


def test_an_outcome_that_cannot_be_written_stops_later_calls(postgres_url: str) -> None:
    ledger = open_ledger(postgres_url, schema=f"t_{secrets.token_hex(6)}")
    begin(ledger, "r", 3)
    plan_all(ledger, "r", "e", 3)
    ledger.mark_in_flight("r", "e", [0, 1])
    ledger.record("r", "e", [sent(0, error="NUL \x00 byte")])  # PostgreSQL text refuses it
    with pytest.raises(LedgerError, match="NUL"):  # its own group (or the next call)
        ledger.flush()
    with pytest.raises(LedgerError, match="could not be written"):
        ledger.mark_in_flight("r", "e", [2])
    with pytest.raises(LedgerError, match="could not be written"):
        ledger.record("r", "e", [sent(1)])
    with pytest.raises(LedgerError, match="could not be written"):
        ledger.close()
    reopened = open_ledger(postgres_url, schema=ledger.schema)  # type: ignore[attr-defined]
    assert reopened.counts("r", "e").states == {"in_flight": 2, "pending": 1}
    reopened.close()
