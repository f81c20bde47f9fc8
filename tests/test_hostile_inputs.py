"""Hostile segments on the real path (issue 9, red-team pass).

Every case runs a campaign file against the loopback sandbox (``Sandbox.pipeline``)
and counts what the fake providers accepted: a bad row is a reject naming its column,
never an aborted run nor a message holding what it may not hold.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from campaignkit import Channel, Pipeline, RunReport, Template
from campaignkit._models import Recipient, RejectedRow
from campaignkit.cli import main
from campaignkit.testing import StaticSource
from campaignkit.testing.sandbox import Sandbox

PROVIDERS = {"email": "sendgrid", "sms": "twilio", "push": "expo"}

CAMPAIGN = """
[pipeline]
name = "hostile"

[source]
type = "{type}"
path = "{segment}"

[source.columns]
id = "cid"

[source.consent]
email = "oe"
sms = "os"
push = "op"

[execution]
output_dir = "out"

[channels.email]
provider = "sendgrid"
[channels.email.template]
subject = "Hi {{{{ name }}}}"
body = "Hello {{{{ name }}}}: {{{{ note }}}}"
[channels.email.options]
from_email = "news@example.com"

[channels.sms]
provider = "twilio"
[channels.sms.template]
body = "Hi {{{{ name }}}}"

[channels.push]
provider = "expo"
[channels.push.template]
title = "Hi {{{{ name }}}}"
body = "{{{{ note }}}}"
"""

# Nothing a provider receives may hold these: C0 but tab/LF, DEL, C1, a lone surrogate.
FORBIDDEN = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def values(i: int) -> dict[str, Any]:
    return {
        "cid": f"C{i}",
        "email": f"u{i}@example.com",
        "phone": f"+1415555{i:04d}",
        "push_token": f"ExponentPushToken[t{i}]",
        "oe": "yes",
        "os": "yes",
        "op": "yes",
        "name": f"N{i}",
        "note": f"n{i}",
    }


def campaign(directory: Path, segment: str, text: str, kind: str = "csv") -> Path:
    (directory / segment).write_text(text, encoding="utf-8", errors="surrogatepass")
    path = directory / "campaign.toml"
    path.write_text(CAMPAIGN.format(type=kind, segment=segment), encoding="utf-8")
    return path


def all_strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from all_strings(k)
            yield from all_strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from all_strings(v)


def run(sandbox: Sandbox, config: Path) -> RunReport:
    pipeline = sandbox.pipeline(config, sleep=lambda s: None)
    plan = pipeline.plan()
    report = pipeline.run()
    # --dry-run reports what the run read
    assert (plan.rows_read, plan.rows_rejected, dict(plan.rejected_reasons), plan.lines) == (
        report.rows_read,
        report.rows_rejected,
        dict(report.rejected_reasons),
        report.lines,
    )
    lines = dict(report.lines or {})
    assert (
        lines["total"] == lines["header"] + lines["blank"] + lines["accepted"] + lines["rejected"]
    )
    for name, provider in PROVIDERS.items():
        messages = sandbox.servers[provider].messages
        assert report.channels[name].sent == len(messages), name
        for m in messages:
            for text in all_strings(m):
                assert not FORBIDDEN.search(text), (provider, m)
    return report


def rejected_rows(report: RunReport) -> list[list[str]]:
    path = Path(report.output_dir or "") / "rejected.csv"
    with path.open(encoding="utf-8", newline="") as f:
        return list(csv.reader(f))[1:]


# -- lone surrogates ----------------------------------------------------------------------


def jsonl_line(i: int, **raw: str) -> str:
    """Line ``i`` as JSON; ``raw`` replaces a key's value with raw JSON text (escapes)."""
    text = json.dumps(values(i))
    for key, value in raw.items():
        text = text.replace(json.dumps(values(i)[key]), value)
    return text


@pytest.mark.parametrize(
    ("key", "raw", "field"),
    [
        ("cid", '"C\\ud8002"', "id"),
        ("email", '"u\\ud8002@example.com"', "email"),
        ("push_token", '"ExponentPushToken[\\udc00]"', "push_token"),
        ("name", '"N\\ud8002"', "name"),
        ("note", '"n\\udfff"', "note"),
    ],
)
def test_a_lone_surrogate_in_json_lines_is_a_row_reject(
    tmp_path: Path, ck_sandbox: Sandbox, key: str, raw: str, field: str
) -> None:
    """``"\\ud800"`` is valid JSON but no text: it used to abort extraction with a
    UnicodeEncodeError (an id) or fail a whole SendGrid batch (free text)."""
    lines = [jsonl_line(1), jsonl_line(2, **{key: raw}), jsonl_line(3)]
    config = campaign(tmp_path, "seg.jsonl", "\n".join(lines) + "\n", kind="jsonl")
    report = run(ck_sandbox, config)
    assert report.rejected_reasons == {"control_character": 1}
    assert report.lines == {"total": 3, "header": 0, "blank": 0, "accepted": 2, "rejected": 1}
    ((line, reason, fld, detail, *_),) = rejected_rows(report)
    assert (line, reason, fld) == ("2", "control_character", field)
    assert f"key {key!r}: lone surrogate U+" in detail
    for name in PROVIDERS:
        assert report.channels[name].sent == 2, name


def test_a_lone_surrogate_in_a_json_lines_key(tmp_path: Path, ck_sandbox: Sandbox) -> None:
    line = jsonl_line(2)[:-1] + ', "x\\ud800": "1"}'
    config = campaign(tmp_path, "seg.jsonl", f"{jsonl_line(1)}\n{line}\n", kind="jsonl")
    report = run(ck_sandbox, config)
    ((_, reason, fld, detail, *_),) = rejected_rows(report)
    assert (reason, fld, detail) == (
        "control_character",
        "",
        "a key: lone surrogate U+D800 at position 2",
    )


# -- line and paragraph separators ----------------------------------------------------------


def csv_text(rows: list[dict[str, Any]]) -> str:
    header = ",".join(rows[0])
    return header + "\n" + "".join(",".join(r.values()) + "\n" for r in rows)


@pytest.mark.parametrize("char", ["\u2028", "\u2029"])
@pytest.mark.parametrize(("column", "field"), [("cid", "id"), ("push_token", "push_token")])
def test_a_line_separator_in_a_strict_column_is_a_row_reject(
    tmp_path: Path, ck_sandbox: Sandbox, char: str, column: str, field: str
) -> None:
    rows = [values(i) for i in (1, 2, 3)]
    rows[1][column] = rows[1][column][:2] + char + rows[1][column][2:]
    report = run(ck_sandbox, campaign(tmp_path, "seg.csv", csv_text(rows)))
    ((line, reason, fld, detail, *_),) = rejected_rows(report)
    assert (line, reason, fld) == ("3", "control_character", field)
    assert detail == f"column {column!r}: line separator U+{ord(char):04X} at position 3"
    assert report.channels["push"].sent == 2


def test_a_line_separator_in_free_text_stays_out_of_subjects(
    tmp_path: Path, ck_sandbox: Sandbox
) -> None:
    """Free text may hold U+2028 (an SMS body, a push body), a subject or title not:
    it is a line break to ``str.splitlines`` and to JavaScript."""
    rows = [values(i) for i in (1, 2)]
    rows[1]["name"] = "N\u20282"
    report = run(ck_sandbox, campaign(tmp_path, "seg.csv", csv_text(rows)))
    assert report.rows_rejected == 0
    assert report.channels["sms"].sent == 2
    for name in ("email", "push"):
        assert report.channels[name].sent == 1
        assert report.channels[name].reasons == {"control_character": 1}


# -- a quote inside a strict value ----------------------------------------------------------


@pytest.mark.parametrize(
    ("column", "value", "field", "position"),
    [
        ("email", 'u"2@example.com', "email", 2),  # a quote inside an unquoted field
        ("push_token", '"ExponentPushToken[""t2]"', "push_token", 19),  # an escaped one
        ("push_token", 'ExponentPushToken[t"2]', "push_token", 20),
        ("phone", '+1415"5550002', "phone", 6),
        ("wa", 'wa"2', "wa", 3),  # a strict_columns column
    ],
)
def test_a_quote_in_a_strict_value_rejects_the_record(
    tmp_path: Path, ck_sandbox: Sandbox, column: str, value: str, field: str, position: int
) -> None:
    """It used to be kept: a token ``ExponentPushToken[t"2]`` reached Expo."""
    rows = [{**values(i), "wa": f"wa{i}"} for i in (1, 2, 3)]
    rows[1][column] = value
    config = campaign(tmp_path, "seg.csv", csv_text(rows))
    config.write_text(
        config.read_text().replace(
            "[source.columns]", 'strict_columns = ["wa"]\n\n[source.columns]'
        )
    )
    report = run(ck_sandbox, config)
    ((line, reason, fld, detail, *_),) = rejected_rows(report)
    assert (line, reason, fld) == ("3", "malformed_row", field)
    assert (
        detail == f"line 3: column {column!r} holds a quote at position {position}: a stray quote?"
    )
    for name in PROVIDERS:
        assert report.channels[name].sent == 2, name


def test_an_id_may_hold_a_quote(tmp_path: Path, ck_sandbox: Sandbox) -> None:
    """An id is an opaque key: ``=HYPERLINK("x")`` is kept (and neutralised in CSV)."""
    rows = [values(i) for i in (1, 2)]
    rows[1]["cid"] = '"=HYPERLINK(""x"")"'
    report = run(ck_sandbox, campaign(tmp_path, "seg.csv", csv_text(rows)))
    assert report.rows_rejected == 0
    assert report.channels["email"].sent == 2


def test_a_quote_in_a_consent_value_is_a_bad_consent_value(
    tmp_path: Path, ck_sandbox: Sandbox
) -> None:
    rows = [values(i) for i in (1, 2)]
    rows[1]["os"] = 'ye"s'
    report = run(ck_sandbox, campaign(tmp_path, "seg.csv", csv_text(rows)))
    ((line, reason, fld, *_),) = rejected_rows(report)
    assert (line, reason, fld) == ("3", "bad_consent_value", "os")


def test_a_quote_in_free_text_is_kept(tmp_path: Path, ck_sandbox: Sandbox) -> None:
    rows = [values(i) for i in (1, 2)]
    rows[0]["note"] = '"say ""hi"""'
    rows[1]["name"] = 'N"2'
    report = run(ck_sandbox, campaign(tmp_path, "seg.csv", csv_text(rows)))
    assert report.rows_rejected == 0
    texts = [m["text"] for m in ck_sandbox.servers["sendgrid"].messages]
    assert sorted(texts) == ['Hello N"2: n2', 'Hello N1: say "hi"']


def test_a_plugin_sources_lone_surrogates_are_rejects_written_escaped(
    tmp_path: Path, ck_recorder: Any, ck_plugin_manager: Any
) -> None:
    """A plugin source's recipient holding a lone surrogate is screened out; its raw
    values, and a plugin's own reject holding one, are written to rejected.csv escaped
    (writing them used to abort the extraction with UnicodeEncodeError)."""
    source = StaticSource(
        [
            Recipient("C1", "a@example.com", attributes={"n": "x"}, consent={"email": True}),
            Recipient("C\ud8002", "b@example.com", attributes={"n": "x"}, line=2),
            Recipient("C3", "c@example.com", attributes={"n": "x\udc00"}, line=3),
            RejectedRow(4, "malformed_row", "bad \ud800", None, ("raw\ud800",)),
        ]
    )
    channel = Channel(name="email", provider="recording", template=Template(body="Hi {{ n }}"))
    pipeline = Pipeline(
        "plugin_source",
        source,
        [channel],
        plugins=ck_plugin_manager,
        base_dir=tmp_path,
        sleep=lambda s: None,
    )
    report = pipeline.run(output_dir=tmp_path / "out")
    assert (report.rows_read, report.rows_rejected) == (4, 3)
    assert report.rejected_reasons == {"control_character": 2, "malformed_row": 1}
    assert [m.body for m in ck_recorder.outbox.messages] == ["Hi x"]
    assert rejected_rows(report) == [
        [
            "2",
            "control_character",
            "id",
            "field 'id': lone surrogate U+D800 at position 2",
            "C\\ud8002",
            "b@example.com",
            "",
            "",
            "x",
        ],
        [
            "3",
            "control_character",
            "n",
            "attribute 'n': lone surrogate U+DC00 at position 2",
            "C3",
            "c@example.com",
            "",
            "",
            "x\\udc00",
        ],
        ["4", "malformed_row", "", "bad \\ud800", "raw\\ud800"],
    ]


# -- a stray quote in free text that a later quote closes ------------------------------------


@pytest.mark.parametrize("column", ["note", "name"])
def test_records_swallowed_into_free_text_are_rejected(
    tmp_path: Path, ck_sandbox: Sandbox, column: str
) -> None:
    """A quote opening C2's free text and one closing C4's made C3's and C4's records
    part of C2's value: C2 was sent their addresses (in the e-mail body, the SMS), and
    C3 and C4 nothing, with the line counts adding up."""
    rows = [values(i) for i in range(1, 6)]
    rows[1][column] = '"' + rows[1][column]
    rows[3][column] += '"'
    report = run(ck_sandbox, campaign(tmp_path, "seg.csv", csv_text(rows)))
    assert report.lines == {"total": 6, "header": 1, "blank": 0, "accepted": 2, "rejected": 3}
    ((line, reason, fld, detail, *raw),) = rejected_rows(report)
    assert (line, reason, fld) == ("3", "multiline_field", column)
    assert detail == (
        f"lines 3-5: quoted field in column {column!r} spans 3 lines, and line 4 holds "
        "8 ',', as a record does: a stray quote?"
    )
    assert "u3@example.com" in "".join(raw)  # in the reject, not lost
    for name, provider in PROVIDERS.items():
        assert report.channels[name].sent == 2, name
        sent = json.dumps(ck_sandbox.servers[provider].messages, default=str)
        for i in (3, 4):
            assert f"u{i}@example.com" not in sent and f"+1415555000{i}" not in sent


def test_multiline_free_text_with_a_few_delimiters_is_kept(
    tmp_path: Path, ck_sandbox: Sandbox
) -> None:
    rows = [values(i) for i in (1, 2)]
    rows[1]["note"] = '"first line\nsecond, with a comma; and more, commas\nthird"'
    report = run(ck_sandbox, campaign(tmp_path, "seg.csv", csv_text(rows)))
    assert report.rows_rejected == 0
    assert report.lines == {"total": 5, "header": 1, "blank": 0, "accepted": 4, "rejected": 0}
    assert report.channels["email"].sent == 2


# -- campaignkit suppress --reason ------------------------------------------------------------


@pytest.mark.parametrize("reason", ["red\x1b[31m", "two\nlines", "nul\x00", "sep\u2028"])
def test_a_suppression_reason_holds_no_control_character(tmp_path: Path, reason: str) -> None:
    """It was stored as given, then printed raw to the terminal (an escape sequence)
    and exported with its line breaks."""
    config = campaign(tmp_path, "seg.csv", csv_text([values(1)]))
    args = ["suppress", str(config), "--channel", "email", "--reason", reason]
    result = CliRunner().invoke(main, [*args, "ann@example.com"])
    assert result.exit_code == 2, result.output
    assert "--reason" in result.output and "at position" in result.output
    listed = CliRunner().invoke(main, ["suppressions", str(config), "--format", "csv"])
    assert "ann@example.com" not in listed.output


def test_a_formula_reason_is_kept_and_neutralised(tmp_path: Path) -> None:
    config = campaign(tmp_path, "seg.csv", csv_text([values(1)]))
    args = ["suppress", str(config), "--channel", "sms", "--reason", "=1+1", "+14155550100"]
    assert CliRunner().invoke(main, args).exit_code == 0
    listed = CliRunner().invoke(main, ["suppressions", str(config), "--format", "csv"])
    rows = list(csv.reader(listed.output.splitlines()))
    assert rows[1][:3] == ["phone", "+14155550100", "'=1+1"]
