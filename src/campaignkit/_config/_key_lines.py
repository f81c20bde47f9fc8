"""Where the keys of a TOML document are written: :func:`key_lines` and :func:`line_of`."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping

__all__ = ["key_lines", "line_of"]

_BARE = r"[A-Za-z0-9_-]+"
_BASIC = r'"(?:[^"\\]|\\.)*"'
_LITERAL = r"'[^']*'"
_KEY = rf"(?:{_BARE}|{_BASIC}|{_LITERAL})"
_DOTTED = rf"{_KEY}(?:\s*\.\s*{_KEY})*"
_HEADER_RE = re.compile(rf"^\s*(\[\[?)\s*({_DOTTED})\s*\]\]?")
_ASSIGN_RE = re.compile(rf"^\s*({_DOTTED})\s*=")
_PART_RE = re.compile(_KEY)


def _key_parts(dotted: str) -> list[str]:
    parts = []
    for match in _PART_RE.finditer(dotted):
        token = match.group(0)
        if token[0] in "\"'":
            try:  # TOML's own reading of a quoted key: every escape, any character
                (token,) = tomllib.loads(f"{token} = 0")
            except (tomllib.TOMLDecodeError, ValueError):
                token = token[1:-1]
        parts.append(token)
    return parts


def key_lines(text: str) -> dict[str, int]:
    """The 1-based line where each table and key of a TOML document is written, by
    dotted key path (``channels.sms.rate``). Keys inside inline tables and arrays are
    not listed (their enclosing key is). A table that is never written itself (only
    its sub-tables or dotted keys such as ``sms.provider = ...`` are) has the line
    where it first appears. Best effort: it never raises."""
    lines: dict[str, int] = {}
    implied: dict[str, int] = {}  # tables only named as a prefix
    table: list[str] = []
    in_string: str | None = None  # the delimiter of an open multi-line string
    depth = 0  # open brackets of a multi-line array or inline table
    # TOML's lines end at "\n" only (str.splitlines also splits at U+2028, NEL ...).
    for number, line in enumerate(text.removeprefix("\ufeff").split("\n"), 1):
        if in_string is None and depth == 0:
            header = _HEADER_RE.match(line)
            assign = None if header else _ASSIGN_RE.match(line)
            if header:
                table = _key_parts(header.group(2))
                _note(lines, implied, table, number)
                continue
            if assign:
                _note(lines, implied, [*table, *_key_parts(assign.group(1))], number)
                line = line[assign.end() :]
        in_string, depth = _scan_value(line, depth, in_string)
    return {**implied, **lines}


def _note(lines: dict[str, int], implied: dict[str, int], parts: list[str], number: int) -> None:
    lines.setdefault(".".join(parts), number)
    for i in range(1, len(parts)):
        implied.setdefault(".".join(parts[:i]), number)


def _string_end(line: str, start: int, quote: str) -> int:
    """The index just past the delimiter closing a multi-line string opened with
    ``quote`` before ``start`` (up to two quotes of its content may touch it), or -1
    when the string goes on past this line."""
    i = start
    while i < len(line):
        if quote == '"""' and line[i] == "\\":
            i += 2  # an escape: \" does not close, \\ is one backslash
            continue
        if line.startswith(quote, i):
            end = i + 3
            while end < len(line) and end < i + 5 and line[end] == quote[0]:
                end += 1
            return end
        i += 1
    return -1


def _scan_value(line: str, depth: int, in_string: str | None = None) -> tuple[str | None, int]:
    """Follow a value's brackets and strings to the end of ``line`` (starting inside
    the multi-line string ``in_string`` when one is open): the delimiter of a
    multi-line string left open, and the bracket depth after it."""
    i = 0
    while i < len(line):
        if in_string is not None:
            i = _string_end(line, i, in_string)
            if i < 0:
                return in_string, depth
            in_string = None
            continue
        if line.startswith('"""', i) or line.startswith("'''", i):
            in_string, i = line[i : i + 3], i + 3
            continue
        ch = line[i]
        if ch == "#":
            break
        if ch in "\"'":
            end = i + 1
            while end < len(line) and line[end] != ch:
                end += 2 if ch == '"' and line[end] == "\\" else 1
            i = end + 1
            continue
        if ch in "[{":
            depth += 1
        elif ch in "]}":
            depth = max(0, depth - 1)
        i += 1
    return in_string, depth


def line_of(lines: Mapping[str, int], path: str | None) -> int | None:
    """The line of ``path`` in a document's :func:`key_lines`, else of the closest
    enclosing key or table written in it; ``None`` when none is."""
    parts = path.split(".") if path else []
    while parts:
        found = lines.get(".".join(parts))
        if found is not None:
            return found
        parts.pop()
    return None
