"""Delivery receipts: what became of each message after the provider accepted it.

Providers report it by signed webhooks (SendGrid's Event Webhook, Twilio's status
callbacks, Telnyx's message webhooks) or answer polls (Expo's ``getReceipts``). This
package verifies and parses them (:func:`verify_sendgrid`, :func:`parse_twilio`...),
records them into the campaign's ledger (:class:`ReceiptBook`: each event once, each
delivery's highest receipt, bounces, complaints and opt-outs onto the suppression
list) and serves them: :func:`receiver` builds a campaign's framework-neutral
:class:`ReceiptReceiver`, :func:`wsgi_app` and :func:`asgi_app` mount it in any web
framework, and ``campaignkit receipts serve`` runs it. :func:`poll_receipts` polls.

SendGrid and Telnyx signatures need the ``receipts`` extra (``pip install
'campaignkit[receipts]'``, which brings ``cryptography``); Twilio's need only the
standard library.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_STOP_KEYWORDS",
    "DEFAULT_TOLERANCE_SECONDS",
    "SENDGRID_SIGNATURE_HEADER",
    "SENDGRID_TIMESTAMP_HEADER",
    "TELNYX_SIGNATURE_HEADER",
    "TELNYX_TIMESTAMP_HEADER",
    "TWILIO_SIGNATURE_HEADER",
    "UNVERIFIED_WARNING",
    "ParsedReceipts",
    "PollResult",
    "ReceiptBook",
    "ReceiptEvent",
    "ReceiptParseError",
    "ReceiptReceiver",
    "ReceiptRequest",
    "ReceiptResponse",
    "ReceiptStatus",
    "ReceiptTally",
    "ReceiptsDependencyError",
    "ReceiverStats",
    "StoredReceipt",
    "asgi_app",
    "fresh",
    "open_receipts",
    "parse_expo_receipts",
    "parse_sendgrid",
    "parse_telnyx",
    "parse_twilio",
    "poll_receipts",
    "receiver",
    "verify_sendgrid",
    "verify_telnyx",
    "verify_twilio",
    "verify_twilio_json",
    "wsgi_app",
]

from campaignkit._ledger import ReceiptBook
from campaignkit._receipt_types import ReceiptEvent, ReceiptTally, StoredReceipt
from campaignkit._states import ReceiptStatus

from ._apps import asgi_app, wsgi_app
from ._parsers import (
    DEFAULT_STOP_KEYWORDS,
    ParsedReceipts,
    ReceiptParseError,
    parse_expo_receipts,
    parse_sendgrid,
    parse_telnyx,
    parse_twilio,
)
from ._receiver import (
    UNVERIFIED_WARNING,
    ReceiptReceiver,
    ReceiptRequest,
    ReceiptResponse,
    ReceiverStats,
)
from ._setup import PollResult, open_receipts, poll_receipts, receiver
from ._signatures import (
    DEFAULT_TOLERANCE_SECONDS,
    SENDGRID_SIGNATURE_HEADER,
    SENDGRID_TIMESTAMP_HEADER,
    TELNYX_SIGNATURE_HEADER,
    TELNYX_TIMESTAMP_HEADER,
    TWILIO_SIGNATURE_HEADER,
    ReceiptsDependencyError,
    fresh,
    verify_sendgrid,
    verify_telnyx,
    verify_twilio,
    verify_twilio_json,
)
