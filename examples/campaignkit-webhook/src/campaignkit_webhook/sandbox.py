"""A loopback fake of a webhook endpoint, for campaignkit's sandbox: :class:`WebhookServer`.

Registered through the ``campaignkit_register_sandbox_servers`` hook (see the package),
so ``campaignkit run --sandbox``, ``campaignkit sandbox``, ``Sandbox`` and the
``ck_sandbox`` fixture rehearse a webhook channel against it instead of the real URL.
"""

from __future__ import annotations

import hmac
import itertools
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

from campaignkit.testing.sandbox import Faults, ProviderServer, Reply, Request

__all__ = ["PATH", "WebhookServer"]

#: where the fake listens: ``POST {base_url}/hooks/campaign``
PATH = "/hooks/campaign"
#: the most messages a request may carry (the channel's ``max_batch_size``)
MAX_MESSAGES = 500

_STRINGS = ("id", "recipient_id", "to")
_OPTIONAL_STRINGS = ("subject", "title", "body", "html")


class WebhookServer(ProviderServer):
    """Speaks the webhook channel's wire contract on 127.0.0.1.

    Contract checked: ``POST /hooks/campaign``, else 404; with ``require_auth``
    (the default), ``Authorization: Bearer <token>``, else 401 ``unauthorized``;
    ``Content-Type: application/json`` and a body ``{"channel": str, "messages":
    [...]}`` whose messages have string ``id``, ``recipient_id`` and ``to``, optional
    string ``subject``, ``title``, ``body`` and ``html`` and an object ``data``, else
    422 ``bad_payload``; at most 500 messages, else 413 ``too_many_messages``.

    Replies 200 ``{"results": [{"id", "status": "sent", "message_id"}, ...]}``, one
    per message. An address in :attr:`refused` gets ``{"status": "failed", "code":
    <its code>, "error", "retry": false}``, one in :attr:`busy` the same with
    ``"retry": true`` (once: the next attempt is sent). A message whose ``id`` was
    accepted before is answered ``sent`` again and not recorded twice: the endpoint
    drops duplicates by ``id``, as the contract allows. Rate limiting (429, with
    ``Retry-After``) and 5xx answer ``{"code": ...}``.

    Attributes:
        messages: one dict per accepted message: the message as sent plus
            ``channel`` and ``message_id``.
        refused: address -> the error code its messages fail with.
        busy: addresses whose next message fails with ``"retry": true``.
        require_auth: whether requests must carry the token.
    """

    provider: ClassVar[str] = "webhook"

    def __init__(
        self,
        *,
        token: str = ProviderServer.DEFAULT_TOKEN,
        port: int = 0,
        faults: Faults | None = None,
        require_auth: bool = True,
        refused: Mapping[str, str] | None = None,
        busy: Iterable[str] = (),
    ) -> None:
        super().__init__(token=token, port=port, faults=faults)
        self.require_auth = require_auth
        self.refused: dict[str, str] = dict(refused or {})
        self.busy: set[str] = set(busy)
        self.messages: list[dict[str, Any]] = []
        self._accepted: dict[str, str] = {}  # id -> message_id
        self._ids = itertools.count(1)

    def channel_options(self) -> dict[str, Any]:
        """The webhook channel ``options`` that send to this server: ``url``."""
        return {"url": self.base_url + PATH}

    def rate_limited_reply(self, retry_after: float) -> Reply:
        return Reply(429, {"code": "rate_limited"}, {"Retry-After": f"{retry_after:g}"})

    def server_error_reply(self, status: int) -> Reply:
        return Reply(status, {"code": "server_error", "error": "internal error"})

    def handle(self, request: Request) -> Reply:
        if request.method != "POST" or request.path.rstrip("/") != PATH:
            return Reply(404, {"code": "not_found"})
        if self.require_auth and not self._authorized(request.headers.get("authorization", "")):
            return Reply(401, {"code": "unauthorized", "error": "missing or wrong token"})
        if request.content_type != "application/json":
            return Reply(415, {"code": "unsupported_media_type"})
        try:
            body = request.json()
        except ValueError:
            return _bad("the body is not JSON")
        problem = _check(body)
        if problem:
            return _bad(problem)
        if len(body["messages"]) > MAX_MESSAGES:
            return Reply(413, {"code": "too_many_messages", "error": f"at most {MAX_MESSAGES}"})
        with self.lock:
            results = [self._result(body["channel"], m) for m in body["messages"]]
        return Reply(200, {"results": results})

    def _authorized(self, header: str) -> bool:
        scheme, _, value = header.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            value.strip().encode(), self.token.encode()
        )

    def _result(self, channel: str, message: Mapping[str, Any]) -> dict[str, Any]:
        """One message's result (called with :attr:`lock` held)."""
        known = self._accepted.get(message["id"])
        if known is not None:
            return {"id": message["id"], "status": "sent", "message_id": known}
        address = message["to"]
        if address in self.busy:
            self.busy.discard(address)
            return _failed(message, "busy", "try again later", retry=True)
        if address in self.refused:
            return _failed(message, self.refused[address], "refused by the endpoint")
        message_id = f"hook-{next(self._ids)}"
        self.messages.append({**message, "channel": channel, "message_id": message_id})
        self._accepted[message["id"]] = message_id
        return {"id": message["id"], "status": "sent", "message_id": message_id}


def _bad(error: str) -> Reply:
    return Reply(422, {"code": "bad_payload", "error": error})


def _failed(
    message: Mapping[str, Any], code: str, error: str, *, retry: bool = False
) -> dict[str, Any]:
    return {"id": message["id"], "status": "failed", "code": code, "error": error, "retry": retry}


def _check(body: Any) -> str | None:
    """What is wrong with a request body, or ``None``."""
    if not isinstance(body, dict) or not isinstance(body.get("channel"), str):
        return 'expected {"channel": string, "messages": [...]}'
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "messages must be a list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] must be an object"
        for key in _STRINGS:
            if not isinstance(m.get(key), str):
                return f"messages[{i}].{key} must be a string"
        for key in _OPTIONAL_STRINGS:
            if m.get(key) is not None and not isinstance(m[key], str):
                return f"messages[{i}].{key} must be a string or null"
        if not isinstance(m.get("data", {}), dict):
            return f"messages[{i}].data must be an object"
    return None
