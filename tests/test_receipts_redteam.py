"""Red team of the delivery receipts (issue 14): each test is one bug found, run the
way a provider, an operator or a hostile mail server would reach it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest

pytest.importorskip("cryptography")
from click.testing import CliRunner

from campaignkit import ReceiptsConfig
from campaignkit._ledger import open_receipt_book
from campaignkit._receipt_types import ReceiptEvent
from campaignkit.cli import main
from campaignkit.exceptions import ConfigError
from campaignkit.receipts import ReceiptRequest, open_receipts
from conftest import Backend
from test_receipts_hostile import (
    NOW,
    receiver_for,
    signed_sendgrid,
    signed_telnyx,
    signed_twilio,
)

SID = "SM" + "a" * 32


def seed(store: Backend, channel: str, rows: list[tuple[int, str | None, str]]) -> None:
    """Run ``r1`` with ``channel`` (code 0) and its sent deliveries (seq, message id, address)."""
    store.sql(
        "INSERT INTO runs (id, run_id, pipeline, logical_date, status, fingerprint, created_at) "
        "VALUES (1, 'r1', 'p', '2026-01-01', 'succeeded', 'f', '2026-01-01')"
    )
    store.sql("INSERT INTO channels (run, channel, code) VALUES (1, ?, 0)", (channel,))
    for seq, message_id, address in rows:
        store.sql(
            "INSERT INTO deliveries (run, channel, seq, state, provider_message_id, address) "
            "VALUES (1, 0, ?, 'sent', ?, ?)",
            (seq, message_id, address),
        )


def sendgrid_post(events: list[dict[str, Any]]) -> ReceiptRequest:
    body = json.dumps(events).encode()
    return ReceiptRequest("POST", "/receipts/email", signed_sendgrid(body), body)


# -- 1. SendGrid drops that concern the message are taken for the recipient's doing --
@pytest.mark.parametrize(
    "reason", ["Spam Content (if spam checker app enabled)", "Invalid SMTPAPI header"]
)
def test_sendgrid_drop_for_our_content_or_header_suppresses_no_one(
    backend: Backend, reason: str
) -> None:
    store = backend.fresh()
    with open_receipt_book(store.location, schema=store.schema) as book:
        seed(store, "email", [(0, "X1", "ann@example.com")])
        drop = {
            "event": "dropped",
            "email": "ann@example.com",
            "timestamp": 1_700_000_000,
            "sg_event_id": "evt-drop",
            "sg_message_id": "X1.filterdrecv-1",
            "campaignkit_ref": "0.r1",
            "reason": reason,
        }
        response = receiver_for(book).handle(sendgrid_post([drop]))
        assert response.status == 200
        # SendGrid's spam checker flagged OUR content / our header was malformed: the
        # recipient neither complained nor has a bad address.
        assert store.sql("SELECT kind, address FROM suppressions") == []
        assert store.sql("SELECT receipt FROM deliveries") == [("undelivered",)]


# -- 2. A Telnyx time at the edge of datetime: a 500 (retried forever), not a 400 ---------
@pytest.mark.parametrize("occurred_at", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:30:00-05:00"])
def test_telnyx_time_out_of_range_is_a_400_not_a_500(tmp_path: Path, occurred_at: str) -> None:
    data = {
        "event_type": "message.finalized",
        "id": "evt-edge",
        "occurred_at": occurred_at,
        "payload": {"id": "msg-1", "to": [{"phone_number": "+14155550100", "status": "delivered"}]},
    }
    body = json.dumps({"data": data}).encode()
    request = ReceiptRequest("POST", "/receipts/text", signed_telnyx(body), body, "ck=0.r1")
    with open_receipt_book(tmp_path / "ledger.db") as book:
        assert receiver_for(book).handle(request).status == 400


def test_an_event_before_year_1000_does_not_poison_rematch(backend: Backend) -> None:
    """``%Y`` writes year 999 as ``999``: the stored time sorts after 2026 in a tie, and
    rematch's ``strptime`` of it raises, failing every later rematch of every dead letter."""
    store = backend.fresh()
    with open_receipt_book(store.location, schema=store.schema) as book:
        old = ReceiptEvent(
            provider="telnyx",
            key="telnyx:old",
            status="delivered",
            occurred_at=datetime(999, 1, 1, tzinfo=UTC),
            message_id="msg-old",
            reference="0.r1",
            kind="phone",
        )
        late = ReceiptEvent(
            provider="telnyx",
            key="telnyx:late",
            status="bounced",
            occurred_at=NOW,
            message_id="SM0",
            reference="0.r1",
            address="+14155550100",
            kind="phone",
        )
        assert book.record("text", [old, late]).unmatched == 2
        seed(store, "text", [(0, "SM0", "+14155550100")])
        assert book.rematch().matched == 1
        assert store.sql("SELECT receipt FROM deliveries") == [("bounced",)]


# -- 3. A public_url with a query (or fragment): every route silently wrong -------------
@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/ck?tenant=a", "https://hooks.example.com/ck#x"]
)
def test_public_url_with_a_query_or_fragment_is_refused(url: str) -> None:
    # Accepted today: url("sms") is "https://hooks.example.com/ck?tenant=a/receipts/sms",
    # which Twilio/Telnyx call with the path /ck (404) and the signature never verifies.
    with pytest.raises(ConfigError):
        ReceiptsConfig(public_url=url)


# -- 4. Rematch starves: the oldest never-matchable dead letters fill every round -------
def test_rematch_reaches_a_matchable_dead_letter_behind_unmatchable_ones(
    backend: Backend,
) -> None:
    store = backend.fresh()
    with open_receipt_book(store.location, schema=store.schema) as book:
        # A SendGrid account shared with another app: its events carry no reference,
        # and stay dead letters for ever (10,000 is a day of a modest sender).
        foreign = [
            ReceiptEvent(
                provider="sendgrid",
                key=f"sendgrid:other-{n}",
                status="delivered",
                occurred_at=NOW,
                message_id=f"other{n}",
                address=f"x{n}@example.org",
            )
            for n in range(10_000)
        ]
        assert book.record("email", foreign).unmatched == 10_000
        # Then a callback that outran its send's write.
        early = ReceiptEvent(
            provider="sendgrid",
            key="sendgrid:ours",
            status="bounced",
            occurred_at=NOW,
            message_id="X1",
            reference="0.r1",
            address="ann@example.com",
        )
        assert book.record("email", [early]).unmatched == 1
        seed(store, "email", [(0, "X1", "ann@example.com")])
        assert book.rematch().matched == 1  # what `receipts serve` runs every minute
        assert store.sql("SELECT receipt FROM deliveries") == [("bounced",)]


# -- 5. The provider's retry (or the poll) of a dead letter is dropped as a duplicate ---
def test_a_retried_or_polled_dead_letter_is_applied_once_its_delivery_is_known(
    backend: Backend,
) -> None:
    store = backend.fresh()
    with open_receipt_book(store.location, schema=store.schema) as book:
        rx = receiver_for(book)
        seed(store, "sms", [(0, None, "+14155550100")])  # the send's write is not done yet
        params = {
            "MessageSid": SID,
            "MessageStatus": "undelivered",
            "ErrorCode": "30005",
            "To": "+14155550100",
        }
        query = urlencode({"ck": "0.r1"})
        headers = signed_twilio(params, f"https://hooks.example.com/ck/receipts/sms?{query}")
        request = ReceiptRequest(
            "POST", "/receipts/sms", headers, urlencode(params).encode(), query
        )
        assert rx.handle(request).status == 200
        assert book.unmatched_count() == 1
        store.sql("UPDATE deliveries SET provider_message_id = ?", (SID,))
        # The same event again: Twilio's retry, or `receipts poll` fetching the message
        # (its event has the same key, twilio:<sid>:<status>:<code>).
        assert rx.handle(request).status == 200
        assert store.sql("SELECT receipt FROM deliveries") == [("bounced",)]
        assert store.sql("SELECT address FROM suppressions") == [("+14155550100",)]


# -- 6. A hostile mail server's bounce text reaches the operator's terminal raw ---------
def test_receipts_list_does_not_print_terminal_escapes_from_a_bounce(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    (tmp_path / "s.csv").write_text("id,email\n1,ann@example.com\n", encoding="utf-8")
    config.write_text(
        '[pipeline]\nname = "c"\n[source]\npath = "s.csv"\n[channels.email]\n'
        'provider = "sendgrid"\n[channels.email.options]\nfrom_email = "n@example.com"\n',
        encoding="utf-8",
    )
    bounce = {
        "event": "bounce",
        "email": "ann@example.com",
        "timestamp": 1_700_000_000,
        "sg_event_id": "evt-esc",
        "sg_message_id": "X1.filterdrecv-1",
        "campaignkit_ref": "0.nope",
        "status": "5.1.1",
        # The receiving server's SMTP reply, relayed by SendGrid: anyone's words.
        "reason": "550 \x1b]0;owned\x07\x1b[2J\x1b[31mall clear",
    }
    with open_receipts(config) as book:
        assert receiver_for(book).handle(sendgrid_post([bounce])).status == 200
    result = CliRunner().invoke(main, ["receipts", "list", str(config)])
    assert result.exit_code == 0, result.output
    assert "550" in result.output
    assert "\x1b" not in result.output and "\x07" not in result.output
