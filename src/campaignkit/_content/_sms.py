"""SMS encoding and segments (GSM 03.38 / 3GPP TS 23.038, 23.040).

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

import re
from typing import Final, Literal

import attrs

__all__ = [
    "GSM7_BASIC",
    "GSM7_EXTENSION",
    "GSM7_PART",
    "GSM7_SINGLE",
    "UCS2_PART",
    "UCS2_SINGLE",
    "SmsEncoding",
    "SmsInfo",
    "sms_segments",
    "sms_split",
]

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
