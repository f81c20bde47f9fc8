"""Control characters in text: what a value may hold, and how a problem is named.

A strict value (an id, an address, a token, a consent flag, a mapped or
``strict_columns`` column) may hold no control character; free text may hold tab, LF
and CR before LF; one line of text (a rendered subject or title) may hold tab only.
Used by the sources, by extraction for plugin sources, and by rendering.
"""

from __future__ import annotations

import re

__all__ = ["CONTROL_CHARACTER", "control_detail", "find_control"]

#: Reason code of a row (or a message) holding a control character it may not hold.
CONTROL_CHARACTER = "control_character"

#: Control characters: C0 (U+0000-U+001F), DEL (U+007F) and C1 (U+0080-U+009F). A
#: strict value (an id, address, token, consent flag, mapped or ``strict_columns``
#: column) may hold none of them; free text may hold tab, LF and CR before LF.
_CONTROL_STRICT = re.compile("[\x00-\x1f\x7f-\x9f]")
_CONTROL_FREE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]|\r(?!\n)")
#: One line of text (a subject, a title): tab is whitespace there, a line break is not.
_CONTROL_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def find_control(value: str, *, strict: bool, line: bool = False) -> tuple[int, str] | None:
    """Return (0-based position, character) of the first control character ``value``
    may not hold, or ``None``.

    ``strict``: no control character at all; ``line``: one line of text (tab allowed,
    no line break); otherwise tab, LF and CRLF are allowed.
    ``str.isprintable`` is the fast path (true for nearly every value); it is false for
    other characters too (U+2028, non-breaking spaces), which the regex then clears.
    """
    if value.isprintable():
        return None
    m = (_CONTROL_STRICT if strict else _CONTROL_LINE if line else _CONTROL_FREE).search(value)
    return None if m is None else (m.start(), value[m.start()])


def control_detail(what: str, position: int, char: str) -> str:
    """``column 'email': control character U+0000 at position 5`` (1-based), never the
    character itself."""
    return f"{what}: control character U+{ord(char):04X} at position {position + 1}"
