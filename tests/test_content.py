"""Content rules: SMS encoding and segments, plain text from HTML, unsubscribe headers,
push payload size, and ContentRules."""

from __future__ import annotations

import json
import re

import attrs
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from campaignkit._content import (
    APNS_MAX_PAYLOAD_BYTES,
    EXPO_MAX_PAYLOAD_BYTES,
    FCM_MAX_PAYLOAD_BYTES,
    ONESIGNAL_MAX_DATA_BYTES,
    ONESIGNAL_MAX_PAYLOAD_BYTES,
    PUSH_MAX_PAYLOAD_BYTES,
    ContentRules,
    SmsInfo,
    html_to_text,
    list_unsubscribe_headers,
    push_data_size,
    push_payload_size,
    sms_segments,
    sms_split,
)
from campaignkit._models import Message

# ----------------------------------------------------------------------------------
# A reference GSM 03.38 encoder, written from the standard's code table (independently
# of the module's character strings): code -> character, ESC (0x1B) is None.

GSM_TABLE: list[str | None] = [
    # 0x00
    "@", "£", "$", "¥", "è", "é", "ù", "ì", "ò", "Ç", "\n", "Ø", "ø", "\r", "Å", "å",
    # 0x10
    "\N{GREEK CAPITAL LETTER DELTA}", "_", "\N{GREEK CAPITAL LETTER PHI}",
    "\N{GREEK CAPITAL LETTER GAMMA}", "\N{GREEK CAPITAL LETTER LAMDA}",
    "\N{GREEK CAPITAL LETTER OMEGA}", "\N{GREEK CAPITAL LETTER PI}",
    "\N{GREEK CAPITAL LETTER PSI}", "\N{GREEK CAPITAL LETTER SIGMA}",
    "\N{GREEK CAPITAL LETTER THETA}", "\N{GREEK CAPITAL LETTER XI}",
    None, "Æ", "æ", "ß", "É",
    # 0x20
    " ", "!", '"', "#", "¤", "%", "&", "'", "(", ")", "*", "+", ",", "-", ".", "/",
    # 0x30
    *"0123456789", ":", ";", "<", "=", ">", "?",
    # 0x40
    "¡", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ", "Ä", "Ö", "Ñ", "Ü", "§",
    # 0x60
    "¿", *"abcdefghijklmnopqrstuvwxyz", "ä", "ö", "ñ", "ü", "à",
]  # fmt: skip
GSM_EXTENSION_TABLE = {
    0x0A: "\f", 0x14: "^", 0x28: "{", 0x29: "}", 0x2F: "\\",
    0x3C: "[", 0x3D: "~", 0x3E: "]", 0x40: "|", 0x65: "\N{EURO SIGN}",
}  # fmt: skip
_BASIC_CODE = {c: i for i, c in enumerate(GSM_TABLE) if c is not None}
_EXT_CODE = {c: i for i, c in GSM_EXTENSION_TABLE.items()}
BASIC_CHARS = "".join(_BASIC_CODE)
EXT_CHARS = "".join(_EXT_CODE)


def ref_gsm_encode(text: str) -> list[list[int]] | None:
    """Septets per character, or None when a character has no GSM-7 encoding."""
    out = []
    for char in text:
        if char in _BASIC_CODE:
            out.append([_BASIC_CODE[char]])
        elif char in _EXT_CODE:
            out.append([0x1B, _EXT_CODE[char]])
        else:
            return None
    return out


def ref_ucs2_units(char: str) -> int:
    return len(char.encode("utf-16-le", "surrogatepass")) // 2


def ref_split(text: str, weights: list[int], single: int, multi: int) -> list[str]:
    """Greedy character-by-character split; a character's units never straddle parts."""
    if not text:
        return []
    if sum(weights) <= single:
        return [text]
    parts, start, used = [], 0, 0
    for i, weight in enumerate(weights):
        if used + weight > multi:
            parts.append(text[start:i])
            start, used = i, 0
        used += weight
    parts.append(text[start:])
    return parts


def reference(text: str) -> tuple[str, int, list[str]]:
    """(encoding, units, parts) computed the slow, obvious way."""
    septets = ref_gsm_encode(text)
    if septets is not None:
        weights = [len(s) for s in septets]
        return "GSM-7", sum(weights), ref_split(text, weights, 160, 153)
    weights = [ref_ucs2_units(c) for c in text]
    return "UCS-2", sum(weights), ref_split(text, weights, 70, 67)


def test_reference_table_is_the_standard() -> None:
    assert len(GSM_TABLE) == 128
    assert len(BASIC_CHARS) == 127
    assert len(EXT_CHARS) == 10
    assert GSM_TABLE[0x1B] is None
    assert GSM_TABLE[0x24] == "¤"
    assert GSM_TABLE[0x40] == "¡"
    assert GSM_TABLE[0x60] == "¿"


# ------------------------------------------------------------------ SMS: examples


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (153, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)],
)
def test_gsm_segment_boundaries(length: int, segments: int) -> None:
    info = sms_segments("a" * length)
    assert info == SmsInfo("GSM-7", length, segments, length)
    assert len(sms_split("a" * length)) == segments


@pytest.mark.parametrize(
    ("length", "segments"),
    [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3), (201, 3), (202, 4)],
)
def test_ucs2_segment_boundaries(length: int, segments: int) -> None:
    text = "Ж" * length
    assert sms_segments(text) == SmsInfo("UCS-2", length, segments, length)
    assert [len(p) for p in sms_split(text)][:-1] == [67] * (segments - 1) or segments == 1


def test_extension_characters_count_two_septets() -> None:
    for char in "€[]{}\\^~|\f":
        info = sms_segments(char)
        assert (info.encoding, info.units, info.segments) == ("GSM-7", 2, 1), char
    assert sms_segments("€" * 80) == SmsInfo("GSM-7", 160, 1, 80)
    assert sms_segments("€" * 80 + "a") == SmsInfo("GSM-7", 161, 2, 81)
    # 159 plain characters and one extension character: 161 septets, two segments.
    assert sms_segments("a" * 159 + "{").segments == 2


def test_extension_character_never_straddles_a_part() -> None:
    # The euro sign would take septets 153 and 154: the first part ends after 152.
    text = "a" * 152 + "€" + "b" * 10
    assert sms_split(text) == ["a" * 152, "€" + "b" * 10]
    assert sms_segments(text) == SmsInfo("GSM-7", 164, 2, 163)
    # 306 septets would fit two full parts, but the straddle forces a third.
    text = "a" * 152 + "€" + "b" * 152
    assert sms_segments(text).units == 306
    assert sms_segments(text).segments == 3
    assert sms_split(text) == ["a" * 152, "€" + "b" * 151, "b"]
    # Ending exactly at the boundary is fine.
    assert sms_split("a" * 151 + "€" + "b" * 10) == ["a" * 151 + "€", "b" * 10]


def test_one_non_gsm_character_makes_the_whole_message_ucs2() -> None:
    assert sms_segments("Ç").encoding == "GSM-7"  # capital C cedilla is in the table
    assert sms_segments("ç").encoding == "UCS-2"  # the small one is not
    text = "a" * 100 + "ç"
    assert sms_segments(text) == SmsInfo("UCS-2", 101, 2, 101)
    # Characters that look GSM but are not: backtick, tab, en dash, curly quotes, Greek
    # small letters, the ohm sign (not the Greek capital omega).
    for char in "`\t\u2013\u201c\u03b1\u03c9\u2126\x00\x7f":
        assert sms_segments("hello" + char).encoding == "UCS-2", repr(char)


def test_emoji_count_two_units_and_are_never_split() -> None:
    assert sms_segments("😀") == SmsInfo("UCS-2", 2, 1, 1)
    assert sms_segments("😀" * 35) == SmsInfo("UCS-2", 70, 1, 35)
    assert sms_segments("😀" * 36) == SmsInfo("UCS-2", 72, 2, 36)
    # The emoji would take units 67 and 68: the first part ends after 66 units.
    text = "a" * 66 + "😀" + "b" * 10
    assert sms_split(text) == ["a" * 66, "😀" + "b" * 10]
    assert sms_segments(text).segments == 2
    for part in sms_split("x" + "😀" * 200):
        assert len(part.encode("utf-16-le")) // 2 <= 67
        part.encode("utf-8")  # no half surrogate pair


def test_empty_text_has_no_segment() -> None:
    assert sms_segments("") == SmsInfo("GSM-7", 0, 0, 0)
    assert sms_split("") == []


def test_lone_surrogate_counts_one_unit() -> None:
    text = "a\ud800b"
    assert sms_segments(text) == SmsInfo("UCS-2", 3, 1, 3)
    assert "".join(sms_split(text * 40)) == text * 40


def test_full_alphabet_is_gsm() -> None:
    info = sms_segments(BASIC_CHARS)
    assert (info.encoding, info.units, info.segments) == ("GSM-7", 127, 1)
    info = sms_segments(BASIC_CHARS + EXT_CHARS)
    assert (info.encoding, info.units, info.segments) == ("GSM-7", 147, 1)


def test_sms_info_is_frozen() -> None:
    info = sms_segments("hi")
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        info.segments = 3  # type: ignore[misc]


# ---------------------------------------------------------------- SMS: properties

_gsm_chars = st.sampled_from(BASIC_CHARS + EXT_CHARS)
_tricky = st.sampled_from("çàÀ€ñ😀🎉👍🏽Жé\u00a0\u2019`\t\x1b{}[]" + "\U0001f600")
_sms_text = st.one_of(
    st.text(_gsm_chars, max_size=700),
    st.text(st.one_of(_gsm_chars, _tricky), max_size=500),
    st.text(st.one_of(st.sampled_from("a€"), st.just("😀"), st.just("ж")), max_size=400),
    st.text(max_size=300),
)


@settings(max_examples=400, deadline=None)
@given(_sms_text)
@example("a" * 152 + "€" * 5)
@example("a" * 152 + "€" + "b" * 152)
@example("😀" * 34 + "a")
@example("a" * 66 + "😀" * 3)
def test_split_matches_reference(text: str) -> None:
    encoding, units, parts = reference(text)
    info = sms_segments(text)
    assert info.encoding == encoding
    assert info.units == units
    assert info.characters == len(text)
    assert sms_split(text) == parts
    assert info.segments == len(parts)


@settings(max_examples=300, deadline=None)
@given(_sms_text)
def test_split_parts_rejoin_and_fit(text: str) -> None:
    parts = sms_split(text)
    info = sms_segments(text)
    assert "".join(parts) == text
    assert info.segments == len(parts)
    assert all(parts)
    if info.encoding == "GSM-7":
        sizes = [sum(len(s) for s in ref_gsm_encode(p) or []) for p in parts]
        single, multi = 160, 153
    else:
        sizes = [len(p.encode("utf-16-le", "surrogatepass")) // 2 for p in parts]
        single, multi = 70, 67
    assert sum(sizes) == info.units
    if len(parts) <= 1:
        assert info.units <= single
    else:
        assert info.units > single
        assert all(size <= multi for size in sizes)
        # Greedy: a part is only cut short when its next character would not fit.
        for size, following in zip(sizes, parts[1:], strict=False):
            first = following[0]
            weight = 2 if first in EXT_CHARS or ord(first) > 0xFFFF else 1
            assert size + weight > multi


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=200))
def test_gsm_detection_agrees_with_reference_encoder(text: str) -> None:
    expected = "GSM-7" if ref_gsm_encode(text) is not None else "UCS-2"
    assert sms_segments(text).encoding == expected


# ------------------------------------------------------------------- html_to_text


def test_html_to_text_document() -> None:
    html = """<!doctype html><html><head><title>Spring sale</title>
    <style>p { color: red }</style><script>var x = "<p>no</p>";</script></head>
    <body>
      <div style="display: none; max-height: 0">Preheader text</div>
      <h1>Hello &amp; welcome, Anna</h1>
      <p>Your   order
         is <b>on its way</b>.<br>Track it below.</p>
      <p><a href="https://shop.example.com/track?id=1">Track your order</a> or visit
         <a href="https://shop.example.com">shop.example.com</a>.</p>
      <ul><li>Free shipping</li><li>30-day returns</li></ul>
      <p>&copy; 2024 Shop &lt;Inc&gt; <img src="logo.png" alt="Shop logo"></p>
    </body></html>"""
    assert html_to_text(html) == (
        "Hello & welcome, Anna\n"
        "\n"
        "Your order is on its way.\n"
        "Track it below.\n"
        "\n"
        "Track your order (https://shop.example.com/track?id=1) or visit shop.example.com.\n"
        "\n"
        "- Free shipping\n"
        "- 30-day returns\n"
        "\n"
        "© 2024 Shop <Inc> Shop logo"
    )


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("", ""),
        ("just text", "just text"),
        ("  spaced \n\t out  ", "spaced out"),
        ("a<br>b", "a\nb"),
        ("a<br/><br/>b", "a\n\nb"),
        ("a<br><br><br><br>b", "a\n\nb"),
        ("<p>a<br></p><p>b</p>", "a\n\nb"),
        ("<p>one</p><p>two</p>", "one\n\ntwo"),
        ("<div>one</div><div>two</div>", "one\ntwo"),
        ("<div><div><p>deep</p></div></div>after", "deep\n\nafter"),
        ("<ol><li>a</li><li>b</li></ol>", "1. a\n2. b"),
        ("<ul><li>a<ul><li>b</li></ul></li><li>c</li></ul>", "- a\n  - b\n- c"),
        ("<li>loose item", "- loose item"),
        ('<a href="https://x.com/a">https://x.com/a</a>', "https://x.com/a"),
        ('<a href="https://x.com/">x.com</a>', "x.com"),
        ('<a href="mailto:hi@x.com">hi@x.com</a>', "hi@x.com"),
        ('<a href="mailto:hi@x.com">write us</a>', "write us (mailto:hi@x.com)"),
        ('<a href="#top">top</a>', "top"),
        ('<a href="javascript:void(0)">menu</a>', "menu"),
        ('<a href="https://x.com"></a>', ""),
        ('<a href="https://x.com/p"><img src="b.png" alt="Buy"></a>', "Buy (https://x.com/p)"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a b\nc"),
        ("<pre>  x\n    y</pre>", "  x\n    y"),
        ("<p>a</p><pre>  x\n    y</pre><p>b</p>", "a\n\n  x\n    y\n\nb"),
        ("a &nbsp;&amp;&#39;&#x41;&eacute; b", "a &'Aé b"),
        ("<p hidden>secret</p>shown", "shown"),
        ("<div style='display:none'><div>x</div>y</div>z", "z"),
        ("<style>.a{}</style><p>x</p>", "x"),
        ("x<script>if (a < b) { document.write('<p>') }</script>y", "xy"),
        ("<b>bold</b><i>it</i> <span>s</span>", "boldit s"),
        ("<p>unclosed<p>second", "unclosed\n\nsecond"),
        ("<h2>Title</h2>body", "Title\n\nbody"),
        ("a</br>b", "a\nb"),
    ],
)
def test_html_to_text_cases(html: str, text: str) -> None:
    assert html_to_text(html) == text


_HTML_PIECES = (
    "<p>", "</p>", "<br>", "<div>", "</div>", "<li>", "<ul>", "</ul>", "<pre>", "</pre>",
    "<a href='https://x.y'>", "</a>", "<td>", "<tr>", "&amp;",
)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.sampled_from(_HTML_PIECES),
            st.text(st.characters(exclude_characters="<&"), max_size=20),
        ),
        max_size=30,
    )
)
def test_html_to_text_output_shape(pieces: list[str]) -> None:
    text = html_to_text("".join(pieces))
    assert text == text.strip("\n")
    assert "\n\n\n" not in text
    assert all(line == line.rstrip() for line in text.split("\n"))


# ------------------------------------------------------------------ unsubscribe


def test_list_unsubscribe_headers_url_and_mailto() -> None:
    headers = list_unsubscribe_headers(
        "https://example.com/unsubscribe?u=123&l=news",
        "mailto:unsub@example.com?subject=unsubscribe",
    )
    assert headers == {
        "List-Unsubscribe": (
            "<https://example.com/unsubscribe?u=123&l=news>, "
            "<mailto:unsub@example.com?subject=unsubscribe>"
        ),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }


def test_list_unsubscribe_headers_url_only_and_bare_address() -> None:
    assert list_unsubscribe_headers("https://e.com/u/abc") == {
        "List-Unsubscribe": "<https://e.com/u/abc>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    value = list_unsubscribe_headers("HTTPS://e.com/u", "stop@e.com")["List-Unsubscribe"]
    assert value == "<HTTPS://e.com/u>, <mailto:stop@e.com>"
    # RFC 2369 syntax: comma-separated angle-bracketed URIs.
    assert re.fullmatch(r"<[^<>\s]+>(, <[^<>\s]+>)*", value)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/u",  # RFC 8058 one-click needs HTTPS
        "http://127.0.0.1/u",  # loopback too
        "mailto:unsub@example.com",
        "javascript:alert(1)",
        "//example.com/u",
        "example.com/u",
        "https:///u",
        "",
    ],
)
def test_list_unsubscribe_requires_https(url: str) -> None:
    with pytest.raises(ValueError, match=r"https|host|character"):
        list_unsubscribe_headers(url)


@pytest.mark.parametrize(
    "url",
    [
        "https://example.com/u?t=1\r\nBcc: victim@example.com",
        "https://example.com/u?t=1\nX-Evil: 1",
        "https://example.com/u?t=1\r",
        "https://example.com/u?t=1>, <https://evil.example/u",
        "https://example.com/u?t=a b",
        "https://example.com/u?t=a\tb",
        "https://example.com/u?t=<x",
        "https://example.com/u?t=\x00",
        "https://example.com/u?t=é",
        "https://example.com/u?t=\u2028",
    ],
)
def test_list_unsubscribe_rejects_header_injection(url: str) -> None:
    with pytest.raises(ValueError, match="not allowed") as info:
        list_unsubscribe_headers(url)
    assert "example.com/u" not in str(info.value)  # the URI identifies the recipient


@pytest.mark.parametrize(
    "mailto",
    [
        "mailto:unsub@example.com\r\nBcc: x@example.com",
        "unsub@example.com>, <https://evil.example",
        "mailto:no-address",
        "https://example.com/other",
        "un sub@example.com",
    ],
)
def test_list_unsubscribe_rejects_bad_mailto(mailto: str) -> None:
    with pytest.raises(ValueError, match="mailto"):
        list_unsubscribe_headers("https://example.com/u", mailto)


def test_list_unsubscribe_rejects_a_header_longer_than_a_line() -> None:
    url = "https://example.com/u?t=" + "a" * 960
    with pytest.raises(ValueError, match="998"):
        list_unsubscribe_headers(url)
    ok = "https://example.com/u?t=" + "a" * (998 - len("List-Unsubscribe: <>") - 24)
    assert len("List-Unsubscribe: " + list_unsubscribe_headers(ok)["List-Unsubscribe"]) == 998


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_list_unsubscribe_value_never_breaks_the_header(token: str) -> None:
    try:
        headers = list_unsubscribe_headers(f"https://example.com/u?t={token}")
    except ValueError:
        return
    for value in headers.values():
        assert value.isascii() and value.isprintable()
    inner = headers["List-Unsubscribe"]
    assert inner.count("<") == 1 and inner.count(">") == 1


# ------------------------------------------------------------------------- push


def test_push_payload_size_counts_compact_utf8_json() -> None:
    assert push_payload_size(None, "hi", None) == len(b'{"body":"hi"}')
    assert push_payload_size("T", "hi", {}) == len(b'{"body":"hi","title":"T"}')
    assert push_payload_size("T", "hi", {"k": "v"}) == len(
        b'{"body":"hi","title":"T","data":{"k":"v"}}'
    )
    # Non-ASCII counts its UTF-8 bytes, not a \u escape; JSON escapes count as sent.
    assert push_payload_size(None, "é", None) == len('{"body":"é"}'.encode())
    assert push_payload_size(None, "😀", None) == 11 + 4
    assert push_payload_size(None, 'a"b\n', None) == len(
        json.dumps({"body": 'a"b\n'}, separators=(",", ":"))
    )


def test_push_payload_size_matches_json_dumps() -> None:
    data = {"url": "https://x.com/ü", "campaign": "spring"}
    expected = json.dumps(
        {"body": "Bödy", "title": "Tïtle", "data": data}, ensure_ascii=False, separators=(",", ":")
    ).encode()
    assert push_payload_size("Tïtle", "Bödy", data) == len(expected)
    assert push_data_size(data) == len(
        json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()
    )
    assert push_data_size({}) == 0
    assert push_data_size(None) == 0


def test_push_limits() -> None:
    assert APNS_MAX_PAYLOAD_BYTES == FCM_MAX_PAYLOAD_BYTES == EXPO_MAX_PAYLOAD_BYTES == 4096
    assert ONESIGNAL_MAX_PAYLOAD_BYTES == 4096
    assert ONESIGNAL_MAX_DATA_BYTES == 2048
    assert PUSH_MAX_PAYLOAD_BYTES["expo"] == 4096
    assert PUSH_MAX_PAYLOAD_BYTES["onesignal"] == 4096


# ------------------------------------------------------------------ ContentRules


def _msg(body: str, **kw: object) -> Message:
    return Message("c1", "ch", "addr", body, **kw)  # type: ignore[arg-type]


def test_rules_sms_segments() -> None:
    rules = ContentRules(max_sms_segments=2)
    assert rules.check(_msg("a" * 306)) is None
    assert rules.check(_msg("a" * 307)) == "too_many_segments"
    assert rules.check(_msg("ç" * 134)) is None
    assert rules.check(_msg("ç" * 135)) == "too_many_segments"
    assert rules.check(_msg("")) == "empty_body"
    assert ContentRules(max_sms_segments=1).check(_msg("a" * 152 + "€" + "a" * 7)) == (
        "too_many_segments"
    )


def test_rules_push_size() -> None:
    rules = ContentRules(push_max_bytes=64, push_max_data_bytes=20)
    assert rules.check(_msg("hello", title="Hi", data={"k": "v"})) is None
    assert rules.check(_msg("x" * 60, title="Hi")) == "payload_too_large"
    assert rules.check(_msg("hi", data={"k": "v" * 20})) == "data_too_large"
    limit = push_payload_size("T", "b" * 10, None)
    assert ContentRules(push_max_bytes=limit).check(_msg("b" * 10, title="T")) is None
    assert ContentRules(push_max_bytes=limit - 1).check(_msg("b" * 10, title="T")) == (
        "payload_too_large"
    )


def test_rules_unsubscribe() -> None:
    rules = ContentRules(require_unsubscribe=True)
    assert rules.check(_msg("x")) == "missing_unsubscribe"
    assert rules.check(_msg("x", headers={"List-Unsubscribe": "<https://e.com/u>"})) == (
        "missing_unsubscribe"
    )
    headers = list_unsubscribe_headers("https://e.com/u")
    assert rules.check(_msg("x", headers=headers)) is None
    lower = {k.lower(): v for k, v in headers.items()}
    assert rules.check(_msg("x", headers=lower)) is None


def test_rules_default_checks_nothing_and_validates() -> None:
    assert ContentRules().check(_msg("")) is None
    assert ContentRules().check(_msg("a" * 5000)) is None
    for bad in ({"max_sms_segments": 0}, {"push_max_bytes": -1}, {"push_max_data_bytes": 0}):
        with pytest.raises(ValueError, match="at least 1"):
            ContentRules(**bad)  # type: ignore[arg-type]
    assert ContentRules.TOO_MANY_SEGMENTS == "too_many_segments"
    assert "TOO_MANY_SEGMENTS" not in attrs.fields_dict(ContentRules)


@settings(max_examples=500, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(list("hHtTpPsS:/@[]?#.%-_=&0123456789abcxyzAZ \t\né")),
        max_size=30,
    )
)
def test_unsubscribe_url_shortcut_agrees_with_urlsplit(url: str) -> None:
    """The regex that skips urlsplit only accepts URLs urlsplit reads as https + host."""
    from urllib.parse import urlsplit

    from campaignkit._content._unsubscribe import _HTTPS_WITH_HOST

    for candidate in (url, "https://" + url, "HTTPS://" + url):
        if _HTTPS_WITH_HOST.match(candidate) is not None:
            parts = urlsplit(candidate)
            assert parts.scheme.lower() == "https"
            assert parts.hostname
