"""SMS through the Telnyx Messaging API v2 (``provider = "telnyx"``).

One message per request::

    POST {base_url}/v2/messages
    Authorization: Bearer <API key>
    Idempotency-Key: <the delivery's idempotency key>
    Content-Type: application/json

    {"from": "+15550001111", "to": "+15551234567", "text": "..."}

Options (``[channels.sms.options]``):

``from``
    Sender: an E.164 number, a short code or an alphanumeric sender ID.
``messaging_profile_id``
    Send through a messaging profile (its number pool picks the sender).
    At least one of ``from`` and ``messaging_profile_id`` is required.
``webhook_url``, ``webhook_failover_url``
    URLs Telnyx calls with delivery updates for each message (``webhook_url``
    defaults to the campaign's receipts route when ``[receipts] public_url`` is set).
``base_url``
    Default ``https://api.telnyx.com``.

The API key is the channel token (``SMS_API_TOKEN``). Every request carries an
``Idempotency-Key`` header (the delivery's idempotency key; see
:class:`TelnyxNotifier`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import requests

from .._http import HttpNotifier
from .._models import Message, Outcome, Rate
from ..exceptions import ConfigError, PermanentDeliveryError, TransientDeliveryError
from ..hookspecs import hookimpl
from ..options import http_url, not_blank, safe_base_url, sms_sender

__all__ = ["TelnyxNotifier", "TelnyxOptions"]


#: Telnyx codes about one recipient, whatever field they point at: 40300 the
#: recipient sent STOP, 40310 invalid ``to`` address, 40001 not routable
#: (landline), 40012 invalid destination number.
RECIPIENT_ERROR_CODES = frozenset({"40300", "40310", "40001", "40012"})

#: Telnyx codes about one recipient or message only when their ``source.pointer``
#: is ``/to`` or ``/text`` (the same codes about ``/from`` are configuration errors):
#: 10001 inactive number, 10002 invalid number, 10004 missing parameter,
#: 10016 not in +E.164 format.
POINTER_ERROR_CODES = frozenset({"10001", "10002", "10004", "10016"})
_MESSAGE_POINTERS = frozenset({"/to", "/text"})


@attrs.frozen
class TelnyxOptions:
    """The ``options`` table of a Telnyx channel (``from`` is spelled ``from_`` here)."""

    from_: str | None = attrs.field(default=None, validator=sms_sender)
    messaging_profile_id: str | None = attrs.field(
        default=None, validator=not_blank("expected a messaging profile id")
    )
    webhook_url: str | None = attrs.field(default=None, validator=http_url)
    webhook_failover_url: str | None = attrs.field(default=None, validator=http_url)
    base_url: str = attrs.field(default="https://api.telnyx.com", validator=safe_base_url)

    def __attrs_post_init__(self) -> None:
        if self.from_ is None and self.messaging_profile_id is None:
            raise ConfigError(
                "missing required key: set 'from' (a sender number) or 'messaging_profile_id'",
                path="from_",
            )


def _first_error(response: requests.Response) -> Mapping[str, Any]:
    """The first entry of a Telnyx ``{"errors": [...]}`` body, or ``{}``."""
    try:
        body = response.json()
    except ValueError:
        return {}
    errors = body.get("errors") if isinstance(body, Mapping) else None
    if isinstance(errors, list) and errors and isinstance(errors[0], Mapping):
        return errors[0]
    return {}


def _pointer(error: Mapping[str, Any]) -> str | None:
    source = error.get("source")
    pointer = source.get("pointer") if isinstance(source, Mapping) else None
    return str(pointer) if pointer is not None else None


class TelnyxNotifier(HttpNotifier):
    """Sends each message as one Telnyx ``POST /v2/messages`` request.

    Outcomes:
        * 200 with ``data.id``: sent, the id is the provider message id;
        * a recipient-level Telnyx code (10016 ``to`` not in +E.164 format, 40310
          invalid ``to`` address, 40300 recipient opted out, ...): a permanent
          failed outcome carrying the Telnyx code;
        * 401 (10009) and other 4xx: :class:`~campaignkit.PermanentDeliveryError`;
        * 429 (10011, ``x-ratelimit-reset`` gives the wait), 5xx, timeouts and
          dropped connections: :class:`~campaignkit.TransientDeliveryError`.

    Carrier failures (40xxx delivery errors) arrive later by webhook and are not
    seen here.

    Idempotency:
        Each request carries an ``Idempotency-Key`` header: the message's
        :attr:`~campaignkit.Message.idempotency_key`, the same for every attempt and
        resume of a delivery. Telnyx's platform idempotency replays the first answer
        to a repeated key for 24 hours (a different body under the same key: 422),
        so a retry after a timeout or a crash does not send the SMS twice, and the
        channel is marked idempotent (deliveries in flight at a crash go back to
        ``pending`` instead of ``unknown``). A 409 (the first request with that key
        is still being processed) is transient and in doubt: the first request may
        yet deliver the message. Telnyx's documentation lists the
        header for the endpoints that declare it; that ``/v2/messages`` honours it
        is not confirmed in its public reference (see ``providers.md``).

    Rate:
        The account limit of 50 messages per second (one request each). Toll-free
        (20/s), non-US long code (0.1/s) and 10DLC senders are slower; set the
        channel's rate for them.
    """

    name: ClassVar[str] = "telnyx"
    address_field: ClassVar[str] = "phone"
    max_batch_size: ClassVar[int] = 1
    supports_idempotency_keys: ClassVar[bool] = True
    default_rate: ClassVar[Rate] = Rate(messages_per_second=50.0, requests_per_second=50.0)
    default_base_url: ClassVar[str] = "https://api.telnyx.com"

    options_class: ClassVar[type[TelnyxOptions]] = TelnyxOptions
    options: TelnyxOptions

    def error_code(self, response: requests.Response) -> str | None:
        """Telnyx's ``errors[0].code``, else the HTTP status."""
        code = _first_error(response).get("code")
        return str(code) if code is not None else str(response.status_code)

    def error_message(self, response: requests.Response) -> str:
        """``HTTP 422, Telnyx 10016: <title>: <detail> (/to)``."""
        error = _first_error(response)
        code = error.get("code")
        where = f"HTTP {response.status_code}" + (f", Telnyx {code}" if code is not None else "")
        text = ": ".join(str(error[k]).strip() for k in ("title", "detail") if error.get(k))
        pointer = _pointer(error)
        if pointer:
            text += f" ({pointer})"
        text = self.redact(text)
        return f"{where}: {text[:300]}" if text else where

    def send_batch(self, conn: requests.Session, messages: Sequence[Message]) -> Sequence[Outcome]:
        """Send one message (the batch size is 1); see the class docstring for outcomes."""
        return [self._send_one(conn, message) for message in messages]

    def _send_one(self, conn: requests.Session, message: Message) -> Outcome:
        token = self.settings.token
        if token is None or not token:
            raise PermanentDeliveryError("no API key configured", code="no_token")
        payload: dict[str, str] = {"to": message.address, "text": message.body}
        if self.options.from_ is not None:
            payload["from"] = self.options.from_
        if self.options.messaging_profile_id is not None:
            payload["messaging_profile_id"] = self.options.messaging_profile_id
        webhook = self.options.webhook_url or self.settings.receipts_callback(message.reference)
        if webhook is not None:
            payload["webhook_url"] = webhook
        if self.options.webhook_failover_url is not None:
            payload["webhook_failover_url"] = self.options.webhook_failover_url
        seen: list[requests.Response] = []  # the response, to read an error's pointer

        def keep(response: requests.Response, *args: Any, **kwargs: Any) -> None:
            seen.append(response)

        headers = {"Authorization": f"Bearer {token.reveal()}", "Accept": "application/json"}
        if message.idempotency_key:
            headers["Idempotency-Key"] = message.idempotency_key
        try:
            response = self.post(
                conn, "/v2/messages", json=payload, headers=headers, hooks={"response": [keep]}
            )
        except PermanentDeliveryError as exc:
            if exc.status_code == 409:  # the same key is still being processed
                # In doubt: the first request with this key may yet deliver it.
                raise TransientDeliveryError(
                    str(exc), code=exc.code, status_code=exc.status_code, in_doubt=True
                ) from None
            error = _first_error(seen[-1]) if seen else {}
            if exc.code in RECIPIENT_ERROR_CODES or (
                exc.code in POINTER_ERROR_CODES and _pointer(error) in _MESSAGE_POINTERS
            ):
                return Outcome.failed(str(exc), code=exc.code)
            raise
        try:
            body = response.json()
        except ValueError:
            body = None
        data = body.get("data") if isinstance(body, Mapping) else None
        message_id = data.get("id") if isinstance(data, Mapping) else None
        # A 2xx means Telnyx accepted the message: never report it failed (a retry
        # would send it twice), even if the body is not what we expect.
        return Outcome.sent(str(message_id) if message_id else None)


@hookimpl
def campaignkit_register_channels(register: Callable[[type[Any]], None]) -> None:
    """Register :class:`TelnyxNotifier`."""
    register(TelnyxNotifier)
