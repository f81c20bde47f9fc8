"""campaignkit-webhook: a channel that posts batches of messages to your HTTP endpoint.

Install it next to campaignkit and it is discovered through the ``campaignkit``
entry-point group (see ``pyproject.toml``); a campaign then uses
``provider = "webhook"``::

    [channels.crm]
    provider = "webhook"
    require_consent = false
    batch_size = 50

    [channels.crm.template]
    body = "Hi {{ first_name }}"

    [channels.crm.options]
    url = "https://hooks.example.com/campaigns"
    address_field = "email"

Wire contract: one ``POST {url}`` per batch, ``Content-Type: application/json``::

    {"channel": "crm",
     "messages": [{"id": "<idempotency key>", "recipient_id": "C1", "to": "<address>",
                   "subject": null, "title": null, "body": "Hi Ada", "html": null,
                   "data": {}}]}

With a token (the channel's token variable, ``CRM_API_TOKEN`` here), the request
carries ``Authorization: Bearer <token>`` (``token_header`` and ``token_prefix``
change that). The endpoint answers:

* 2xx with ``{"results": [{"id": ..., "status": "sent" | "failed", "message_id": ...,
  "code": ..., "error": ..., "retry": false}, ...]}``: each message gets the result
  whose ``id`` is its own (a failed one with ``"retry": true`` is re-sent at the next
  retry round); a message without a result fails permanently with code
  ``no_result``, because the endpoint took the request and re-sending could
  deliver it twice;
* 2xx with any other body (or none): every message is sent;
* 408, 429 (``Retry-After`` honoured), a refused connection: the whole batch is
  retried; 5xx, a read timeout or a connection lost after the request: in doubt,
  recorded ``unknown`` unless the channel sets ``on_doubt = "retry"`` (then
  re-sent: right for an endpoint that drops duplicates by ``id``); any other
  status: the whole batch fails for good. An error body ``{"code": ...}`` gives the
  error code.

Each message's ``id`` is campaignkit's idempotency key, stable across retries, so
an endpoint can drop duplicates.

The plugin also ships a fake endpoint speaking this contract,
:class:`campaignkit_webhook.sandbox.WebhookServer`, registered for campaignkit's
sandbox: ``campaignkit run campaign.toml --sandbox`` sends to it, never to ``url``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import attrs
import requests

import campaignkit
from campaignkit import ChannelSettings, ConfigError, HttpNotifier, Message, Outcome, Rate

__all__ = ["WebhookNotifier", "WebhookOptions"]

__version__ = "0.1.0"


@attrs.frozen
class WebhookOptions:
    """The ``options`` table of a webhook channel.

    Attributes:
        url: the endpoint; ``https://``, or ``http://`` on a loopback host only.
        address_field: the recipient field sent as ``to`` (``email``, ``phone``,
            ``push_token``, ``id`` or any column of the segment).
        token_header: the header carrying the token, when the channel has one.
        token_prefix: written before the token in that header.
        headers: more headers sent with every request.
    """

    url: str
    address_field: str = "email"
    token_header: str = "Authorization"  # noqa: S105 - a header name
    token_prefix: str = "Bearer "  # noqa: S105 - a scheme, not a secret
    headers: dict[str, str] = attrs.field(factory=dict)

    @headers.validator
    def _not_the_channel_s_own(
        self, attribute: attrs.Attribute[Any], value: dict[str, str]
    ) -> None:
        clash = {h.lower() for h in value} & {self.token_header.lower(), "content-type"}
        if clash:
            raise ConfigError(f"set by the channel itself: {sorted(clash)[0]}", path=attribute.name)


class WebhookNotifier(HttpNotifier):
    """Posts each batch of rendered messages as one JSON request (see the module doc).

    The batch size is the channel's ``batch_size`` (at most 500, the default).
    """

    name: ClassVar[str] = "webhook"
    max_batch_size: ClassVar[int] = 500
    supports_idempotency_keys: ClassVar[bool] = False
    default_rate: ClassVar[Rate] = Rate(requests_per_second=10.0)
    token_required: ClassVar[bool] = False
    default_base_url: ClassVar[str] = ""

    def __init__(self, settings: ChannelSettings) -> None:
        """Structure the options (:class:`WebhookOptions` validates them); the URL goes
        through campaignkit's base URL check.

        Raises:
            ConfigError: naming the key path (``channels.crm.options.url``).
        """
        options = settings.structure(WebhookOptions)
        path = f"channels.{settings.channel}.options"
        try:
            super().__init__(attrs.evolve(settings, options={"base_url": options.url}))
        except ConfigError as exc:
            raise ConfigError(exc.detail, path=f"{path}.url") from None
        self.settings = settings
        self.options = options
        # Which field a message is addressed to is an option here, not a constant.
        self.address_field = options.address_field  # type: ignore[misc]

    def connect(self) -> requests.Session:
        session = super().connect()
        session.headers.update(self.options.headers)
        token = self.settings.token
        if token:
            session.headers[self.options.token_header] = self.options.token_prefix + token.reveal()
        return session

    def error_code(self, response: requests.Response) -> str | None:
        """``code`` of a JSON error body, else the HTTP status."""
        code = _json(response).get("code")
        return str(code) if code is not None else str(response.status_code)

    def send_batch(self, conn: requests.Session, messages: Sequence[Message]) -> Sequence[Outcome]:
        body = {
            "channel": self.settings.channel,
            "messages": [
                {
                    "id": m.idempotency_key,
                    "recipient_id": m.recipient_id,
                    "to": m.address,
                    "subject": m.subject,
                    "title": m.title,
                    "body": m.body,
                    "html": m.html,
                    "data": dict(m.data),
                }
                for m in messages
            ],
        }
        response = self.post(conn, "", json=body)
        results = _json(response).get("results")
        if not isinstance(results, list):
            return [Outcome.sent() for _ in messages]
        by_id = {str(r.get("id")): r for r in results if isinstance(r, Mapping)}
        return [_outcome(by_id.get(m.idempotency_key)) for m in messages]


def _json(response: requests.Response) -> Mapping[str, Any]:
    try:
        body = response.json()
    except ValueError:
        return {}
    return body if isinstance(body, Mapping) else {}


def _outcome(result: Mapping[str, Any] | None) -> Outcome:
    if result is None:
        return Outcome.failed("the endpoint returned no result for this message", code="no_result")
    message_id = result.get("message_id")
    if result.get("status") == "sent":
        return Outcome.sent(str(message_id) if message_id is not None else None)
    code = result.get("code")
    return Outcome.failed(
        str(result.get("error") or "refused by the endpoint")[:300],
        code=str(code) if code is not None else "refused",
        transient=result.get("retry") is True,
    )


@campaignkit.hookimpl
def campaignkit_register_channels(register: Callable[[type[Any]], None]) -> None:
    """Register :class:`WebhookNotifier` as ``provider = "webhook"``."""
    register(WebhookNotifier)


@campaignkit.hookimpl
def campaignkit_register_sandbox_servers(register: Callable[..., None]) -> None:
    """Register the fake endpoint (:mod:`campaignkit_webhook.sandbox`) for rehearsals.

    Named as ``"module:Class"``, it is imported only when a sandbox starts it.
    """
    register("webhook", "campaignkit_webhook.sandbox:WebhookServer")
