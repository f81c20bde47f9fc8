"""Control characters in text: what a value may hold, and how a problem is named.

A strict value (an id, an address, a token, a consent flag, a mapped or
``strict_columns`` column) may hold no control character and no Unicode line or
paragraph separator (U+2028, U+2029); free text may hold tab, LF, CR before LF and
those separators; one line of text (a rendered subject or title) may hold tab only.
No value may hold a lone surrogate (U+D800-U+DFFF, which JSON's ``\\ud800`` escapes
can produce): it cannot be encoded, stored or sent. Used by the sources, by extraction
for plugin sources, and by rendering.
"""

from __future__ import annotations

import re

__all__ = ["CONTROL_CHARACTER", "control_detail", "find_control"]

#: Reason code of a row (or a message) holding a control character it may not hold.
CONTROL_CHARACTER = "control_character"

#: Control characters: C0 (U+0000-U+001F), DEL (U+007F) and C1 (U+0080-U+009F). A
#: strict value (an id, address, token, consent flag, mapped or ``strict_columns``
#: column) may hold none of them; free text may hold tab, LF and CR before LF.
#: Strict values and one line of text refuse the Unicode line and paragraph separators
#: too (``str.splitlines`` and JavaScript break lines there). A lone surrogate
#: (U+D800-U+DFFF) is refused everywhere: no UTF encoding can hold it.
_CONTROL_STRICT = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_CONTROL_FREE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]|\r(?!\n)")
#: One line of text (a subject, a title): tab is whitespace there, a line break is not.
_CONTROL_LINE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")


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
    character itself; ``lone surrogate U+D800`` or ``line separator U+2028`` for those."""
    code = ord(char)
    kind = (
        "lone surrogate"
        if 0xD800 <= code <= 0xDFFF
        else "line separator"
        if code in (0x2028, 0x2029)
        else "control character"
    )
    return f"{what}: {kind} U+{code:04X} at position {position + 1}"
