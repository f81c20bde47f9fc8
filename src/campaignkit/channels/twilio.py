"""SMS through the Twilio Programmable Messaging REST API (``provider = "twilio"``).

One message per request::

    POST {base_url}/2010-04-01/Accounts/{AccountSid}/Messages.json
    Authorization: Basic base64(AccountSid:AuthToken)
    Content-Type: application/x-www-form-urlencoded

    To=+15551234567&From=+15005550006&Body=...

Options (``[channels.sms.options]``):

``from``
    Sender: an E.164 number, a short code or an alphanumeric sender ID.
``messaging_service_sid``
    ``MG...``: send through a Messaging Service (Twilio picks the sender).
    At least one of ``from`` and ``messaging_service_sid`` is required.
``account_sid``
    ``AC...``; when absent it is read from the environment variable named by
    ``account_sid_env`` (default ``TWILIO_ACCOUNT_SID``), in the environment the
    pipeline is given (``Pipeline(env=...)``, else the process's).
``status_callback``
    URL Twilio calls with delivery status updates (default: the campaign's
    receipts route, ``[receipts] public_url`` + ``/receipts/<channel>``, when set).
``validity_period``
    Seconds (1-36000) a message may wait in Twilio's queue.
``base_url``
    Default ``https://api.twilio.com``.

The auth token is the channel token (``SMS_API_TOKEN``).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any, ClassVar

import attrs
import requests

from .._http import HttpNotifier
from .._models import Message, Outcome, Rate
from .._notifier import ChannelSettings
from .._redact import remember
from ..exceptions import (
    ConfigError,
    DeliveryError,
    PermanentDeliveryError,
    TransientDeliveryError,
)
from ..hookspecs import hookimpl
from ..options import between, http_url, matches, safe_base_url, sms_sender

__all__ = ["TwilioNotifier", "TwilioOptions"]

_ACCOUNT_SID = re.compile(r"AC[0-9a-fA-F]{32}")

#: Twilio codes that concern one recipient or one message: that message fails for
#: good, the rest of the campaign goes on. 21211 invalid To, 21408 region not
#: enabled, 21610 unsubscribed (STOP), 21612 To not reachable from this sender,
#: 21614 To not a mobile number, 21635 To is a landline, 21602 empty body,
#: 21604 empty To, 21617 body over 1,600 characters.
RECIPIENT_ERROR_CODES = frozenset(
    {"21211", "21408", "21610", "21612", "21614", "21635", "21602", "21604", "21617"}
)

#: Twilio codes sent with a 4xx that are worth retrying: 21611, the sender's queue
#: is full (nothing was queued).
TRANSIENT_ERROR_CODES = frozenset({"21611"})

#: Pages of the message list :meth:`TwilioNotifier.reconcile` reads per message at most.
RECONCILE_MAX_PAGES = 5
#: Messages per page of those lookups.
RECONCILE_PAGE_SIZE = 50
#: Slack for the clocks of Twilio and this machine when matching ``date_created``.
RECONCILE_CLOCK_SKEW = timedelta(minutes=2)


@attrs.frozen
class TwilioOptions:
    """The ``options`` table of a Twilio channel (``from`` is spelled ``from_`` here)."""

    from_: str | None = attrs.field(default=None, validator=sms_sender)
    messaging_service_sid: str | None = attrs.field(
        default=None, validator=matches("MG[0-9a-fA-F]{32}", "MG followed by 32 hex digits")
    )
    account_sid: str | None = attrs.field(
        default=None, validator=matches(_ACCOUNT_SID.pattern, "AC followed by 32 hex digits")
    )
    account_sid_env: str = "TWILIO_ACCOUNT_SID"
    status_callback: str | None = attrs.field(default=None, validator=http_url)
    validity_period: int | None = attrs.field(
        default=None, validator=between(1, 36_000, "expected 1 to 36000 seconds, got {value}")
    )
    base_url: str = attrs.field(default="https://api.twilio.com", validator=safe_base_url)

    def __attrs_post_init__(self) -> None:
        if self.from_ is None and self.messaging_service_sid is None:
            raise ConfigError(
                "missing required key: set 'from' (a sender number) or 'messaging_service_sid'",
                path="from_",
            )

    def resolve_account_sid(self, settings: ChannelSettings) -> str:
        """``account_sid``, else the variable ``account_sid_env`` of the pipeline's env.

        Raises:
            ConfigError: the variable is unset, or holds no account SID.
        """
        if self.account_sid is not None:
            return self.account_sid
        sid = settings.getenv(self.account_sid_env)
        if sid is None:
            raise ConfigError(
                f"missing required key: set 'account_sid' or the environment variable "
                f"{self.account_sid_env}",
                path=f"{settings.path}.account_sid",
            )
        if not _ACCOUNT_SID.fullmatch(sid):
            raise ConfigError(
                f"environment variable {self.account_sid_env} does not hold an "
                f"account SID (AC followed by 32 hex digits)",
                path=f"{settings.path}.account_sid_env",
            )
        return sid


def _error_body(response: requests.Response) -> Mapping[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, Mapping) else {}


class TwilioNotifier(HttpNotifier):
    """Sends each message as one Twilio ``Messages.json`` create request.

    Outcomes:
        * 201 with ``sid`` (``SM...``): sent, the sid is the provider message id;
        * a recipient-level Twilio code (:data:`RECIPIENT_ERROR_CODES`, e.g. 21211
          invalid number, 21610 unsubscribed, 21614 not a mobile number): a
          permanent failed outcome carrying the Twilio code;
        * 401 (20003) and other 4xx: :class:`~campaignkit.PermanentDeliveryError`;
        * 429 (20429), 5xx (20500), 21611, timeouts and dropped connections:
          :class:`~campaignkit.TransientDeliveryError`. 429/20429 and 21611 mean
          nothing was queued; a timeout, a connection lost after the request and a
          5xx are *in doubt* (Twilio may have queued the message).

    Twilio has no idempotency keys, and warns that re-sending after a 5xx may
    deliver a message twice. Messages in doubt are looked up instead
    (:meth:`reconcile`) before anything is sent again.

    Rate:
        Twilio does not publish its REST request limit; messages then wait in a
        queue per sender (a US long code drains 1 segment/s, a short code 100/s,
        for up to 10 hours). The default of 10 requests (= messages) per second
        stays well within what an account accepts; raise it for short codes or
        Messaging Services with many senders.
    """

    name: ClassVar[str] = "twilio"
    address_field: ClassVar[str] = "phone"
    max_batch_size: ClassVar[int] = 1
    stop_codes: ClassVar[frozenset[str]] = frozenset({"21610"})
    supports_idempotency_keys: ClassVar[bool] = False
    default_rate: ClassVar[Rate] = Rate(messages_per_second=10.0, requests_per_second=10.0)
    default_base_url: ClassVar[str] = "https://api.twilio.com"
    not_processed_codes: ClassVar[frozenset[str]] = frozenset({"20429"})

    options_class: ClassVar[type[TwilioOptions]] = TwilioOptions
    options: TwilioOptions

    def __init__(self, settings: ChannelSettings) -> None:
        """Validate the options and resolve the account SID (from the options, else
        from the environment the pipeline passes: ``settings.env``).

        Raises:
            ConfigError: naming the key path: neither ``from`` nor
                ``messaging_service_sid``, a malformed value, no account SID, or a
                clear-text ``http://`` base URL to a remote host.
        """
        super().__init__(settings)
        self.account_sid = account_sid = self.options.resolve_account_sid(settings)
        if settings.token:  # the Basic credential, as an error body may echo it
            remember(f"{account_sid}:{settings.token.reveal()}")
        self.path = f"/2010-04-01/Accounts/{account_sid}/Messages.json"

    def error_code(self, response: requests.Response) -> str | None:
        """Twilio's numeric ``code`` from the error body, else the HTTP status."""
        code = _error_body(response).get("code")
        return str(code) if code is not None else str(response.status_code)

    def error_message(self, response: requests.Response) -> str:
        """``HTTP 400, Twilio 21211: <Twilio's message>``."""
        body = _error_body(response)
        message = self.redact(str(body.get("message") or "")).strip()[:300]
        code = body.get("code")
        where = f"HTTP {response.status_code}" + (f", Twilio {code}" if code is not None else "")
        return f"{where}: {message}" if message else where

    def reconcile(
        self, conn: requests.Session, messages: Sequence[Message], since: datetime
    ) -> Sequence[Outcome | None]:
        """Look up messages whose create request ended in doubt.

        For each message, reads Twilio's message list filtered by ``To`` (and
        ``From`` when the channel sends from a number), newest first, and looks for
        an outbound message with the same body created since ``since`` (less
        :data:`RECONCILE_CLOCK_SKEW`), from the channel's sender or Messaging
        Service. Found: ``sent`` with its sid, whatever its status now (Twilio
        accepted it). Not found on pages that reach back before ``since``: surely
        not created, a transient failure that may be re-sent. Otherwise (more than
        :data:`RECONCILE_MAX_PAGES` pages of recent messages, an unreadable reply, a
        failed lookup): ``None``, cannot tell. The list is not filtered by
        ``DateSent``: a message still queued has no ``date_sent`` and would be missed.
        """
        answers: list[Outcome | None] = []
        for message in messages:
            try:
                answers.append(self._lookup(conn, message, since - RECONCILE_CLOCK_SKEW))
            except DeliveryError:  # this lookup failed: cannot tell
                answers.append(None)
        return answers

    def _lookup(self, conn: requests.Session, message: Message, since: datetime) -> Outcome | None:
        token = self.settings.token
        if token is None or not token:
            return None
        query = {"To": message.address, "PageSize": str(RECONCILE_PAGE_SIZE)}
        if self.options.from_ is not None:
            query["From"] = self.options.from_
        params: dict[str, str] | None = query
        path = self.path
        for _ in range(RECONCILE_MAX_PAGES):
            response = self.get(
                conn,
                path,
                params=params,
                auth=(self.account_sid, token.reveal()),
                headers={"Accept": "application/json"},
            )
            page = _error_body(response)
            items = page.get("messages")
            if not isinstance(items, list):
                return None
            older = False
            for item in items:
                if not isinstance(item, Mapping):
                    return None
                created = _parse_date(item.get("date_created"))
                if created is None:
                    return None
                if created < since:
                    older = True
                    continue
                if self._matches(item, message):
                    sid = item.get("sid")
                    return Outcome.sent(str(sid) if sid else None)
            next_uri = page.get("next_page_uri")
            if older or not next_uri:
                return Outcome.failed(
                    "Twilio has no such message", code="not_found", transient=True
                )
            path, params = str(next_uri), None  # the next page's URI carries its query
        return None

    def _matches(self, item: Mapping[str, Any], message: Message) -> bool:
        """Whether a listed message is ``message`` as this channel sends it."""
        if item.get("to") != message.address or item.get("body") != message.body:
            return False
        if not str(item.get("direction") or "outbound-api").startswith("outbound"):
            return False
        if self.options.from_ is not None and item.get("from") not in (None, self.options.from_):
            return False
        service = self.options.messaging_service_sid
        return service is None or item.get("messaging_service_sid") in (None, service)

    def send_batch(self, conn: requests.Session, messages: Sequence[Message]) -> Sequence[Outcome]:
        """Send one message (the batch size is 1); see the class docstring for outcomes."""
        return [self._send_one(conn, message) for message in messages]

    def _send_one(self, conn: requests.Session, message: Message) -> Outcome:
        token = self.settings.token
        if token is None or not token:
            raise PermanentDeliveryError("no auth token configured", code="no_token")
        form: dict[str, str] = {"To": message.address, "Body": message.body}
        if self.options.messaging_service_sid is not None:
            form["MessagingServiceSid"] = self.options.messaging_service_sid
        if self.options.from_ is not None:
            form["From"] = self.options.from_
        callback = self.options.status_callback or self.settings.receipts_callback(
            message.reference
        )
        if callback is not None:
            form["StatusCallback"] = callback
        if self.options.validity_period is not None:
            form["ValidityPeriod"] = str(self.options.validity_period)
        try:
            response = self.post(
                conn,
                self.path,
                data=form,
                auth=(self.account_sid, token.reveal()),
                headers={"Accept": "application/json"},
            )
        except PermanentDeliveryError as exc:
            if exc.code in RECIPIENT_ERROR_CODES:
                return Outcome.failed(str(exc), code=exc.code)
            if exc.code in TRANSIENT_ERROR_CODES:
                raise TransientDeliveryError(
                    str(exc), code=exc.code, status_code=exc.status_code
                ) from None
            raise
        sid = _error_body(response).get("sid")
        # A 2xx means Twilio queued the message: never report it failed (a retry
        # would send it twice), even if the body is not what we expect.
        return Outcome.sent(str(sid) if sid else None)


def _parse_date(value: Any) -> datetime | None:
    """An RFC 2822 date from Twilio (``Fri, 04 Dec 2026 20:26:48 +0000``), aware."""
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return parsed if parsed.tzinfo is not None else None


@hookimpl
def campaignkit_register_channels(register: Callable[[type[Any]], None]) -> None:
    """Register :class:`TwilioNotifier`."""
    register(TwilioNotifier)
