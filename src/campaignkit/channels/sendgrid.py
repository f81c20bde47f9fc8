"""Email through the SendGrid v3 Mail Send API (``provider = "sendgrid"``).

::

    POST {base_url}/v3/mail/send
    Authorization: Bearer <API key>
    Content-Type: application/json

    {"from": {...}, "content": [...], "personalizations": [{"to": [...], "subject": ...}, ...]}

Options (``[channels.email.options]``):

``from_email`` (required), ``from_name``
    The sender.
``reply_to``, ``reply_to_name``
    Where replies go.
``categories``
    Up to 10 category names, for SendGrid's statistics.
``custom_args``
    String key/values added to every message (they come back in event webhooks).
``asm_group_id``
    Unsubscribe group id (marketing mail should carry one).
``ip_pool_name``
    IP pool to send from.
``track_opens``, ``track_clicks``
    Override the account's open and click tracking settings.
``sandbox_mode``
    SendGrid validates each request and answers 200 without delivering.
``base_url``
    Default ``https://api.sendgrid.com`` (``https://api.eu.sendgrid.com`` for EU
    subusers).

The API key is the channel token (``EMAIL_API_TOKEN``).

Requests
--------
SendGrid's ``content`` (the text and HTML bodies) belongs to the whole request: a
personalization can carry its own recipient, ``subject``, ``headers``,
``custom_args`` and ``substitutions``, but not its own body (per-recipient bodies
otherwise need a stored dynamic template). A campaign renders one body per
recipient, so :meth:`SendGridNotifier.send_batch` turns a batch into as few
requests as that allows:

* messages with identical content share a request that carries that content;
* messages with content of their own share a request whose content is a pair of
  substitution tags (:data:`TEXT_TAG`, :data:`HTML_TAG`), each personalization
  carrying its own text and HTML in ``substitutions``, which SendGrid applies to
  the body without any template, while they fit in
  :data:`MAX_SUBSTITUTION_BYTES`; larger ones get a request of their own;
* a request never holds more than 1,000 personalizations, about
  :data:`MAX_REQUEST_BYTES` of JSON, or the same address twice (compared without
  case: SendGrid would reject the whole request).

Every personalization has the message's ``subject``, its ``headers`` and the
``custom_args`` ``campaignkit_recipient_id``, ``campaignkit_idempotency_key`` and
``campaignkit_ref`` (the delivery's reference, which receipts carry back).

Answers
-------
* 202: every message of the request is sent. Its provider message id is the
  request's ``X-Message-Id``, shared by the request's recipients: SendGrid's event
  webhooks carry it as the start of ``sg_message_id``, and the recipient by its
  address and ``custom_args``.
* 400 naming ``personalizations.N...``: SendGrid accepted nothing. Message ``N``
  fails permanently (code ``"400"``) and the rest of the request is sent again at
  once, which cannot duplicate anything. When the field is
  ``personalizations.N.substitutions``, message ``N`` is sent again alone, with
  its content in the request instead.
* Any other 4xx (401, 403, 413, a 400 about the request as a whole): the
  request's messages fail permanently; after 401 or 403 the rest of the batch is
  not attempted (every request would fail the same way).
* 429, 5xx, timeouts, connection errors: the request's messages fail transiently
  and the rest of the batch is not attempted (it gets the same transient outcome,
  but never *in doubt*: it was not sent). A read timeout, a connection lost after
  the request and any 5xx leave the request's messages in doubt (SendGrid may have
  accepted them; it documents no idempotency key and no lookup by recipient), so
  the core records them ``unknown`` unless the channel sets ``on_doubt = "retry"``;
  a 429 or a refused connection is surely not sent and is retried.

When nothing of the batch was sent and every message failed because of one
request-level error, :meth:`~SendGridNotifier.send_batch` raises that error
instead (with ``retry_after`` from ``X-RateLimit-Reset`` on a 429).
SendGrid documents no idempotency key.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import attrs
import requests

from .._http import HttpNotifier
from .._models import Message, Outcome
from .._notifier import ChannelSettings
from ..exceptions import ConfigError, DeliveryError, PermanentDeliveryError
from ..hookspecs import hookimpl
from ..options import email_address, safe_base_url
from ._sendgrid_mail import HTML_TAG as HTML_TAG
from ._sendgrid_mail import (
    IDEMPOTENCY_ARG,
    MAX_PERSONALIZATIONS,
    RECIPIENT_ARG,
    MailBodies,
    PlannedRequest,
    address,
    error_list,
    recipient_errors,
)
from ._sendgrid_mail import MAX_SUBSTITUTION_BYTES as MAX_SUBSTITUTION_BYTES
from ._sendgrid_mail import TEXT_TAG as TEXT_TAG
from ._sendgrid_mail import personalization as _personalization  # noqa: F401

# Re-exported (imported "as" themselves): the module docstring names the tags and the
# substitution limit, and tests use them and _personalization from here.
__all__ = ["SendGridNotifier", "SendGridOptions"]

#: Mail Send endpoint, below ``base_url``.
PATH = "/v3/mail/send"
#: Budget for one request's JSON; SendGrid refuses messages over 30 MB.
MAX_REQUEST_BYTES = 20_000_000

_JSON_HEADERS = {"Content-Type": "application/json"}


def _check_categories(instance: Any, attribute: Any, value: tuple[str, ...]) -> None:
    if len(value) > 10:
        raise ConfigError("SendGrid allows at most 10 categories", path="categories")
    for i, category in enumerate(value):
        if not category or len(category) > 255:
            raise ConfigError("expected 1 to 255 characters", path=f"categories.{i}")


def _check_custom_args(instance: Any, attribute: Any, value: dict[str, str]) -> None:
    reserved = sorted({RECIPIENT_ARG, IDEMPOTENCY_ARG} & set(value))
    if reserved:
        raise ConfigError("reserved for campaignkit", path=f"custom_args.{reserved[0]}")


@attrs.frozen
class SendGridOptions:
    """The ``options`` table of a SendGrid channel (see the module docstring)."""

    from_email: str = attrs.field(validator=email_address)
    from_name: str | None = None
    reply_to: str | None = attrs.field(default=None, validator=email_address)
    reply_to_name: str | None = None
    categories: tuple[str, ...] = attrs.field(default=(), validator=_check_categories)
    custom_args: dict[str, str] = attrs.field(factory=dict, validator=_check_custom_args)
    asm_group_id: int | None = None
    ip_pool_name: str | None = None
    track_opens: bool | None = None
    track_clicks: bool | None = None
    sandbox_mode: bool = False
    base_url: str = attrs.field(default="https://api.sendgrid.com", validator=safe_base_url)


class SendGridNotifier(HttpNotifier):
    """Sends email through SendGrid's v3 Mail Send API, up to 1,000 per batch.

    Raises:
        ConfigError: from the constructor, for invalid options or a missing API key.
    """

    name: ClassVar[str] = "sendgrid"
    address_field: ClassVar[str] = "email"
    max_batch_size: ClassVar[int] = MAX_PERSONALIZATIONS
    supports_idempotency_keys: ClassVar[bool] = False
    default_base_url: ClassVar[str] = "https://api.sendgrid.com"

    options_class: ClassVar[type[SendGridOptions]] = SendGridOptions
    options: SendGridOptions

    def __init__(self, settings: ChannelSettings) -> None:
        super().__init__(settings)
        if settings.token is None or not settings.token:
            raise ConfigError(
                f"channel {settings.channel!r} needs a SendGrid API key in its token "
                "environment variable"
            )
        self._token = settings.token
        self._static = self._static_fields()

    # -- connection -----------------------------------------------------------------
    def connect(self) -> requests.Session:
        session = super().connect()
        session.headers["Authorization"] = f"Bearer {self._token.reveal()}"
        return session

    # -- errors ---------------------------------------------------------------------
    def error_message(self, response: requests.Response) -> str:
        """``HTTP 400: Does not contain a valid address. (personalizations.0.to.0.email)``."""
        errors = error_list(response)
        if not errors:
            return super().error_message(response)
        parts = []
        for error in errors[:5]:
            text = self.redact(str(error.get("message") or "error"))[:200]
            field = error.get("field")
            parts.append(f"{text} ({field})" if field else text)
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        return f"HTTP {response.status_code}: " + "; ".join(parts) + more

    # -- sending --------------------------------------------------------------------
    def send_batch(self, conn: requests.Session, messages: Sequence[Message]) -> Sequence[Outcome]:
        """Send ``messages`` in as few Mail Send requests as SendGrid allows.

        Returns one outcome per message, in order (see the module docstring for how
        SendGrid's answers map to outcomes).

        Raises:
            TransientDeliveryError: nothing was sent; a 429, 5xx, timeout or
                connection error stopped the batch.
            PermanentDeliveryError: nothing was sent; one request-level error (401,
                403, a 400 about the request) failed every message.
        """
        outcomes: list[Outcome | None] = [None] * len(messages)
        causes: dict[int, DeliveryError] = {}
        valid: list[int] = []
        for i, message in enumerate(messages):
            problem = _local_problem(message)
            if problem is None:
                valid.append(i)
            else:
                outcomes[i] = Outcome.failed(problem, code="invalid_message")
        bodies = MailBodies(messages, self._static, MAX_REQUEST_BYTES)
        queue = collections.deque(bodies.plan(valid))
        stop: DeliveryError | None = None
        skipped = False  # requests not attempted because of ``stop``
        while queue:
            request = queue.popleft()
            attempted = stop is None
            if stop is None:
                try:
                    self._send_request(conn, bodies, request, outcomes, queue)
                    continue
                except DeliveryError as exc:
                    error = exc
                    if exc.transient or exc.status_code in (401, 403):
                        stop = exc
            else:
                error = stop
                skipped = True
            for p in request.positions:
                if outcomes[p] is None:
                    outcomes[p] = Outcome.failed(
                        str(error),
                        code=error.code,
                        transient=error.transient,
                        in_doubt=attempted and error.in_doubt,
                    )
                    causes[p] = error
        one_cause = len({id(e) for e in causes.values()}) == 1
        if len(causes) == len(messages) and one_cause:
            error = next(iter(causes.values()))
            if not (skipped and error.in_doubt):  # else only the attempted ones are in doubt
                raise error
        return [o or Outcome.failed("not sent", code="internal") for o in outcomes]

    def _send_request(
        self,
        conn: requests.Session,
        bodies: MailBodies,
        request: PlannedRequest,
        outcomes: list[Outcome | None],
        queue: collections.deque[PlannedRequest],
    ) -> None:
        """Send one planned request, dropping recipients SendGrid names in a 400.

        Sets the outcome of every message it settles; messages SendGrid rejected
        for their substitutions are queued again as requests of their own.

        Raises:
            DeliveryError: a request-level error; the request's unsettled messages
                (outcome still ``None``) were not sent.
        """
        positions = list(request.positions)
        while positions:
            data = bodies.payload(positions, request.content)
            captured = _Capture()
            try:
                response = self.post(
                    conn,
                    PATH,
                    data=data,
                    headers=_JSON_HEADERS,
                    hooks={"response": captured},
                )
            except PermanentDeliveryError as exc:
                if exc.status_code != 400 or captured.response is None:
                    raise
                named = recipient_errors(error_list(captured.response), len(positions))
                if named is None:
                    raise
                self._settle_named(bodies, request, positions, named, outcomes, queue)
                positions = [p for i, p in enumerate(positions) if i not in named]
                continue
            sent = Outcome.sent(response.headers.get("X-Message-Id") or None)
            for p in positions:
                outcomes[p] = sent
            return

    def _settle_named(
        self,
        bodies: MailBodies,
        request: PlannedRequest,
        positions: Sequence[int],
        named: Mapping[int, list[Mapping[str, Any]]],
        outcomes: list[Outcome | None],
        queue: collections.deque[PlannedRequest],
    ) -> None:
        """Settle the recipients a 400 named (by index in ``positions``): each fails
        permanently, unless only its substitutions were at fault in a request using
        them: then it is queued again alone, with its content in the request."""
        for index, errors in sorted(named.items()):
            p = positions[index]
            fields = [str(e.get("field") or "") for e in errors]
            if request.content is None and all(
                f.startswith(f"personalizations.{index}.substitutions") for f in fields
            ):
                message = bodies.messages[p]
                queue.append(PlannedRequest((p,), (message.body, message.html)))
                continue
            text = "; ".join(
                f"{self.redact(str(e.get('message') or 'invalid'))[:200]} ({f})"
                for e, f in zip(errors, fields, strict=True)
            )
            outcomes[p] = Outcome.failed(f"HTTP 400: {text}", code="400")

    def _static_fields(self) -> dict[str, Any]:
        """The request fields that come from the options."""
        opts = self.options
        fields: dict[str, Any] = {"from": address(opts.from_email, opts.from_name)}
        if opts.reply_to:
            fields["reply_to"] = address(opts.reply_to, opts.reply_to_name)
        if opts.categories:
            fields["categories"] = list(opts.categories)
        if opts.custom_args:
            fields["custom_args"] = dict(opts.custom_args)
        if opts.asm_group_id is not None:
            fields["asm"] = {"group_id": opts.asm_group_id}
        if opts.ip_pool_name:
            fields["ip_pool_name"] = opts.ip_pool_name
        if opts.sandbox_mode:
            fields["mail_settings"] = {"sandbox_mode": {"enable": True}}
        tracking: dict[str, Any] = {}
        if opts.track_opens is not None:
            tracking["open_tracking"] = {"enable": opts.track_opens}
        if opts.track_clicks is not None:
            tracking["click_tracking"] = {"enable": opts.track_clicks}
        if tracking:
            fields["tracking_settings"] = tracking
        return fields


class _Capture:
    """A ``requests`` response hook that keeps the response (for error bodies)."""

    response: requests.Response | None = None

    def __call__(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        self.response = response


def _local_problem(message: Message) -> str | None:
    """Why SendGrid would refuse ``message`` whatever the rest of the batch, if so."""
    if not message.subject:
        return "an email needs a subject"
    if not message.body and not message.html:
        return "an email needs a text or HTML body"
    return None


@hookimpl
def campaignkit_register_channels(register: Any) -> None:
    """Register :class:`SendGridNotifier`."""
    register(SendGridNotifier)
