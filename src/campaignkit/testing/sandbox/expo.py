"""A loopback fake of the Expo push service: :class:`ExpoServer`."""

from __future__ import annotations

import gzip
import hmac
import json
import re
import time
import uuid
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from ._faults import Faults
from ._receipt_events import expo_receipt_error
from ._receipt_server import ReceiptServer
from ._server import ProviderServer
from ._wire import Reply, Request, loads

__all__ = ["ExpoServer"]

SEND_PATH = "/--/api/v2/push/send"
RECEIPTS_PATH = "/--/api/v2/push/getReceipts"
#: Expo refuses a receipts request with more ids than this.
MAX_RECEIPTS = 1000
#: The ``interruptionLevel`` values Expo accepts (iOS).
INTERRUPTION_LEVELS = ("active", "critical", "passive", "time-sensitive")
#: Expo refuses a request with more notifications than this.
MAX_NOTIFICATIONS = 100
#: Largest message payload Expo delivers, in bytes.
MAX_MESSAGE_BYTES = 4096

_TOKEN_RE = re.compile(r"^Expo(nent)?PushToken\[.+\]$")

_TICKET_MESSAGES = {
    "DeviceNotRegistered": '"{to}" is not a registered push notification recipient',
    "InvalidCredentials": "Unable to retrieve the push credentials for the recipient's app",
    "MessageTooBig": "The message is larger than 4096 bytes",
    "MessageRateExceeded": "The recipient's device is receiving messages too quickly",
}
_STATUS_CODES = {
    400: "VALIDATION_ERROR",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    429: "TOO_MANY_REQUESTS",
}


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> Reply:
    return Reply(status, {"errors": [{"code": code, "message": message}]}, dict(headers or {}))


def _json_body(request: Request) -> Any:
    """The request's JSON, gunzipped first when sent with ``Content-Encoding: gzip``
    (as Expo accepts); ``ValueError`` when it is not JSON (or not gzip)."""
    body = request.body
    if request.headers.get("content-encoding", "").strip().lower() == "gzip":
        try:
            body = gzip.decompress(body)
        except (OSError, EOFError, zlib.error):
            raise ValueError("the body is not gzip") from None
    return loads(body.decode("utf-8"))


def is_expo_push_token(value: object) -> bool:
    """Whether ``value`` looks like ``ExponentPushToken[...]`` or ``ExpoPushToken[...]``."""
    return isinstance(value, str) and bool(_TOKEN_RE.match(value))


class ExpoServer(ReceiptServer):
    """Speaks Expo's ``POST /--/api/v2/push/send`` on 127.0.0.1.

    Contract checked: JSON content type; a message object or an array of them; at most
    100 notifications per request (a message whose ``to`` is a list counts once per
    token), else 400 ``PUSH_TOO_MANY_NOTIFICATIONS``; field types (400
    ``VALIDATION_ERROR``); with ``require_auth=True``, ``Authorization: Bearer <token>``
    (else 401 ``UNAUTHORIZED``; the scheme is matched without case).

    Fields accepted as Expo documents them: ``to`` (a token or a list of tokens),
    ``title``, ``subtitle``, ``body``, ``data`` (an object), ``ttl`` and
    ``expiration`` (non-negative integers), ``priority`` (``default``, ``normal``,
    ``high``), ``sound`` (a string, or an object ``{"critical": bool, "name": str,
    "volume": 0..1}``), ``badge`` (a non-negative integer), ``channelId``,
    ``categoryId``, ``mutableContent`` (a boolean) and ``interruptionLevel``
    (``active``, ``critical``, ``passive``, ``time-sensitive``); others are ignored.
    The ``useFcmV1`` query parameter the SDK may add is ignored. A body sent with
    ``Content-Encoding: gzip`` is decompressed first, as Expo accepts.

    Replies 200 ``{"data": [ticket, ...]}`` with one ticket per notification, in order.
    A ``to`` that is not an Expo push token, or is in :attr:`unregistered`, gets a
    ``DeviceNotRegistered`` ticket error; :attr:`ticket_errors` maps tokens to other
    ticket errors (``InvalidCredentials``, ``MessageRateExceeded``, ``MessageTooBig``);
    a message over 4096 bytes gets ``MessageTooBig``. Rate limiting and 5xx use
    Expo's ``{"errors": [{"code", "message"}]}`` body.

    ``POST /--/api/v2/push/getReceipts`` ``{"ids": [...]}`` (at most 1,000, else 400
    ``PUSH_TOO_MANY_RECEIPTS``) answers ``{"data": {id: receipt}}`` for the known ticket
    ids: ``{"status": "ok"}``, or for a token in :attr:`receipt_errors` ``{"status":
    "error", "message", "details": {"error"}}``. With receipts attached
    (:meth:`attach_receipts`), a ticket's receipt exists only ``delay_seconds`` after
    it was issued (before, its id is absent, as at Expo) and carries the simulated
    outcome: bounced ``DeviceNotRegistered``, undelivered ``MessageRateExceeded``,
    others ``ok`` (a token in :attr:`receipt_errors` keeps its error).

    Attributes:
        messages: one dict per accepted notification: ``to``, ``id`` (the ticket id),
            ``title``, ``subtitle``, ``body``, ``data``, ``ttl``, ``expiration``,
            ``priority``, ``sound``, ``badge``, ``channel_id``, ``category_id``,
            ``mutable_content``, ``interruption_level`` and ``message`` (the message
            object as sent).
        unregistered: tokens answered with ``DeviceNotRegistered``.
        ticket_errors: tokens answered with the given ticket error code.
        receipt_errors: tokens whose receipt carries the given error code
            (``DeviceNotRegistered``, ``MessageTooBig``, ``MessageRateExceeded``,
            ``InvalidCredentials``).
        require_auth: whether the access token is required (enhanced push security).
    """

    provider: ClassVar[str] = "expo"

    def __init__(
        self,
        *,
        token: str = ProviderServer.DEFAULT_TOKEN,
        port: int = 0,
        faults: Faults | None = None,
        require_auth: bool = False,
        unregistered: Iterable[str] = (),
        ticket_errors: Mapping[str, str] | None = None,
        receipt_errors: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(token=token, port=port, faults=faults)
        self.require_auth = require_auth
        self.unregistered: set[str] = set(unregistered)
        self.ticket_errors: dict[str, str] = dict(ticket_errors or {})
        self.receipt_errors: dict[str, str] = dict(receipt_errors or {})
        self.messages: list[dict[str, Any]] = []
        #: ticket id -> (monotonic time its receipt is ready, simulated error or None)
        self._simulated: dict[str, tuple[float, str | None]] = {}

    def channel_options(self) -> dict[str, Any]:
        """The channel ``options`` that send to this server: ``{"base_url": ...}``."""
        return {"base_url": self.base_url}

    def reset(self) -> None:
        """Forget recorded messages and requests and clear the faults (keeps the settings)."""
        with self.lock:
            self.messages.clear()
            self._simulated.clear()
            self.request_times.clear()
            self.faults = Faults()

    # -- provider replies -------------------------------------------------------------
    def rate_limited_reply(self, retry_after: float) -> Reply:
        return _error(
            429,
            "TOO_MANY_REQUESTS",
            "You are sending too many requests; wait before retrying.",
            {"Retry-After": f"{retry_after:g}"},
        )

    def server_error_reply(self, status: int) -> Reply:
        if status in _STATUS_CODES:
            return _error(status, _STATUS_CODES[status], f"HTTP {status}")
        return _error(status, "INTERNAL_SERVER_ERROR", "An unknown error occurred.")

    def _authorized(self, request: Request) -> bool:
        if not self.require_auth:
            return True
        scheme, _, value = request.headers.get("authorization", "").strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self.token.encode()
        )

    def handle(self, request: Request) -> Reply:
        if request.path not in (SEND_PATH, RECEIPTS_PATH):
            return _error(404, "NOT_FOUND", f"No route for {request.path}")
        if request.method != "POST":
            return _error(405, "METHOD_NOT_ALLOWED", "Use POST")
        if not self._authorized(request):
            return _error(401, "UNAUTHORIZED", "The bearer token is invalid or missing.")
        if request.path == RECEIPTS_PATH:
            return self._receipts(request)
        if request.content_type != "application/json":
            return _error(400, "VALIDATION_ERROR", "Content-Type must be application/json")
        try:
            payload = _json_body(request)
        except ValueError:
            return _error(400, "VALIDATION_ERROR", "The request body is not valid JSON")
        items = payload if isinstance(payload, list) else [payload]
        problem = next((p for p in map(_validate, items) if p), None)
        if problem:
            return _error(400, "VALIDATION_ERROR", problem)
        notifications = [
            (item, to)
            for item in items
            for to in (item["to"] if isinstance(item["to"], list) else [item["to"]])
        ]
        if len(notifications) > MAX_NOTIFICATIONS:
            return _error(
                400,
                "PUSH_TOO_MANY_NOTIFICATIONS",
                f"You are trying to send {len(notifications)} push notifications in one request; "
                f"the maximum is {MAX_NOTIFICATIONS}.",
            )
        return self._push(notifications)

    def _push(self, notifications: list[tuple[dict[str, Any], str]]) -> Reply:
        """A ticket for each notification; the accepted ones go to :attr:`messages`."""
        tickets: list[dict[str, Any]] = []
        accepted: list[dict[str, Any]] = []
        for item, to in notifications:
            error = self._ticket_error(item, to)
            if error:
                tickets.append(
                    {
                        "status": "error",
                        "message": _TICKET_MESSAGES[error].format(to=to),
                        "details": {"error": error, "expoPushToken": to},
                    }
                )
                continue
            ticket_id = str(uuid.uuid4())
            tickets.append({"status": "ok", "id": ticket_id})
            accepted.append(_record(item, to, ticket_id))
        with self.lock:
            self.messages.extend(accepted)
        if self.receipts is not None:
            ready = time.monotonic() + self.receipts.delay_seconds
            for record in accepted:
                outcome = expo_receipt_error(self.receipt_outcome(record["to"])[1])
                with self.lock:
                    self._simulated[record["id"]] = (ready, outcome)
        return Reply(200, {"data": tickets})

    def _receipts(self, request: Request) -> Reply:
        """Expo's ``getReceipts``: a receipt for each known ticket id."""
        try:
            payload = _json_body(request)
        except ValueError:
            return _error(400, "VALIDATION_ERROR", "The request body is not valid JSON")
        ids = payload.get("ids") if isinstance(payload, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            return _error(400, "VALIDATION_ERROR", '"ids" must be an array of ticket ids')
        if len(ids) > MAX_RECEIPTS:
            return _error(
                400,
                "PUSH_TOO_MANY_RECEIPTS",
                f"You are trying to get {len(ids)} receipts; the maximum is {MAX_RECEIPTS}.",
            )
        with self.lock:
            tokens = {m["id"]: m["to"] for m in self.messages}
            simulated = dict(self._simulated)
        now = time.monotonic()
        receipts: dict[str, Any] = {}
        for ticket_id in ids:
            if ticket_id not in tokens:
                continue
            error = self.receipt_errors.get(tokens[ticket_id])
            if error is None and ticket_id in simulated:
                ready, error = simulated[ticket_id]
                if now < ready:
                    continue
            receipts[ticket_id] = (
                {
                    "status": "error",
                    "message": _TICKET_MESSAGES.get(error, error).format(to=tokens[ticket_id]),
                    "details": {"error": error},
                }
                if error
                else {"status": "ok"}
            )
        return Reply(200, {"data": receipts})

    def _ticket_error(self, item: Mapping[str, Any], to: str) -> str | None:
        if not is_expo_push_token(to) or to in self.unregistered:
            return "DeviceNotRegistered"
        if to in self.ticket_errors:
            return self.ticket_errors[to]
        size = len(json.dumps({k: item.get(k) for k in ("title", "body", "data")}).encode())
        if size > MAX_MESSAGE_BYTES:
            return "MessageTooBig"
        return None


def _record(item: Mapping[str, Any], to: str, ticket_id: str) -> dict[str, Any]:
    """What :attr:`ExpoServer.messages` keeps of an accepted notification."""
    return {
        "to": to,
        "id": ticket_id,
        "title": item.get("title"),
        "subtitle": item.get("subtitle"),
        "body": item.get("body"),
        "data": item.get("data") or {},
        "ttl": item.get("ttl"),
        "expiration": item.get("expiration"),
        "priority": item.get("priority"),
        "sound": item.get("sound"),
        "badge": item.get("badge"),
        "channel_id": item.get("channelId"),
        "category_id": item.get("categoryId"),
        "mutable_content": item.get("mutableContent"),
        "interruption_level": item.get("interruptionLevel"),
        "message": dict(item),
    }


def _validate(item: Any) -> str | None:
    """What is wrong with one message object, or ``None``."""
    if not isinstance(item, dict):
        return "each message must be an object"
    to = item.get("to")
    if isinstance(to, str):
        pass
    elif not (isinstance(to, list) and to and all(isinstance(t, str) for t in to)):
        return '"to" must be a push token or a non-empty list of push tokens'
    for field in ("title", "body", "subtitle", "channelId", "categoryId"):
        if item.get(field) is not None and not isinstance(item[field], str):
            return f'"{field}" must be a string'
    problem = _sound_problem(item.get("sound"))
    if problem:
        return problem
    if item.get("data") is not None and not isinstance(item["data"], dict):
        return '"data" must be an object'
    for field in ("ttl", "expiration", "badge"):
        value = item.get(field)
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 0
        ):
            return f'"{field}" must be a non-negative integer'
    if item.get("priority") not in (None, "default", "normal", "high"):
        return '"priority" must be one of default, normal, high'
    if item.get("mutableContent") is not None and not isinstance(item["mutableContent"], bool):
        return '"mutableContent" must be a boolean'
    if item.get("interruptionLevel") not in (None, *INTERRUPTION_LEVELS):
        return '"interruptionLevel" must be one of ' + ", ".join(INTERRUPTION_LEVELS)
    return None


def _sound_problem(sound: Any) -> str | None:
    """What is wrong with ``sound`` (a string or ``{critical, name, volume}``), or ``None``."""
    if sound is None or isinstance(sound, str):
        return None
    if not isinstance(sound, dict):
        return '"sound" must be a string or an object'
    unknown = set(sound) - {"critical", "name", "volume"}
    if unknown:
        return f'"sound.{sorted(unknown)[0]}" is not allowed'
    if sound.get("critical") is not None and not isinstance(sound["critical"], bool):
        return '"sound.critical" must be a boolean'
    if sound.get("name") is not None and not isinstance(sound["name"], str):
        return '"sound.name" must be a string'
    volume = sound.get("volume")
    if volume is not None and (
        isinstance(volume, bool) or not isinstance(volume, int | float) or not 0 <= volume <= 1
    ):
        return '"sound.volume" must be a number between 0 and 1'
    return None
