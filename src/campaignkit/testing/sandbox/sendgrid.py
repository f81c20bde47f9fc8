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
from ._server import ProviderServer
from ._wire import Reply, Request

__all__ = ["SendGridServer"]

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_HELP = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html"

_INVALID_ADDRESS = "Does not contain a valid address."
_TO_REQUIRED = (
    "The to array is required for all personalization objects, and must have at least "
    "one email object with a valid email address."
)
_FROM_REQUIRED = (
    "The from object must be provided for every email send. It is an object that "
    "requires the email parameter, but may also contain a name parameter."
)
_SUBJECT_REQUIRED = (
    "The subject is required. You can get around this requirement if you use a template "
    "with a subject defined or if every personalization has a subject defined."
)
_TEMPLATE_ID = re.compile(
    r"d-[0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
)
_TEMPLATE_INVALID = "The template_id must be a valid GUID, you provided '{}'."
_TEMPLATE_UNKNOWN = "The template_id {} does not exist."
_UNVERIFIED_SENDER = (
    "The from address does not match a verified Sender Identity. Mail cannot be sent "
    "until this error is resolved. Visit "
    "https://sendgrid.com/docs/for-developers/sending-email/sender-identity/ to see the "
    "Sender Identity requirements"
)
_CONTENT_REQUIRED = "Unless a valid template_id is provided, the content array is required."
_CONTENT_VALUE = "The content value must be a string at least one character in length."
_CONTENT_ORDER = (
    "If present, text/plain and text/x-amp-html must be first, followed by text/html, "
    "followed by any other content."
)


def _error(message: str, field: str | None = None, anchor: str | None = None) -> dict[str, Any]:
    return {"message": message, "field": field, "help": f"{_HELP}#{anchor}" if anchor else None}


class SendGridServer(ProviderServer):
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

    def start(self) -> Self:
        super().start()
        return self

    def __enter__(self) -> Self:
        return self.start()

    def channel_options(self) -> dict[str, Any]:
        """Options that point a ``sendgrid`` channel at this server."""
        return {"base_url": self.base_url, "from_email": self.FROM_EMAIL}

    def is_invalid(self, address: str) -> bool:
        """Whether SendGrid refuses ``address`` (malformed, listed or matched)."""
        lowered = address.lower()
        return (
            not _EMAIL.fullmatch(address)
            or lowered in self.invalid
            or any(fnmatch.fnmatchcase(lowered, p.lower()) for p in self.invalid_patterns)
        )

    # -- replies ------------------------------------------------------------------------
    def rate_limited_reply(self, retry_after: float) -> Reply:
        reset = time.time() + retry_after
        return Reply(
            429,
            {"errors": [_error("too many requests")]},
            {
                "X-RateLimit-Limit": str(self.rate_limit_limit),
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset": f"{reset:.3f}"
                if self.fractional_reset
                else str(math.ceil(reset)),
            },
        )

    def server_error_reply(self, status: int) -> Reply:
        return Reply(status, {"errors": [_error("internal error")]})

    def handle(self, request: Request) -> Reply:
        if request.path != self.PATH:
            return Reply(404, {"errors": [_error("resource not found")]})
        if request.method != "POST":
            return Reply(405, {"errors": [_error("method not allowed")]})
        auth = request.headers.get("authorization", "")
        if not auth:
            return Reply(401, {"errors": [_error("Permission denied, wrong credentials")]})
        scheme, _, key = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(
            key.strip().encode(), self.token.encode()
        ):
            return Reply(
                401,
                {
                    "errors": [
                        _error("The provided authorization grant is invalid, expired, or revoked")
                    ]
                },
            )
        if request.content_type != "application/json":
            return Reply(415, {"errors": [_error("Content-Type should be application/json.")]})
        if len(request.body) > self.max_body_bytes:
            return Reply(
                413,
                {
                    "errors": [
                        _error("The JSON payload you have included in your request is too large.")
                    ]
                },
            )
        try:
            body = request.json()
        except ValueError:
            return Reply(400, {"errors": [_error("Bad Request", anchor="message")]})
        if not isinstance(body, dict):
            return Reply(400, {"errors": [_error("Bad Request", anchor="message")]})
        errors = self._validate(body)
        if errors:
            return Reply(400, {"errors": errors})
        unverified = self._unverified_sender(body)
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
        self._record(body, message_id)
        return Reply(202, None, {"X-Message-Id": message_id})

    # -- validation ---------------------------------------------------------------------
    def _validate(self, body: Mapping[str, Any]) -> list[dict[str, Any]]:
        errors: list[dict[str, Any]] = []
        sender = body.get("from")
        if not isinstance(sender, dict) or not isinstance(sender.get("email"), str):
            errors.append(_error(_FROM_REQUIRED, "from", "message.from"))
        elif not _EMAIL.fullmatch(sender["email"]):
            errors.append(_error(_INVALID_ADDRESS, "from.email", "message.from"))
        personalizations = body.get("personalizations")
        if not isinstance(personalizations, list) or not personalizations:
            errors.append(
                _error(
                    "You must have at least one personalization.",
                    "personalizations",
                    "message.personalizations",
                )
            )
            personalizations = []
        elif len(personalizations) > 1000:
            errors.append(
                _error(
                    "The personalization block is limited to 1000 personalizations per API "
                    f"request. You have provided {len(personalizations)} personalizations. "
                    "Please consider splitting this into multiple requests and resending "
                    "your request.",
                    "personalizations",
                    "message.personalizations",
                )
            )
            return errors
        subject_missing = False
        seen: set[str] = set()
        recipients = 0
        for i, p in enumerate(personalizations):
            where = f"personalizations.{i}"
            if not isinstance(p, dict):
                errors.append(_error("Bad Request", where, "message.personalizations"))
                continue
            to = p.get("to")
            if not isinstance(to, list) or not to:
                errors.append(_error(_TO_REQUIRED, f"{where}.to", "message.personalizations.to"))
                to = []
            for kind in ("to", "cc", "bcc"):
                entries = to if kind == "to" else p.get(kind) or []
                for j, entry in enumerate(entries if isinstance(entries, list) else []):
                    recipients += 1
                    address = entry.get("email") if isinstance(entry, dict) else None
                    if not isinstance(address, str) or self.is_invalid(address):
                        errors.append(
                            _error(
                                _INVALID_ADDRESS,
                                f"{where}.{kind}.{j}.email",
                                f"message.personalizations.{kind}",
                            )
                        )
                        continue
                    if address.lower() in seen:
                        errors.append(
                            _error(
                                "Each unique email address in the personalizations array "
                                "should only be included once. You have included "
                                f"{address} more than once.",
                                "personalizations",
                                "message.personalizations",
                            )
                        )
                    seen.add(address.lower())
            if not (isinstance(p.get("subject"), str) and p["subject"]):
                subject_missing = True
            errors += _validate_personalization_extras(p, where)
            substitutions = p.get("substitutions") or {}
            if not isinstance(substitutions, dict) or not all(
                isinstance(v, str) for v in substitutions.values()
            ):
                errors.append(
                    _error(
                        "Substitutions must be strings.",
                        f"{where}.substitutions",
                        "message.personalizations.substitutions",
                    )
                )
            elif (
                sum(len(k.encode()) + len(v.encode()) for k, v in substitutions.items())
                > self.max_substitution_bytes
            ):
                errors.append(
                    _error(
                        "The substitutions in a personalization may not exceed "
                        f"{self.max_substitution_bytes} bytes.",
                        f"{where}.substitutions",
                        "message.personalizations.substitutions",
                    )
                )
            for name in ("headers", "custom_args"):
                value = p.get(name) or {}
                if not isinstance(value, dict) or not all(
                    isinstance(v, str) for v in value.values()
                ):
                    errors.append(_error(f"The {name} values must be strings.", f"{where}.{name}"))
        if recipients > 1000:
            errors.append(
                _error(
                    "There is a limit of 1000 total recipients (to + cc + bcc) per request.",
                    "personalizations",
                    "message.personalizations",
                )
            )
        top_subject = body.get("subject")
        templated = "template_id" in body
        if subject_missing and not templated and not (isinstance(top_subject, str) and top_subject):
            errors.append(_error(_SUBJECT_REQUIRED, "subject", "message.subject"))
        if templated:
            errors += self._validate_template(body["template_id"])
            if body.get("content"):
                errors += self._validate_content(body["content"])
        else:
            errors += self._validate_content(body.get("content"))
        errors += _validate_extras(body)
        return errors

    def _validate_template(self, template_id: Any) -> list[dict[str, Any]]:
        if not isinstance(template_id, str) or not _TEMPLATE_ID.fullmatch(template_id):
            message = _TEMPLATE_INVALID.format(template_id)
        elif self.templates is not None and template_id not in self.templates:
            message = _TEMPLATE_UNKNOWN.format(template_id)
        else:
            return []
        return [_error(message, "template_id", "message.template_id")]

    def _unverified_sender(self, body: Mapping[str, Any]) -> dict[str, Any] | None:
        """SendGrid's 403 error when a sender is not a verified Sender Identity."""
        if self.verified_senders is None:
            return None
        senders = [body["from"]["email"]]
        senders += [
            p["from"]["email"] for p in body["personalizations"] if isinstance(p.get("from"), dict)
        ]
        if all(s.lower() in self.verified_senders for s in senders):
            return None
        return _error(_UNVERIFIED_SENDER, "from", "message.from")

    @staticmethod
    def _validate_content(content: Any) -> list[dict[str, Any]]:
        if not isinstance(content, list) or not content:
            return [_error(_CONTENT_REQUIRED, "content", "message.content")]
        errors = []
        types = []
        for k, part in enumerate(content):
            value = part.get("value") if isinstance(part, dict) else None
            types.append(part.get("type") if isinstance(part, dict) else None)
            if not isinstance(value, str) or not value:
                errors.append(_error(_CONTENT_VALUE, f"content.{k}.value", "message.content.value"))
        if "text/plain" in types and types.index("text/plain") != 0:
            errors.append(_error(_CONTENT_ORDER, "content", "message.content"))
        return errors

    # -- recording ----------------------------------------------------------------------
    def _record(self, body: Mapping[str, Any], message_id: str) -> None:
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


def _validate_personalization_extras(p: Mapping[str, Any], where: str) -> list[dict[str, Any]]:
    """A personalization's own ``from`` and ``dynamic_template_data``."""
    errors = []
    if "from" in p:
        sender = p["from"]
        address = sender.get("email") if isinstance(sender, dict) else None
        if not isinstance(address, str) or not _EMAIL.fullmatch(address):
            errors.append(_error(_INVALID_ADDRESS, f"{where}.from.email", "message.from"))
    data = p.get("dynamic_template_data")
    if data is not None and not isinstance(data, dict):
        errors.append(
            _error(
                "The dynamic_template_data must be an object.",
                f"{where}.dynamic_template_data",
                "message.personalizations.dynamic_template_data",
            )
        )
    return errors


def _validate_extras(body: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Top-level ``categories``, ``custom_args``, ``asm`` and ``send_at``."""
    errors = []
    categories = body.get("categories")
    if categories is not None:
        if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
            errors.append(_error("Categories must be strings.", "categories", "message.categories"))
        elif len(categories) > 10:
            errors.append(
                _error("You may not have more than 10 categories per request.", "categories")
            )
        elif any(len(c) > 255 for c in categories):
            errors.append(_error("A category cannot be longer than 255 characters.", "categories"))
    custom_args = body.get("custom_args")
    if custom_args is not None and (
        not isinstance(custom_args, dict)
        or not all(isinstance(v, str) for v in custom_args.values())
    ):
        errors.append(_error("The custom_args values must be strings.", "custom_args"))
    asm = body.get("asm")
    if asm is not None:
        group = asm.get("group_id") if isinstance(asm, dict) else None
        if isinstance(group, bool) or not isinstance(group, int):
            errors.append(
                _error("The asm.group_id must be an integer.", "asm.group_id", "message.asm")
            )
        shown = asm.get("groups_to_display", []) if isinstance(asm, dict) else []
        if (
            not isinstance(shown, list)
            or len(shown) > 25
            or not all(isinstance(g, int) and not isinstance(g, bool) for g in shown)
        ):
            errors.append(
                _error(
                    "The asm.groups_to_display must be an array of at most 25 integers.",
                    "asm.groups_to_display",
                    "message.asm",
                )
            )
    send_at = body.get("send_at")
    if send_at is not None and (isinstance(send_at, bool) or not isinstance(send_at, int)):
        errors.append(_error("The send_at must be a unix timestamp.", "send_at"))
    return errors


def _substitute(text: str | None, substitutions: Mapping[str, str]) -> str | None:
    """Apply SendGrid substitutions to ``text`` in one pass (longest tags first)."""
    if text is None or not substitutions:
        return text
    tags = sorted(substitutions, key=len, reverse=True)
    pattern = re.compile("|".join(re.escape(t) for t in tags))
    return pattern.sub(lambda m: substitutions[m.group(0)], text)
