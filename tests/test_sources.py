"""Tests of the built-in segment sources (campaignkit._sources)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from campaignkit._models import Recipient, RejectedRow
from campaignkit._plugins import BUILTIN_PLUGINS, Registry, get_plugin_manager
from campaignkit._source import Source
from campaignkit._sources import CsvSource, JsonLinesSource, parse_consent
from campaignkit.exceptions import ConfigError, SourceError

Writer = Callable[..., Path]

HEADER = "id,email,phone,push_token,first_name,opt_email\n"


@pytest.fixture
def write(tmp_path: Path) -> Writer:
    """Write text (or bytes) to a file in tmp_path and return its path."""

    def _write(content: str | bytes, name: str = "segment.csv", encoding: str = "utf-8") -> Path:
        path = tmp_path / name
        if isinstance(content, str):
            content = content.encode(encoding)
        path.write_bytes(content)
        return path

    return _write


def read(source: Source, required: tuple[str, ...] = ()) -> list[Recipient | RejectedRow]:
    return list(source.records(required))


def recipients(items: list[Recipient | RejectedRow]) -> list[Recipient]:
    return [r for r in items if isinstance(r, Recipient)]


def rejects(items: list[Recipient | RejectedRow]) -> list[RejectedRow]:
    return [r for r in items if isinstance(r, RejectedRow)]


def source_error(source: Source, required: tuple[str, ...] = ()) -> SourceError:
    with pytest.raises(SourceError) as info:
        read(source, required)
    return info.value


def assert_names(err: SourceError, path: Path, line: int | None, column: str | None) -> None:
    """The error carries and states file, line and column."""
    text = str(err)
    assert err.file == str(path)
    assert str(path) in text
    assert err.line == line
    if line is not None:
        assert f"line {line}" in text
    assert err.column == column
    if column is not None:
        assert repr(column) in text


# -- reading ----------------------------------------------------------------------------------


def test_reads_rows_into_recipients(write: Writer) -> None:
    path = write(
        HEADER + "C1,ana@example.com,+15550001,tok1,Ana,yes\nC2,ben@example.com,,,Ben,no\n"
    )
    src = CsvSource(path, consent={"email": "opt_email"})
    out = read(src)
    assert out == [
        Recipient(
            "C1",
            "ana@example.com",
            "+15550001",
            "tok1",
            {"first_name": "Ana", "opt_email": "yes"},
            {"email": True},
            line=2,
        ),
        Recipient(
            "C2",
            "ben@example.com",
            None,
            None,
            {"first_name": "Ben", "opt_email": "no"},
            {"email": False},
            line=3,
        ),
    ]


def test_records_is_a_lazy_re_iterable_stream(write: Writer) -> None:
    path = write(HEADER + "".join(f"C{i},e{i}@x.org,,,N,1\n" for i in range(5)))
    src = CsvSource(path)
    stream = src.records()
    assert isinstance(stream, Iterator)
    first = next(stream)
    assert isinstance(first, Recipient)
    assert first.id == "C0"
    stream.close()  # type: ignore[attr-defined]
    assert [r.id for r in recipients(read(src))] == [f"C{i}" for i in range(5)]
    assert [r.id for r in recipients(read(src))] == [f"C{i}" for i in range(5)]


def test_model_fields_are_stripped_and_attributes_kept_verbatim(write: Writer) -> None:
    path = write("id,email,note\n  C1 ,  a@b.co  ,  keep me  \nC2,   ,\n")
    out = recipients(read(CsvSource(path)))
    assert out[0].id == "C1"
    assert out[0].email == "a@b.co"
    assert out[0].attributes == {"note": "  keep me  "}
    assert out[1].email is None
    assert out[1].phone is None  # no phone column at all
    assert out[1].attributes == {"note": ""}


def test_header_names_are_stripped(write: Writer) -> None:
    path = write(" id , email ,first name \nC1,a@b.co,Ana\n")
    src = CsvSource(path)
    assert src.fields() == {"id", "email", "first name"}
    assert recipients(read(src))[0].attributes == {"first name": "Ana"}


def test_quoted_newlines_keep_physical_line_numbers(write: Writer) -> None:
    path = write(
        "id,email,note\n"
        'C1,a@b.co,"two\nlines"\n'  # lines 2-3
        'C2,b@b.co,"three\n\nlines"\n'  # lines 4-6
        ",c@b.co,after multiline\n"  # line 7: empty id
        "C3,d@b.co\n"  # line 8: malformed
        "C4,e@b.co,ok\n"  # line 9
    )
    out = read(CsvSource(path))
    assert [(type(r).__name__, r.line) for r in out] == [
        ("Recipient", 2),
        ("Recipient", 4),
        ("RejectedRow", 7),
        ("RejectedRow", 8),
        ("Recipient", 9),
    ]
    assert isinstance(out[1], Recipient)
    assert out[1].attributes["note"] == "three\n\nlines"


def test_blank_lines_are_skipped(write: Writer) -> None:
    path = write("id,email\n\nC1,a@b.co\n\n\nC2,b@b.co\n\n")
    assert [(r.id, r.line) for r in recipients(read(CsvSource(path)))] == [("C1", 3), ("C2", 6)]


def test_odd_column_names(write: Writer) -> None:
    names = ['we"ird', "back\\slash", "{x}", "ünï", "sp ace", "')}, __import__('os')"]
    header = ",".join(['"' + n.replace('"', '""') + '"' for n in ["id", *names]])
    row = ",".join(["C1", *(f"v{i}" for i in range(len(names)))])
    path = write(f"{header}\n{row}\n")
    src = CsvSource(path)
    (r,) = read(src)
    assert isinstance(r, Recipient)
    assert r.line == 2
    assert r.attributes == {n: f"v{i}" for i, n in enumerate(names)}
    assert src.fields() == {"id", *names}
    (r,) = read(CsvSource(path, consent={"sms": "ünï", "push": 'we"ird'}))
    assert isinstance(r, RejectedRow)  # "v3" is no consent value
    assert r.field == "ünï"  # the first consent column that fails


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
@pytest.mark.parametrize("bom", [False, True])
def test_line_ends_and_bom(write: Writer, newline: str, bom: bool) -> None:
    text = newline.join(["id,note", "C1,a@b.co", '"C2","x\ny"', "C3,c@b.co", ""])
    path = write(("\ufeff" if bom else "") + text)
    src = CsvSource(path)
    out = recipients(read(src))
    assert [(r.id, r.line) for r in out] == [("C1", 2), ("C2", 3), ("C3", 5)]
    assert out[0].attributes["note"] == "a@b.co"
    assert out[1].attributes["note"] == "x\ny"  # free text may span lines
    assert CsvSource(path).fields() == {"id", "note"}
    assert src.last_lines is not None
    assert src.last_lines.to_dict() == {
        "total": 5,
        "header": 1,
        "blank": 0,
        "accepted": 4,
        "rejected": 0,
    }


@pytest.mark.parametrize("delimiter", [";", "\t", "|"])
def test_delimiter(write: Writer, delimiter: str) -> None:
    path = write(f"id{delimiter}email{delimiter}city\nC1{delimiter}a@b.co{delimiter}Köln, DE\n")
    out = recipients(read(CsvSource(path, delimiter=delimiter)))
    assert out == [Recipient("C1", "a@b.co", attributes={"city": "Köln, DE"}, line=2)]


def test_other_encoding(write: Writer) -> None:
    path = write("id,name\nC1,Zoë\n", encoding="latin-1")
    assert recipients(read(CsvSource(path, encoding="latin-1")))[0].attributes == {"name": "Zoë"}


# -- column mapping -----------------------------------------------------------------------------


def test_columns_map_model_fields(write: Writer) -> None:
    path = write(
        "customer_id,mail,mobile,device,email,first_name\nC1,a@b.co,+1555,tok,old@b.co,Ana\n"
    )
    src = CsvSource(
        path,
        columns={"id": "customer_id", "email": "mail", "phone": "mobile", "push_token": "device"},
    )
    assert src.fields() == {"id", "email", "phone", "push_token", "first_name"}
    (r,) = recipients(read(src, ("email", "phone", "push_token")))
    assert (r.id, r.email, r.phone, r.push_token) == ("C1", "a@b.co", "+1555", "tok")
    # An unmapped column named like a model field is an attribute when the field is mapped.
    assert r.attributes == {"email": "old@b.co", "first_name": "Ana"}


def test_fields_without_optional_model_columns(write: Writer) -> None:
    path = write("id,first_name,segment\nC1,Ana,vip\n")
    assert CsvSource(path).fields() == {"id", "first_name", "segment"}


def test_fields_reads_only_the_header(write: Writer) -> None:
    # Undecodable bytes far past the header: fields() never gets there.
    body = "".join(f"C{i},x{i}@b.co\n" for i in range(20000)).encode()
    path = write(b"id,email\n" + body + b"C9,\xff\n")
    src = CsvSource(path)
    assert src.fields() == {"id", "email"}
    err = source_error(src)
    assert err.line == 20002


# -- consent ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        *[(v, True) for v in ["true", "TRUE", "True", "yes", "Yes", "y", "Y", "1", "t", "T"]],
        *[(v, True) for v in [" yes ", "\ttrue", "yEs"]],  # a tab: see below
        *[(v, False) for v in ["false", "FALSE", "no", "NO", "n", "0", "f", "F", "", "  "]],
        *[(v, False) for v in [" No ", "fAlSe"]],
    ],
)
def test_consent_spellings(write: Writer, value: str, expected: bool) -> None:
    assert parse_consent(value) is expected
    path = write(f'id,sms_ok\nC1,"{value}"\n')
    (r,) = read(CsvSource(path, consent={"sms": "sms_ok"}))
    if "\t" in value:  # a consent column is strict: no control character, not even tab
        assert isinstance(r, RejectedRow)
        assert (r.reason, r.field) == ("control_character", "sms_ok")
        return
    assert isinstance(r, Recipient)
    assert r.consent == {"sms": expected}


@pytest.mark.parametrize("value", ["2", "oui", "yes please", "-1", "nope", "tru", "1.0", "on"])
def test_bad_consent_value_rejects_row(write: Writer, value: str) -> None:
    assert parse_consent(value) is None
    path = write(f"id,e_ok,p_ok\nC1,1,0\nC2,yes,{value}\nC3,n,y\n")
    src = CsvSource(path, consent={"email": "e_ok", "push": "p_ok"})
    out = read(src)
    assert [r.line for r in out] == [2, 3, 4]
    bad = out[1]
    assert isinstance(bad, RejectedRow)
    assert (bad.reason, bad.field, bad.raw) == ("bad_consent_value", "p_ok", ("C2", "yes", value))
    assert repr(value) in bad.detail
    assert isinstance(out[2], Recipient)
    assert out[2].consent == {"email": False, "push": True}


# -- row-level rejects --------------------------------------------------------------------------


def test_empty_id_is_rejected(write: Writer) -> None:
    path = write("customer_id,email\nC1,a@b.co\n  ,b@b.co\nC3,c@b.co\n")
    out = read(CsvSource(path, columns={"id": "customer_id"}))
    assert out[1] == RejectedRow(
        3, "empty_required_field", "column 'customer_id' is empty", "id", ("  ", "b@b.co")
    )
    assert [r.id for r in recipients(out)] == ["C1", "C3"]


def test_constructor_required_fields_reject_empty_values(write: Writer) -> None:
    path = write("id,email,tier\nC1,a@b.co,gold\nC2,,gold\nC3,c@b.co,\n")
    out = read(CsvSource(path, required=("email", "tier")))
    assert [(r.line, r.field) for r in rejects(out)] == [(3, "email"), (4, "tier")]
    assert all(r.reason == "empty_required_field" for r in rejects(out))
    # Default: only id is required; an empty email is just absent.
    assert len(recipients(read(CsvSource(path)))) == 3


def test_channel_required_fields_only_need_the_column(write: Writer) -> None:
    path = write("id,email\nC1,a@b.co\nC2,\n")
    out = read(CsvSource(path), ("email",))
    assert [r.email for r in recipients(out)] == ["a@b.co", None]


@pytest.mark.parametrize(
    ("line", "fields"), [("C2,b@b.co", 2), ("C2,b@b.co,x,extra", 4), ("C2", 1)]
)
def test_wrong_field_count_is_malformed(write: Writer, line: str, fields: int) -> None:
    path = write(f"id,email,note\nC1,a@b.co,x\n{line}\nC3,c@b.co,z\n")
    out = read(CsvSource(path))
    assert out[1] == RejectedRow(
        3, "malformed_row", f"expected 3 fields, got {fields}", None, tuple(line.split(","))
    )
    assert [r.id for r in recipients(out)] == ["C1", "C3"]


# -- file-level errors --------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.csv"
    err = source_error(CsvSource(path))
    assert_names(err, path, None, None)
    assert "not found" in str(err)
    with pytest.raises(SourceError, match="not found"):
        CsvSource(path).fields()


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    err = source_error(CsvSource(tmp_path))
    assert_names(err, tmp_path, None, None)
    assert "directory" in str(err)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_permission_denied(write: Writer) -> None:
    path = write("id\nC1\n")
    path.chmod(0)
    try:
        err = source_error(CsvSource(path))
    finally:
        path.chmod(0o600)
    assert_names(err, path, None, None)
    assert "permission" in str(err)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_undecodable_bytes_name_the_line(write: Writer, newline: str) -> None:
    nl = newline.encode()
    path = write(nl.join([b"id,name", b"C1,Ana", b'C2,"multi', b'line"', b"C3,Bj\xf6rn", b""]))
    src = CsvSource(path)
    it = src.records()
    with pytest.raises(SourceError) as info:
        list(it)
    assert_names(info.value, path, 5, None)
    assert "decode" in str(info.value)
    assert "f6" in str(info.value)


def test_undecodable_bytes_beyond_the_first_chunks(write: Writer) -> None:
    rows = [f"C{i},{'é' * (i % 7)}" for i in range(30000)]
    data = ("id,name\n" + "\n".join(rows) + "\n").encode() + b"C\xc3(,x\nC9,y\n"
    path = write(data)
    err = source_error(CsvSource(path))
    assert err.line == 30002
    offset = data.index(b"C\xc3(") + 1
    assert f"byte offset {offset}" in str(err)


@pytest.mark.parametrize("bom", [b"", b"\xef\xbb\xbf"])
@pytest.mark.parametrize("shift", [None, -1, 0, 1])
def test_undecodable_byte_offset(write: Writer, bom: bytes, shift: int | None) -> None:
    # A two-byte character around the locator's 64 KiB read boundary, then a bad byte.
    head = bom + b"id,name\nC1,"
    pad = 0 if shift is None else (1 << 16) - 1 - len(head) + shift
    data = head + b"x" * pad + "é".encode() + b"\nC2,\xff\n"
    if shift == 0:
        assert data[(1 << 16) - 1 : (1 << 16) + 1] == "é".encode()
    err = source_error(CsvSource(write(data)))
    assert err.line == 3
    offset = data.index(b"\xff")
    assert f"byte offset {offset}" in str(err)


def test_undecodable_line_after_crlf_across_read_boundary(write: Writer) -> None:
    head = b"id,name\r\nC1,"
    data = head + b"x" * ((1 << 16) - 1 - len(head)) + b"\r\nC2,ok\r\nC3,\xff\r\n"
    assert data[(1 << 16) - 1 : (1 << 16) + 1] == b"\r\n"
    assert source_error(CsvSource(write(data))).line == 4


def test_undecodable_header(write: Writer) -> None:
    path = write(b"id,n\xe4me\nC1,x\n")
    with pytest.raises(SourceError) as info:
        CsvSource(path).fields()
    assert_names(info.value, path, 1, None)


@pytest.mark.parametrize(
    ("kwargs", "required", "column", "words"),
    [
        ({}, ("email",), "email", "required column 'email'"),
        ({"columns": {"email": "mail"}}, ("id",), "mail", "'mail' mapped to 'email'"),
        ({"columns": {"id": "cid"}}, (), "cid", "'cid' mapped to 'id'"),
        ({"required": ("id", "tier")}, (), "tier", "required column 'tier'"),
        ({"consent": {"sms": "sms_ok"}}, (), "sms_ok", "consent column 'sms_ok'"),
    ],
)
def test_missing_columns(
    write: Writer,
    kwargs: dict[str, object],
    required: tuple[str, ...],
    column: str,
    words: str,
) -> None:
    path = write("id,phone\nC1,+1555\n")
    err = source_error(CsvSource(path, **kwargs), required)  # type: ignore[arg-type]
    assert_names(err, path, 1, column)
    assert words in str(err)


def test_missing_id_column(write: Writer) -> None:
    path = write("customer_id,email\nC1,a@b.co\n")
    assert_names(source_error(CsvSource(path)), path, 1, "id")
    with pytest.raises(SourceError):
        CsvSource(path).fields()


def test_missing_mapped_required_column_names_the_file_column(write: Writer) -> None:
    path = write("id,name\nC1,x\n")
    err = source_error(CsvSource(path, columns={"phone": "mobile"}), ("phone",))
    assert_names(err, path, 1, "mobile")


def test_duplicate_header_names(write: Writer) -> None:
    path = write("id,email,Email ,email\nC1,a,b,c\n")
    err = source_error(CsvSource(path))
    assert_names(err, path, 1, "email")
    assert "duplicate" in str(err)
    with pytest.raises(SourceError, match="duplicate"):
        CsvSource(path).fields()


def test_empty_header_name(write: Writer) -> None:
    path = write("id,,email\nC1,x,a@b.co\n")
    err = source_error(CsvSource(path))
    assert_names(err, path, 1, None)
    assert "column 2 has no name" in str(err)


def test_unterminated_quote_names_the_line_where_the_record_starts(write: Writer) -> None:
    path = write('id,note\nC1,ok\nC2,"never\nclosed\nat all\n')
    stream = CsvSource(path).records()
    first = next(stream)  # rows before the problem are yielded
    assert isinstance(first, Recipient)
    assert first.id == "C1"
    with pytest.raises(SourceError) as info:
        list(stream)
    assert_names(info.value, path, 3, None)
    assert "unterminated" in str(info.value)


def test_bad_quoting_names_the_line(write: Writer) -> None:
    path = write('id,note\nC1,ok\n"C2"x,bad\n')
    err = source_error(CsvSource(path))
    assert_names(err, path, 3, None)
    assert "invalid CSV" in str(err)


def test_nul_byte_rejects_the_row(write: Writer) -> None:
    path = write("id,note\nC1,ok\nC2,a\x00b\n")
    (r,) = rejects(read(CsvSource(path)))
    assert (r.line, r.reason, r.field, r.raw) == (3, "control_character", "note", ("C2", "a\x00b"))
    assert r.detail == "column 'note': control character U+0000 at position 2"


@pytest.mark.parametrize("content", ["", "\ufeff", "\n\n"])
def test_empty_file(write: Writer, content: str) -> None:
    path = write(content)
    err = source_error(CsvSource(path))
    assert_names(err, path, 1, None)
    assert "empty" in str(err)
    with pytest.raises(SourceError, match="empty"):
        CsvSource(path).fields()


@pytest.mark.parametrize("content", ["id,email\n", "id,email", "id,email\r\n\r\n"])
def test_header_only(write: Writer, content: str) -> None:
    path = write(content)
    src = CsvSource(path)
    assert src.fields() == {"id", "email"}
    err = source_error(src)
    assert err.line is not None
    assert err.line >= 2
    assert_names(err, path, err.line, None)
    assert "no data rows" in str(err)


def test_all_rows_rejected_is_not_a_file_error(write: Writer) -> None:
    path = write("id,email\n,a@b.co\n")
    assert [r.reason for r in rejects(read(CsvSource(path)))] == ["empty_required_field"]


# -- constructor arguments ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "path"),
    [
        ({"delimiter": ";;"}, "delimiter"),
        ({"delimiter": ""}, "delimiter"),
        ({"delimiter": '"'}, "delimiter"),
        ({"delimiter": "\n"}, "delimiter"),
        ({"columns": {"mail": "email"}}, "columns.mail"),
        ({"columns": {"email": ""}}, "columns.email"),
        ({"consent": {"sms": " "}}, "consent.sms"),
        ({"encoding": "no-such-codec"}, "encoding"),
        ({"required": "email"}, "required"),
        ({"required": ["id", ""]}, "required"),
    ],
)
def test_bad_arguments(tmp_path: Path, kwargs: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        CsvSource(tmp_path / "x.csv", **kwargs)  # type: ignore[arg-type]
    assert info.value.path == path


def test_describe_and_protocol(write: Writer) -> None:
    path = write("id\nC1\n")
    src = CsvSource(str(path))
    assert src.describe() == str(path)
    assert isinstance(src, Source)
    assert isinstance(JsonLinesSource(path), Source)
    assert CsvSource.name == "csv"
    assert JsonLinesSource.name == "jsonl"


# -- from_config --------------------------------------------------------------------------------


def test_from_config_resolves_relative_paths(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "seg.csv").write_text("cid;mail;ok\nC1;a@b.co;yes\n")
    src = CsvSource.from_config(
        {
            "type": "csv",
            "path": "data/seg.csv",
            "columns": {"id": "cid", "email": "mail"},
            "consent": {"email": "ok"},
            "delimiter": ";",
            "required": ["id", "email"],
        },
        base_dir=tmp_path,
    )
    assert src.describe() == "data/seg.csv"
    assert read(src, ("email",)) == [
        Recipient("C1", "a@b.co", attributes={"ok": "yes"}, consent={"email": True}, line=2)
    ]
    absolute = CsvSource.from_config(
        {"path": str(tmp_path / "data" / "seg.csv"), "delimiter": ";", "columns": {"id": "cid"}},
        base_dir=Path("/nowhere"),
    )
    assert absolute.fields() == {"id", "mail", "ok"}


def test_from_config_missing_file_names_the_resolved_path(tmp_path: Path) -> None:
    src = CsvSource.from_config({"path": "gone.csv"}, base_dir=tmp_path)
    err = source_error(src)
    assert err.file == str(tmp_path / "gone.csv")


@pytest.mark.parametrize(
    ("options", "path"),
    [
        ({}, "source.path"),
        ({"path": 3}, "source.path"),
        ({"path": "x.csv", "delimiter": 1}, "source.delimiter"),
        ({"path": "x.csv", "delimiter": "::"}, "source.delimiter"),
        ({"path": "x.csv", "colums": {}}, "source.colums"),
        ({"path": "x.csv", "columns": {"mail": "email"}}, "source.columns.mail"),
        ({"path": "x.csv", "columns": {"email": 5}}, "source.columns"),
        ({"path": "x.csv", "consent": "email"}, "source.consent"),
        ({"path": "x.csv", "encoding": "klingon"}, "source.encoding"),
        ({"path": "x.csv", "required": "email"}, "source.required"),
        ({"path": "x.csv", "required": [1]}, "source.required"),
    ],
)
def test_from_config_bad_options(tmp_path: Path, options: dict[str, object], path: str) -> None:
    with pytest.raises(ConfigError) as info:
        CsvSource.from_config(options, base_dir=tmp_path)
    assert info.value.path is not None
    assert info.value.path.startswith(path)
    assert path in str(info.value)


def test_jsonl_from_config(tmp_path: Path) -> None:
    (tmp_path / "seg.jsonl").write_text('{"cid": "C1", "n": 2}\n')
    src = JsonLinesSource.from_config(
        {"type": "jsonl", "path": "seg.jsonl", "columns": {"id": "cid"}}, base_dir=tmp_path
    )
    assert src.describe() == "seg.jsonl"
    assert read(src) == [Recipient("C1", attributes={"n": "2"}, line=1)]
    with pytest.raises(ConfigError) as info:
        JsonLinesSource.from_config({"path": "x", "delimiter": ";"}, base_dir=tmp_path)
    assert info.value.path == "source.delimiter"


# -- JSON Lines -----------------------------------------------------------------------------------


def test_jsonl_records(write: Writer) -> None:
    path = write(
        '{"id": "C1", "email": " a@b.co ", "age": 41, "vip": true, "score": 1.5, "x": null}\n'
        "\n"
        '{"id": "C2", "phone": "+1555", "age": 7, "opt": "yes", "extra": "e"}\r\n',
        name="seg.jsonl",
    )
    out = read(JsonLinesSource(path))
    assert out == [
        Recipient(
            "C1",
            "a@b.co",
            attributes={"age": "41", "vip": "true", "score": "1.5", "x": ""},
            line=1,
        ),
        Recipient(
            "C2",
            phone="+1555",
            attributes={
                "age": "7",
                "vip": "",
                "score": "",
                "x": "",
                "opt": "yes",
                "extra": "e",
            },
            line=3,
        ),
    ]


def test_jsonl_rejects(write: Writer) -> None:
    path = write(
        "\ufeff"
        '{"uid": "C1", "ok": true}\n'
        '{"uid": "C2", "ok": "maybe"}\n'
        "{not json}\n"
        "[1, 2]\n"
        '{"uid": "", "ok": false}\n'
        '{"uid": "C6", "ok": 1, "tags": ["a"]}\n'
        '{"uid": "C7", "ok": 0}\n',
        name="seg.jsonl",
    )
    out = read(JsonLinesSource(path, columns={"id": "uid"}, consent={"push": "ok"}))
    assert [(r.line, getattr(r, "reason", "ok"), getattr(r, "field", "")) for r in out] == [
        (1, "ok", ""),
        (2, "bad_consent_value", "ok"),
        (3, "malformed_row", None),
        (4, "malformed_row", None),
        (5, "empty_required_field", "id"),
        (6, "malformed_row", "tags"),
        (7, "ok", ""),
    ]
    assert isinstance(out[0], Recipient)
    assert out[0].consent == {"push": True}
    assert isinstance(out[6], Recipient)
    assert out[6].consent == {"push": False}
    assert out[2] == RejectedRow(3, "malformed_row", out[2].detail, None, ("{not json}",))  # type: ignore[union-attr]
    assert "invalid JSON" in out[2].detail  # type: ignore[union-attr]


def test_jsonl_fields_and_missing_keys(write: Writer) -> None:
    path = write('\n{"cid": "C1", "mail": "a@b.co", "city": "Oslo"}\n', name="seg.jsonl")
    src = JsonLinesSource(path, columns={"id": "cid", "email": "mail"})
    assert src.fields() == {"id", "email", "city"}
    err = source_error(src, ("phone",))
    assert_names(err, path, 2, "phone")
    err = source_error(JsonLinesSource(path, consent={"sms": "sms_ok"}, columns={"id": "cid"}))
    assert_names(err, path, 2, "sms_ok")


@pytest.mark.parametrize("content", ["", "\n \n", "[1]\nnot json\n"])
def test_jsonl_without_objects(write: Writer, content: str) -> None:
    path = write(content, name="seg.jsonl")
    err = source_error(JsonLinesSource(path))
    assert_names(err, path, 1, None)
    assert "no JSON object" in str(err)
    with pytest.raises(SourceError, match="no JSON object"):
        JsonLinesSource(path).fields()


def test_jsonl_undecodable_and_missing(write: Writer, tmp_path: Path) -> None:
    path = write(b'{"id": "C1"}\n{"id": "C\xff"}\n', name="seg.jsonl")
    err = source_error(JsonLinesSource(path))
    assert_names(err, path, 2, None)
    err = source_error(JsonLinesSource(tmp_path / "missing.jsonl"))
    assert "not found" in str(err)


# -- registration ---------------------------------------------------------------------------------


def test_registered_as_builtin_plugin(tmp_path: Path) -> None:
    channels = [m for m in BUILTIN_PLUGINS if m != "campaignkit._sources"]
    pm = get_plugin_manager(block=channels, load_entrypoints=False)
    registry = Registry(pm)
    assert set(registry.sources) >= {"csv", "jsonl"}
    info = registry.sources["csv"]
    assert info.factory is CsvSource
    assert info.plugin == "campaignkit._sources"
    assert info.package == "campaignkit (built-in)"
    assert registry.source_factory("jsonl") is JsonLinesSource
    (tmp_path / "s.csv").write_text("id\nC1\n")
    src = registry.source_factory("csv").from_config({"path": "s.csv"}, base_dir=tmp_path)
    assert [r.id for r in recipients(read(src))] == ["C1"]
