"""Content rules: SMS encoding and segments, email plain text and unsubscribe headers,
push payload size.

Everything here is pure and thread-safe, and the per-message functions are built for
speed (they run once per recipient): character tables are precomputed, and the common
cases (ASCII text, one segment, no two-unit character) take a short path.

SMS (GSM 03.38 / 3GPP TS 23.038, 23.040):

- A message is **GSM-7** when every character is in the GSM default alphabet or its
  extension table, else the whole message is **UCS-2** (one non-GSM character is enough).
- GSM-7 counts septets: extension characters (``€ [ ] { } \\ ^ ~ |`` and form feed) are
  sent as ESC + code and count 2. One segment holds 160 septets; a concatenated message
  holds 153 per part (the user data header takes 6 octets), and an extension character's
  two septets are never split between parts (the part ends early instead).
- UCS-2 counts UTF-16 code units (an emoji or other astral character counts 2): 70 in
  one segment, 67 per part of a concatenated message, and a surrogate pair is never split.
- An empty text has **0 segments** and no parts: providers reject an empty body (Twilio
  21602, Telnyx 40005) rather than bill it, so it is an error, not a 1-segment message;
  :meth:`ContentRules.check` reports it as ``empty_body``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import ClassVar, Final, Literal
from urllib.parse import urlsplit

import attrs

from ._models import Message

__all__ = [
    "APNS_MAX_PAYLOAD_BYTES",
    "EXPO_MAX_PAYLOAD_BYTES",
    "FCM_MAX_PAYLOAD_BYTES",
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "ONESIGNAL_MAX_DATA_BYTES",
    "ONESIGNAL_MAX_PAYLOAD_BYTES",
    "PUSH_MAX_PAYLOAD_BYTES",
    "ContentRules",
    "SmsEncoding",
    "SmsInfo",
    "html_to_text",
    "list_unsubscribe_headers",
    "push_data_size",
    "push_payload_size",
    "sms_segments",
    "sms_split",
]

# --------------------------------------------------------------------------- SMS

#: The GSM 03.38 default alphabet in code order (0x00-0x7F), without 0x1B (ESC).
GSM7_BASIC: Final = (
    "@£$¥èéùìòÇ\nØø\rÅå"
    "\u0394_\u03a6\u0393\u039b\u03a9\u03a0\u03a8\u03a3\u0398\u039e"  # Δ_ΦΓΛΩΠΨΣΘΞ
    "ÆæßÉ"
    " !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
#: The GSM 03.38 extension table (each sent as ESC + code: 2 septets).
GSM7_EXTENSION: Final = "\x0c^{}\\[~]|€"

SmsEncoding = Literal["GSM-7", "UCS-2"]

GSM7_SINGLE: Final = 160
GSM7_PART: Final = 153
UCS2_SINGLE: Final = 70
UCS2_PART: Final = 67

# Measured (CPython 3.11+): a compiled character class beats str.translate and set
# membership for these scans; for ASCII text bytes.translate is faster still.
_NOT_BASIC = re.compile("[^" + re.escape(GSM7_BASIC) + "]")
_NOT_GSM = re.compile("[^" + re.escape(GSM7_BASIC + GSM7_EXTENSION) + "]")
_ASTRAL = re.compile("[\U00010000-\U0010ffff]")
_ASCII_BASIC = bytes(c for c in range(128) if chr(c) in GSM7_BASIC)
_ASCII_EXTENSION = bytes(c for c in range(128) if chr(c) in GSM7_EXTENSION)


@attrs.frozen
class SmsInfo:
    """How an SMS text is encoded and billed.

    Attributes:
        encoding: ``"GSM-7"`` or ``"UCS-2"``.
        units: GSM-7 septets (extension characters count 2) or UTF-16 code units.
        segments: parts the message is sent (and billed) as; 0 for an empty text.
        characters: code points in the text (``len(text)``).
    """

    encoding: SmsEncoding
    units: int
    segments: int
    characters: int


def _gsm_extension_count(text: str) -> int:
    """The number of extension characters if ``text`` is GSM-7, else -1."""
    if text.isascii():
        rest = text.encode("ascii").translate(None, _ASCII_BASIC)
        if not rest:
            return 0
        return -1 if rest.translate(None, _ASCII_EXTENSION) else len(rest)
    first = _NOT_BASIC.search(text)
    if first is None:
        return 0
    if _NOT_GSM.search(text, first.start()) is not None:
        return -1
    return len(_NOT_BASIC.findall(text, first.start()))


def _gsm_septets(text: str) -> str:
    """``text`` with an ESC before each extension character: one character per septet.

    ESC (0x1B) is not in the basic alphabet, so in a GSM-7 text it marks exactly the
    first septet of an extension character.
    """
    for char in GSM7_EXTENSION:
        if char in text:
            text = text.replace(char, "\x1b" + char)
    return text


def _gsm_parts(septets: str) -> list[str]:
    """Cut a septet string (see :func:`_gsm_septets`) into concatenated parts.

    Each part takes 153 septets, one fewer when the 153rd would be the ESC of an
    extension character (its two septets stay together). Returns the parts as septet
    strings, ESC markers included.
    """
    n = len(septets)
    parts = []
    i = 0
    while i < n:
        j = i + GSM7_PART
        if j < n and septets[j - 1] == "\x1b":
            j -= 1
        parts.append(septets[i:j])
        i = j
    return parts


def _split_bounds(text: str, heavy: re.Pattern[str], limit: int) -> list[int]:
    """End indices of the parts of ``text``, at most ``limit`` units each.

    Characters matched by ``heavy`` weigh 2 units and are never cut (they stay whole in
    one part); every other character weighs 1. Parts are filled greedily.
    """
    n = len(text)
    wide = [m.start() for m in heavy.finditer(text)]
    bounds: list[int] = []
    pos = 0  # start of the current part
    k = 0  # next wide character
    while pos < n:
        budget = limit
        # Take whole runs "narrow characters + one wide character" while they fit.
        while k < len(wide) and wide[k] - pos + 2 <= budget:
            budget -= wide[k] - pos + 2
            pos = wide[k] + 1
            k += 1
        nxt = wide[k] if k < len(wide) else n
        pos = min(pos + budget, nxt)  # fill with narrow characters up to the next wide one
        bounds.append(pos)
    return bounds


def _parts(text: str, bounds: list[int]) -> list[str]:
    out = []
    start = 0
    for end in bounds:
        out.append(text[start:end])
        start = end
    return out


def _ucs2_units(text: str) -> int:
    # "surrogatepass": a lone surrogate (possible in a Python str) counts one unit.
    return len(text.encode("utf-16-le", "surrogatepass")) >> 1


def sms_segments(text: str) -> SmsInfo:
    """Encoding, length and segment count of an SMS body.

    Segments are counted by the splitting rule of :func:`sms_split` (so a message whose
    extension characters or surrogate pairs would straddle a boundary takes the extra
    segment it really costs); ``sms_segments(t).segments == len(sms_split(t))``.
    An empty text is GSM-7 with 0 segments (see the module docstring).
    """
    n = len(text)
    ext = _gsm_extension_count(text)
    if ext >= 0:
        units = n + ext
        if units <= GSM7_SINGLE:
            segments = 1 if n else 0
        elif ext == 0:
            segments = -(-units // GSM7_PART)
        else:
            segments = len(_gsm_parts(_gsm_septets(text)))
        return SmsInfo("GSM-7", units, segments, n)
    units = _ucs2_units(text)
    if units <= UCS2_SINGLE:
        segments = 1
    elif units == n:
        segments = -(-units // UCS2_PART)
    else:
        segments = len(_split_bounds(text, _ASTRAL, UCS2_PART))
    return SmsInfo("UCS-2", units, segments, n)


def sms_split(text: str) -> list[str]:
    """The parts ``text`` is sent as, in order; ``"".join(parts) == text``.

    One part when the text fits one segment (160 septets / 70 UTF-16 units), else parts
    of at most 153 septets (GSM-7) or 67 UTF-16 units (UCS-2), never cutting an
    extension character or a surrogate pair. An empty text has no parts.
    """
    if not text:
        return []
    ext = _gsm_extension_count(text)
    if ext >= 0:
        if len(text) + ext <= GSM7_SINGLE:
            return [text]
        return [part.replace("\x1b", "") for part in _gsm_parts(_gsm_septets(text))]
    if _ucs2_units(text) <= UCS2_SINGLE:
        return [text]
    return _parts(text, _split_bounds(text, _ASTRAL, UCS2_PART))


# ------------------------------------------------------------------------ email

# Blocks separated from their neighbours by a blank line, or by a line break.
# fmt: off
_PARAGRAPH_TAGS: Final = frozenset({
    "p", "h1", "h2", "h3", "h4", "h5", "h6", "ul", "ol", "dl", "table", "blockquote", "pre",
    "hr", "figure", "address",
})
_LINE_TAGS: Final = frozenset({
    "div", "li", "tr", "section", "article", "header", "footer", "nav", "aside", "main", "dt",
    "dd", "figcaption", "form", "fieldset", "center", "caption", "details", "summary",
})
# fmt: on
# Elements whose content is never shown. script/style content is CDATA for the parser.
_SKIP_TAGS: Final = frozenset({"script", "style", "head", "title", "template"})
_LINK_SCHEMES_DROPPED: Final = ("#", "javascript:", "data:")


def _same_target(text: str, href: str) -> bool:
    """Whether a link's text already shows its target (so ``(url)`` is redundant)."""
    if text == href:
        return True
    low = href.lower()
    for prefix in ("mailto:", "tel:", "https://", "http://"):
        if low.startswith(prefix):
            bare = href[len(prefix) :]
            return text in (bare, bare.rstrip("/"))
    return False


class _TextExtractor(HTMLParser):
    """Collects the visible text of an HTML document as plain-text lines."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.out: list[str] = []
        self._breaks = 0  # newlines owed before the next text (0, 1 or 2)
        self._space = False  # a space owed before the next text on the same line
        self._line_start = True
        self._skip: list[str] = []  # stack of open skipped elements (hidden, script ...)
        self._pre = 0
        self._lists: list[list[int]] = []  # per open list: [ordered, next number]
        self._links: list[tuple[str, int]] = []  # (href, index in out where the text starts)

    # -- output primitives
    def _block(self, newlines: int) -> None:
        if newlines > self._breaks:
            self._breaks = newlines
        self._space = False

    def _emit(self, text: str) -> None:
        if self._breaks:
            if self.out:
                self.out.append("\n" * self._breaks)
            self._breaks = 0
            self._line_start = True
            self._space = False
        elif self._space and not self._line_start:
            self.out.append(" ")
        self._space = False
        self.out.append(text)
        self._line_start = text.endswith("\n")

    # -- parser callbacks
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.append(tag)
            return
        if tag in _SKIP_TAGS or _hidden(attrs):
            self._skip.append(tag)
            return
        if tag == "br":
            self._breaks = min(self._breaks + 1, 2) if self.out else 0
            self._space = False
        elif tag in ("ul", "ol"):
            self._block(1 if self._lists else 2)  # a nested list is not a new paragraph
            self._lists.append([tag == "ol", 1])
        elif tag in _PARAGRAPH_TAGS:
            self._block(2)
            if tag == "pre":
                self._pre += 1
        elif tag in _LINE_TAGS:
            self._block(1)
            if tag == "li":
                self._emit(self._bullet())
                self._line_start = True  # no space between the bullet and its text
        elif tag in ("td", "th"):
            self._space = True
        elif tag == "a":
            href = (dict(attrs).get("href") or "").strip()
            self._links.append((href, len(self.out)))
        elif tag == "img":
            alt = (dict(attrs).get("alt") or "").strip()
            if alt:
                self.handle_data(alt)

    def handle_endtag(self, tag: str) -> None:
        if self._skip:
            if tag == self._skip[-1]:
                self._skip.pop()
            return
        if tag == "br":  # "</br>" is a line break for browsers too
            self.handle_starttag(tag, [])
        elif tag in ("ul", "ol"):
            if self._lists:
                self._lists.pop()
            self._block(1 if self._lists else 2)
        elif tag in _PARAGRAPH_TAGS:
            self._block(2)
            if tag == "pre" and self._pre:
                self._pre -= 1
        elif tag in _LINE_TAGS:
            self._block(1)
        elif tag in ("td", "th"):
            self._space = True
        elif tag == "a" and self._links:
            href, start = self._links.pop()
            text = "".join(self.out[start:]).strip()
            if (
                text
                and href
                and not href.startswith(_LINK_SCHEMES_DROPPED)
                and not _same_target(text, href)
            ):
                self._emit(f" ({href})")

    def handle_data(self, data: str) -> None:
        if self._skip or not data:
            return
        if self._pre:
            self._emit(data)
            return
        words = data.split()
        if not words:
            self._space = self._space or not self._line_start
            return
        if data[0].isspace():
            self._space = True
        self._emit(" ".join(words))
        if data[-1].isspace():
            self._space = True

    def _bullet(self) -> str:
        if not self._lists:
            return "- "
        indent = "  " * (len(self._lists) - 1)
        current = self._lists[-1]
        if current[0]:
            current[1] += 1
            return f"{indent}{current[1] - 1}. "
        return f"{indent}- "


def _hidden(attrs: list[tuple[str, str | None]]) -> bool:
    for name, value in attrs:
        if name == "hidden":
            return True
        if name == "style" and value and "display" in value:
            compact = value.replace(" ", "").lower()
            if "display:none" in compact:
                return True
    return False


def html_to_text(html: str) -> str:
    """A plain-text alternative of an HTML email body.

    Uses only :mod:`html.parser`. Block elements start new lines (paragraphs,
    headings, lists, tables and quotes are separated by a blank line), ``<br>`` breaks
    the line, list items start with ``"- "`` (``"1. "`` in ordered lists, indented
    when nested), a link whose text differs from its target becomes ``"text (url)"``,
    images contribute their ``alt`` text; ``<head>``, ``<script>``, ``<style>`` and
    hidden elements (``hidden``, ``display:none``) are dropped. Entities are
    unescaped; runs of whitespace collapse to one space except inside ``<pre>``; lines
    carry no trailing spaces and there is never more than one blank line in a row.
    """
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    text = "".join(parser.out)
    lines = [line.rstrip() for line in text.split("\n")]
    # Collapse runs of blank lines (a <pre> or stacked <br> can produce them).
    out: list[str] = []
    for line in lines:
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip("\n")


_HEADER_MAX_LINE: Final = 998  # RFC 5322 2.1.1: a line is at most 998 octets


# ``https://[user@]host[:port]`` then a path, query, fragment or the end: a URL that
# urlsplit reads as https with a host (anything else gets the full check).
_HTTPS_WITH_HOST: Final = re.compile(
    r"https://(?:[^@/?#\[\]\s]*@)?[^:/?#\[\]@\s]+(?::\d*)?(?:[/?#]|\Z)", re.I
)


def _check_header_uri(uri: str, what: str) -> None:
    # Header-injection defence: a merge field must not end the URI (">"), start a new
    # header (CR/LF) or fold it (whitespace). Non-ASCII must be percent-encoded.
    if (
        not uri.isascii()
        or not uri.isprintable()  # control characters, CR, LF, TAB, DEL
        or " " in uri
        or "<" in uri
        or ">" in uri
    ):
        raise ValueError(
            f"{what} contains a character not allowed in a header URI "
            "(whitespace, control characters, '<', '>' or non-ASCII)"
        )


def list_unsubscribe_headers(url: str, mailto: str | None = None) -> dict[str, str]:
    """The RFC 2369 and RFC 8058 (one-click) unsubscribe headers for one recipient.

    Args:
        url: the recipient's rendered one-click unsubscribe URL; must be ``https``
            (RFC 8058 requires HTTPS; the receiver POSTs ``List-Unsubscribe=One-Click``).
        mailto: an optional mail alternative, ``"mailto:unsub@example.com?subject=..."``
            or a bare address.

    Returns:
        ``{"List-Unsubscribe": "<https://...>, <mailto:...>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}``.

    Raises:
        ValueError: the URL is not an absolute ``https`` URL with a host, either URI
            contains whitespace, control characters (CR/LF), ``<``, ``>`` or non-ASCII
            characters, or the header line would exceed 998 characters (it must not be
            folded, which would break DKIM on some receivers). The message never
            includes the URI (it identifies the recipient).
    """
    _check_header_uri(url, "unsubscribe URL")
    if _HTTPS_WITH_HOST.match(url) is None:  # the usual shape is settled without urlsplit
        parts = urlsplit(url)
        if parts.scheme.lower() != "https":
            raise ValueError("unsubscribe URL must be an https URL (RFC 8058 one-click)")
        if not parts.hostname:
            raise ValueError("unsubscribe URL has no host")
    value = f"<{url}>"
    if mailto is not None:
        if mailto[:7].lower() != "mailto:":
            if ":" in mailto.split("@", 1)[0]:
                raise ValueError("unsubscribe mailto must be a mailto: URI or an address")
            mailto = "mailto:" + mailto
        _check_header_uri(mailto, "unsubscribe mailto")
        if "@" not in mailto.partition("?")[0]:
            raise ValueError("unsubscribe mailto has no address")
        value += f", <{mailto}>"
    if len("List-Unsubscribe: ") + len(value) > _HEADER_MAX_LINE:
        raise ValueError("List-Unsubscribe header would be longer than 998 characters")
    return {"List-Unsubscribe": value, "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}


# ------------------------------------------------------------------------- push

#: Payload limits in bytes (APNs, FCM HTTP v1 to a token (2048 to a topic), Expo
#: ``MessageTooBig`` above 4096, OneSignal: 4096 total and 2048 of ``data``).
APNS_MAX_PAYLOAD_BYTES: Final = 4096
FCM_MAX_PAYLOAD_BYTES: Final = 4096
EXPO_MAX_PAYLOAD_BYTES: Final = 4096
ONESIGNAL_MAX_PAYLOAD_BYTES: Final = 4096
ONESIGNAL_MAX_DATA_BYTES: Final = 2048
#: Default payload limit by provider (notifier) name.
PUSH_MAX_PAYLOAD_BYTES: Final[Mapping[str, int]] = {
    "apns": APNS_MAX_PAYLOAD_BYTES,
    "fcm": FCM_MAX_PAYLOAD_BYTES,
    "expo": EXPO_MAX_PAYLOAD_BYTES,
    "onesignal": ONESIGNAL_MAX_PAYLOAD_BYTES,
}

_COMPACT_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def push_payload_size(title: str | None, body: str, data: Mapping[str, str] | None) -> int:
    """UTF-8 bytes of the compact JSON of the notification content.

    Measures ``{"title": ..., "body": ..., "data": {...}}`` (``title`` left out when
    ``None`` and ``data`` when empty, as the push channels send them), with non-ASCII
    characters as UTF-8 rather than ``\\u`` escapes. Providers count the whole payload
    they deliver, which adds their own keys (``aps``, ``to``, ...) around this, so keep
    a margin below the limit for those.
    """
    content: dict[str, object] = {"body": body}
    if title is not None:
        content["title"] = title
    if data:
        content["data"] = data if type(data) is dict else dict(data)
    return len(_COMPACT_JSON.encode(content).encode("utf-8", "surrogatepass"))


def push_data_size(data: Mapping[str, str] | None) -> int:
    """UTF-8 bytes of the compact JSON of ``data`` alone (0 when empty)."""
    if not data:
        return 0
    return len(
        _COMPACT_JSON.encode(data if type(data) is dict else dict(data)).encode(
            "utf-8", "surrogatepass"
        )
    )


# ------------------------------------------------------------------------ rules


def _optional_positive(
    _: object, attribute: attrs.Attribute[int | None], value: int | None
) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{attribute.name} must be at least 1")


@attrs.frozen
class ContentRules:
    """A channel's content rules, checked on every rendered message.

    Each rule applies only when set, so one class serves every channel:

    Attributes:
        max_sms_segments: the SMS body must be 1 to this many segments
            (``empty_body``, ``too_many_segments``).
        push_max_bytes: :func:`push_payload_size` of title, body and data must not
            exceed this (``payload_too_large``).
        push_max_data_bytes: :func:`push_data_size` of data must not exceed this
            (``data_too_large``; OneSignal: 2048).
        require_unsubscribe: the message must carry ``List-Unsubscribe`` and
            ``List-Unsubscribe-Post`` headers (``missing_unsubscribe``).
    """

    EMPTY_BODY: ClassVar[str] = "empty_body"
    TOO_MANY_SEGMENTS: ClassVar[str] = "too_many_segments"
    PAYLOAD_TOO_LARGE: ClassVar[str] = "payload_too_large"
    DATA_TOO_LARGE: ClassVar[str] = "data_too_large"
    MISSING_UNSUBSCRIBE: ClassVar[str] = "missing_unsubscribe"

    max_sms_segments: int | None = attrs.field(default=None, validator=_optional_positive)
    push_max_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    push_max_data_bytes: int | None = attrs.field(default=None, validator=_optional_positive)
    require_unsubscribe: bool = False

    def check(self, message: Message) -> str | None:
        """The first broken rule's code for ``message``, or ``None`` when it passes.

        Rules are checked in the order of the attributes; codes are the class
        constants (``empty_body``, ``too_many_segments``, ``payload_too_large``,
        ``data_too_large``, ``missing_unsubscribe``).
        """
        if self.max_sms_segments is not None:
            segments = sms_segments(message.body).segments
            if segments == 0:
                return self.EMPTY_BODY
            if segments > self.max_sms_segments:
                return self.TOO_MANY_SEGMENTS
        if (
            self.push_max_bytes is not None
            and push_payload_size(message.title, message.body, message.data) > self.push_max_bytes
        ):
            return self.PAYLOAD_TOO_LARGE
        if (
            self.push_max_data_bytes is not None
            and push_data_size(message.data) > self.push_max_data_bytes
        ):
            return self.DATA_TOO_LARGE
        if self.require_unsubscribe:
            headers = {name.lower() for name in message.headers}
            if "list-unsubscribe" not in headers or "list-unsubscribe-post" not in headers:
                return self.MISSING_UNSUBSCRIBE
        return None
