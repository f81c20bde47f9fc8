"""A loopback fake of the Expo push service: :class:`ExpoServer`."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from ._server import Faults, ProviderServer, Reply, Request

__all__ = ["ExpoServer"]

SEND_PATH = "/--/api/v2/push/send"
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


def is_expo_push_token(value: object) -> bool:
    """Whether ``value`` looks like ``ExponentPushToken[...]`` or ``ExpoPushToken[...]``."""
    return isinstance(value, str) and bool(_TOKEN_RE.match(value))


class ExpoServer(ProviderServer):
    """Speaks Expo's ``POST /--/api/v2/push/send`` on 127.0.0.1.

    Contract checked: JSON content type; a message object or an array of them; at most
    100 notifications per request (a message whose ``to`` is a list counts once per
    token), else 400 ``PUSH_TOO_MANY_NOTIFICATIONS``; field types (400
    ``VALIDATION_ERROR``); with ``require_auth=True``, ``Authorization: Bearer <token>``
    (else 401 ``UNAUTHORIZED``).

    Replies 200 ``{"data": [ticket, ...]}`` with one ticket per notification, in order.
    A ``to`` that is not an Expo push token, or is in :attr:`unregistered`, gets a
    ``DeviceNotRegistered`` ticket error; :attr:`ticket_errors` maps tokens to other
    ticket errors (``InvalidCredentials``, ``MessageRateExceeded``, ``MessageTooBig``);
    a message over 4096 bytes gets ``MessageTooBig``. Rate limiting and 5xx use
    Expo's ``{"errors": [{"code", "message"}]}`` body.

    Attributes:
        messages: one dict per accepted notification: ``to``, ``id`` (the ticket id),
            ``title``, ``body``, ``data``, ``ttl``, ``priority``, ``sound``, ``channel_id``.
        unregistered: tokens answered with ``DeviceNotRegistered``.
        ticket_errors: tokens answered with the given ticket error code.
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
    ) -> None:
        super().__init__(token=token, port=port, faults=faults)
        self.require_auth = require_auth
        self.unregistered: set[str] = set(unregistered)
        self.ticket_errors: dict[str, str] = dict(ticket_errors or {})
        self.messages: list[dict[str, Any]] = []

    def channel_options(self) -> dict[str, Any]:
        """The channel ``options`` that send to this server: ``{"base_url": ...}``."""
        return {"base_url": self.base_url}

    def reset(self) -> None:
        """Forget recorded messages and requests and clear the faults (keeps the settings)."""
        with self.lock:
            self.messages.clear()
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

    def handle(self, request: Request) -> Reply:
        if request.path != SEND_PATH:
            return _error(404, "NOT_FOUND", f"No route for {request.path}")
        if request.method != "POST":
            return _error(405, "METHOD_NOT_ALLOWED", "Use POST")
        if self.require_auth and request.headers.get("authorization") != f"Bearer {self.token}":
            return _error(401, "UNAUTHORIZED", "The bearer token is invalid or missing.")
        if request.content_type != "application/json":
            return _error(400, "VALIDATION_ERROR", "Content-Type must be application/json")
        try:
            payload = request.json()
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
            accepted.append(
                {
                    "to": to,
                    "id": ticket_id,
                    "title": item.get("title"),
                    "body": item.get("body"),
                    "data": item.get("data") or {},
                    "ttl": item.get("ttl"),
                    "priority": item.get("priority"),
                    "sound": item.get("sound"),
                    "channel_id": item.get("channelId"),
                }
            )
        with self.lock:
            self.messages.extend(accepted)
        return Reply(200, {"data": tickets})

    def _ticket_error(self, item: Mapping[str, Any], to: str) -> str | None:
        if not is_expo_push_token(to) or to in self.unregistered:
            return "DeviceNotRegistered"
        if to in self.ticket_errors:
            return self.ticket_errors[to]
        size = len(json.dumps({k: item.get(k) for k in ("title", "body", "data")}).encode())
        if size > MAX_MESSAGE_BYTES:
            return "MessageTooBig"
        return None


def _validate(item: Any) -> str | None:
    """What is wrong with one message object, or ``None``."""
    if not isinstance(item, dict):
        return "each message must be an object"
    to = item.get("to")
    if isinstance(to, str):
        pass
    elif not (isinstance(to, list) and to and all(isinstance(t, str) for t in to)):
        return '"to" must be a push token or a non-empty list of push tokens'
    for field in ("title", "body", "subtitle", "sound", "channelId", "categoryId"):
        if item.get(field) is not None and not isinstance(item[field], str):
            return f'"{field}" must be a string'
    if item.get("data") is not None and not isinstance(item["data"], dict):
        return '"data" must be an object'
    ttl = item.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, int) or ttl < 0):
        return '"ttl" must be a non-negative integer'
    if item.get("priority") not in (None, "default", "normal", "high"):
        return '"priority" must be one of default, normal, high'
    return None
