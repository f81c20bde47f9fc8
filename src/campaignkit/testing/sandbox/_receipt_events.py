"""The delivery callbacks the fakes post, in each provider's shape: SendGrid's event
batches, Twilio's status callbacks and Telnyx's message webhooks."""

from __future__ import annotations

import base64
import copy
import json
import secrets
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from ._receipt_server import EcdsaSigner, Ed25519Signer, ReceiptServer, twilio_signature
from ._receipts import ReceiptOutcome

__all__ = [
    "SendGridEvents",
    "expo_receipt_error",
    "telnyx_callbacks",
    "twilio_callbacks",
]

#: most events SendGrid puts in one POST here
MAX_EVENTS_PER_POST = 500
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_SENDGRID_FIELDS = frozenset(
    {"email", "timestamp", "event", "sg_event_id", "sg_message_id", "smtp-id", "category"}
    | {"reason", "response", "status", "type", "attempt", "bounce_classification"}
)
#: why SendGrid drops a message to an address on one of its suppression lists
_DROP_REASONS = {
    ReceiptOutcome.BOUNCED: "Bounced Address",
    ReceiptOutcome.COMPLAINED: "Spam Reporting Address",
    ReceiptOutcome.UNSUBSCRIBED: "Unsubscribed Address",
}


def _event_id() -> str:
    return base64.urlsafe_b64encode(secrets.token_bytes(16)).decode("ascii").rstrip("=")


class _Batch:
    """A SendGrid POST being filled; closed (its body frozen) at its first send."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.body: bytes | None = None

    def freeze(self) -> bytes:
        if self.body is None:
            self.body = json.dumps(self.events, separators=(",", ":")).encode()
        return self.body


class SendGridEvents:
    """A SendGrid fake's Event Webhook: events batched into signed JSON arrays.

    Events wait in an open batch until it is sent (at most ``delay_seconds`` after
    the first of them), so the recipients of several requests share a POST. A retry
    sends the same body (same ``sg_event_id``), newly signed and timestamped.
    """

    def __init__(self, server: ReceiptServer, signer: EcdsaSigner) -> None:
        self.server = server
        self.signer = signer
        self._lock = threading.Lock()
        self._open: dict[str, _Batch] = {}
        #: address -> the outcome that put it on SendGrid's suppression lists
        self.suppressed: dict[str, ReceiptOutcome] = {}

    def accepted(self, records: Sequence[Mapping[str, Any]], message_id: str, url: str) -> None:
        """Queue the events of one accepted request's recipients."""
        simulation = self.server.receipts
        if simulation is None:
            return
        now = int(time.time())
        later = now + round(simulation.delay_seconds)
        first: list[dict[str, Any]] = []
        outcome_events: list[dict[str, Any]] = []
        for record in records:
            address = record["to"]
            _, outcome = self.server.receipt_outcome(address)
            base = _sendgrid_base(record, message_id)
            with self._lock:
                listed = self.suppressed.get(address.lower())
                if listed is None and outcome in _DROP_REASONS:
                    self.suppressed[address.lower()] = outcome
            if listed is not None:
                reason = _DROP_REASONS[listed]
                first.append({**base, "timestamp": now, "event": "dropped", "reason": reason})
                continue
            first.append({**base, "timestamp": now, "event": "processed"})
            outcome_events.extend(_sendgrid_outcome(base, outcome, later))
        self._add(url, "first", first, 0.0)
        self._add(url, "outcome", outcome_events, simulation.delay_seconds)

    def _add(self, url: str, phase: str, events: list[dict[str, Any]], delay: float) -> None:
        for event in events:
            event["sg_event_id"] = _event_id()
            with self._lock:
                batch = self._open.get(phase + url)
                if (
                    batch is None
                    or batch.body is not None
                    or len(batch.events) >= (MAX_EVENTS_PER_POST)
                ):
                    batch = self._open[phase + url] = _Batch()
                    fresh = True
                else:
                    fresh = False
                batch.events.append(event)
            if fresh:
                self.server.schedule_callback(url, self._render(batch), delay)

    def _render(self, batch: _Batch) -> Any:
        def render(attempt: int) -> tuple[bytes, Mapping[str, str]]:
            with self._lock:
                body = batch.freeze()
            timestamp = str(int(time.time()))
            return body, {
                "Content-Type": _JSON,
                "User-Agent": "SendGrid Event API",
                "X-Twilio-Email-Event-Webhook-Signature": self.signer.sign(timestamp, body),
                "X-Twilio-Email-Event-Webhook-Timestamp": timestamp,
            }

        return render


def _sendgrid_base(record: Mapping[str, Any], message_id: str) -> dict[str, Any]:
    """The fields every event about ``record``'s recipient carries."""
    base: dict[str, Any] = {
        key: value
        for key, value in (record.get("custom_args") or {}).items()
        if key not in _SENDGRID_FIELDS
    }
    base["email"] = record["to"]
    base["sg_message_id"] = f"{message_id}.filterdrecv-{secrets.token_hex(6)}-1-0"
    base["smtp-id"] = f"<{message_id}@ismtpd0001p1sandbox.sendgrid.net>"
    categories = list(record.get("categories") or ())
    if categories:
        base["category"] = categories[0] if len(categories) == 1 else categories
    return base


def _sendgrid_outcome(
    base: Mapping[str, Any], outcome: ReceiptOutcome, timestamp: int
) -> list[dict[str, Any]]:
    """The events after ``processed`` for ``outcome``."""
    delivered = {**base, "timestamp": timestamp, "event": "delivered", "response": "250 2.0.0 OK"}
    if outcome is ReceiptOutcome.UNDELIVERED:
        return [
            {
                **base,
                "timestamp": timestamp,
                "event": "deferred",
                "response": "421 4.7.0 Try again later (sandbox)",
                "attempt": "1",
            }
        ]
    if outcome is ReceiptOutcome.BOUNCED:
        return [
            {
                **base,
                "timestamp": timestamp,
                "event": "bounce",
                "type": "bounce",
                "status": "5.1.1",
                "reason": "550 5.1.1 The email account that you tried to reach does not exist.",
                "bounce_classification": "Invalid Address",
            }
        ]
    if outcome is ReceiptOutcome.COMPLAINED:
        return [delivered, {**base, "timestamp": timestamp, "event": "spamreport"}]
    if outcome is ReceiptOutcome.UNSUBSCRIBED:
        return [delivered, {**base, "timestamp": timestamp, "event": "unsubscribe"}]
    return [delivered]


# -- Twilio ------------------------------------------------------------------------------
_TWILIO_ERRORS = {ReceiptOutcome.UNDELIVERED: "30003", ReceiptOutcome.BOUNCED: "30005"}


def twilio_callbacks(server: Any, record: dict[str, Any]) -> None:
    """Schedule the status callbacks of an accepted Twilio message (``sent``, then
    ``delivered`` or ``undelivered``), and a ``STOP`` reply when drawn."""
    simulation, url = server.receipts, record.get("status_callback")
    if simulation is None:
        return
    key, outcome = server.receipt_outcome(record["to"])
    error = _TWILIO_ERRORS.get(outcome)
    # What a message fetch says once it is out (a receiver that lost a callback asks).
    record["final_status"], record["final_error"] = ("undelivered" if error else "delivered"), error
    if not url:
        return
    sender = record.get("from") or server.from_number
    base = {
        "AccountSid": server.account_sid,
        "ApiVersion": "2010-04-01",
        "From": sender,
        "MessageSid": record["sid"],
        "SmsSid": record["sid"],
        "To": record["to"],
    }
    if record.get("messaging_service_sid"):
        base["MessagingServiceSid"] = record["messaging_service_sid"]
    server.schedule_callback(url, _twilio_render(server, url, _status(base, "sent")))
    final = _status(base, "undelivered" if error else "delivered")
    if error:
        final["ErrorCode"] = error
    delay = simulation.delay_seconds
    server.schedule_callback(url, _twilio_render(server, url, final), delay)
    if error is None and simulation.replies_stop(key):
        sid = "SM" + secrets.token_hex(16)
        inbound = {
            "AccountSid": server.account_sid,
            "ApiVersion": "2010-04-01",
            "Body": "STOP",
            "From": record["to"],
            "MessageSid": sid,
            "NumMedia": "0",
            "NumSegments": "1",
            "OptOutType": "STOP",
            "SmsMessageSid": sid,
            "SmsSid": sid,
            "SmsStatus": "received",
            "To": sender,
        }
        server.schedule_callback(url, _twilio_render(server, url, inbound), delay)


def _status(base: Mapping[str, str], status: str) -> dict[str, str]:
    return {**base, "MessageStatus": status, "SmsStatus": status}


def _twilio_render(server: Any, url: str, params: Mapping[str, str]) -> Any:
    body = urlencode(sorted(params.items())).encode()
    idempotency = f"{params['MessageSid']}-{secrets.token_hex(8)}"

    def render(attempt: int) -> tuple[bytes, Mapping[str, str]]:
        return body, {
            "Content-Type": _FORM,
            "User-Agent": "TwilioProxy/1.1",
            "I-Twilio-Idempotency-Token": idempotency,
            "X-Twilio-Signature": twilio_signature(server.token, url, params),
        }

    return render


# -- Telnyx ------------------------------------------------------------------------------
_TELNYX_ERRORS = {
    ReceiptOutcome.UNDELIVERED: {
        "code": "40008",
        "title": "Undeliverable",
        "detail": "The message could not be delivered to the handset (temporary).",
    },
    ReceiptOutcome.BOUNCED: {
        "code": "40001",
        "title": "Not routable",
        "detail": "The destination number is not reachable (landline or not in service).",
    },
}


def telnyx_time(moment: datetime | None = None) -> str:
    """``2024-05-01T12:00:00.123Z``: UTC with milliseconds, as Telnyx writes times."""
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def telnyx_callbacks(
    server: Any, signer: Ed25519Signer, record: Mapping[str, Any], resource: Mapping[str, Any]
) -> None:
    """Schedule the webhooks of an accepted Telnyx message (``message.sent``, then
    ``message.finalized``), and a ``message.received`` STOP when drawn."""
    simulation, url = server.receipts, record.get("webhook_url")
    if simulation is None or not url:
        return
    key, outcome = server.receipt_outcome(record["to"])
    if record.get("delivery_error") == "40001":  # a landline: the carrier refuses it
        outcome = ReceiptOutcome.BOUNCED
    now = telnyx_time()
    sent = copy.deepcopy(dict(resource))
    sent["to"][0]["status"] = "sent"
    sent["sent_at"] = now
    server.schedule_callback(url, _telnyx_render(signer, url, "message.sent", sent))
    final = copy.deepcopy(sent)
    error = _TELNYX_ERRORS.get(outcome)
    final["to"][0]["status"] = "delivery_failed" if error else "delivered"
    final["errors"] = [dict(error)] if error else []
    final["completed_at"] = telnyx_time()
    delay = simulation.delay_seconds
    server.schedule_callback(url, _telnyx_render(signer, url, "message.finalized", final), delay)
    if error is None and simulation.replies_stop(key):
        inbound = {
            "record_type": "message",
            "direction": "inbound",
            "id": str(uuid.uuid4()),
            "type": "SMS",
            "messaging_profile_id": resource.get("messaging_profile_id"),
            "organization_id": resource.get("organization_id"),
            "from": {"phone_number": record["to"], "carrier": "SANDBOX WIRELESS"},
            "to": [{"phone_number": record["from"], "status": "webhook_delivered"}],
            "text": "STOP",
            "media": [],
            "encoding": "GSM-7",
            "parts": 1,
            "received_at": telnyx_time(),
            "errors": [],
        }
        server.schedule_callback(
            url, _telnyx_render(signer, url, "message.received", inbound), delay
        )


def _telnyx_render(signer: Ed25519Signer, url: str, event_type: str, payload: Any) -> Any:
    data = {
        "record_type": "event",
        "id": str(uuid.uuid4()),
        "event_type": event_type,
        "occurred_at": telnyx_time(),
        "payload": payload,
    }

    def render(attempt: int) -> tuple[bytes, Mapping[str, str]]:
        body = json.dumps({"data": data, "meta": {"attempt": attempt, "delivered_to": url}})
        raw = body.encode()
        timestamp = str(int(time.time()))
        return raw, {
            "Content-Type": _JSON,
            "User-Agent": "telnyx-webhooks",
            "telnyx-signature-ed25519": signer.sign(timestamp, raw),
            "telnyx-timestamp": timestamp,
        }

    return render


# -- Expo --------------------------------------------------------------------------------
_EXPO_ERRORS = {
    ReceiptOutcome.BOUNCED: "DeviceNotRegistered",
    ReceiptOutcome.UNDELIVERED: "MessageRateExceeded",
}


def expo_receipt_error(outcome: ReceiptOutcome) -> str | None:
    """The Expo receipt error for ``outcome`` (``None``: ``{"status": "ok"}``)."""
    return _EXPO_ERRORS.get(outcome)
