"""Property tests of the CSV source: round-trips, column mapping, consent parsing."""

from __future__ import annotations

import csv
import io
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit._controls import find_control
from campaignkit._models import Recipient, RejectedRow
from campaignkit._sources import CsvSource, parse_consent

SETTINGS = settings(max_examples=100, deadline=None)

TRUE = ["true", "yes", "y", "1", "t"]
FALSE = ["false", "no", "n", "0", "f", ""]

# Any text a UTF-8 CSV file can hold: no surrogates; NUL is allowed since Python 3.11.
cell = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)
# Values likely to need quoting: delimiters, quotes, line ends, spaces, non-ASCII.
tricky = st.text(st.sampled_from([",", ";", "\t", "|", '"', "\n", "\r", " ", "a", "é", "😀"]))


@pytest.fixture(scope="module")
def tmpdir_path() -> Iterator[Path]:
    # Hypothesis runs many examples per test; tmp_path is per test, so files are
    # overwritten in one module-scoped directory instead.
    with tempfile.TemporaryDirectory() as d:
        yield Path(d)


def line_breaks(text: str) -> int:
    """Physical line ends in ``text``: \\n, \\r\\n and lone \\r."""
    return text.count("\n") + text.count("\r") - text.count("\r\n")


def write_csv(
    path: Path,
    header: list[str],
    rows: list[list[str]],
    *,
    delimiter: str,
    lineterminator: str,
    bom: bool,
    quote_all: bool,
) -> list[int]:
    """Write with csv.writer; return the physical line each data row starts on."""
    # csv.writer leaves a lone \r unquoted unless it is part of the line terminator,
    # which no reader can parse back, so such files quote every field.
    needs_all = lineterminator == "\n" and any("\r" in v for row in rows for v in row)
    quoting = csv.QUOTE_ALL if quote_all or needs_all else csv.QUOTE_MINIMAL
    out = io.StringIO(newline="")
    writer = csv.writer(out, delimiter=delimiter, lineterminator=lineterminator, quoting=quoting)
    writer.writerow(header)
    starts = []
    line = 1 + line_breaks(out.getvalue())
    for row in rows:
        before = len(out.getvalue())
        writer.writerow(row)
        starts.append(line)
        line += line_breaks(out.getvalue()[before:])
    path.write_bytes((("\ufeff" if bom else "") + out.getvalue()).encode("utf-8"))
    return starts


@SETTINGS
@given(
    rows=st.lists(st.tuples(st.one_of(cell, tricky), cell, tricky, cell, tricky), max_size=8),
    delimiter=st.sampled_from([",", ";", "\t", "|"]),
    lineterminator=st.sampled_from(["\n", "\r\n"]),
    bom=st.booleans(),
    quote_all=st.booleans(),
)
def test_csv_round_trip(
    tmpdir_path: Path,
    rows: list[tuple[str, str, str, str, str]],
    delimiter: str,
    lineterminator: str,
    bom: bool,
    quote_all: bool,
) -> None:
    path = tmpdir_path / "roundtrip.csv"
    header = ["id", "email", "note", "name", "zone"]
    data = [list(r) for r in rows]
    if not data:
        data = [["C1", "a@b.co", "", "", ""]]  # header-only files are an error by design
    starts = write_csv(
        path,
        header,
        data,
        delimiter=delimiter,
        lineterminator=lineterminator,
        bom=bom,
        quote_all=quote_all,
    )
    got = list(CsvSource(path, delimiter=delimiter).records(("email",)))
    assert len(got) == len(data)
    for item, row, start in zip(got, data, starts, strict=True):
        assert item.line == start
        reject = expected_reject(row, strict={0, 1}, delimiter=delimiter)
        if reject is not None:
            assert isinstance(item, RejectedRow)
            assert (item.reason, item.field, item.raw) == (*reject, tuple(row))
            continue
        if not row[0].strip():
            assert isinstance(item, RejectedRow)
            assert (item.reason, item.field, item.raw) == ("empty_required_field", "id", tuple(row))
            continue
        assert item == Recipient(
            row[0].strip(),
            row[1].strip() or None,
            attributes={"note": row[2], "name": row[3], "zone": row[4]},
            line=start,
        )


def expected_reject(
    row: list[str], strict: set[int], delimiter: str = ","
) -> tuple[str, str] | None:
    """(reason, field) a row of ["id", "email", free text...] is rejected for by the
    line-span, control-character and stray-quote rules, or None."""
    names = ["id", "email", "note", "name", "zone"]
    for i in sorted(strict):
        if "\n" in row[i] or "\r" in row[i]:  # a quoted field spanning lines
            return "multiline_field", names[i]
    for i, value in enumerate(row):
        # A later line of free text in column i holding i delimiters looks like a
        # record a stray quote swallowed.
        if i not in strict and any(
            line.count(delimiter) >= i for line in re.split("\r\n|\r|\n", value)[1:]
        ):
            return "multiline_field", names[i]
    for i, value in enumerate(row):
        if find_control(value, strict=i in strict) is not None:
            return "control_character", names[i]
    for i in sorted(strict - {0}):
        if '"' in row[i]:  # an address holds no quote (an id may): a stray one?
            return "malformed_row", names[i]
    return None


ident = st.text("abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8)


@SETTINGS
@given(
    names=st.lists(ident, min_size=4, max_size=4, unique=True).filter(
        lambda ns: not {"id", "email", "phone", "push_token"} & set(ns)
    ),
    extra=st.lists(ident, max_size=3, unique=True),
    rows=st.lists(st.tuples(cell, cell, cell, cell), min_size=1, max_size=5),
    delimiter=st.sampled_from([",", "|"]),
)
def test_column_mapping_is_renaming(
    tmpdir_path: Path,
    names: list[str],
    extra: list[str],
    rows: list[tuple[str, str, str, str]],
    delimiter: str,
) -> None:
    """Mapping model fields onto custom columns reads the same as a file whose columns
    carry the model names."""
    extra = [e for e in extra if e not in names and e not in ("id", "email", "phone", "push_token")]
    model = ["id", "email", "phone", "push_token"]
    data = [[*r, *(f"{e}-{i}" for e in extra)] for i, r in enumerate(rows)]
    kw = {"delimiter": delimiter, "lineterminator": "\n", "bom": False, "quote_all": False}
    custom, plain = tmpdir_path / "custom.csv", tmpdir_path / "plain.csv"
    write_csv(custom, [*names, *extra], data, **kw)  # type: ignore[arg-type]
    write_csv(plain, [*model, *extra], data, **kw)  # type: ignore[arg-type]
    mapped_src = CsvSource(
        custom, columns=dict(zip(model, names, strict=True)), delimiter=delimiter
    )
    plain_src = CsvSource(plain, delimiter=delimiter)
    required = ("email", "phone", "push_token")
    # Equal but for the detail text of rejects, which names the file's column.
    assert [key(r) for r in mapped_src.records(required)] == [
        key(r) for r in plain_src.records(required)
    ]
    assert mapped_src.fields() == plain_src.fields() == {*model, *extra}


def key(item: Recipient | RejectedRow) -> object:
    if isinstance(item, RejectedRow):
        return (item.line, item.reason, item.field, item.raw)
    return item


def random_case(draw: st.DrawFn, word: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(word), max_size=len(word)))
    return "".join(c.upper() if f else c for c, f in zip(word, flips, strict=True))


@st.composite
def accepted_spelling(draw: st.DrawFn) -> tuple[str, bool]:
    word = draw(st.sampled_from(TRUE + FALSE))
    pad = st.text(" \t", max_size=3)
    return draw(pad) + random_case(draw, word) + draw(pad), word in TRUE


@SETTINGS
@given(spelling=accepted_spelling())
def test_accepted_consent_spellings(spelling: tuple[str, bool]) -> None:
    value, expected = spelling
    assert parse_consent(value) is expected


@SETTINGS
@given(value=st.text(max_size=8).filter(lambda v: v.strip().lower() not in TRUE + FALSE))
def test_other_consent_values_are_rejected(value: str) -> None:
    assert parse_consent(value) is None


@SETTINGS
@given(
    values=st.lists(
        st.one_of(accepted_spelling(), st.tuples(cell, st.none())), min_size=1, max_size=6
    )
)
def test_consent_column_parsing(tmpdir_path: Path, values: list[tuple[str, bool | None]]) -> None:
    """Through the source: accepted spellings become flags, anything else rejects the row."""
    path = tmpdir_path / "consent.csv"
    rows = [[f"C{i}", v] for i, (v, _) in enumerate(values)]
    write_csv(
        path, ["id", "ok"], rows, delimiter=",", lineterminator="\r\n", bom=False, quote_all=True
    )
    got = list(CsvSource(path, consent={"sms": "ok"}).records())
    for item, (value, flag) in zip(got, values, strict=True):
        expected = flag if flag is not None else parse_consent(value)
        if "\n" in value or "\r" in value:
            assert isinstance(item, RejectedRow)
            assert (item.reason, item.field) == ("multiline_field", "ok")
        elif find_control(value, strict=True) is not None:  # consent is strict
            assert isinstance(item, RejectedRow)
            assert (item.reason, item.field) == ("control_character", "ok")
        elif expected is None:
            assert isinstance(item, RejectedRow)
            assert (item.reason, item.field) == ("bad_consent_value", "ok")
        else:
            assert isinstance(item, Recipient)
            assert item.consent == {"sms": expected}
