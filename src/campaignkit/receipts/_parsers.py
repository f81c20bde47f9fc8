"""Turn each provider's receipt payloads into :class:`ReceiptEvent` values.

Each parser takes what the provider sent (already authenticated by the caller),
returns the events that say what became of a message, and counts the others it
ignores (opens, clicks, intermediate states). A payload that is not the provider's
shape raises :class:`ReceiptParseError` (naming the field, never quoting the body),
and then nothing of it is recorded: the provider keeps it and retries.
"""

from __future__ import annotations

import hashlib
import json
import string
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import attrs

from campaignkit._config import ReceiptsConfig
from campaignkit._receipt_types import ReceiptEvent
from campaignkit._states import ReceiptStatus
from campaignkit.exceptions import CampaignKitError

__all__ = [
    "DEFAULT_STOP_KEYWORDS",
    "ParsedReceipts",
    "ReceiptParseError",
    "is_stop",
    "parse_expo_receipts",
    "parse_sendgrid",
    "parse_telnyx",
    "parse_twilio",
]

#: Replies that opt a number out, as Twilio's and the carriers' defaults (a message
#: that is exactly one of them, any case, surrounding spaces and punctuation ignored).
DEFAULT_STOP_KEYWORDS = frozenset(ReceiptsConfig().stop_keywords)
#: The most events one payload may hold (SendGrid posts batches of up to ~768 KB).
MAX_EVENTS = 10_000
_MAX_ID = 256
#: The ``custom_args`` key SendGrid echoes the delivery's reference back in.
SENDGRID_REFERENCE_ARG = "campaignkit_ref"

_DELIVERED, _UNDELIVERED, _BOUNCED = (
    ReceiptStatus.DELIVERED,
    ReceiptStatus.UNDELIVERED,
    ReceiptStatus.BOUNCED,
)
_UNSUBSCRIBED, _COMPLAINED = ReceiptStatus.UNSUBSCRIBED, ReceiptStatus.COMPLAINED

#: Twilio error codes that mean the number will never take a message (hard bounce):
#: 30005 unknown destination, 30006 landline or unreachable carrier, 21211 invalid
#: To, 21614 not a mobile number. 21610: the recipient replied STOP.
TWILIO_HARD_CODES = frozenset({"30005", "30006", "21211", "21614"})
TWILIO_OPTED_OUT_CODES = frozenset({"21610"})
#: Telnyx error codes of the same meanings (see the receipts docs: unconfirmed).
TELNYX_HARD_CODES = frozenset({"40001", "40012"})
TELNYX_OPTED_OUT_CODES = frozenset({"40300"})


class ReceiptParseError(CampaignKitError, ValueError):
    """A receipt payload that is not the provider's shape (the message names the field)."""


@attrs.frozen
class ParsedReceipts:
    """A payload's events, and how many of its events said nothing to record."""

    events: tuple[ReceiptEvent, ...] = ()
    ignored: int = 0


def _fail(where: str, expected: str) -> ReceiptParseError:
    return ReceiptParseError(f"{where}: expected {expected}")


def _json(body: bytes, provider: str) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ReceiptParseError(f"{provider}: the body is not UTF-8 JSON") from None


def _text(value: Any, where: str, *, limit: int = _MAX_ID, optional: bool = False) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or len(value) > limit:
        raise _fail(where, f"a string of 1 to {limit} characters")
    if not value.isprintable():
        raise _fail(where, "printable text")
    return value


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _raw(value: Any) -> str:
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


def is_stop(text: str, keywords: frozenset[str] = DEFAULT_STOP_KEYWORDS) -> bool:
    """Whether an inbound message is an opt-out keyword."""
    word = " ".join(text.strip().strip(string.punctuation).split()).upper()
    return word in keywords


# -- SendGrid Event Webhook: a JSON array of events ------------------------------------
_SENDGRID_STATUS = {
    "delivered": _DELIVERED,
    "deferred": _UNDELIVERED,
    "spamreport": _COMPLAINED,
    "unsubscribe": _UNSUBSCRIBED,
    "group_unsubscribe": _UNSUBSCRIBED,
}

#: SendGrid's drop reasons that name the suppression list the address is on.
_SENDGRID_DROPS = {
    "unsubscribed address": _UNSUBSCRIBED,
    "spam reporting address": _COMPLAINED,
    "bounced address": _BOUNCED,
    "invalid": _BOUNCED,
}


def _sendgrid_status(event: Mapping[str, Any], name: str) -> ReceiptStatus | None:
    if name in _SENDGRID_STATUS:
        return _SENDGRID_STATUS[name]
    if name == "bounce":  # "blocked": the receiving server refused for now
        return _UNDELIVERED if event.get("type") == "blocked" else _BOUNCED
    if name == "dropped":  # SendGrid did not send it: why decides what it means
        # Only a drop for the address's own list says something of the recipient;
        # "Spam Content" (SendGrid's spam checker on our content) and "Invalid SMTPAPI
        # header" (our request) are about the message: not sent, nobody to suppress.
        why = " ".join(str(event.get("reason", "")).lower().split())
        return _SENDGRID_DROPS.get(why, _UNDELIVERED)
    return None  # processed, open, click, group_resubscribe, ...


def parse_sendgrid(body: bytes) -> ParsedReceipts:
    """Events of a SendGrid Event Webhook POST (a JSON array of event objects).

    ``sg_message_id`` starts with the ``X-Message-Id`` the send recorded (shared by a
    request's recipients; ``email`` tells them apart).
    """
    batch = _json(body, "sendgrid")
    if not isinstance(batch, list) or len(batch) > MAX_EVENTS:
        raise _fail("sendgrid", f"a JSON array of at most {MAX_EVENTS} events")
    events, ignored = [], 0
    for i, event in enumerate(batch):
        where = f"sendgrid event {i}"
        if not isinstance(event, dict):
            raise _fail(where, "an object")
        name = _text(event.get("event"), f"{where}.event", limit=64)
        email = _text(event.get("email"), f"{where}.email", limit=320)
        stamp = event.get("timestamp")
        if isinstance(stamp, bool) or not isinstance(stamp, int) or not 0 <= stamp < 2**37:
            raise _fail(f"{where}.timestamp", "Unix seconds (an integer)")
        sg_id = _text(event.get("sg_message_id"), f"{where}.sg_message_id", optional=True)
        event_id = _text(event.get("sg_event_id"), f"{where}.sg_event_id", optional=True)
        reference = event.get(SENDGRID_REFERENCE_ARG)
        status = _sendgrid_status(event, name or "")
        if status is None:
            ignored += 1
            continue
        raw = _raw(event)
        message_id = sg_id.split(".", 1)[0] if sg_id else None
        if message_id is None and status not in (_UNSUBSCRIBED, _COMPLAINED):
            message_id = ""  # nothing to match it by: kept aside, counted
        reason = " ".join(
            str(event[k]) for k in ("status", "reason", "response") if event.get(k) is not None
        )
        events.append(
            ReceiptEvent(
                provider="sendgrid",
                key="sendgrid:" + (event_id or _digest(raw)),
                status=status,
                occurred_at=datetime.fromtimestamp(stamp, UTC),
                message_id=message_id,
                reference=reference if isinstance(reference, str) else None,
                address=email,
                kind="email",
                reason=reason,
                raw=raw,
            )
        )
    return ParsedReceipts(tuple(events), ignored)


# -- Twilio status callbacks and inbound messages: form parameters ---------------------
def _single(params: Mapping[str, str | Sequence[str]], name: str) -> str | None:
    value = params.get(name)
    if value is None or isinstance(value, str):
        return value
    if len(value) != 1 or not isinstance(value[0], str):
        raise _fail(f"twilio {name}", "one value")
    return value[0]


def parse_twilio(
    params: Mapping[str, str | Sequence[str]],
    received_at: datetime,
    *,
    stop_keywords: frozenset[str] = DEFAULT_STOP_KEYWORDS,
    reference: str | None = None,
) -> ParsedReceipts:
    """A Twilio status callback (``MessageStatus``) or inbound message (a STOP reply).

    Twilio's callbacks carry no event time: ``received_at`` stands for it. ``reference``:
    the delivery's, from the callback URL's query (the send put it there).
    """
    sid = _text(_single(params, "MessageSid") or _single(params, "SmsSid"), "twilio MessageSid")
    assert sid is not None
    status_text = _single(params, "MessageStatus") or _single(params, "SmsStatus") or ""
    raw = _raw({k: _single(params, k) for k in params if isinstance(k, str)})
    body = _single(params, "Body")
    if status_text == "received" or (body is not None and not _single(params, "MessageStatus")):
        sender = _text(_single(params, "From"), "twilio From", limit=64)
        opt_out = (_single(params, "OptOutType") or "").upper() == "STOP"
        if not (opt_out or is_stop(body or "", stop_keywords)):
            return ParsedReceipts(ignored=1)
        event = ReceiptEvent(
            provider="twilio",
            key=f"twilio:{sid}:inbound",
            status=_UNSUBSCRIBED,
            occurred_at=received_at,
            address=sender,
            kind="phone",
            reason="STOP reply",
            raw=raw,
        )
        return ParsedReceipts((event,))
    code = _single(params, "ErrorCode") or ""
    if status_text == "delivered":
        status = _DELIVERED
    elif status_text in ("undelivered", "failed"):
        status = (
            _UNSUBSCRIBED
            if code in TWILIO_OPTED_OUT_CODES
            else _BOUNCED
            if code in TWILIO_HARD_CODES
            else _UNDELIVERED
        )
    else:  # queued, sending, sent, accepted, scheduled, read, canceled...
        return ParsedReceipts(ignored=1)
    to = _text(_single(params, "To"), "twilio To", limit=64, optional=True)
    reason = f"{status_text} {code}".strip()
    event = ReceiptEvent(
        provider="twilio",
        key=f"twilio:{sid}:{status_text}:{code}",
        status=status,
        occurred_at=received_at,
        message_id=sid,
        reference=reference,
        address=to,
        kind="phone",
        reason=reason,
        raw=raw,
    )
    return ParsedReceipts((event,))


# -- Telnyx message webhooks: {"data": {"event_type", "id", "occurred_at", "payload"}} -
def _telnyx_time(value: Any) -> datetime:
    text = _text(value, "telnyx data.occurred_at", limit=64)
    try:
        when = datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        raise _fail("telnyx data.occurred_at", "an ISO 8601 time") from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise _fail("telnyx data.occurred_at", "a time with its UTC offset")
    try:
        utc = when.astimezone(UTC)  # year 1 at +05:00 is before datetime.min
    except OverflowError:
        raise _fail("telnyx data.occurred_at", "a time within years 1970 to 9998") from None
    if not 1970 <= utc.year < 9999:
        raise _fail("telnyx data.occurred_at", "a time within years 1970 to 9998")
    return utc


def _telnyx_number(value: Any, where: str) -> str | None:
    if not isinstance(value, dict):
        return None
    return _text(value.get("phone_number"), where, limit=64, optional=True)


def parse_telnyx(
    body: bytes,
    *,
    stop_keywords: frozenset[str] = DEFAULT_STOP_KEYWORDS,
    reference: str | None = None,
) -> ParsedReceipts:
    """A Telnyx v2 messaging webhook: ``message.finalized`` (or ``message.sent``) says
    what became of a message, ``message.received`` may be a STOP reply. ``reference``:
    the delivery's, from the webhook URL's query (the send put it there)."""
    document = _json(body, "telnyx")
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(data, dict):
        raise _fail("telnyx data", "an object")
    kind = _text(data.get("event_type"), "telnyx data.event_type", limit=64)
    event_id = _text(data.get("id"), "telnyx data.id")
    when = _telnyx_time(data.get("occurred_at"))
    payload = data.get("payload")
    if not isinstance(payload, dict):
        raise _fail("telnyx data.payload", "an object")
    raw = _raw(document)
    if kind == "message.received":
        sender = _telnyx_number(payload.get("from"), "telnyx payload.from.phone_number")
        text = payload.get("text")
        if sender is None or not isinstance(text, str) or not is_stop(text, stop_keywords):
            return ParsedReceipts(ignored=1)
        event = ReceiptEvent(
            provider="telnyx",
            key=f"telnyx:{event_id}",
            status=_UNSUBSCRIBED,
            occurred_at=when,
            address=sender,
            kind="phone",
            reason="STOP reply",
            raw=raw,
        )
        return ParsedReceipts((event,))
    if kind not in ("message.finalized", "message.sent"):
        return ParsedReceipts(ignored=1)
    message_id = _text(payload.get("id"), "telnyx payload.id")
    to = payload.get("to")
    if not isinstance(to, list) or not to or not isinstance(to[0], dict):
        raise _fail("telnyx payload.to", "a list of recipients")
    number = _telnyx_number(to[0], "telnyx payload.to[0].phone_number")
    state = to[0].get("status")
    errors = payload.get("errors")
    if not isinstance(errors, list | type(None)):
        raise _fail("telnyx payload.errors", "a list")
    codes = [str(e.get("code"))[:16] for e in errors or () if isinstance(e, dict)]
    if state == "delivered":
        status = _DELIVERED
    elif state in ("delivery_failed", "sending_failed", "expired"):
        status = (
            _UNSUBSCRIBED
            if TELNYX_OPTED_OUT_CODES.intersection(codes)
            else _BOUNCED
            if TELNYX_HARD_CODES.intersection(codes)
            else _UNDELIVERED
        )
    else:  # queued, sending, sent, delivery_unconfirmed...
        return ParsedReceipts(ignored=1)
    event = ReceiptEvent(
        provider="telnyx",
        key=f"telnyx:{event_id}",
        status=status,
        occurred_at=when,
        message_id=message_id,
        reference=reference,
        address=number,
        kind="phone",
        reason=" ".join([str(state), *codes]),
        raw=raw,
    )
    return ParsedReceipts((event,))


# -- Expo push receipts: the answer to getReceipts -------------------------------------
def parse_expo_receipts(
    answer: Any, received_at: datetime, references: Mapping[str, str] | None = None
) -> ParsedReceipts:
    """The receipts of an Expo ``getReceipts`` answer (``{"data": {id: receipt}}``);
    ``references``: the deliveries' references by ticket id (the poll asked for them).

    ``ok`` means the push service (APNs, FCM) took it; ``DeviceNotRegistered`` that
    the token is gone for good (a hard bounce); other errors are ours or temporary.
    """
    data = answer.get("data") if isinstance(answer, dict) else None
    if not isinstance(data, dict) or len(data) > MAX_EVENTS:
        raise _fail("expo data", "an object of receipts by id")
    events = []
    for ticket, receipt in data.items():
        _text(ticket, "expo receipt id")
        if not isinstance(receipt, dict):
            raise _fail(f"expo receipt {ticket}", "an object")
        state = receipt.get("status")
        details = receipt.get("details")
        error = details.get("error") if isinstance(details, dict) else None
        if state == "ok":
            status, reason = _DELIVERED, ""
        elif state == "error":
            status = _BOUNCED if error == "DeviceNotRegistered" else _UNDELIVERED
            reason = " ".join(str(x) for x in (error, receipt.get("message")) if x)
        else:
            raise _fail(f"expo receipt {ticket}.status", "'ok' or 'error'")
        events.append(
            ReceiptEvent(
                provider="expo",
                key=f"expo:{ticket}:{state}:{error or ''}",
                status=status,
                occurred_at=received_at,
                message_id=ticket,
                reference=(references or {}).get(ticket),
                kind="push_token",
                reason=reason,
                raw=_raw({ticket: receipt}),
            )
        )
    return ParsedReceipts(tuple(events))
