"""The email unsubscribe headers, RFC 2369 and RFC 8058 (one-click):
:func:`list_unsubscribe_headers`."""

from __future__ import annotations

import re
from typing import Final
from urllib.parse import urlsplit

__all__ = ["list_unsubscribe_headers"]

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
