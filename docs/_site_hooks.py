"""MkDocs hooks for the documentation site (see mkdocs.yml; not a page).

- Links from a page to files of the repository outside docs/ (``../examples/...``)
  work on GitHub as they are; on the site they point at the repository instead.
- Heading anchors are made as GitHub makes them (``[channels.<name>]`` is
  ``#channelsname``, ``--dry-run`` is ``#--dry-run``), so that one link works in both.
- Docstrings use Sphinx roles (``:class:`Pipeline```) and ``.. versionadded::``;
  the rendered API reference shows them as plain code and a short note.
"""

from __future__ import annotations

import re
from typing import Any

REPO = "https://github.com/campaignkit/campaignkit/blob/main/"

_OUTSIDE = re.compile(r"\]\(\.\./((?:examples|benchmarks|src|tests)/[^)\s]*)\)")
_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|exc|obj):<code>~?\.?([^<]*)</code>")
_LITERAL = re.compile(r"::</p>")
_ADDED = re.compile(r"\.\. versionadded:: ([0-9.]+)")


def github_slug(text: str, separator: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, punctuation dropped, spaces
    to hyphens (which are never merged)."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", separator)


def on_config(config: Any, **kwargs: Any) -> Any:
    config.mdx_configs.setdefault("toc", {})["slugify"] = github_slug
    return config


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    return _OUTSIDE.sub(lambda m: f"]({REPO}{m.group(1)})", markdown)


def on_page_content(html: str, **kwargs: Any) -> str:
    html = _ROLE.sub(r"<code>\1</code>", html)
    html = _LITERAL.sub(":</p>", html)  # reST's "text::" before a literal block
    return _ADDED.sub(r"<em>Added in version \1.</em>", html)
