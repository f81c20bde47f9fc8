"""Keeping credentials out of everything campaignkit stores, prints or logs.

:func:`redact` is the one scrubber: every error text that leaves the library (ledger
rows, reports, exception messages, CLI output, log records) goes through it. It
removes

* every secret value campaignkit knows of (each :class:`~campaignkit.Secret` made in
  this process registers its value with :func:`remember`), in the forms a provider
  or a library may echo it: raw, stripped, ``repr``/JSON-escaped, URL-encoded and
  base64 (alone, or inside an HTTP Basic value such as ``base64(sid:token)``);
* generic credential shapes, whoever's they are: ``Authorization: ...`` (and
  ``Proxy-Authorization``, ``X-Api-Key``...), ``Bearer <x>``, ``Basic <base64>``,
  ``Key <key>``, and ``api_key=...``, ``password: ...`` style pairs.

:func:`token_problem` says what makes a token unusable in an HTTP header (a
newline, surrounding whitespace, control characters, characters outside
Latin-1) without ever quoting the value.
"""

from __future__ import annotations

import base64
import collections
import functools
import json
import logging
import re
import threading
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = ["REDACTED", "RedactingFilter", "forget", "redact", "remember", "token_problem"]

#: What a credential is replaced with.
REDACTED = "***"
#: Secrets shorter than this are searched for as whole words only (raw or
#: %-encoded, not inside a longer run of letters and digits), so that a short
#: secret does not blank out ordinary words; longer ones are searched for anywhere,
#: in every spelling. The generic patterns apply either way.
MIN_SECRET_LENGTH = 4

_lock = threading.Lock()
_known: collections.Counter[str] = collections.Counter()  # value -> holders
_version = 0

_HEADER = re.compile(
    r"(?i)\b((?:proxy-)?authorization|x-api-key|api-key|x-auth-token|x-postmark-server-token)"
    r"(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
    r"([^\"'\r\n]+)"
)
_PAIR = re.compile(
    r"(?i)\b(api[_-]?key|api[_-]?token|access[_-]?token|auth[_-]?token|refresh[_-]?token|"
    r"client[_-]?secret|secret|password|passwd)"
    r"(\\?[\"']?\s*[:=]\s*\\?[\"']?)"
    r"([^\s\"'&,;}\]]+)"
)
_BEARER = re.compile(r"\b(Bearer|Token)(\s+)([^\s\"',;]+)", re.IGNORECASE)
_BASIC = re.compile(r"\b(Basic)(\s+)([A-Za-z0-9+/_-]{8,}={0,2})", re.IGNORECASE)
_KEY = re.compile(r"\b(Key)(\s+)((?=[\w.\-]*\d)[\w.\-]{16,})")


def remember(value: str) -> None:
    """Register a secret value: :func:`redact` removes it (and its encodings) until as
    many :func:`forget` calls (a :class:`~campaignkit.Secret` registers its value while
    it exists)."""
    global _version
    if not value.strip():
        return
    with _lock:
        _known[value] += 1
        if _known[value] == 1:
            _version += 1


def forget(value: str) -> None:
    """Undo one :func:`remember` of ``value``."""
    global _version
    with _lock:
        if _known.get(value, 0) > 1:
            _known[value] -= 1
        elif _known.pop(value, None) is not None:
            _version += 1


def _b64_forms(value: bytes) -> set[str]:
    """Base64 of ``value`` alone, and the characters of its encoding inside any
    longer text (at each of the three byte alignments) that depend on it only."""
    forms: set[str] = set()
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        forms.add(encode(value).decode("ascii").rstrip("="))
        for pad in range(3):
            encoded = encode(b"\0" * pad + value + b"\0\0").decode("ascii")
            start = -(-8 * pad // 6)  # first character made of the value's bits only
            end = (8 * (pad + len(value))) // 6  # first one that is not
            if end - start >= 6:
                forms.add(encoded[start:end])
    return forms


@functools.lru_cache(maxsize=256)
def _forms(value: str) -> tuple[re.Pattern[str], tuple[str, ...]]:
    """How ``value`` may be spelled in a text: a pattern for the raw value with any of
    its characters %-encoded (any mix, any case), and the literal other spellings
    (``repr``/JSON escapes, base64), longest first."""
    pieces = []
    for char in value:
        if char.isascii() and char.isalnum():
            pieces.append(re.escape(char))
            continue
        encoded = quote(char, safe="")
        if encoded == char:
            encoded = f"%{ord(char):02X}"
        alternatives = {re.escape(char), re.escape(encoded), re.escape(encoded.lower())}
        if char == " ":
            alternatives.add(r"\+")
        pieces.append(f"(?:{'|'.join(sorted(alternatives))})")
    if len(value) < MIN_SECRET_LENGTH:
        # A short secret (a misconfiguration, but not a reason to leak it): only as a
        # whole word, so that "abc" does not blank out "abcdef".
        # (Not after a letter's apostrophe either: the "t" of "can't" is no word.)
        bounded = f"(?<![A-Za-z0-9])(?<![A-Za-z]'){''.join(pieces)}(?![A-Za-z0-9])"
        return re.compile(bounded), ()
    pattern = re.compile("".join(pieces))
    forms = {value.strip(), repr(value)[1:-1], json.dumps(value)[1:-1], quote_plus(value)}
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode("utf-8")
    forms |= _b64_forms(raw)
    stripped = value.strip().encode("latin-1", "replace")
    if raw != stripped:
        forms |= _b64_forms(stripped)
    literal = sorted((f for f in forms if len(f) >= MIN_SECRET_LENGTH), key=len, reverse=True)
    return pattern, tuple(literal)


def _basic(match: re.Match[str]) -> str:
    value = match.group(3)
    if len(value.rstrip("=")) < 8 or (value.isalpha() and value.islower()):
        return match.group(0)  # "Basic authentication", not a credential
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


def _keep_name(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without credentials: the known secrets, ``secrets`` and generic shapes."""
    if not text:
        return text
    extra = tuple(s for s in secrets if s and s.strip())
    return _redact(text, extra, _version)


@functools.lru_cache(maxsize=1024)
def _redact(text: str, extra: tuple[str, ...], version: int) -> str:
    with _lock:
        values = sorted({*_known, *extra}, key=len, reverse=True)
    for value in values:
        pattern, literal = _forms(value)
        text = pattern.sub(REDACTED, text)
        for form in literal:
            if form in text:
                text = text.replace(form, REDACTED)
    text = _HEADER.sub(_keep_name, text)
    text = _PAIR.sub(_keep_name, text)
    text = _BEARER.sub(lambda m: m.group(0) if m.group(3) == REDACTED else _keep_name(m), text)
    text = _BASIC.sub(_basic, text)
    return _KEY.sub(_keep_name, text)


def token_problem(value: str) -> str | None:
    """Why ``value`` cannot be sent as a token, without quoting it; ``None`` if it can."""
    if value.endswith(("\n", "\r")):
        return (
            "ends with a newline (a secret read from a file?); remove the trailing "
            "newline, e.g. with $(cat file) or tr -d '\\n'"
        )
    if value != value.strip():
        return "starts or ends with whitespace"
    for char in value:
        if char in "\r\n":
            return "contains a line break"
        if ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0:
            return f"contains a control character (U+{ord(char):04X})"
        if ord(char) > 0xFF:
            return "contains a character that cannot be sent in an HTTP header (not Latin-1)"
    return None


class RedactingFilter(logging.Filter):
    """A logging filter that passes every record's message and traceback through
    :func:`redact` (campaignkit installs one on the ``campaignkit`` logger)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: leave it to the handler
            return True
        record.msg, record.args = redact(message), ()
        if record.exc_info and record.exc_info[0] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = redact(text), None
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True
