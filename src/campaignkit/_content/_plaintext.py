"""The plain-text alternative of an HTML email body: :func:`html_to_text`."""

from __future__ import annotations

from html.parser import HTMLParser
from typing import Final

__all__ = ["html_to_text"]

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
