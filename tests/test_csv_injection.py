"""Every CSV campaignkit writes is safe to open in a spreadsheet: rejected.csv, the
report CSV and the suppression export go through one writer that neutralises
formula cells, without touching plain numbers such as phone numbers."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from hypothesis import given
from hypothesis import strategies as st

from campaignkit._csvio import FORMULA_START, neutralise, restore, safe_csv_writer
from campaignkit.cli import main

#: Characters a spreadsheet may not show before a formula.
INVISIBLE = "\ufeff\u200b\u200c\u200d\u2060\u200e\u200f\u202a\u202b\u202c\u202d\u202e"

#: Cells that are numbers a spreadsheet may show as numbers but can run nothing with.
PLAIN = ("+14155550100", "-12.5", "+1 (415) 555-0100", "0", "42", "-3", " -12.5")
#: Cells a spreadsheet would run (or that hide a formula behind white space or quotes).
HOSTILE = (
    '=HYPERLINK("http://x","y")',
    "@SUM(1)",
    "-2+3",
    "-1+1",
    "+1-2*3",
    "=1+1",
    "\t=1",
    "\r=1",
    "\n=1",
    "\0=1",
    " =1",
    "\u00a0@A1",
    "\uff1d1+1",
    "\uff0b1",
    "\uff0d1",
    "\uff20SUM(1)",
    "=cmd|' /C calc'!A0",
    "-",
    "+",
    "'=1",
    "\ufeff=1",
    "\u200b@SUM(1)",
    " \u202e-2+3",
    "\u200b \u200b=1",
)


def is_safe(cell: str) -> bool:
    """What a spreadsheet may read: not a formula, or a plain number."""
    body = cell
    while body[:1].isspace() or body[:1] in tuple(INVISIBLE):
        body = body[1:]
    if cell[:1] in ("\t", "\r", "\n", "\0"):
        return False
    if body[:1] not in FORMULA_START:
        return True
    return body[0] in "+-" and all(c in "0123456789 .()-" for c in body[1:]) and body[1:2].isdigit()


@pytest.mark.parametrize("cell", [*PLAIN, "hello", "a=1", "", "'", "Ann-Marie"])
def test_plain_cells_are_kept(cell: str) -> None:
    assert neutralise(cell) == cell


@pytest.mark.parametrize("cell", list(HOSTILE))
def test_formula_cells_get_a_quote(cell: str) -> None:
    assert neutralise(cell) == "'" + cell
    assert is_safe(neutralise(cell))
    assert restore(neutralise(cell)) == cell


def test_a_long_run_of_quotes_does_not_recurse() -> None:
    cell = "'" * 100_000 + "=1"
    assert neutralise(cell) == "'" + cell
    assert restore(neutralise(cell)) == cell


@given(st.text())
def test_restore_undoes_neutralise(value: str) -> None:
    assert restore(neutralise(value)) == value


_CELLS = st.one_of(
    st.text(),
    st.sampled_from(HOSTILE + PLAIN),
    st.builds(
        lambda head, tail: head + tail,
        st.sampled_from([*sorted(FORMULA_START), " ", "'", "\u3000", *INVISIBLE]),
        st.text(),
    ),
)


@given(st.lists(st.lists(_CELLS, min_size=1, max_size=5), min_size=1, max_size=5))
def test_every_cell_read_back_is_safe(rows: list[list[str]]) -> None:
    buffer = io.StringIO(newline="")
    safe_csv_writer(buffer).writerows(rows)
    read = list(csv.reader(io.StringIO(buffer.getvalue(), newline="")))
    assert len(read) == len(rows)
    for written, original in zip(read, rows, strict=True):
        for cell, value in zip(written, original, strict=True):
            assert is_safe(cell), (cell, value)
            assert restore(cell) == value


def test_numbers_and_none_are_written_as_they_are() -> None:
    buffer = io.StringIO(newline="")
    safe_csv_writer(buffer).writerow([-3, -1.5, None, True, "-3"])
    assert buffer.getvalue() == "-3,-1.5,,True,-3\r\n"


# -- every CSV output, on the real path --------------------------------------------------------


def invoke(*args: str) -> Result:
    env = {"EMAIL_API_TOKEN": None, "SMS_API_TOKEN": None, "PUSH_API_TOKEN": None}
    return CliRunner().invoke(main, list(args), env=env)


def write_campaign(tmp_path: Path) -> Path:
    rows = [
        ["customer_id", "first_name", "email", "phone", "note"],
        ["C1", '=HYPERLINK("http://x","y")', "ann@example.com", "+14155550101", "@SUM(1)"],
        ["", "-2+3", "bob@example.com", "+14155550100", "\t=1"],  # no id: rejected
        ["=cmd|' /C calc'!A0", "Cid", "cid@example.com", "+15005550004", "+1-2*3"],  # 21610
        ["C4", "\uff1dSUM(1)", "dee@example.com", "+1 (415) 555-0104", "-12.5"],
    ]
    buffer = io.StringIO(newline="")
    csv.writer(buffer).writerows(rows)
    (tmp_path / "segment.csv").write_text(buffer.getvalue(), encoding="utf-8")
    config = tmp_path / "campaign.toml"
    config.write_text(
        '[pipeline]\nname = "hostile"\n\n'
        '[source]\ntype = "csv"\npath = "segment.csv"\n[source.columns]\nid = "customer_id"\n\n'
        '[channels.sms]\nprovider = "twilio"\nrequire_consent = false\n'
        '[channels.sms.template]\nbody = "Hi {{ first_name }} {{ note }}"\n',
        encoding="utf-8",
    )
    return config


def read_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text, newline="")))


def assert_all_safe(table: list[list[str]]) -> None:
    for row in table:
        for cell in row:
            assert is_safe(cell), cell


def test_rejects_report_and_suppression_export_are_neutralised(tmp_path: Path) -> None:
    config = write_campaign(tmp_path)
    run = invoke("run", str(config), "--sandbox", "--json")
    assert run.exit_code == 1, run.output  # the 21610 refusal: partial
    report = json.loads(run.stdout)
    run_id = report["run_id"]

    rejected = read_csv((Path(report["output_dir"]) / "rejected.csv").read_text("utf-8"))
    assert rejected[0] == ["line", "reason", "field", "detail", "raw"]
    assert len(rejected) == 2
    assert_all_safe(rejected)
    raw = rejected[1][4:]
    assert raw == ["", "'-2+3", "bob@example.com", "+14155550100", "'\t=1"]
    assert [restore(c) for c in raw] == ["", "-2+3", "bob@example.com", "+14155550100", "\t=1"]

    exported = invoke("report", str(config), run_id, "--sandbox", "--format", "csv")
    assert exported.exit_code == 0, exported.output
    table = read_csv(exported.stdout)
    assert_all_safe(table)
    ids = [row[2] for row in table[1:]]
    assert ids == ["C1", "'=cmd|' /C calc'!A0", "C4"]

    added = invoke(
        "suppress", str(config), "--sandbox", "-c", "sms", "+1 415 555 0199",
        "--reason", '=HYPERLINK("http://evil","unsubscribed")',
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    target = tmp_path / "suppressions.csv"
    written = invoke("suppressions", str(config), "--sandbox", "--format", "csv", "-o", str(target))
    assert written.exit_code == 0, written.output
    assert "2 suppressed address(es) written to" in written.stderr
    listing = read_csv(target.read_text("utf-8"))
    assert_all_safe(listing)
    assert listing[0] == ["kind", "address", "reason", "source"]
    by_address = {row[1]: row for row in listing[1:]}
    # Phone numbers are plain numbers: kept as they are.
    assert set(by_address) == {"+15005550004", "+14155550199"}
    assert by_address["+14155550199"][2] == '\'=HYPERLINK("http://evil","unsubscribed")'
    assert by_address["+15005550004"][2] == "21610"
    stdout = invoke("suppressions", str(config), "--sandbox", "--format", "csv")
    assert read_csv(stdout.stdout) == listing
    as_json = invoke("suppressions", str(config), "--sandbox", "--format", "json")
    assert json.loads(as_json.stdout) == json.loads(
        invoke("suppressions", str(config), "--sandbox", "--json").stdout
    )
    # JSON keeps every value as it is.
    reasons = {e["address"]: e["reason"] for e in json.loads(as_json.stdout)}
    assert reasons["+14155550199"] == '=HYPERLINK("http://evil","unsubscribed")'


def test_suppressions_output_needs_a_file_format(tmp_path: Path) -> None:
    config = write_campaign(tmp_path)
    result = invoke("suppressions", str(config), "-o", str(tmp_path / "x.csv"))
    assert result.exit_code == 2
    assert "--output needs --format json or csv" in result.output


def test_suppressions_json_and_csv_contradict(tmp_path: Path) -> None:
    config = write_campaign(tmp_path)
    result = invoke("suppressions", str(config), "--json", "--format", "csv")
    assert result.exit_code == 2
    assert "--json and --format csv contradict each other" in result.output
    empty = invoke("suppressions", str(config), "--format", "csv")
    assert empty.exit_code == 0
    assert empty.stdout.splitlines() == ["kind,address,reason,source"]
    assert not (tmp_path / ".campaignkit").exists()  # looking creates no ledger


def test_a_suppression_export_reads_back_as_the_addresses_it_holds(tmp_path: Path) -> None:
    from campaignkit._suppression import SuppressionList

    export = tmp_path / "export.csv"
    with export.open("w", newline="", encoding="utf-8") as f:
        writer = safe_csv_writer(f)
        writer.writerow(["kind", "address", "reason"])
        writer.writerow(["email", "-john@example.com", "manual"])
        writer.writerow(["email", "=ann@example.com", "manual"])
        writer.writerow(["email", "bob@example.com", "manual"])
    assert "'-john@example.com" in export.read_text()
    suppressed = SuppressionList.from_files([export], "email")
    assert all(a in suppressed for a in ("-john@example.com", "=ann@example.com"))
    assert "'-john@example.com" not in suppressed and len(suppressed) == 3
