"""Suppression lists from files (campaignkit._suppression)."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit._address import AddressValidator, normalize_email, normalize_phone
from campaignkit._models import Recipient
from campaignkit._suppression import SuppressionList
from campaignkit.exceptions import SourceError


def _write(path: Path, text: str, *, encoding: str = "utf-8", newline: str = "\n") -> Path:
    path.write_bytes(text.replace("\n", newline).encode(encoding))
    return path


# -- plain text -----------------------------------------------------------------------


def test_plain_text_with_comments_and_blank_lines(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "unsubscribed.txt",
        "# unsubscribed by hand\n"
        "\n"
        "Ann@Example.COM\n"
        "   bob@example.org   # asked on 2024-05-01\n"
        "  # carol@example.net (commented out)\n"
        "dave+news@example.com\n",
    )
    sup = SuppressionList.from_files([f], "email")
    assert sup.kind == "email"
    assert sup.sources == (str(f),)
    assert len(sup) == 3
    assert set(sup) == {"ann@example.com", "bob@example.org", "dave+news@example.com"}
    # matching is on the dedupe key: any capitalisation of the normalised address
    assert "ann@example.com" in sup
    assert sup.contains("ANN@example.com")
    assert normalize_email("aNn@EXAMPLE.com") in sup
    assert "carol@example.net" not in sup
    assert "dave@example.com" not in sup  # plus-addressing is another mailbox
    assert 42 not in sup
    assert isinstance(sup, Collection)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_line_ends_and_bom(tmp_path: Path, newline: str) -> None:
    f = _write(
        tmp_path / "list.txt",
        "\ufeffann@example.com\n# comment\nbob@example.com\n",
        encoding="utf-8",
        newline=newline,
    )
    sup = SuppressionList.from_files([f], "email")
    assert set(sup) == {"ann@example.com", "bob@example.com"}


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_bad_entry_names_file_and_line(tmp_path: Path, newline: str) -> None:
    f = _write(
        tmp_path / "list.txt",
        "\ufeff# header comment\nann@example.com\n\nnot-an-address\nbob@example.com\n",
        newline=newline,
    )
    with pytest.raises(SourceError) as info:
        SuppressionList.from_files([f], "email")
    err = info.value
    assert err.file == str(f)
    assert err.line == 4
    assert "not a valid email address" in str(err)
    assert str(f) in str(err) and "line 4" in str(err)


def test_phones_in_plain_text_with_default_region(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "stop.txt",
        "(415) 555-0101\n+44 7911 123456\n0033 6 12 34 56 78\n+447700900123\n",
    )
    sup = SuppressionList.from_files([f], "phone", default_region="US")
    assert "+14155550101" in sup
    assert "+447911123456" in sup
    assert "+33612345678" in sup
    # possible-but-not-valid numbers are kept (the metadata may change)
    assert "+447700900123" in sup
    assert "+14155550102" not in sup


def test_national_phone_without_region_is_an_error(tmp_path: Path) -> None:
    f = _write(tmp_path / "stop.txt", "+14155550101\n415 555 0101\n")
    with pytest.raises(SourceError, match="no default region") as info:
        SuppressionList.from_files([f], "phone")
    assert info.value.line == 2


def test_bad_phone_is_an_error(tmp_path: Path) -> None:
    f = _write(tmp_path / "stop.txt", "+14155550101\n+1 415 555\n")
    with pytest.raises(SourceError, match="not a valid phone number") as info:
        SuppressionList.from_files([f], "phone", default_region="US")
    assert info.value.line == 2


def test_push_tokens(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "tokens.txt", "ExponentPushToken[abc]\n1dd608f2-c6a1-11e3-851d-000c2940e62c\n"
    )
    sup = SuppressionList.from_files([f], "push_token")
    assert "ExponentPushToken[abc]" in sup
    assert "ExponentPushToken[ABC]" not in sup  # tokens are exact
    bad = _write(tmp_path / "bad.txt", "ExponentPushToken[abc]\nExponentPushToken[a b]\n")
    with pytest.raises(SourceError, match="push token") as info:
        SuppressionList.from_files([bad], "push_token")
    assert info.value.line == 2


# -- CSV ------------------------------------------------------------------------------


def test_csv_with_header(tmp_path: Path) -> None:
    f = _write(
        tmp_path / "bounces.csv",
        "\ufeffEmail,reason,date\n"
        "Ann@Example.COM,hard bounce,2024-05-01\n"
        '"bob@example.org","unsubscribe, via link",2024-05-02\n'
        "\n"
        ",no email for this row,2024-05-03\n"
        "# carol@example.net,commented,2024-05-04\n",
        newline="\r\n",
    )
    sup = SuppressionList.from_files([f], "email")
    assert set(sup) == {"ann@example.com", "bob@example.org"}


def test_csv_detected_by_header_without_csv_suffix(tmp_path: Path) -> None:
    f = _write(tmp_path / "export.txt", "# exported\nphone,name\n(415) 555-0101,Ann\n")
    sup = SuppressionList.from_files([f], "phone", default_region="US")
    assert set(sup) == {"+14155550101"}


def test_csv_address_column_and_configured_column(tmp_path: Path) -> None:
    generic = _write(tmp_path / "a.csv", "id,address\n1,ann@example.com\n")
    assert set(SuppressionList.from_files([generic], "email")) == {"ann@example.com"}
    custom = _write(tmp_path / "b.csv", "id,Mobile Number\n1,+14155550101\n")
    sup = SuppressionList.from_files([custom], "phone", column="mobile number")
    assert set(sup) == {"+14155550101"}


def test_csv_missing_column(tmp_path: Path) -> None:
    f = _write(tmp_path / "a.csv", "\n\nid,name\n1,Ann\n")
    with pytest.raises(SourceError, match="no address column") as info:
        SuppressionList.from_files([f], "email")
    assert info.value.line == 3
    assert info.value.column == "email"


def test_csv_bad_entry_names_line_and_column(tmp_path: Path) -> None:
    f = _write(tmp_path / "a.csv", 'email,note\nann@example.com,"two\nlines"\nbob@example,x\n')
    with pytest.raises(SourceError, match="period") as info:
        SuppressionList.from_files([f], "email")
    assert info.value.line == 4  # the record after a two-line record
    assert info.value.column == "email"


def test_csv_row_of_wrong_width(tmp_path: Path) -> None:
    f = _write(tmp_path / "a.csv", "email,note\nann@example.com,x\nbob@example.com\n")
    with pytest.raises(SourceError, match="expected 2 fields, got 1") as info:
        SuppressionList.from_files([f], "email")
    assert info.value.line == 3


# -- files ----------------------------------------------------------------------------


def test_several_files_are_merged(tmp_path: Path) -> None:
    a = _write(tmp_path / "a.txt", "ann@example.com\n")
    b = _write(tmp_path / "b.csv", "email\nbob@example.com\nANN@example.com\n")
    sup = SuppressionList.from_files([a, str(b)], "email")
    assert set(sup) == {"ann@example.com", "bob@example.com"}
    assert sup.sources == (str(a), str(b))


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found") as info:
        SuppressionList.from_files([tmp_path / "missing.txt"], "email")
    assert info.value.file == str(tmp_path / "missing.txt")
    with pytest.raises(SourceError, match="directory"):
        SuppressionList.from_files([tmp_path], "email")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"ann@example.com\r\nbob@example.com\r\nj\xf6rg@example.com\n")
    with pytest.raises(SourceError, match="UTF-8") as info:
        SuppressionList.from_files([bad], "email")
    assert info.value.line == 3
    with pytest.raises(ValueError, match="kind"):
        SuppressionList.from_files([], "fax")  # type: ignore[arg-type]


def test_empty_file_and_no_files(tmp_path: Path) -> None:
    f = _write(tmp_path / "empty.txt", "# nothing yet\n\n")
    assert len(SuppressionList.from_files([f], "email")) == 0
    assert len(SuppressionList.from_files([], "phone")) == 0


# -- with the validator and the ledger ------------------------------------------------


def test_suppresses_what_the_validator_normalizes(tmp_path: Path) -> None:
    f = _write(tmp_path / "stop.txt", "(415) 555-0101\n")
    sup = SuppressionList.from_files([f], "phone", default_region="US")
    v = AddressValidator.for_channel("phone", "twilio", "US", region_field="country")
    for written in ("+14155550101", "+1 415-555-0101", "4155550101", "1 (415) 555 0101"):
        address = v.normalize(Recipient(id="C1", phone=written, attributes={"country": "US"}))
        assert address == "+14155550101"
        assert address in sup


def test_from_addresses_and_union() -> None:
    ledger = SuppressionList.from_addresses(["Ann@example.com"], "email")
    assert "ann@example.com" in ledger
    files = SuppressionList.from_addresses(["bob@example.com"], "email")
    both = ledger.union(files)
    assert set(both) == {"ann@example.com", "bob@example.com"}
    assert ledger.key("Ann@example.com") == "ann@example.com"
    with pytest.raises(ValueError, match="merge"):
        ledger.union(SuppressionList.from_addresses([], "phone"))


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.from_regex(r"\A[a-zA-Z0-9._+-]{1,10}@[a-zA-Z0-9]{1,8}\.(com|ORG|net)\Z"),
        min_size=1,
        max_size=5,
    ),
    st.sampled_from(["\n", "\r\n"]),
)
def test_any_listed_email_is_suppressed_in_any_case(emails: list[str], newline: str) -> None:
    import tempfile

    valid = [e for e in emails if normalize_email(e) is not None]
    with tempfile.TemporaryDirectory() as d:
        f = _write(Path(d) / "list.txt", "\n".join(emails) + "\n", newline=newline)
        if len(valid) != len(emails):
            with pytest.raises(SourceError):
                SuppressionList.from_files([f], "email")
            return
        sup = SuppressionList.from_files([f], "email")
    for e in valid:
        normalized = normalize_email(e.swapcase())
        assert normalized is not None and normalized in sup


def test_phone_keys_are_e164(tmp_path: Path) -> None:
    f = _write(tmp_path / "stop.txt", "+1 (415) 555-0101\n020 7946 0018\n")
    sup = SuppressionList.from_files([f], "phone", default_region="GB")
    assert set(sup) == {
        normalize_phone("+14155550101", default_region=None),
        normalize_phone("+442079460018", default_region=None),
    }
