"""The HTTP request and reply a sandbox provider server handles and answers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs

import attrs

__all__ = ["Reply", "Request", "loads"]


def loads(text: str | bytes) -> Any:
    """``json.loads``, raising ``ValueError`` for JSON nested too deeply to parse
    (``RecursionError`` otherwise)."""
    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


@attrs.frozen
class Request:
    """An HTTP request as the sandbox received it."""

    method: str
    path: str
    query: Mapping[str, list[str]]
    headers: Mapping[str, str]  # lower-cased names
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON (raises ``ValueError`` if it is not, including
        when it is not UTF-8 or nested too deeply to parse)."""
        return loads(self.body.decode("utf-8"))

    def form(self) -> dict[str, list[str]]:
        """The body parsed as ``application/x-www-form-urlencoded`` (bytes that are
        not UTF-8 read as U+FFFD, as percent-escapes that are not are)."""
        return parse_qs(self.body.decode("utf-8", "replace"), keep_blank_values=True)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "").split(";")[0].strip().lower()


@attrs.frozen
class Reply:
    """An HTTP reply: ``body`` is JSON-encoded unless it is bytes."""

    status: int
    body: Any = None
    headers: Mapping[str, str] = attrs.field(factory=dict)

    def encode(self) -> tuple[bytes, str]:
        if self.body is None:
            return b"", "application/json"
        if isinstance(self.body, bytes):
            return self.body, "text/plain"
        return json.dumps(self.body).encode("utf-8"), "application/json"
