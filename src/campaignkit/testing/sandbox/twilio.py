"""A loopback fake of Twilio's Messages API: :class:`TwilioServer`."""

from __future__ import annotations

import base64
import binascii
import email.utils
import hmac
import math
import re
import secrets
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime
from typing import Any, ClassVar, Self
from urllib.parse import urlencode, urlsplit

import attrs

from ._faults import Faults
from ._receipt_events import twilio_callbacks
from ._receipt_server import ReceiptServer
from ._server import ProviderServer
from ._wire import Reply, Request, loads

__all__ = ["MessageContent", "TwilioServer"]

E164 = re.compile(r"\+[1-9][0-9]{1,14}")

_MESSAGES_PATH = re.compile(r"/2010-04-01/Accounts/([^/]+)/Messages(?:/([^/]+))?\.json")

# GSM 03.38: characters of the basic set cost one septet, the extension set two.
_GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
_GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


def sms_segments(text: str) -> tuple[int, str]:
    """Return ``(segments, encoding)`` for an SMS body.

    GSM-7 fits 160 septets in one segment and 153 per part once concatenated;
    one character outside GSM-7 makes the whole message UCS-2 (70 / 67 UTF-16
    units).
    """
    if all(c in _GSM7_BASIC or c in _GSM7_EXTENSION for c in text):
        units = len(text) + sum(c in _GSM7_EXTENSION for c in text)
        single, part, encoding = 160, 153, "GSM-7"
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, part, encoding = 70, 67, "UCS-2"
    return (1 if units <= single else math.ceil(units / part)), encoding


def reserved_invalid(number: str) -> bool:
    """The sandboxes' reserved range of invalid numbers: ``+1555010XXXX``.

    A NANP exchange cannot start with 0, so no real number is in this range.
    """
    return len(number) == 12 and number.startswith("+1555010") and number[8:].isdigit()


_CONTENT_SID = re.compile(r"HX[0-9a-fA-F]{32}")
#: Most ``MediaUrl`` parameters Twilio accepts on one message.
MAX_MEDIA = 10


@attrs.frozen
class MessageContent:
    """What a Twilio message carries: ``Body``, ``MediaUrl`` (repeatable) and
    ``ContentSid`` with ``ContentVariables``, as the form sent them."""

    body: str = ""
    media_urls: tuple[str, ...] = ()
    content_sid: str | None = None
    content_variables: str | None = None

    @classmethod
    def from_form(cls, form: Mapping[str, list[str]]) -> MessageContent:
        """The content parameters of a parsed form (``parse_qs`` shape)."""
        return cls(
            body=(form.get("Body") or [""])[0],
            media_urls=tuple(u for u in form.get("MediaUrl", []) if u),
            content_sid=(form.get("ContentSid") or [""])[0] or None,
            content_variables=(form.get("ContentVariables") or [""])[0] or None,
        )

    def variables(self) -> dict[str, Any] | None:
        """``ContentVariables`` decoded, or ``None`` (absent or not a JSON object)."""
        if self.content_variables is None:
            return None
        try:
            decoded = loads(self.content_variables)
        except ValueError:
            return None
        return decoded if isinstance(decoded, dict) else None

    def problem(self) -> tuple[int, str] | None:
        """Twilio's ``(code, message)`` for content it refuses, or ``None``."""
        if not self.body and not self.media_urls and self.content_sid is None:
            return 21602, "Message body is required."
        if len(self.body) > TwilioServer.MAX_BODY:
            return 21617, "The concatenated message body exceeds the 1600 character limit."
        if len(self.media_urls) > MAX_MEDIA:
            return 21623, "Number of media files exceeds allowed limit"
        for url in self.media_urls:
            parts = urlsplit(url)
            if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
                return 21620, f"Invalid media URL(s): {url}"
        if self.content_sid is not None and not _CONTENT_SID.fullmatch(self.content_sid):
            return 21655, f"The ContentSid {self.content_sid} is invalid."
        if self.content_variables is not None and self.variables() is None:
            return 21656, "The ContentVariables Parameter is invalid."
        return None


def _scheduled_for(params: Mapping[str, str]) -> datetime | None:
    """When a message with ``ScheduleType=fixed`` and an ISO 8601 ``SendAt`` is to be
    sent (``None`` for a message sent now, or scheduling parameters not understood)."""
    if params.get("ScheduleType") != "fixed" or not params.get("SendAt"):
        return None
    try:
        when = datetime.fromisoformat(params["SendAt"])
    except ValueError:
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class TwilioServer(ReceiptServer):
    """Twilio's ``POST /2010-04-01/Accounts/{AccountSid}/Messages.json`` on 127.0.0.1.

    It checks what Twilio checks, in Twilio's order, and answers with Twilio's
    bodies ``{code, message, more_info, status}``:

    * HTTP Basic auth with :attr:`account_sid` and :attr:`token` (and the same SID
      in the path), else 401 / 20003;
    * a form-urlencoded body (Twilio reads no JSON: another content type leaves
      every parameter missing);
    * ``To`` (21604), ``From`` or ``MessagingServiceSid`` (21603), and content
      present: ``Body``, one or more ``MediaUrl`` (repeatable, with or without
      ``Body``) or ``ContentSid`` (a Content Template ``HX`` + 32 hex digits, with
      optional ``ContentVariables``, a JSON object; no ``Body`` needed), else 21602;
      ``From`` one of :attr:`from_numbers` (21606, any number when the set is
      empty); ``MessagingServiceSid`` equal to :attr:`messaging_service_sid`
      (21701); ``Body`` at most 1,600 characters (21617); at most 10 ``MediaUrl``
      (21623), each an ``http(s)://`` URL (21620); a well-formed ``ContentSid``
      (21655) and ``ContentVariables`` (21656);
    * ``To`` in E.164 and not invalid (21211): neither in :attr:`invalid` nor
      matched by :attr:`is_invalid` (by default the reserved range
      ``+1555010XXXX``); not in :attr:`unsubscribed` (21610, the recipient sent
      STOP); not in :attr:`landlines` (21614, not a mobile number).

    The three sets start with Twilio's magic test numbers (``+15005550001``
    invalid, ``+15005550004`` unsubscribed, ``+15005550009`` not mobile).

    A message with ``ScheduleType=fixed`` and an ISO 8601 ``SendAt`` is answered with
    status ``scheduled`` (its record's ``send_at``) and has no ``date_sent`` before
    that time. With receipts attached (:meth:`attach_receipts`), a message with a
    ``StatusCallback`` gets Twilio's signed form POSTs there: ``sent``, then
    ``delivered`` or ``undelivered`` (``ErrorCode`` 30003 soft, 30005 hard), and
    for a drawn ``stop`` an inbound ``STOP`` message (at Twilio that goes to the
    number's inbound webhook; here to the same URL). Other parameters Twilio
    documents (``ValidityPeriod``, ``SmartEncoded``, ``ShortenUrls``, ...) are
    accepted without effect, as Twilio's unknown parameters are, and kept in the record's ``params``
    (scheduling is not checked further: the sandbox does not refuse a ``SendAt``
    outside Twilio's window or without a Messaging Service). The ``Authorization``
    scheme is matched without case (RFC 9110).

    Accepted messages get 201 with Twilio's message resource (sid ``SM`` + 32 hex
    digits, status ``queued``, or ``accepted`` through a Messaging Service;
    ``num_media`` the number of ``MediaUrl``) and are appended to :attr:`messages`
    as dicts with ``id``/``sid``, ``to``, ``from``, ``body``, ``media_urls``,
    ``content_sid``, ``content_variables`` (the decoded object or ``None``),
    ``messaging_service_sid``, ``status_callback``, ``validity_period``,
    ``num_segments``, ``content_type``, ``account_sid``, ``send_at`` and ``params`` (every
    form parameter: a string, or a list of strings for a repeated one).
    Refused requests that reached validation are appended to :attr:`rejected`
    (``to``, ``code``, ``status``).

    ``GET .../Messages/{Sid}.json`` fetches one accepted message (Twilio's message
    resource; an unknown SID is 404 / 20404; updating or deleting one is 405 /
    20004). ``GET .../Messages.json`` is Twilio's message list: newest first, filtered by
    ``To``, ``From`` and ``DateSent`` (``DateSent``, ``DateSent<``, ``DateSent>``:
    a date ``YYYY-MM-DD``; a message not sent yet has no ``date_sent``; here
    :attr:`sent_after` seconds after creation, ``None``: never), paged by
    ``PageSize`` (default 50, at most 1000) and ``Page``/``PageToken``, in Twilio's
    shape ``{"messages": [...], "page", "page_size", "uri", "first_page_uri",
    "next_page_uri", "previous_page_uri", "start", "end"}``.

    Rate limiting answers 429 / 20429 with ``Retry-After``; server errors answer
    Twilio's 5xx body (20500, or 20503 for 503).
    """

    provider: ClassVar[str] = "twilio"
    #: Twilio's magic sender number for test credentials; the default :attr:`from_numbers`.
    DEFAULT_FROM: ClassVar[str] = "+15005550006"
    MAX_BODY: ClassVar[int] = 1600

    def __init__(
        self,
        *,
        token: str = ProviderServer.DEFAULT_TOKEN,
        port: int = 0,
        faults: Faults | None = None,
        account_sid: str | None = None,
        from_numbers: Iterable[str] = (DEFAULT_FROM,),
        invalid: Iterable[str] = ("+15005550001",),
        unsubscribed: Iterable[str] = ("+15005550004",),
        landlines: Iterable[str] = ("+15005550009",),
        is_invalid: Callable[[str], bool] = reserved_invalid,
    ) -> None:
        super().__init__(token=token, port=port, faults=faults)
        self.account_sid = account_sid or "AC" + secrets.token_hex(16)
        self.messaging_service_sid = "MG" + secrets.token_hex(16)
        self.from_numbers: set[str] = set(from_numbers)
        self.invalid: set[str] = set(invalid)
        self.unsubscribed: set[str] = set(unsubscribed)
        self.landlines: set[str] = set(landlines)
        self.is_invalid = is_invalid
        self.messages: list[dict[str, Any]] = []
        self.rejected: list[dict[str, Any]] = []
        #: seconds after creation at which a message counts as sent (``date_sent``)
        self.sent_after: float | None = 0.0

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
        """The Twilio channel ``options`` that send to this server.

        Keys: ``base_url``, ``account_sid``, ``from``.
        """
        return {
            "base_url": self.base_url,
            "account_sid": self.account_sid,
            "from": self.from_number,
        }

    def reset(self) -> None:
        """Forget recorded messages, rejections and request times; clear scripted faults."""
        with self.lock:
            self.messages.clear()
            self.rejected.clear()
            self.request_times.clear()
            self.faults.script.clear()

    # -- Twilio's contract -------------------------------------------------------------
    @staticmethod
    def error(status: int, code: int, message: str, **extra: Any) -> Reply:
        """A Twilio error reply ``{code, message, more_info, status}``."""
        body = {
            "code": code,
            "message": message,
            "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status,
            **extra,
        }
        return Reply(status, body)

    def _authorized(self, request: Request, path_sid: str) -> bool:
        scheme, _, value = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return False
        username, _, password = decoded.partition(":")
        return (
            hmac.compare_digest(username.encode(), self.account_sid.encode())
            and hmac.compare_digest(password.encode(), self.token.encode())
            and path_sid == self.account_sid
        )

    def handle(self, request: Request) -> Reply:
        match = _MESSAGES_PATH.fullmatch(request.path)
        if match is None:
            return self.error(404, 20404, f"The requested resource {request.path} was not found")
        if not self._authorized(request, match.group(1)):
            denied = self.error(
                401, 20003, "Authenticate", detail="Your AccountSid or AuthToken was incorrect."
            )
            return Reply(401, denied.body, {"WWW-Authenticate": 'Basic realm="Twilio API"'})
        if match.group(2) is not None:
            return self._message(request, match.group(2))
        if request.method == "GET":
            return self._list(request)
        if request.method != "POST":
            return self.error(405, 20004, "Method not allowed")
        form = request.form() if request.content_type == "application/x-www-form-urlencoded" else {}
        params = {key: values[0] for key, values in form.items() if values}
        content = MessageContent.from_form(form)
        to = params.get("To", "")
        sender = params.get("From") or None
        service = params.get("MessagingServiceSid") or None
        refused = self._validate(to, sender, service, content)
        if refused is not None:
            with self.lock:
                self.rejected.append(
                    {"to": to, "code": str(refused.body["code"]), "status": refused.status}
                )
            return refused
        sid = "SM" + secrets.token_hex(16)
        segments, _ = sms_segments(content.body)
        created = datetime.now(UTC)
        send_at = _scheduled_for(params)
        status = "scheduled" if send_at else "accepted" if service else "queued"
        record = {
            "id": sid,
            "sid": sid,
            "to": to,
            "from": sender,
            "body": content.body,
            "media_urls": list(content.media_urls),
            "content_sid": content.content_sid,
            "content_variables": content.variables(),
            "messaging_service_sid": service,
            "status_callback": params.get("StatusCallback"),
            "validity_period": params.get("ValidityPeriod"),
            "num_segments": segments,
            "status": status,
            "content_type": request.content_type,
            "account_sid": self.account_sid,
            "date_created": created,
            "send_at": send_at,
            "params": {k: v[0] if len(v) == 1 else list(v) for k, v in form.items()},
        }
        with self.lock:
            self.messages.append(record)
        twilio_callbacks(self, record)
        return Reply(201, self._resource(record, created))

    def _date_sent(self, record: Mapping[str, Any]) -> datetime | None:
        if self.sent_after is None:
            return None
        created: datetime = record["date_created"]
        sent = created.timestamp() + self.sent_after
        if record.get("send_at") is not None:  # a scheduled message leaves at SendAt
            sent = max(sent, record["send_at"].timestamp())
        return datetime.fromtimestamp(sent, UTC) if sent <= datetime.now(UTC).timestamp() else None

    def _resource(self, record: Mapping[str, Any], now: datetime | None = None) -> dict[str, Any]:
        """Twilio's message resource for a recorded message."""
        created: datetime = record["date_created"]
        sent = None if now is not None else self._date_sent(record)
        uri = f"/2010-04-01/Accounts/{self.account_sid}/Messages/{record['sid']}"
        return {
            "account_sid": self.account_sid,
            "api_version": "2010-04-01",
            "body": record["body"],
            "date_created": email.utils.format_datetime(created, usegmt=True),
            "date_sent": email.utils.format_datetime(sent, usegmt=True) if sent else None,
            "date_updated": email.utils.format_datetime(sent or created, usegmt=True),
            "direction": "outbound-api",
            "error_code": int(record["final_error"])
            if sent and record.get("final_error")
            else None,
            "error_message": None,
            "from": record["from"],
            "messaging_service_sid": record["messaging_service_sid"],
            "num_media": str(len(record.get("media_urls") or ())),
            "num_segments": str(record["num_segments"]),
            "price": None,
            "price_unit": "USD",
            "sid": record["sid"],
            "status": record["status"] if sent is None else record.get("final_status", "sent"),
            "subresource_uris": {"media": f"{uri}/Media.json"},
            "to": record["to"],
            "uri": f"{uri}.json",
        }

    def _message(self, request: Request, sid: str) -> Reply:
        """Twilio's message fetch (``GET .../Messages/{Sid}.json``)."""
        if request.method != "GET":
            return self.error(
                405,
                20004,
                "Method not allowed (the sandbox fetches messages; it does not "
                "update or delete them)",
            )
        with self.lock:
            record = next((r for r in self.messages if r["sid"] == sid), None)
        if record is None:
            return self.error(404, 20404, f"The requested resource {request.path} was not found")
        return Reply(200, self._resource(record))

    def _list(self, request: Request) -> Reply:
        """Twilio's message list (see the class docstring)."""
        query = {key: values[0] for key, values in request.query.items() if values}
        try:
            size = min(max(int(query.get("PageSize", "50")), 1), 1000)
            page = max(int(query.get("Page", "0")), 0)
            bounds = {
                op: date.fromisoformat(query[key])
                for op, key in (("=", "DateSent"), ("<", "DateSent<"), (">", "DateSent>"))
                if key in query
            }
        except ValueError:
            return self.error(400, 20001, "Invalid parameter")
        with self.lock:
            records = list(reversed(self.messages))
        found = []
        for record in records:
            if "To" in query and record["to"] != query["To"]:
                continue
            if "From" in query and record["from"] != query["From"]:
                continue
            if bounds:
                sent = self._date_sent(record)
                day = sent.date() if sent is not None else None
                if day is None:
                    continue
                if "=" in bounds and day != bounds["="]:
                    continue
                if "<" in bounds and day > bounds["<"]:
                    continue
                if ">" in bounds and day < bounds[">"]:
                    continue
            found.append(record)
        chunk = found[page * size : (page + 1) * size]
        base = f"/2010-04-01/Accounts/{self.account_sid}/Messages.json"
        keep = {k: v for k, v in query.items() if k not in ("Page", "PageSize", "PageToken")}

        def uri(number: int) -> str:
            params = {**keep, "PageSize": size, "Page": number, "PageToken": f"PASM{number}"}
            return f"{base}?{urlencode(params)}"

        more = (page + 1) * size < len(found)
        return Reply(
            200,
            {
                "end": page * size + max(len(chunk) - 1, 0),
                "first_page_uri": uri(0).split("&PageToken")[0],
                "messages": [self._resource(r) for r in chunk],
                "next_page_uri": uri(page + 1) if more else None,
                "page": page,
                "page_size": size,
                "previous_page_uri": uri(page - 1) if page > 0 else None,
                "start": page * size,
                "uri": uri(page) if page else uri(0).split("&PageToken")[0],
            },
        )

    def _validate(
        self, to: str, sender: str | None, service: str | None, content: MessageContent
    ) -> Reply | None:
        if not to:
            return self.error(400, 21604, "A 'To' phone number is required.")
        if sender is None and service is None:
            return self.error(400, 21603, "A 'From' phone number is required.")
        if service is not None and service != self.messaging_service_sid:
            return self.error(400, 21701, f"The Messaging Service Sid {service} is invalid.")
        if sender is not None and self.from_numbers and sender not in self.from_numbers:
            return self.error(
                400,
                21606,
                f"The From phone number {sender} is not a valid, SMS-capable inbound phone "
                f"number or short code for your account.",
            )
        refused = content.problem()
        if refused is not None:
            return self.error(400, *refused)
        if not E164.fullmatch(to) or to in self.invalid or self.is_invalid(to):
            return self.error(400, 21211, f"The 'To' number {to} is not a valid phone number.")
        if to in self.unsubscribed:
            return self.error(400, 21610, "Attempt to send to unsubscribed recipient")
        if to in self.landlines:
            return self.error(400, 21614, f"'To' number {to} is not a valid mobile number")
        return None

    # -- faults in Twilio's words ------------------------------------------------------
    def rate_limited_reply(self, retry_after: float) -> Reply:
        reply = self.error(429, 20429, "Too Many Requests")
        return Reply(429, reply.body, {"Retry-After": f"{retry_after:g}"})

    def server_error_reply(self, status: int) -> Reply:
        if status == 503:
            return self.error(503, 20503, "Service Unavailable")
        if status >= 500:
            return self.error(status, 20500, "Internal Server Error")
        return self.error(status, 20000 + status, "Scripted error")
