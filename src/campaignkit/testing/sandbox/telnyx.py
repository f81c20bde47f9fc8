"""A loopback fake of the Telnyx Messaging API v2: :class:`TelnyxServer`."""

from __future__ import annotations

import hashlib
import hmac
import math
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar, Self
from urllib.parse import urlsplit

import attrs

from ._faults import Faults
from ._receipt_events import telnyx_callbacks
from ._receipt_server import Ed25519Signer, ReceiptServer
from ._server import ProviderServer
from ._wire import Reply, Request
from .twilio import E164, reserved_invalid, sms_segments

__all__ = ["TelnyxServer"]

_TITLES = {
    "10004": ("Missing required parameter", "A required parameter was missing."),
    "10005": ("Resource not found", "The requested resource or URL could not be found."),
    "10007": ("Unexpected error", "An unexpected error occured."),
    "10008": ("Request timeout", "The request timed out."),
    "10009": (
        "Authentication failed",
        "The required authentication headers were either invalid or not included in the request.",
    ),
    "10011": ("Too many requests", "You have exceeded the maximum number of allowed requests."),
    "10014": (
        "Unsupported Media Type",
        "The request failed because the server does not support the media type.",
    ),
    "10015": ("Bad Request", "The request failed because it was not well-formed."),
    "10016": (
        "Phone number must be in +E.164 format",
        "The specified phone number parameter must be in +E.164 format.",
    ),
    "10017": (
        "Associated resource does not exist",
        "The requested parameter is invalid as the associated resource does not exist.",
    ),
    "40300": ("Blocked due to STOP message", "The recipient has opted out of messages."),
    "40305": ("Invalid 'from' address", "The 'from' address is not a number of this account."),
    "40310": ("Invalid 'to' address", "The 'to' address should be a single valid number."),
}


class TelnyxServer(ReceiptServer):
    """Telnyx's ``POST /v2/messages`` on 127.0.0.1.

    It checks what Telnyx checks and answers with Telnyx's bodies
    ``{"errors": [{code, title, detail, source, meta}]}`` (codes are strings):

    * ``Authorization: Bearer <token>`` equal to :attr:`token`, else 401 / 10009;
    * a JSON object body (another content type: 415 / 10014; bad JSON: 400 / 10015);
    * ``to`` (10004, pointer ``/to``), ``from`` or ``messaging_profile_id`` (10004,
      ``/from``) and ``text`` or ``media_urls`` (10004, ``/text``) present; ``from``
      in +E.164 (422 / 10016, ``/from``) and one of :attr:`from_numbers` (400 /
      40305, any number when the set is empty); ``messaging_profile_id`` equal to
      :attr:`messaging_profile_id` (422 / 10017);
    * ``media_urls`` a list of at most 10 ``http(s)://`` URLs, ``type`` ``SMS`` or
      ``MMS`` (``SMS`` with media refused), ``subject`` and ``text`` strings,
      ``encoding`` ``auto``, ``gsm7`` or ``ucs2`` (``gsm7`` with a character outside
      GSM-7: 400 / 10015), else 422 / 10015 naming the field;
    * ``to`` in +E.164 (422 / 10016, ``/to``); not invalid (400 / 40310): neither
      in :attr:`invalid` nor matched by :attr:`is_invalid` (by default the reserved
      range ``+1555010XXXX``); not in :attr:`unsubscribed` (400 / 40300).

    Numbers in :attr:`landlines` are accepted, as by the real API, which reports
    the carrier's refusal (40001) later by webhook: their record has
    ``delivery_status`` ``delivery_failed`` and ``delivery_error`` ``40001``.

    Other documented fields (``send_at``, ``webhook_failover_url``,
    ``use_profile_webhooks``, ``auto_detect``) are accepted and kept in the record's
    ``payload``. The ``Authorization`` scheme is matched without case (RFC 9110).

    Accepted messages get 200 with Telnyx's message resource (a UUID ``id``,
    ``to[0].status`` ``queued``, ``type`` ``MMS`` when there is media) and are
    appended to :attr:`messages` as dicts with ``id``, ``to``, ``from``, ``body``,
    ``media_urls``, ``subject``, ``type``, ``messaging_profile_id``,
    ``webhook_url``, ``parts``, ``encoding``, ``content_type``,
    ``idempotency_key``, ``delivery_status`` and ``payload`` (the request body).
    Refused
    requests that reached validation are appended to :attr:`rejected` (``to``,
    ``code``, ``status``).

    Idempotency: a request with an ``Idempotency-Key`` header (Telnyx's platform
    idempotency) is processed once per key; a repeated key with the same body
    replays the first answer (status and body, header ``Idempotent-Replayed:
    true``; the key is appended to :attr:`replayed`), with another body it gets 422, and while
    the first request is still being processed 409. Answers to requests that were
    not processed (401, faults) are not kept.

    Delivery receipts (once :meth:`attach_receipts` is called): a message sent with
    ``webhook_url`` gets Telnyx's signed JSON webhooks there, ``message.sent`` then
    ``message.finalized`` (``delivered``, or ``delivery_failed`` with error 40008
    soft or 40001 hard; a landline always 40001), and for a drawn ``stop`` a
    ``message.received`` ``STOP`` (at Telnyx that goes to the messaging profile's
    inbound webhook; here to the same URL). They verify with
    :attr:`webhook_public_key`.

    Rate limiting answers 429 / 10011 with ``x-ratelimit-limit``,
    ``x-ratelimit-remaining`` and ``x-ratelimit-reset`` (seconds); server errors
    answer 10007 bodies.
    """

    provider: ClassVar[str] = "telnyx"
    #: The default sender number (a fictional 555-01XX number).
    DEFAULT_FROM: ClassVar[str] = "+15055550100"

    def __init__(
        self,
        *,
        token: str = ProviderServer.DEFAULT_TOKEN,
        port: int = 0,
        faults: Faults | None = None,
        from_numbers: Iterable[str] = (DEFAULT_FROM,),
        invalid: Iterable[str] = (),
        unsubscribed: Iterable[str] = (),
        landlines: Iterable[str] = (),
        is_invalid: Callable[[str], bool] = reserved_invalid,
    ) -> None:
        super().__init__(token=token, port=port, faults=faults)
        self.messaging_profile_id = str(uuid.uuid4())
        self.organization_id = str(uuid.uuid4())
        self.from_numbers: set[str] = set(from_numbers)
        self.invalid: set[str] = set(invalid)
        self.unsubscribed: set[str] = set(unsubscribed)
        self.landlines: set[str] = set(landlines)
        self.is_invalid = is_invalid
        self.messages: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        #: Idempotency-Key → (body fingerprint, first answer or None while processing)
        self.idempotency: dict[str, tuple[str, Reply | None]] = {}
        #: the Idempotency-Key of every replayed answer, in order
        self.replayed: list[str] = []
        self._signer = Ed25519Signer()

    # -- uniform sandbox interface -----------------------------------------------------
    def start(self) -> Self:
        super().start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    @property
    def from_number(self) -> str:
        """The sender :meth:`channel_options` uses."""
        return min(self.from_numbers) if self.from_numbers else self.DEFAULT_FROM

    def channel_options(self) -> dict[str, Any]:
        """The Telnyx channel ``options`` that send to this server.

        Keys: ``base_url``, ``from``.
        """
        return {"base_url": self.base_url, "from": self.from_number}

    @property
    def webhook_public_key(self) -> str:
        """The webhook verification key as the Telnyx portal shows it: base64 of the
        raw 32-byte Ed25519 public key made for this server (needs ``cryptography``)."""
        return self._signer.public_key

    def reset(self) -> None:
        """Forget recorded messages, rejections and request times; clear scripted faults."""
        with self.lock:
            self.messages.clear()
            self.rejected.clear()
            self.idempotency.clear()
            self.replayed.clear()
            self.request_times.clear()
            self.faults.script.clear()

    # -- Telnyx's contract -------------------------------------------------------------
    @staticmethod
    def error(
        status: int,
        code: str,
        *,
        pointer: str | None = None,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Reply:
        """A Telnyx error reply ``{"errors": [{code, title, detail, source, meta}]}``."""
        title, default_detail = _TITLES.get(code, ("Error", "The request failed."))
        error: dict[str, Any] = {"code": code, "title": title, "detail": detail or default_detail}
        if pointer is not None:
            error["source"] = {"pointer": pointer}
        error["meta"] = {"url": f"https://developers.telnyx.com/docs/overview/errors/{code}"}
        return Reply(status, {"errors": [error]}, headers or {})

    def handle(self, request: Request) -> Reply:
        if request.path.rstrip("/") != "/v2/messages" or request.method != "POST":
            return self.error(404, "10005")
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode(), self.token.encode()
        ):
            return self.error(401, "10009")
        key = request.headers.get("idempotency-key")
        if not key:
            return self._process(request)
        fingerprint = hashlib.sha256(request.body).hexdigest()
        with self.lock:
            seen = self.idempotency.get(key)
            if seen is None:
                self.idempotency[key] = (fingerprint, None)
        if seen is not None:
            if seen[0] != fingerprint:
                return self.error(
                    422, "10015", detail="Idempotency-Key reused with a different request body."
                )
            if seen[1] is None:
                return self.error(
                    409, "10015", detail="A request with this Idempotency-Key is in progress."
                )
            with self.lock:
                self.replayed.append(key)
            first = seen[1]
            return attrs.evolve(first, headers={**first.headers, "Idempotent-Replayed": "true"})
        try:
            reply = self._process(request)
        except BaseException:
            with self.lock:
                del self.idempotency[key]
            raise
        with self.lock:
            self.idempotency[key] = (fingerprint, reply)
        return reply

    def _process(self, request: Request) -> Reply:
        payload = self._read_payload(request)
        if isinstance(payload, Reply):
            return payload
        refusal = self._refusal(payload)
        if refusal is not None:
            return refusal
        now = datetime.now(UTC)
        record = self._record(request, payload)
        resource = self._resource(record, now)
        telnyx_callbacks(self, self._signer, record, resource)
        return Reply(200, {"data": resource})

    def _read_payload(self, request: Request) -> dict[str, Any] | Reply:
        """The request's JSON object, or Telnyx's refusal of the body."""
        if request.content_type != "application/json":
            return self.error(415, "10014")
        try:
            payload = request.json()
        except ValueError:
            return self.error(400, "10015", detail="The request body is not valid JSON.")
        if not isinstance(payload, dict):
            return self.error(400, "10015", detail="The request body must be a JSON object.")
        return payload

    def _refusal(self, payload: dict[str, Any]) -> Reply | None:
        """Telnyx's refusal of a message (appended to :attr:`rejected`), or ``None``."""
        to = payload.get("to")
        reply = self._validate(
            to,
            payload.get("from"),
            payload.get("messaging_profile_id"),
            payload.get("text"),
            payload.get("media_urls"),
        )
        if reply is None:
            reply = _validate_optional(payload)
        if reply is not None:
            with self.lock:
                self.rejected.append(
                    {"to": to, "code": reply.body["errors"][0]["code"], "status": reply.status}
                )
        return reply

    def _record(self, request: Request, payload: dict[str, Any]) -> dict[str, Any]:
        """Record an accepted message in :attr:`messages`, and return its record."""
        to = payload["to"]
        text = payload.get("text")
        text = text if isinstance(text, str) else ""
        media_urls = list(payload.get("media_urls") or [])
        parts, encoding = sms_segments(text)
        if payload.get("encoding") == "ucs2" and encoding != "UCS-2":
            units = len(text.encode("utf-16-le")) // 2
            parts, encoding = (1 if units <= 70 else math.ceil(units / 67)), "UCS-2"
        landline = to in self.landlines
        record = {
            "id": str(uuid.uuid4()),
            "to": to,
            "from": payload.get("from"),
            "body": text,
            "media_urls": media_urls,
            "subject": payload.get("subject"),
            "type": payload.get("type") or ("MMS" if media_urls else "SMS"),
            "messaging_profile_id": payload.get("messaging_profile_id"),
            "webhook_url": payload.get("webhook_url"),
            "parts": parts,
            "encoding": encoding,
            "content_type": request.content_type,
            "idempotency_key": request.headers.get("idempotency-key"),
            "delivery_status": "delivery_failed" if landline else "queued",
            "delivery_error": "40001" if landline else None,
            "payload": payload,
        }
        with self.lock:
            self.messages.append(record)
        return record

    def _resource(self, record: dict[str, Any], now: datetime) -> dict[str, Any]:
        """Telnyx's message resource for an accepted message's record."""
        return {
            "record_type": "message",
            "direction": "outbound",
            "id": record["id"],
            "type": record["type"],
            "messaging_profile_id": record["messaging_profile_id"] or self.messaging_profile_id,
            "organization_id": self.organization_id,
            "from": {"phone_number": record["from"], "carrier": "Telnyx", "line_type": "Wireless"},
            "to": [
                {
                    "phone_number": record["to"],
                    "status": "queued",
                    "carrier": "SANDBOX WIRELESS",
                    # a landline's message fails later with 40001 (see _record)
                    "line_type": "Wireline" if record["delivery_error"] == "40001" else "Wireless",
                }
            ],
            "text": record["body"],
            "subject": record["subject"],
            "media": [
                {"url": url, "content_type": None, "sha256": None, "size": None}
                for url in record["media_urls"]
            ],
            "webhook_url": record["webhook_url"],
            "webhook_failover_url": record["payload"].get("webhook_failover_url"),
            "encoding": record["encoding"],
            "parts": record["parts"],
            "tags": [],
            "cost": None,
            "received_at": now.isoformat(),
            "sent_at": None,
            "completed_at": None,
            "valid_until": (now + timedelta(hours=4)).isoformat(),
            "errors": [],
        }

    def _validate(self, to: Any, sender: Any, profile: Any, text: Any, media: Any) -> Reply | None:
        if not isinstance(to, str) or not to:
            return self.error(422, "10004", pointer="/to", detail="The 'to' parameter is required.")
        if not sender and not profile:
            return self.error(
                422,
                "10004",
                pointer="/from",
                detail="Either 'from' or 'messaging_profile_id' is required.",
            )
        if (not isinstance(text, str) or not text) and not media:
            return self.error(
                422, "10004", pointer="/text", detail="The 'text' parameter is required."
            )
        if profile and profile != self.messaging_profile_id:
            return self.error(422, "10017", pointer="/messaging_profile_id")
        if sender:
            if not isinstance(sender, str) or not E164.fullmatch(sender):
                return self.error(422, "10016", pointer="/from")
            if self.from_numbers and sender not in self.from_numbers:
                return self.error(400, "40305", pointer="/from")
        if not E164.fullmatch(to):
            return self.error(422, "10016", pointer="/to")
        if to in self.invalid or self.is_invalid(to):
            return self.error(400, "40310", pointer="/to")
        if to in self.unsubscribed:
            return self.error(400, "40300", pointer="/to")
        return None

    # -- faults in Telnyx's words ------------------------------------------------------
    def rate_limited_reply(self, retry_after: float) -> Reply:
        limit = self.faults.rate_limit
        return self.error(
            429,
            "10011",
            headers={
                "x-ratelimit-limit": str(math.floor(limit) if limit is not None else 50),
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": f"{retry_after:g}",
            },
        )

    def server_error_reply(self, status: int) -> Reply:
        if status == 408:
            return self.error(408, "10008")
        if status >= 500:
            return self.error(status, "10007")
        return self.error(status, "10015")


#: Most ``media_urls`` one Telnyx message may carry.
MAX_MEDIA = 10


def _invalid(pointer: str, detail: str) -> Reply:
    return TelnyxServer.error(422, "10015", pointer=pointer, detail=detail)


def _validate_optional(payload: dict[str, Any]) -> Reply | None:
    """Telnyx's 422 / 400 for malformed optional fields, or ``None``."""
    media = payload.get("media_urls")
    if media is not None:
        if not isinstance(media, list) or not all(isinstance(u, str) for u in media):
            return _invalid("/media_urls", "The 'media_urls' parameter must be a list of URLs.")
        if len(media) > MAX_MEDIA:
            return _invalid("/media_urls", f"No more than {MAX_MEDIA} media URLs are allowed.")
        for url in media:
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                return _invalid("/media_urls", f"Invalid media URL: {url}")
    kind = payload.get("type")
    if kind is not None and kind not in ("SMS", "MMS"):
        return _invalid("/type", "The 'type' parameter must be SMS or MMS.")
    if kind == "SMS" and media:
        return _invalid("/type", "An SMS cannot carry media_urls; use type MMS.")
    for field in ("subject", "text", "webhook_url", "webhook_failover_url", "send_at"):
        value = payload.get(field)
        if value is not None and not isinstance(value, str):
            return _invalid(f"/{field}", f"The '{field}' parameter must be a string.")
    encoding = payload.get("encoding")
    if encoding is not None and encoding not in ("auto", "gsm7", "ucs2"):
        return _invalid("/encoding", "The 'encoding' parameter must be auto, gsm7 or ucs2.")
    text = payload.get("text")
    if encoding == "gsm7" and isinstance(text, str) and sms_segments(text)[1] != "GSM-7":
        return TelnyxServer.error(
            400,
            "10015",
            pointer="/text",
            detail="The message contains characters that cannot be encoded in GSM-7.",
        )
    return None
