"""The bodies of a batch's SendGrid Mail Send requests.

:func:`plan` groups a batch's messages into as few requests as SendGrid allows (see
"Requests" in :mod:`campaignkit.channels.sendgrid`) and :func:`payload` serializes a
request's JSON body, each message's personalization dumped once per batch (kept in
its :data:`Fragments`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from .._models import Message

__all__ = [
    "HTML_TAG",
    "IDEMPOTENCY_ARG",
    "MAX_PERSONALIZATIONS",
    "MAX_SUBSTITUTION_BYTES",
    "RECIPIENT_ARG",
    "TEXT_TAG",
    "Fragments",
    "PlannedRequest",
    "address",
    "payload",
    "personalization",
    "plan",
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
# json.dumps(..., ensure_ascii=False, separators=(",", ":")) without a new encoder per call.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))

#: A batch's serialized personalizations by (position, substitute): each is built and
#: dumped once, sized by ``split`` and joined into request bodies by ``payload``.
Fragments = dict[tuple[int, bool], bytes]


@attrs.frozen
class PlannedRequest:
    """One planned Mail Send request.

    ``positions`` index the batch; ``content`` is the shared ``(text, html)`` of a
    request that carries its content, ``None`` for one that uses substitutions.
    """

    positions: tuple[int, ...]
    content: tuple[str, str | None] | None


def plan(
    messages: Sequence[Message],
    positions: Sequence[int],
    frags: Fragments,
    max_request_bytes: int,
) -> list[PlannedRequest]:
    """Group messages into requests (see "Requests" in the channel's docstring), each
    within about ``max_request_bytes`` of JSON."""
    by_content: dict[tuple[str, str | None], list[int]] = {}
    for p in positions:
        message = messages[p]
        by_content.setdefault((message.body, message.html), []).append(p)
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
        chunks = split(messages, group, False, frags, max_request_bytes)
        planned += [PlannedRequest(chunk, content) for chunk in chunks]
    for group in substituted.values():
        if len(group) == 1:
            content = (messages[group[0]].body, messages[group[0]].html)
            planned.append(PlannedRequest(tuple(group), content))
        else:
            planned += [
                PlannedRequest(chunk, None)
                for chunk in split(messages, group, True, frags, max_request_bytes)
            ]
    planned.sort(key=lambda r: r.positions[0])
    return planned


def split(
    messages: Sequence[Message],
    group: Sequence[int],
    substitute: bool,
    frags: Fragments,
    max_request_bytes: int,
) -> list[tuple[int, ...]]:
    """Split ``group`` into chunks without a repeated address, each within the
    personalization and size limits (first fit, keeping batch order).

    Sizes each personalization by its serialized bytes, kept in ``frags``.
    """
    chunks: list[list[int]] = []
    seen: list[set[str]] = []
    sizes: list[int] = []
    for p in group:
        message = messages[p]
        address = message.address.strip().lower()
        size = len(_fragment(messages, frags, p, substitute))
        for i, chunk in enumerate(chunks):
            if (
                address not in seen[i]
                and len(chunk) < MAX_PERSONALIZATIONS
                and sizes[i] + size <= max_request_bytes
            ):
                chunk.append(p)
                seen[i].add(address)
                sizes[i] += size
                break
        else:
            base = 0 if substitute else _utf8_len(message.body) + _utf8_len(message.html)
            chunks.append([p])
            seen.append({address})
            sizes.append(base + size)
    return [tuple(c) for c in chunks]


def payload(
    messages: Sequence[Message],
    positions: Sequence[int],
    content: tuple[str, str | None] | None,
    frags: Fragments,
    static: Mapping[str, Any],
) -> bytes:
    """The JSON body of a request for ``positions``, with the batch's cached
    personalizations (the bytes ``json.dumps`` of the whole body gives)."""
    if content is None:
        first = messages[positions[0]]
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
    joined = b",".join(_fragment(messages, frags, p, substitute) for p in positions)
    # _dumps({"personalizations": [...], **static, "content": parts})
    rest = _dumps({**static, "content": parts})
    return b'{"personalizations":[' + joined + b"]," + rest[1:]


def address(email: str, name: str | None) -> dict[str, str]:
    return {"email": email, "name": name} if name else {"email": email}


def _dumps(value: Any) -> bytes:
    return _ENCODER.encode(value).encode("utf-8")


def _fragment(messages: Sequence[Message], frags: Fragments, p: int, substitute: bool) -> bytes:
    """Message ``p``'s serialized personalization, built once per batch."""
    key = (p, substitute)
    data = frags.get(key)
    if data is None:
        data = frags[key] = personalization(messages[p], substitute)
    return data


def personalization(message: Message, substitute: bool) -> bytes:
    """``message``'s personalization as JSON; with ``substitute``, its content
    travels in ``substitutions``."""
    custom_args = {RECIPIENT_ARG: message.recipient_id}
    if message.idempotency_key:
        custom_args[IDEMPOTENCY_ARG] = message.idempotency_key
    personalization: dict[str, Any] = {
        "to": [address(message.address, message.name)],
        "subject": message.subject,
    }
    if message.headers:
        personalization["headers"] = message.headers  # a dict: Message converts it
    personalization["custom_args"] = custom_args
    if substitute:
        substitutions = {}
        if message.body:
            substitutions[TEXT_TAG] = message.body
        if message.html:
            substitutions[HTML_TAG] = message.html
        personalization["substitutions"] = substitutions
    return _dumps(personalization)


def _utf8_len(text: str | None) -> int:
    if not text:
        return 0
    return len(text) if text.isascii() else len(text.encode())


def _substitution_bytes(message: Message) -> int:
    size = len(TEXT_TAG) + _utf8_len(message.body) if message.body else 0
    if message.html:
        size += len(HTML_TAG) + _utf8_len(message.html)
    return size
