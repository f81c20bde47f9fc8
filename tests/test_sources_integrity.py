"""Segment parsing integrity (issue 9, items 2 and 3).

* Every physical line is accounted for: a stray quote that makes a strict value (an id,
  address, token, consent flag, mapped or ``strict_columns`` column) span lines, or
  puts a strict value on a later line than its record's first, rejects the record
  with its line range; the extraction's line counts add up.
* Control characters (C0, DEL, C1) reject the row naming the column and the code
  point; tab and line breaks are allowed in free-text columns only. Nothing holding
  one reaches a provider, from the built-in sources or from a plugin's.
"""

from __future__ import annotations

import csv
import io
import json
import re
import tempfile
from collections.abc import Collection, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import event, given, settings
from hypothesis import strategies as st

from campaignkit import Channel, Pipeline, PipelineConfig, SourceConfig, Template
from campaignkit._models import Recipient, RejectedRow
from campaignkit._segment import ExtractionStats, extract
from campaignkit._sources import CsvSource, JsonLinesSource, SourceLines
from campaignkit.cli import main
from campaignkit.exceptions import SourceError
from campaignkit.testing import StaticSource
from campaignkit.testing.sandbox import Sandbox

# Any control character a strict value may not hold.
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")

COLUMNS = ["id", "email", "phone", "push_token", "opt_sms", "tier", "wa", "note"]


def values(i: int) -> dict[str, str]:
    """The values of data line ``i``: each names its line, so a value from another
    line shows."""
    return {
        "id": f"C{i}",
        "email": f"u{i}@example.com",
        "phone": f"+1415555{i:04d}",
        "push_token": f"ExponentPushToken[t{i}]",
        "opt_sms": "yes" if i % 2 else "no",
        "tier": f"gold{i}",
        "wa": f"wa{i}",
        "note": f"n{i}",
    }


def physical_lines(data: bytes) -> int:
    text = data.decode("utf-8-sig")
    n = text.count("\n") + text.count("\r") - text.count("\r\n")
    return n + (1 if text and not text.endswith(("\n", "\r")) else 0)


def read(source: CsvSource | JsonLinesSource, required: Collection[str] = ()) -> list[Any]:
    return list(source.records(required))


def spans(items: list[Recipient | RejectedRow], lines: SourceLines) -> list[tuple[int, int]]:
    """Each record's (first, last) line: its start up to the next record's start
    (no blank lines in these files)."""
    starts = [r.line for r in items]
    ends = [s - 1 for s in starts[1:]] + [lines.total]
    return list(zip(starts, ends, strict=True))


def assert_adds_up(path: Path, source: CsvSource | JsonLinesSource, items: list[Any]) -> None:
    lines = source.last_lines
    assert lines is not None
    assert lines.total == physical_lines(path.read_bytes())
    assert lines.adds_up(), lines
    got = spans(items, lines)
    accepted = sum(b - a + 1 for (a, b), r in zip(got, items, strict=True) if type(r) is Recipient)
    assert lines.accepted == accepted
    for (a, b), r in zip(got, items, strict=True):
        if isinstance(r, RejectedRow):
            assert (r.line, r.line + r.lines - 1) == (a, b)
    assert lines.rejected == sum(r.lines for r in items if isinstance(r, RejectedRow))


# -- the issue's example -------------------------------------------------------------------


def test_issue_example_stray_quote_in_email(tmp_path: Path) -> None:
    """8 data lines; a stray quote opens the email on line 4 and one closes it on line 6.
    Before: 6 rows, 0 rejects, C4 with C6's phone number, C5 gone."""
    rows = [values(i) for i in range(2, 10)]
    rows[2]["email"] = '"' + rows[2]["email"]  # line 4
    rows[4]["email"] += '"'  # line 6
    text = ",".join(COLUMNS) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows)
    path = tmp_path / "seg.csv"
    path.write_text(text, encoding="utf-8")
    src = CsvSource(path, consent={"sms": "opt_sms"})
    items = read(src, ("email", "phone"))
    ok = [r for r in items if isinstance(r, Recipient)]
    (bad,) = [r for r in items if isinstance(r, RejectedRow)]
    assert [r.id for r in ok] == ["C2", "C3", "C7", "C8", "C9"]
    assert all(r.phone == values(r.line)["phone"] for r in ok)
    assert (bad.line, bad.end_line, bad.reason, bad.field) == (4, 6, "multiline_field", "email")
    assert bad.detail == "lines 4-6: quoted field in column 'email' spans 3 lines: a stray quote?"
    assert "C5" in bad.raw[1] and "u6@example.com" in bad.raw[1]  # nothing lost
    assert src.last_lines == SourceLines(total=9, header=1, blank=0, accepted=5, rejected=3)
    assert_adds_up(path, src, items)


# -- a stray quote in each kind of column ----------------------------------------------------


def stray_file(tmp_path: Path, column: str, header: list[str] | None = None) -> Path:
    """Data lines 2-9; a quote opens ``column`` on line 4 and closes it on line 6."""
    rows = [values(i) for i in range(2, 10)]
    rows[2][column] = '"' + rows[2][column]
    rows[4][column] += '"'
    text = ",".join(header or COLUMNS) + "\n"
    text += "".join(",".join(r.values()) + "\n" for r in rows)
    path = tmp_path / "seg.csv"
    path.write_text(text, encoding="utf-8")
    return path


KINDS = {
    # column kind: (column with the stray quote, source options, records' required)
    "id": ("id", {}, ()),
    "email": ("email", {}, ("email",)),
    "phone": ("phone", {}, ("phone",)),
    "push_token": ("push_token", {}, ()),
    "consent": ("opt_sms", {"consent": {"sms": "opt_sms"}}, ()),
    "strict_columns": ("tier", {"strict_columns": ["tier"]}, ()),
    "address_field": ("wa", {}, ("wa",)),  # an attribute a channel sends to
    "required": ("tier", {"required": ["tier"]}, ()),
}


@pytest.mark.parametrize("kind", KINDS)
def test_stray_quote_in_a_strict_column_rejects_the_record(tmp_path: Path, kind: str) -> None:
    column, options, required = KINDS[kind]
    path = stray_file(tmp_path, column)
    src = CsvSource(path, **options)
    items = read(src, required)
    ok = [r for r in items if isinstance(r, Recipient)]
    (bad,) = [r for r in items if isinstance(r, RejectedRow)]
    assert [r.line for r in ok] == [2, 3, 7, 8, 9]
    assert (bad.line, bad.end_line, bad.reason) == (4, 6, "multiline_field")
    assert bad.field == column
    assert bad.detail == (
        f"lines 4-6: quoted field in column {column!r} spans 3 lines: a stray quote?"
    )
    assert_adds_up(path, src, items)


def test_stray_quote_in_a_mapped_column(tmp_path: Path) -> None:
    header = ["cid", "mail", *COLUMNS[2:]]
    path = stray_file(tmp_path, "email", header)
    src = CsvSource(path, columns={"id": "cid", "email": "mail"})
    items = read(src)
    (bad,) = [r for r in items if isinstance(r, RejectedRow)]
    assert (bad.line, bad.end_line, bad.field) == (4, 6, "email")  # the model field
    assert "column 'mail' spans 3 lines" in bad.detail  # the file's column
    assert_adds_up(path, src, items)


def test_multiline_free_text_after_the_strict_columns_is_legitimate(tmp_path: Path) -> None:
    # A note (the last column) on lines 4-6. (A stray quote that swallows whole
    # records into it, stray_file(tmp_path, "note"), is rejected: see
    # test_hostile_inputs.py.)
    rows = [values(i) for i in range(2, 8)]
    rows[2]["note"] = '"n4\nmore, on line 5\nand line 6"'
    path = tmp_path / "seg.csv"
    text = ",".join(COLUMNS) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    src = CsvSource(path)
    items = read(src, ("email", "phone"))
    assert all(isinstance(r, Recipient) for r in items)
    c4 = items[2]
    assert (c4.line, c4.email, c4.phone) == (4, "u4@example.com", "+14155550004")
    assert c4.attributes["note"].count("\n") == 2
    assert src.last_lines == SourceLines(total=9, header=1, blank=0, accepted=8, rejected=0)
    assert_adds_up(path, src, items)


def test_strict_column_after_multiline_free_text_rejects(tmp_path: Path) -> None:
    """A free-text value spanning lines, then strict columns: they come from another
    line (here C6's phone would be C4's)."""
    header = ["id", "tier", "email", "phone", "push_token", "opt_sms", "wa", "note"]
    rows = [values(i) for i in range(2, 10)]
    rows = [{k: r[k] for k in header} for r in rows]
    rows[2]["tier"] = '"' + rows[2]["tier"]
    rows[4]["tier"] += '"'
    path = tmp_path / "seg.csv"
    text = ",".join(header) + "\n" + "".join(",".join(r.values()) + "\n" for r in rows)
    path.write_text(text, encoding="utf-8")
    src = CsvSource(path)
    items = read(src, ("email", "phone"))
    (bad,) = [r for r in items if isinstance(r, RejectedRow)]
    assert (bad.line, bad.end_line, bad.reason, bad.field) == (4, 6, "multiline_field", "email")
    assert bad.detail == (
        "lines 4-6: quoted field in column 'tier' spans lines 4-6, so column 'email' is on "
        "line 6: a stray quote?"
    )
    assert_adds_up(path, src, items)


def test_stray_quote_with_wrong_field_count_names_the_range(tmp_path: Path) -> None:
    path = tmp_path / "seg.csv"
    path.write_text('id,email,note\nC1,a@b.co,x\nC2,"b@b.co,y\nC3,c@b.co",z,extra\nC4,d,w\n')
    src = CsvSource(path)
    items = read(src)
    (bad,) = [r for r in items if isinstance(r, RejectedRow)]
    assert (bad.line, bad.end_line, bad.reason) == (3, 4, "malformed_row")
    assert bad.detail == (
        "lines 3-4: expected 3 fields, got 4; the record spans 2 lines: a stray quote?"
    )
    assert_adds_up(path, src, items)


def test_stray_quote_to_the_end_of_the_file(tmp_path: Path) -> None:
    path = tmp_path / "seg.csv"
    path.write_text('id,email\nC1,a@b.co\nC2,"b@b.co\nC3,c@b.co\nC4,d@b.co\n')
    with pytest.raises(SourceError) as info:
        read(CsvSource(path))
    assert info.value.line == 3
    assert "the record starting on line 3 runs to the end of the file (line 5)" in str(info.value)
    assert "stray quote" in str(info.value)


def test_stray_quote_then_garbage_after_the_closing_quote(tmp_path: Path) -> None:
    path = tmp_path / "seg.csv"
    path.write_text('id,email,note\nC1,"a@b.co,x\nC2,b@b.co,say "hi"\n')
    with pytest.raises(SourceError) as info:
        read(CsvSource(path))
    assert info.value.line == 2
    assert "invalid CSV in lines 2-3" in str(info.value)


def test_blank_lines_are_counted(tmp_path: Path) -> None:
    path = tmp_path / "seg.csv"
    path.write_text('\nid,note\n\nC1,"a\nb"\n\nC2,x\n\n')
    src = CsvSource(path)
    items = read(src)
    assert [r.line for r in items] == [4, 7]
    assert src.last_lines == SourceLines(total=8, header=2, blank=3, accepted=3, rejected=0)
    assert src.last_lines.total == physical_lines(path.read_bytes())


def test_jsonl_lines_add_up(tmp_path: Path) -> None:
    path = tmp_path / "seg.jsonl"
    path.write_text('{"id": "C1"}\n\nnot json\n{"id": ""}\n{"id": "C2"}\n')
    src = JsonLinesSource(path)
    items = read(src)
    assert len(items) == 4
    assert src.last_lines == SourceLines(total=5, header=0, blank=1, accepted=2, rejected=2)


# -- hypothesis: stray quotes anywhere ----------------------------------------------------


@pytest.fixture(scope="module")
def tmpdir_path() -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


@settings(max_examples=200, deadline=None)
@given(
    order=st.permutations(COLUMNS),
    n=st.integers(1, 9),
    quotes=st.lists(
        st.tuples(st.integers(0, 7), st.integers(0, 7), st.sampled_from(["open", "close", "mid"])),
        max_size=2,
    ),
    # A quote opening a field and one closing a field (-1: the same column) 0-3 lines
    # further: a swallow.
    pairs=st.lists(
        st.tuples(
            st.integers(0, 7),
            st.sampled_from([7, 7, 0, 1, 2, 3, 4, 5, 6]),  # 7: the last column
            st.integers(1, 3),
            st.sampled_from([-1, -1, -1, 0, 1, 2, 3, 4, 5, 6, 7]),
        ),
        min_size=1,
        max_size=2,
    ),
    note_last=st.booleans(),
    crlf=st.booleans(),
)
def test_stray_quotes_lose_no_line_and_mix_no_values(
    tmpdir_path: Path,
    order: list[str],
    n: int,
    quotes: list[tuple[int, int, str]],
    pairs: list[tuple[int, int, int, int]],
    note_last: bool,
    crlf: bool,
) -> None:
    if note_last:  # free text after every strict column: it may span lines
        order = [c for c in order if c != "note"] + ["note"]
    rows = [values(i) for i in range(2, n + 2)]
    for row_i, col_i, down, col_j in pairs:
        col_j = col_i if col_j < 0 else col_j
        if down == 0 and col_j <= col_i:
            down = 1  # the closing quote after the opening one
        quotes += [(row_i, col_i, "open"), (min(row_i % n + down, n - 1), col_j, "close")]
    for row_i, col_i, where in quotes:
        row, column = rows[row_i % n], order[col_i]
        if where == "open":
            row[column] = '"' + row[column]
        elif where == "close":
            row[column] += '"'
        else:
            row[column] = row[column][:1] + '"' + row[column][1:]
    end = "\r\n" if crlf else "\n"
    text = ",".join(order) + end + "".join(",".join(r[c] for c in order) + end for r in rows)
    path = tmpdir_path / "stray.csv"
    path.write_bytes(text.encode("utf-8"))
    src = CsvSource(path, consent={"sms": "opt_sms"}, strict_columns=["tier"])
    error: SourceError | None = None
    try:
        items = read(src, ("email", "phone", "push_token", "wa"))
    except SourceError as exc:
        error = exc
    event("file error" if error is not None else "read")
    if error is not None:
        # A quote that never closes, or closes before something else than a delimiter.
        assert error.line is not None and 2 <= error.line <= n + 1
        assert "stray quote" in str(error) or "invalid CSV" in str(error)
        return
    assert_adds_up(path, src, items)
    for r in items:
        if isinstance(r, RejectedRow) and r.lines > 1:
            event(f"rejected spanning lines: {r.reason}")
    if src.last_lines and src.last_lines.accepted > sum(isinstance(r, Recipient) for r in items):
        event("accepted spanning lines")
    strict = ("id", "email", "phone", "push_token", "tier", "wa")
    for r in items:
        if not isinstance(r, Recipient):
            continue
        own = values(r.line)  # the generated values of the record's first line
        got = {"id": r.id, "email": r.email, "phone": r.phone, "push_token": r.push_token}
        got |= {k: r.attributes[k] for k in ("tier", "wa")}
        for key in strict:
            assert (got[key] or "").replace('"', "") == own[key], (key, r)
        assert r.consent == {"sms": own["opt_sms"] == "yes"}


# -- control characters --------------------------------------------------------------------

CHARS = ["\x00", "\x1b", "\x85", "\x7f", "\t", "\n", "\r", "\x0b"]
# column kind -> (column, source options, records' required)
CONTROL_KINDS = {
    "id": ("id", {}, ()),
    "email": ("email", {}, ("email",)),
    "phone": ("phone", {}, ("phone",)),
    "push_token": ("push_token", {}, ()),
    "consent": ("opt_sms", {"consent": {"sms": "opt_sms"}}, ()),
    "mapped": ("mail", {"columns": {"email": "mail"}}, ()),
    "address_field": ("wa", {}, ("wa",)),
    "free_text": ("note", {}, ()),
}
FREE_OK = {"\t", "\n"}


def control_segment(directory: Path, fmt: str, column: str, char: str) -> Path:
    header = ["mail" if c == "email" and column == "mail" else c for c in COLUMNS]
    rows = [dict(zip(header, values(i).values(), strict=True)) for i in range(2, 5)]
    value = rows[1][column]
    rows[1][column] = value[:2] + char + value[2:]  # line 3, position 3
    if fmt == "csv":
        out = io.StringIO(newline="")
        # csv.writer leaves a lone CR unquoted: the reader would see a line end.
        writer = csv.writer(out, lineterminator="\n", quoting=csv.QUOTE_ALL)
        writer.writerow(header)
        writer.writerows(r.values() for r in rows)
        path = directory / "seg.csv"
        path.write_text(out.getvalue(), encoding="utf-8", newline="")
    else:
        path = directory / "seg.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
@pytest.mark.parametrize("kind", CONTROL_KINDS)
@pytest.mark.parametrize("char", CHARS, ids=lambda c: f"U+{ord(c):04X}")
def test_control_characters(tmp_path: Path, fmt: str, kind: str, char: str) -> None:
    column, options, required = CONTROL_KINDS[kind]
    path = control_segment(tmp_path, fmt, column, char)
    cls = CsvSource if fmt == "csv" else JsonLinesSource
    src = cls(path, **options)
    items = read(src, required)
    multiline = fmt == "csv" and char in "\n\r"  # a quoted line break: lines 3-4
    first = 2 if fmt == "csv" else 1  # JSON Lines have no header line
    assert [r.line for r in items] == [first, first + 1, first + 2 + multiline]
    other = [items[0], items[2]]
    assert all(isinstance(r, Recipient) for r in other)
    item = items[1]
    if kind == "free_text" and char in FREE_OK:
        assert isinstance(item, Recipient)
        assert item.attributes["note"] == "n3"[:2] + char
        return
    assert isinstance(item, RejectedRow)
    what = "column" if fmt == "csv" else "key"
    field = "email" if column == "mail" else column
    if multiline and kind != "free_text":
        assert (item.reason, item.field, item.end_line) == ("multiline_field", field, 4)
        assert item.detail == (
            f"lines 3-4: quoted field in column {column!r} spans 2 lines: a stray quote?"
        )
        return
    assert (item.reason, item.field) == ("control_character", field)
    assert item.detail == f"{what} {column!r}: control character U+{ord(char):04X} at position 3"
    assert not CONTROL.search(item.detail)
    assert item.end_line == (4 if multiline else None)


def test_lone_cr_in_free_text_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "seg.jsonl"
    path.write_text('{"id": "C1", "note": "a\\r\\nb"}\n{"id": "C2", "note": "a\\rb"}\n')
    ok, bad = read(JsonLinesSource(path))
    assert isinstance(ok, Recipient) and ok.attributes["note"] == "a\r\nb"
    assert isinstance(bad, RejectedRow)
    assert bad.detail == "key 'note': control character U+000D at position 2"


def test_control_character_in_a_header_name(tmp_path: Path) -> None:
    path = tmp_path / "seg.csv"
    path.write_text("id,first\x00name\nC1,Ann\n")
    with pytest.raises(SourceError) as info:
        read(CsvSource(path))
    assert info.value.line == 1
    assert "header column 2: control character U+0000 at position 6" in str(info.value)
    assert "\x00" not in str(info.value)


def test_control_character_in_a_jsonl_key(tmp_path: Path) -> None:
    path = tmp_path / "seg.jsonl"
    path.write_text('{"id": "C1"}\n{"id": "C2", "a\\u001bb": "x"}\n')
    ok, bad = read(JsonLinesSource(path))
    assert isinstance(ok, Recipient)
    assert isinstance(bad, RejectedRow)
    assert bad.detail == "a key: control character U+001B at position 2"


def test_strict_columns_must_exist(tmp_path: Path) -> None:
    path = tmp_path / "seg.csv"
    path.write_text("id,note\nC1,x\n")
    with pytest.raises(SourceError, match="strict column 'tier' is not in the header"):
        read(CsvSource(path, strict_columns=["tier"]))


def test_u2028_and_nbsp_are_not_control_characters(tmp_path: Path) -> None:
    """str.isprintable is false for them; the regex clears them."""
    path = tmp_path / "seg.csv"
    path.write_text("id,email,note\nC1,a\u00a0b@x.co,line\u2028sep\u200b\n", encoding="utf-8")
    (r,) = read(CsvSource(path))
    assert isinstance(r, Recipient)


# -- a plugin source: defence in depth in extract ------------------------------------------


class PluginSource:
    """A third-party source yielding recipients as they come."""

    def __init__(self, recipients: list[Recipient]) -> None:
        self.items = recipients

    def fields(self) -> frozenset[str]:
        return frozenset({"id", "email", "phone", "push_token", "note", "wa"})

    def records(self, required: Collection[str] = ()) -> Iterator[Recipient | RejectedRow]:
        yield from self.items

    def describe(self) -> str:
        return "plugin"


def test_extract_screens_a_plugin_sources_recipients(tmp_path: Path) -> None:
    items = [
        Recipient("C1", "a@x.co", attributes={"note": "ok\tfine\nhere"}, line=1),
        Recipient("C2", "b\x00@x.co", line=2),
        Recipient("C3", push_token="Expo\x1b", line=3),
        Recipient("C4", attributes={"note": "bell\x07"}, line=4),
        Recipient("C5", attributes={"wa": "wa\t5"}, line=5),  # an address field: strict
        Recipient("C6", attributes={"no\x85te": "x"}, line=6),
        Recipient("C\x7f7", line=7),
    ]
    stored: list[Recipient] = []

    def store(recipients: Iterable[Recipient], rejects: object) -> int:
        stored.extend(recipients)
        return len(stored)

    stats = extract(
        PluginSource(items), required={"wa"}, rejects=tmp_path / "rejected.csv", store=store
    )
    assert [r.id for r in stored] == ["C1"]
    assert stats == ExtractionStats(7, 1, 6, {"control_character": 6}, None)
    with (tmp_path / "rejected.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    assert [(r[0], r[1], r[2], r[3]) for r in rows] == [
        (
            "2",
            "control_character",
            "email",
            "field 'email': control character U+0000 at position 2",
        ),
        (
            "3",
            "control_character",
            "push_token",
            "field 'push_token': control character U+001B at position 5",
        ),
        (
            "4",
            "control_character",
            "note",
            "attribute 'note': control character U+0007 at position 5",
        ),
        ("5", "control_character", "wa", "attribute 'wa': control character U+0009 at position 3"),
        ("6", "control_character", "", "an attribute name: control character U+0085 at position 3"),
        ("7", "control_character", "id", "field 'id': control character U+007F at position 2"),
    ]


# -- the real path: Pipeline and the CLI against the loopback sandbox ----------------------

BAD_ROWS = {
    # line: (column, value) put in place of the generated one
    3: ("email", "u3\x00@example.com"),
    4: ("push_token", "ExponentPushToken[t\x1b4]"),
    5: ("phone", "+1415555\x7f0005"),
    6: ("first_name", "Ann\x00"),  # in the SendGrid subject, the SMS and the push body
    7: ("first_name", "Bo\x85b"),
    8: ("opt_sms", "yes\x00"),
    9: ("email", "u9@example.com\nC10"),  # a quoted line break: physical lines 9-10
}


def real_segment(path: Path) -> int:
    """Write the segment: 12 records (the 8th on physical lines 9-10, the 11th on
    13-14: a multi-line note, which is free text), 15 lines; return how many are clean."""
    header = ["id", "email", "phone", "push_token", "first_name", "opt_sms", "note"]
    out = io.StringIO(newline="")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    clean = 0
    for line in range(2, 14):
        v = values(line)
        row = {
            "id": v["id"],
            "email": v["email"],
            "phone": f"+1415555{line + 100:04d}",
            "push_token": v["push_token"],
            "first_name": f"F{line}",
            "opt_sms": "yes",
            "note": "multi\nline\ttext" if line == 12 else "",
        }
        if line in BAD_ROWS:
            column, value = BAD_ROWS[line]
            row[column] = value
        else:
            clean += 1
        writer.writerow(row.values())
    path.write_text(out.getvalue(), encoding="utf-8", newline="")
    return clean


def all_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield str(k)
            yield from all_strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from all_strings(v)


TEMPLATES = {
    "email": Template(subject="Hi {{ first_name }}", body="Dear {{ first_name }}", html="<p>x</p>"),
    "sms": Template(body="Hi {{ first_name }}"),
    "push": Template(title="Sale", body="Hi {{ first_name }}"),
}


def test_pipeline_sends_nothing_with_a_control_character(
    tmp_path: Path, ck_sandbox: Sandbox
) -> None:
    segment = tmp_path / "seg.csv"
    clean = real_segment(segment)
    providers = {"email": "sendgrid", "sms": "twilio", "push": "expo"}
    channels = tuple(
        Channel(
            name=name,
            provider=provider,
            template=TEMPLATES[name],
            require_consent=name == "sms",
            options={"from_email": "news@example.com"} if name == "email" else {},
        )
        for name, provider in providers.items()
    )
    cfg = PipelineConfig(
        name="integrity",
        source=SourceConfig("csv", {"path": str(segment), "consent": {"sms": "opt_sms"}}),
        channels=channels,
        base_dir=tmp_path,
    )
    cfg = ck_sandbox.apply(cfg)
    report = Pipeline.from_config(cfg, env=ck_sandbox.env(cfg), sleep=lambda s: None).run()
    assert report.rows_read == 12
    assert report.rows_rejected == len(BAD_ROWS)
    assert report.rejected_reasons == {"control_character": 6, "multiline_field": 1}
    assert report.lines == {"total": 15, "header": 1, "blank": 0, "accepted": 6, "rejected": 8}
    accepted = report.rows_read - report.rows_rejected
    assert accepted == clean == 5
    for name, provider in providers.items():
        assert report.channels[name].sent == accepted, name
        messages = ck_sandbox.servers[provider].messages
        assert len(messages) == accepted
        for m in messages:
            for text in all_strings(m):
                assert not CONTROL.search(text), (provider, m)
    rejected = (Path(report.output_dir or "") / "rejected.csv").read_text(encoding="utf-8")
    assert "lines 9-10: quoted field in column 'email' spans 2 lines" in rejected


def test_cli_run_sandbox_summary_and_rejects(tmp_path: Path) -> None:
    segment = tmp_path / "seg.csv"
    real_segment(segment)
    config = tmp_path / "campaign.toml"
    config.write_text(
        """
[pipeline]
name = "integrity"

[source]
type = "csv"
path = "seg.csv"

[source.consent]
sms = "opt_sms"

[channels.sms]
provider = "twilio"

[channels.sms.template]
body = "Hi {{ first_name }}"

[channels.push]
provider = "expo"
require_consent = false

[channels.push.template]
title = "Sale"
body = "Hi {{ first_name }}"
""",
        encoding="utf-8",
    )
    out = tmp_path / "out"
    env = {"SMS_API_TOKEN": None, "PUSH_API_TOKEN": None, "CAMPAIGNKIT_BLOCK_PLUGINS": None}
    result = CliRunner().invoke(
        main, ["run", str(config), "--sandbox", "--output-dir", str(out)], env=env
    )
    assert result.exit_code == 0, result.output
    assert "Segment:   12 row(s) read, 7 rejected" in result.output
    assert "Lines:     15 = 1 header + 6 in accepted rows + 8 in rejected rows + 0 blank" in (
        result.output
    )
    (run_dir,) = [p for p in (out / "sandbox").iterdir() if p.is_dir()]  # a rehearsal's
    recorded = {p.stem: p.read_text(encoding="utf-8") for p in run_dir.glob("sandbox/*.jsonl")}
    for provider in ("twilio", "expo"):
        messages = [json.loads(line) for line in recorded[provider].splitlines()]
        assert len(messages) == 5
        for m in messages:
            assert not any(CONTROL.search(t) for t in all_strings(m))
    with (run_dir / "rejected.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))[1:]
    assert sorted(int(r[0]) for r in rows) == sorted(BAD_ROWS)


def test_pipeline_with_a_plugin_source_sends_no_control_character(
    tmp_path: Path, ck_sandbox: Sandbox
) -> None:
    """Defence in depth: a source that checks nothing (StaticSource stands for a plugin's)."""
    rows = [
        {"id": "C1", "email": "a1@example.com", "phone": "+14155550101", "first_name": "A"},
        {"id": "C2", "email": "a2\x00@example.com", "phone": "+14155550102", "first_name": "B"},
        {"id": "C3", "email": "a3@example.com", "phone": "+14155550103", "first_name": "C\x1b"},
        {"id": "C4", "email": "a4@example.com", "phone": "+1415555\x850104", "first_name": "D"},
        {"id": "C5", "email": "a5@example.com", "phone": "+14155550105", "first_name": "E\tF"},
    ]
    providers = {"email": "sendgrid", "sms": "twilio"}
    chans = [
        Channel(
            name=name,
            provider=provider,
            template=TEMPLATES[name],
            require_consent=False,
            options={
                **ck_sandbox.channel_options(provider),
                **({"from_email": "news@example.com"} if name == "email" else {}),
            },
        )
        for name, provider in providers.items()
    ]
    env = {c.token_variable: ck_sandbox.servers[c.provider].token for c in chans}
    pipeline = Pipeline(
        "plugin_source",
        StaticSource.from_dicts(rows),
        chans,
        env=env,
        base_dir=tmp_path,
        sleep=lambda s: None,
    )
    report = pipeline.run()
    assert (report.rows_read, report.rows_rejected) == (5, 3)
    assert report.rejected_reasons == {"control_character": 3}
    assert report.lines is None  # a plugin source counts no lines
    for name, provider in providers.items():
        assert report.channels[name].sent == 2, name
        messages = ck_sandbox.servers[provider].messages
        assert len(messages) == 2
        # A tab in free text is allowed (it went into the subject and the SMS body).
        for m in messages:
            assert not any(CONTROL.search(t.replace("\t", "")) for t in all_strings(m))


def test_a_line_break_from_free_text_never_reaches_a_subject(
    tmp_path: Path, ck_sandbox: Sandbox
) -> None:
    """Free text may hold line breaks (a note, an address), but a subject or a push title
    rendered from it would forge a header: that message fails, the others go."""
    rows = [
        {"id": f"C{i}", "email": f"a{i}@example.com", "push_token": f"ExponentPushToken[t{i}]"}
        | {"first_name": name}
        for i, name in enumerate(["Ann", "B\nBcc: x", "C\r\nD", "Tab\there"])
    ]
    chans = [
        Channel(
            name="email",
            provider="sendgrid",
            template=Template(subject="Hi {{ first_name }}", body="Dear {{ first_name }}"),
            require_consent=False,
            options={**ck_sandbox.channel_options("sendgrid"), "from_email": "n@example.com"},
        ),
        Channel(
            name="push",
            provider="expo",
            template=Template(title="Hi {{ first_name }}", body="Sale"),
            require_consent=False,
            options=ck_sandbox.channel_options("expo"),
        ),
    ]
    env = {c.token_variable: ck_sandbox.servers[c.provider].token for c in chans}
    report = Pipeline(
        "subjects", StaticSource.from_dicts(rows), chans, env=env, base_dir=tmp_path
    ).run()
    for name, provider in (("email", "sendgrid"), ("push", "expo")):
        result = report.channels[name]
        assert (result.sent, result.failed) == (2, 2), name
        assert result.reasons == {"control_character": 2}
        for m in ck_sandbox.servers[provider].messages:
            assert "Bcc" not in json.dumps(m) and "C\r\nD" not in json.dumps(m)
