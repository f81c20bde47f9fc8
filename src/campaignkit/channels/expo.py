"""Push notifications through the Expo push service (``provider = "expo"``).

Wire contract (``POST {base_url}/--/api/v2/push/send``, JSON array of up to 100
messages, one per recipient)::

    [{"to": "ExponentPushToken[...]", "title": "...", "body": "...", "data": {...},
      "ttl": 3600, "priority": "high", "sound": "default", "channelId": "..."}]

Expo answers HTTP 200 ``{"data": [ticket, ...]}`` with one ticket per message, in
order: ``{"status": "ok", "id": ...}`` becomes a sent outcome whose
``provider_message_id`` is the ticket id; ``{"status": "error", "details": {"error":
...}}`` becomes a failed outcome whose code is ``details.error``. Request-level errors
come as ``{"errors": [{"code", "message"}]}`` with a 4xx/5xx status; the first code is
the error code.

Expo has no idempotency: a re-sent batch may be delivered twice (at-least-once).
A request that ends in doubt (a read timeout, a connection lost after the request,
a 5xx) is therefore recorded ``unknown`` by the core unless the channel sets
``on_doubt = "retry"``; ``TOO_MANY_REQUESTS`` and 429 are surely not processed.
The access token (enhanced push security) is optional; ``Authorization: Bearer``
is sent only when one is set.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import attrs
import requests

from .._http import HttpNotifier
from .._models import Message, Outcome, Rate
from .._redact import redact
from ..exceptions import PermanentDeliveryError, TransientDeliveryError
from ..hookspecs import hookimpl
from ..options import check, one_of, safe_base_url

__all__ = ["ExpoNotifier", "ExpoOptions"]

SEND_PATH = "/--/api/v2/push/send"

#: Ticket errors worth sending again later; every other ticket error is permanent
#: (``DeviceNotRegistered``, ``InvalidCredentials``, ``MessageTooBig``, unknown ones).
TRANSIENT_TICKET_ERRORS = frozenset({"MessageRateExceeded"})

#: Request-level error codes that are transient whatever the HTTP status.
TRANSIENT_REQUEST_ERRORS = frozenset({"TOO_MANY_REQUESTS"})

PRIORITIES = ("default", "normal", "high")
_TTL = "expected a number >= 0, got {value}"


@attrs.frozen
class ExpoOptions:
    """The ``options`` table of an Expo channel.

    Attributes:
        base_url: the push service root (``https://exp.host``); ``http://`` only on loopback.
        ttl: seconds the push service keeps an undelivered message (``ttl``).
        priority: ``default``, ``normal`` or ``high``.
        sound: ``"default"`` to play the default sound (iOS).
        channel_id: the Android notification channel (``channelId``).
    """

    base_url: str = attrs.field(default="https://exp.host", validator=safe_base_url)
    ttl: int | None = attrs.field(default=None, validator=check(lambda v: v >= 0, _TTL))
    priority: str | None = attrs.field(default=None, validator=one_of(*PRIORITIES))
    sound: str | None = None
    channel_id: str | None = None


class ExpoNotifier(HttpNotifier):
    """Sends push notifications to Expo push tokens (the recipient's ``push_token``).

    One request per batch of at most 100 messages. Ticket errors are per-recipient
    failures: ``MessageRateExceeded`` is transient, the others permanent. A 200 reply
    whose tickets do not match the messages one to one raises
    :class:`~campaignkit.PermanentDeliveryError` (code ``protocol_error``): Expo has
    accepted the request, so re-sending could deliver twice, and the same request would
    get the same reply.
    """

    name: ClassVar[str] = "expo"
    address_field: ClassVar[str] = "push_token"
    max_batch_size: ClassVar[int] = 100
    stop_codes: ClassVar[frozenset[str]] = frozenset({"DeviceNotRegistered"})
    supports_idempotency_keys: ClassVar[bool] = False
    default_rate: ClassVar[Rate] = Rate(messages_per_second=600)
    token_required: ClassVar[bool] = False
    default_base_url: ClassVar[str] = "https://exp.host"
    not_processed_codes: ClassVar[frozenset[str]] = TRANSIENT_REQUEST_ERRORS

    options_class: ClassVar[type[ExpoOptions]] = ExpoOptions
    options: ExpoOptions

    def connect(self) -> requests.Session:
        session = super().connect()
        session.headers["Accept"] = "application/json"
        token = self.settings.token
        if token:
            session.headers["Authorization"] = f"Bearer {token.reveal()}"
        return session

    def error_code(self, response: requests.Response) -> str | None:
        """The first ``errors[].code`` of an Expo error body, else the HTTP status."""
        try:
            errors = response.json().get("errors")
            code = errors[0]["code"]
        except (ValueError, AttributeError, LookupError, TypeError):
            return str(response.status_code)
        return str(code) if code else str(response.status_code)

    def payload(self, message: Message) -> dict[str, Any]:
        """The Expo message for one :class:`~campaignkit.Message`."""
        item: dict[str, Any] = {"to": message.address, "body": message.body}
        if message.title is not None:
            item["title"] = message.title
        if message.data:
            item["data"] = dict(message.data)
        opts = self.options
        if opts.ttl is not None:
            item["ttl"] = opts.ttl
        if opts.priority is not None:
            item["priority"] = opts.priority
        if opts.sound is not None:
            item["sound"] = opts.sound
        if opts.channel_id is not None:
            item["channelId"] = opts.channel_id
        return item

    def send_batch(self, conn: requests.Session, messages: Sequence[Message]) -> Sequence[Outcome]:
        if not messages:
            return []
        body = [self.payload(m) for m in messages]
        try:
            response = self.post(conn, SEND_PATH, json=body)
        except PermanentDeliveryError as exc:
            if exc.code in TRANSIENT_REQUEST_ERRORS:
                raise TransientDeliveryError(
                    str(exc), code=exc.code, status_code=exc.status_code
                ) from exc
            raise
        tickets = _tickets(response, len(messages))
        return [_outcome(ticket) for ticket in tickets]


def _protocol_error(detail: str) -> PermanentDeliveryError:
    return PermanentDeliveryError(
        f"unexpected Expo reply: {detail}", code="protocol_error", status_code=200
    )


def _tickets(response: requests.Response, expected: int) -> list[Any]:
    """The tickets of a 200 reply, checked to match the ``expected`` messages."""
    try:
        reply = response.json()
    except ValueError:
        raise _protocol_error("body is not JSON") from None
    if not isinstance(reply, dict):
        raise _protocol_error("body is not an object")
    data = reply.get("data")
    if data is None and reply.get("errors"):
        errors = reply["errors"]
        first = errors[0] if isinstance(errors, list) and errors else {}
        code = first.get("code") if isinstance(first, dict) else None
        raise PermanentDeliveryError(
            f"Expo refused the request: {redact(str(errors))[:300]}",
            code=str(code) if code else "protocol_error",
            status_code=response.status_code,
        )
    if isinstance(data, dict):  # Expo answers a lone object for a one-message request
        data = [data]
    if not isinstance(data, list):
        raise _protocol_error("no 'data' list of tickets")
    if len(data) != expected:
        raise _protocol_error(f"{len(data)} tickets for {expected} messages")
    return data


def _outcome(ticket: Any) -> Outcome:
    if not isinstance(ticket, dict):
        return Outcome.failed("malformed push ticket", code="protocol_error")
    if ticket.get("status") == "ok":
        ticket_id = ticket.get("id")
        return Outcome.sent(str(ticket_id) if ticket_id is not None else None)
    details = ticket.get("details")
    code = details.get("error") if isinstance(details, dict) else None
    code = str(code) if code else "error"
    message = str(ticket.get("message") or code)
    return Outcome.failed(message, code=code, transient=code in TRANSIENT_TICKET_ERRORS)


@hookimpl
def campaignkit_register_channels(register: Callable[[type[Any]], None]) -> None:
    """Register :class:`ExpoNotifier` as ``provider = "expo"``."""
    register(ExpoNotifier)
