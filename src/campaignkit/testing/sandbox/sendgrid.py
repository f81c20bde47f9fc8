"""A loopback fake of SendGrid's v3 Mail Send API: :class:`SendGridServer`."""

from __future__ import annotations

import fnmatch
import math
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar, Self

from ._faults import Faults
from ._receipt_events import SendGridEvents
from ._receipt_server import EcdsaSigner, ReceiptServer
from ._sendgrid_rules import EMAIL, error, unverified_sender, validate
from ._server import ProviderServer
from ._wire import Reply, Request

__all__ = ["SendGridServer"]


class SendGridServer(ReceiptServer):
    """SendGrid's ``POST /v3/mail/send`` on 127.0.0.1.

    It checks what SendGrid checks and answers with SendGrid's bodies
    ``{"errors": [{"message", "field", "help"}]}``:

    * ``Authorization: Bearer <token>``, else 401;
    * ``Content-Type: application/json`` (415) and a JSON object (400);
    * a body of at most :attr:`max_body_bytes` (413);
    * ``from.email``; 1 to 1,000 personalizations and at most 1,000 recipients
      (``to`` + ``cc`` + ``bcc``); each personalization with a ``to`` array; every
      address valid-looking and not invalid by :meth:`is_invalid`, else 400 naming
      ``personalizations.N.to.M.email``; no address twice in the request, compared
      without case; a subject (top level or in every personalization) unless a
      ``template_id`` is given; ``content`` (unless ``template_id``) with non-empty
      values, text/plain first; at most :attr:`max_substitution_bytes` of
      substitutions per personalization;
    * ``template_id`` a dynamic template id (``d-`` + 32 hex digits) or a legacy
      template's UUID, and one of :attr:`templates` when that set is given;
      ``dynamic_template_data`` an object;
    * a personalization may carry its own ``subject`` and ``from`` (a valid
      address), used for its recipients;
    * the sender (top-level ``from`` and every personalization's ``from``) one of
      :attr:`verified_senders` when that set is given (compared without case), else
      SendGrid's 403 naming ``from``;
    * ``categories`` at most 10 strings of at most 255 characters; ``custom_args``
      and ``headers`` string values; ``asm.group_id`` an integer and
      ``asm.groups_to_display`` at most 25 integers; ``send_at`` an integer.

    ``Authorization`` is matched without case on the scheme (``bearer`` works, as
    at SendGrid).

    Every validation error found is reported in one 400, as SendGrid does.
    Accepted requests get 202 with an empty body and ``X-Message-Id``; each
    recipient is appended to :attr:`messages` as a dict with ``id`` (the
    ``X-Message-Id``), ``to``, ``name``, ``from``, ``subject``, ``text`` and
    ``html`` (with the personalization's substitutions applied), ``custom_args``,
    ``headers``, ``categories``, ``template_id``, ``dynamic_template_data``,
    ``asm`` and ``send_at``. With ``mail_settings.sandbox_mode`` enabled the
    request is validated as usual and, as at SendGrid, answered 200 with an empty
    body and nothing sent: its body goes to :attr:`sandbox_requests`, not to
    :attr:`messages`. A rate-limited request gets
    SendGrid's 429 with ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset`` (epoch
    seconds, rounded up unless :attr:`fractional_reset`).

    Delivery receipts (once :meth:`attach_receipts` is called, as a
    :class:`Sandbox` with ``receipts`` does): every recipient of an accepted request
    gets a ``processed`` event then its outcome (``delivered``; ``deferred``;
    ``bounce``; ``delivered`` then ``spamreport`` or ``unsubscribe``), and a later
    message to an address that bounced, complained or unsubscribed a ``dropped``
    event only, as SendGrid's suppression lists do. Events are POSTed in batches
    (JSON arrays) to :attr:`event_webhook_url` (account-level at SendGrid: ``None``
    sends nothing), signed with :attr:`webhook_public_key`'s private key.

    Args:
        invalid: addresses refused as invalid (compared without case).
        invalid_patterns: ``fnmatch`` patterns of addresses refused as invalid;
            by default every address at ``invalid.example``.
        verified_senders: the sender addresses the account may send from
            (``None``, the default: any).
        templates: the template ids that exist (``None``, the default: any
            well-formed id).
    """

    provider: ClassVar[str] = "sendgrid"
    PATH: ClassVar[str] = "/v3/mail/send"
    #: the sender address :meth:`channel_options` configures
    FROM_EMAIL: ClassVar[str] = "campaigns@sandbox.example"

    def __init__(
        self,
        *,
        token: str = ProviderServer.DEFAULT_TOKEN,
        port: int = 0,
        faults: Faults | None = None,
        invalid: Iterable[str] = (),
        invalid_patterns: Iterable[str] = ("*@invalid.example",),
        max_body_bytes: int = 30_000_000,
        max_substitution_bytes: int = 50_000,
        rate_limit_limit: int = 600,
        fractional_reset: bool = False,
        verified_senders: Iterable[str] | None = None,
        templates: Iterable[str] | None = None,
    ) -> None:
        super().__init__(token=token, port=port, faults=faults)
        self.invalid: set[str] = {a.lower() for a in invalid}
        self.invalid_patterns: list[str] = list(invalid_patterns)
        self.max_body_bytes = max_body_bytes
        self.max_substitution_bytes = max_substitution_bytes
        self.rate_limit_limit = rate_limit_limit
        self.fractional_reset = fractional_reset
        self.verified_senders: set[str] | None = (
            None if verified_senders is None else {a.lower() for a in verified_senders}
        )
        self.templates: set[str] | None = None if templates is None else set(templates)
        self.messages: list[dict[str, Any]] = []
        #: bodies of the accepted requests, in order
        self.requests: list[dict[str, Any]] = []
        #: bodies of the accepted requests in ``mail_settings.sandbox_mode``, in order
        self.sandbox_requests: list[dict[str, Any]] = []
        #: where the Event Webhook posts (account-level at SendGrid); ``None``: nowhere
        self.event_webhook_url: str | None = None
        self._signer = EcdsaSigner()
        #: the Event Webhook (its ``suppressed`` addresses get ``dropped`` events)
        self.events = SendGridEvents(self, self._signer)

    def start(self) -> Self:
        super().start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def channel_options(self) -> dict[str, Any]:
        """Options that point a ``sendgrid`` channel at this server."""
        return {"base_url": self.base_url, "from_email": self.FROM_EMAIL}

    @property
    def webhook_public_key(self) -> str:
        """The Signed Event Webhook's verification key as SendGrid shows it: base64 of
        the DER SubjectPublicKeyInfo of an EC P-256 key made for this server (needs
        ``cryptography``)."""
        return self._signer.public_key

    def receipt_channel_options(self, url: str) -> dict[str, Any]:
        """Sets :attr:`event_webhook_url` (account-level at SendGrid): no options."""
        self.event_webhook_url = url
        return {}

    def is_invalid(self, address: str) -> bool:
        """Whether SendGrid refuses ``address`` (malformed, listed or matched)."""
        lowered = address.lower()
        return (
            not EMAIL.fullmatch(address)
            or lowered in self.invalid
            or any(fnmatch.fnmatchcase(lowered, p.lower()) for p in self.invalid_patterns)
        )

    # -- replies ------------------------------------------------------------------------
    def rate_limited_reply(self, retry_after: float) -> Reply:
        reset = time.time() + retry_after
        return Reply(
            429,
            {"errors": [error("too many requests")]},
            {
                "X-RateLimit-Limit": str(self.rate_limit_limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{reset:.3f}"
                if self.fractional_reset
                else str(math.ceil(reset)),
            },
        )

    def server_error_reply(self, status: int) -> Reply:
        return Reply(status, {"errors": [error("internal error")]})

    def handle(self, request: Request) -> Reply:
        refusal = self._refusal(request)
        if refusal is not None:
            return refusal
        try:
            body = request.json()
        except ValueError:
            return Reply(400, {"errors": [error("Bad Request", anchor="message")]})
        if not isinstance(body, dict):
            return Reply(400, {"errors": [error("Bad Request", anchor="message")]})
        errors = validate(
            body,
            is_invalid=self.is_invalid,
            max_substitution_bytes=self.max_substitution_bytes,
            templates=self.templates,
        )
        if errors:
            return Reply(400, {"errors": errors})
        unverified = unverified_sender(body, self.verified_senders)
        if unverified is not None:
            return Reply(403, {"errors": [unverified]})
        mail_settings = body.get("mail_settings")
        sandbox_mode = (
            mail_settings.get("sandbox_mode") if isinstance(mail_settings, dict) else None
        )
        if isinstance(sandbox_mode, dict) and sandbox_mode.get("enable"):
            with self.lock:
                self.sandbox_requests.append(dict(body))
            return Reply(200)
        message_id = secrets.token_urlsafe(16)[:22]
        records = self._record(body, message_id)
        if self.receipts is not None and self.event_webhook_url is not None:
            self.events.accepted(records, message_id, self.event_webhook_url)
        return Reply(202, None, {"X-Message-Id": message_id})

    def _refusal(self, request: Request) -> Reply | None:
        """SendGrid's answer to a request refused before its body is read: the wrong
        path or method, bad credentials, another content type, a body too large."""
        if request.path != self.PATH:
            return Reply(404, {"errors": [error("resource not found")]})
        if request.method != "POST":
            return Reply(405, {"errors": [error("method not allowed")]})
        auth = request.headers.get("authorization", "")
        if not auth:
            return Reply(401, {"errors": [error("Permission denied, wrong credentials")]})
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            key.strip().encode(), self.token.encode()
        ):
            return Reply(
                401,
                {
                    "errors": [
                        error("The provided authorization grant is invalid, expired, or revoked")
                    ]
                },
            )
        if request.content_type != "application/json":
            return Reply(415, {"errors": [error("Content-Type should be application/json.")]})
        if len(request.body) > self.max_body_bytes:
            return Reply(
                413,
                {
                    "errors": [
                        error("The JSON payload you have included in your request is too large.")
                    ]
                },
            )
        return None

    # -- recording ----------------------------------------------------------------------
    def _record(self, body: Mapping[str, Any], message_id: str) -> list[dict[str, Any]]:
        content = {part.get("type"): part["value"] for part in body.get("content") or []}
        records = []
        for p in body["personalizations"]:
            substitutions: dict[str, str] = p.get("substitutions") or {}
            subject = p.get("subject") or body.get("subject")
            sender = p["from"]["email"] if isinstance(p.get("from"), dict) else None
            for entry in p["to"]:
                records.append(
                    {
                        "id": message_id,
                        "to": entry["email"],
                        "name": entry.get("name"),
                        "from": sender or body["from"]["email"],
                        "subject": _substitute(subject, substitutions),
                        "text": _substitute(content.get("text/plain"), substitutions),
                        "html": _substitute(content.get("text/html"), substitutions),
                        "custom_args": {
                            **(body.get("custom_args") or {}),
                            **(p.get("custom_args") or {}),
                        },
                        "headers": {**(body.get("headers") or {}), **(p.get("headers") or {})},
                        "categories": list(body.get("categories") or []),
                        "template_id": body.get("template_id"),
                        "dynamic_template_data": p.get("dynamic_template_data"),
                        "asm": body.get("asm"),
                        "send_at": p.get("send_at", body.get("send_at")),
                    }
                )
        with self.lock:
            self.requests.append(dict(body))
            self.messages.extend(records)
        return records


def _substitute(text: str | None, substitutions: Mapping[str, str]) -> str | None:
    """Apply SendGrid substitutions to ``text`` in one pass (longest tags first)."""
    if text is None or not substitutions:
        return text
    tags = sorted(substitutions, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(t) for t in tags))
    return pattern.sub(lambda m: substitutions[m.group(0)], text)
