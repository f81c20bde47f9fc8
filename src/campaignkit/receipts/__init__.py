"""Delivery receipts: verifying the providers' signed webhooks.

The verifiers are pure functions (no I/O, no logging) that return ``False`` for
anything the provider did not sign and never raise on bad input. SendGrid and
Telnyx signatures need the ``receipts`` extra (``pip install 'campaignkit[receipts]'``,
which brings ``cryptography``); Twilio's need only the standard library.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_TOLERANCE_SECONDS",
    "SENDGRID_SIGNATURE_HEADER",
    "SENDGRID_TIMESTAMP_HEADER",
    "TELNYX_SIGNATURE_HEADER",
    "TELNYX_TIMESTAMP_HEADER",
    "TWILIO_SIGNATURE_HEADER",
    "ReceiptsDependencyError",
    "fresh",
    "verify_sendgrid",
    "verify_telnyx",
    "verify_twilio",
    "verify_twilio_json",
]

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
