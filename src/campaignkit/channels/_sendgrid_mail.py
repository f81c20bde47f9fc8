"""SendGrid's Mail Send wire format, for the SendGrid channel: request and error bodies.

:class:`MailBodies` groups a batch's messages into as few requests as SendGrid
allows (see "Requests" in :mod:`campaignkit.channels.sendgrid`) and serializes each
request's JSON body; :func:`personalization` is one message's part of it.
:func:`error_list` reads the errors of an answer and :func:`recipient_errors` sorts
them by the personalization they name.
"""

from __future__ import annotations

import json
import json.encoder
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import requests

from .._models import Message

__all__ = [
    "HTML_TAG",
    "IDEMPOTENCY_ARG",
    "MAX_PERSONALIZATIONS",
    "MAX_SUBSTITUTION_BYTES",
    "RECIPIENT_ARG",
    "TEXT_TAG",
    "MailBodies",
    "PlannedRequest",
    "address",
    "error_list",
    "personalization",
    "recipient_errors",
]

#: Most personalizations (and recipients) in one request.
MAX_PERSONALIZATIONS = 1000
#: SendGrid's limit on one personalization's substitutions (keys and values, UTF-8).
MAX_SUBSTITUTION_BYTES = 50_000
#: Substitution tags standing for each recipient's text and HTML body.
TEXT_TAG = "%campaignkit_text%"
HTML_TAG = "%campaignkit_html%"
#: ``custom_args`` keys naming the recipient and the message in event webhooks.
RECIPIENT_ARG = "campaignkit_recipient_id"
IDEMPOTENCY_ARG = "campaignkit_idempotency_key"
#: The ``custom_args`` key carrying the delivery's reference back in receipts.
REFERENCE_ARG = "campaignkit_ref"
# json.dumps(..., ensure_ascii=False, separators=(",", ":")) without a new encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
# A string's JSON form, as _ENCODER writes it (ensure_ascii=False); raises TypeError
# for anything but a str.
_quote: Callable[[str], str] = json.encoder.encode_basestring
_PERSONALIZATION_FIELD = re.compile(r"personalizations\.(\d+)(?:\.(.*))?")


@attrs.frozen
class PlannedRequest:
    """One planned Mail Send request.

    ``positions`` index the batch; ``content`` is the shared ``(text, html)`` of a
    request that carries its content, ``None`` for one that uses substitutions.
    """

    positions: tuple[int, ...]
    content: tuple[str, str | None] | None


class MailBodies:
    """The Mail Send requests of one batch: :meth:`plan` groups its messages into
    requests and :meth:`payload` gives a request's JSON body.

    Each message's personalization is built and serialized once (by position, and
    whether its content travels in substitutions), both to size the requests and
    to join into their bodies.

    Args:
        messages: the batch.
        static: the request fields that come from the channel's options.
        max_request_bytes: about the most JSON one request may carry.
    """

    def __init__(
        self, messages: Sequence[Message], static: Mapping[str, Any], max_request_bytes: int
    ) -> None:
        self.messages = messages
        self._static = static
        self._max_request_bytes = max_request_bytes
        self._fragments: dict[tuple[int, bool], bytes] = {}

    def plan(self, positions: Sequence[int]) -> list[PlannedRequest]:
        """Group the messages at ``positions`` into requests (see "Requests" in the
        channel's docstring), in batch order."""
        messages = self.messages
        by_content: dict[tuple[str, str | None], list[int]] = {}
        for p in positions:
            by_content.setdefault((messages[p].body, messages[p].html), []).append(p)
        static: list[tuple[tuple[str, str | None], list[int]]] = []
        substituted: dict[tuple[bool, bool], list[int]] = {}
        for content, group in by_content.items():
            if (
                len(group) > 1
                or len(by_content) == 1
                or _substitution_bytes(messages[group[0]]) > MAX_SUBSTITUTION_BYTES
            ):
                static.append((content, group))
            else:
                parts = (bool(content[0]), bool(content[1]))
                substituted.setdefault(parts, []).append(group[0])
        planned: list[PlannedRequest] = []
        for content, group in static:
            planned += [PlannedRequest(chunk, content) for chunk in self._split(group, False)]
        for group in substituted.values():
            if len(group) == 1:
                content = (messages[group[0]].body, messages[group[0]].html)
                planned.append(PlannedRequest(tuple(group), content))
            else:
                planned += [PlannedRequest(chunk, None) for chunk in self._split(group, True)]
        planned.sort(key=lambda r: r.positions[0])
        return planned

    def payload(self, positions: Sequence[int], content: tuple[str, str | None] | None) -> bytes:
        """The JSON body of a request for ``positions`` (the bytes ``json.dumps`` of
        the whole body gives), carrying ``content`` or, when ``None``, the tags the
        personalizations' substitutions fill in."""
        if content is None:
            first = self.messages[positions[0]]
            text = TEXT_TAG if first.body else None
            html = HTML_TAG if first.html else None
        else:
            text, html = content[0] or None, content[1]
        parts = []
        if text:
            parts.append({"type": "text/plain", "value": text})
        if html:
            parts.append({"type": "text/html", "value": html})
        substitute = content is None
        joined = b",".join(self._fragment(p, substitute) for p in positions)
        # _dumps({"personalizations": [...], **static, "content": parts})
        rest = _dumps({**self._static, "content": parts})
        return b'{"personalizations":[' + joined + b"]," + rest[1:]

    def _split(self, group: Sequence[int], substitute: bool) -> list[tuple[int, ...]]:
        """Split ``group`` into chunks without a repeated address, each within the
        personalization and size limits (first fit, keeping batch order)."""
        chunks: list[list[int]] = []
        seen: list[set[str]] = []
        sizes: list[int] = []
        for p in group:
            message = self.messages[p]
            key = message.address.strip().lower()
            size = len(self._fragment(p, substitute))
            for i, chunk in enumerate(chunks):
                if (
                    key not in seen[i]
                    and len(chunk) < MAX_PERSONALIZATIONS
                    and sizes[i] + size <= self._max_request_bytes
                ):
                    chunk.append(p)
                    seen[i].add(key)
                    sizes[i] += size
                    break
            else:
                base = 0 if substitute else _utf8_len(message.body) + _utf8_len(message.html)
                chunks.append([p])
                seen.append({key})
                sizes.append(base + size)
        return [tuple(c) for c in chunks]

    def _fragment(self, p: int, substitute: bool) -> bytes:
        """Message ``p``'s serialized personalization, built once per batch."""
        key = (p, substitute)
        data = self._fragments.get(key)
        if data is None:
            data = self._fragments[key] = personalization(self.messages[p], substitute)
        return data


def address(email: str, name: str | None) -> dict[str, str]:
    """A SendGrid email object, ``{"email", "name"}`` (no name when there is none)."""
    return {"email": email, "name": name} if name else {"email": email}


def personalization(message: Message, substitute: bool) -> bytes:
    """``message``'s personalization as JSON; with ``substitute``, its content
    travels in ``substitutions``.

    The bytes are those of ``_dumps`` of the personalization's dict, written by hand
    from each string's JSON form (``encode_basestring`` is what the encoder uses for
    them): the dict, its nesting and the encoder's walk over it were about half of
    the channel's CPU a message. A value that is not a string goes through the dict.
    """
    try:
        return _personalization_json(message, substitute).encode("utf-8")
    except TypeError:
        return _dumps(_personalization_fields(message, substitute))


def _personalization_json(message: Message, substitute: bool) -> str:
    """The JSON text of ``_personalization_fields(message, substitute)``.

    Raises:
        TypeError: a value is not a string (the caller then encodes the dict).
    """
    q = _quote
    name = message.name
    to = q(message.address) + (',"name":' + q(name) if name else "")
    parts = ['{"to":[{"email":', to, '}],"subject":', _string_or_null(message.subject)]
    if message.headers:
        parts += (',"headers":', _ENCODER.encode(message.headers))
    parts += (',"custom_args":{"' + RECIPIENT_ARG + '":', q(message.recipient_id))
    if message.idempotency_key:
        parts += (',"' + IDEMPOTENCY_ARG + '":', q(message.idempotency_key))
    if message.reference:
        parts += (',"' + REFERENCE_ARG + '":', q(message.reference))
    parts.append("}")
    if substitute:
        parts.append(',"substitutions":{')
        if message.body:
            parts += ('"' + TEXT_TAG + '":', q(message.body))
        if message.html:
            parts += (',"' if message.body else '"', HTML_TAG + '":', q(message.html))
        parts.append("}")
    parts.append("}")
    return "".join(parts)


def _string_or_null(value: str | None) -> str:
    return "null" if value is None else _quote(value)


def _personalization_fields(message: Message, substitute: bool) -> dict[str, Any]:
    """The personalization as a dict (the reference for :func:`personalization`)."""
    custom_args = {RECIPIENT_ARG: message.recipient_id}
    if message.idempotency_key:
        custom_args[IDEMPOTENCY_ARG] = message.idempotency_key
    if message.reference:
        custom_args[REFERENCE_ARG] = message.reference
    fields: dict[str, Any] = {
        "to": [address(message.address, message.name)],
        "subject": message.subject,
    }
    if message.headers:
        fields["headers"] = message.headers  # a dict: Message converts it
    fields["custom_args"] = custom_args
    if substitute:
        substitutions = {}
        if message.body:
            substitutions[TEXT_TAG] = message.body
        if message.html:
            substitutions[HTML_TAG] = message.html
        fields["substitutions"] = substitutions
    return fields


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


def _utf8_len(text: str | None) -> int:
    if not text:
        return 0
    return len(text) if text.isascii() else len(text.encode())


def _substitution_bytes(message: Message) -> int:
    size = len(TEXT_TAG) + _utf8_len(message.body) if message.body else 0
    if message.html:
        size += len(HTML_TAG) + _utf8_len(message.html)
    return size


# -- answers ----------------------------------------------------------------------
def error_list(response: requests.Response) -> list[Mapping[str, Any]]:
    """The ``errors`` list of a SendGrid error body (empty if there is none)."""
    try:
        body = response.json()
    except ValueError:
        return []
    errors = body.get("errors") if isinstance(body, dict) else None
    if not isinstance(errors, list):
        return []
    return [e for e in errors if isinstance(e, Mapping)]


def recipient_errors(
    errors: Sequence[Mapping[str, Any]], count: int
) -> dict[int, list[Mapping[str, Any]]] | None:
    """Errors by personalization index, or ``None`` unless every error names one of
    the ``count`` personalizations (then the request as a whole is at fault)."""
    named: dict[int, list[Mapping[str, Any]]] = {}
    for error in errors:
        match = _PERSONALIZATION_FIELD.fullmatch(str(error.get("field") or ""))
        if match is None or int(match.group(1)) >= count:
            return None
        named.setdefault(int(match.group(1)), []).append(error)
    return named or None
