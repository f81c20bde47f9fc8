"""Hostile campaign files against ``validate``: where the TOML key locator must still
find the line, messages that must read as the schema (not as Python), look-alike keys,
and values that must never be printed (a token written as ``token_env``)."""

from __future__ import annotations

import json
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import Result
from hypothesis import given, settings
from hypothesis import strategies as st

from campaignkit._config import key_lines
from campaignkit.testing.sandbox import Sandbox
from test_validate_all import invoke, write_campaign


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(["twilio", "sendgrid"]) as box:
        yield box


# -- the key locator ------------------------------------------------------------------------


def toml_string(text: str) -> str:
    """``text`` as a TOML basic string: escapes where TOML needs them, any other
    character (U+2028, NEL, non-ASCII letters) as it is."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif (ord(ch) < 0x20 and ch != "\t") or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


# Text holding what TOML reads as one line but str.splitlines() as several, quotes,
# backslashes and brackets.
TRICKY = st.text(
    st.sampled_from(['a', ' ', '"', "'", "\\", "[", "]", "{", "#", "=", "\u2028", "\x85", "é"]),
    max_size=12,
)
# Keys TOML must quote: look-alike letters, escapes, spaces.
KEY = st.one_of(
    st.text("abz_", min_size=1, max_size=5),
    st.text(
        st.sampled_from(["a", "\u0443", "\u00e9", " ", "\\", '"', "'", "\u2028"]),
        min_size=1,
        max_size=5,
    ),
)


def value_lines(kind: str, text: str) -> list[str]:
    body = text.replace("\\", "\\\\").replace('"', '\\"')
    if kind == "basic":
        return [toml_string(text)]
    if kind == "multiline":  # escaped quotes in a multi-line string
        return ['"""', body, body + '"""']
    if kind == "in_array":  # a multi-line string inside a multi-line array
        return [f'[ """{body}', f'{body}""", {toml_string(text)} ]']
    return [f"{toml_string(text)}  # {text}".rstrip()]  # a comment after it


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(KEY, st.sampled_from(["basic", "multiline", "in_array", "comment"]), TRICKY),
        min_size=1,
        max_size=6,
        unique_by=lambda t: t[0],
    )
)
def test_key_lines_counts_lines_as_toml_does(entries: list[tuple[str, str, str]]) -> None:
    out = ["[table]"]
    expected = {"table": 1}
    for key, kind, text in entries:
        lines = value_lines(kind, text)
        expected[f"table.{key}"] = len(out) + 1
        out.append(f"{toml_string(key)} = {lines[0]}")
        out.extend(lines[1:])
    document = "\n".join(out) + "\n"
    read = tomllib.loads(document)["table"]
    assert set(read) == {key for key, _, _ in entries}  # the document is what we meant
    assert key_lines(document) == expected, document


def test_key_lines_tables_written_only_as_prefixes() -> None:
    document = (
        "[channels]\n"
        'sms.provider = "twilio"\n'  # 2: channels.sms first appears here
        "[pipeline.meta.deep]\n"  # 3: pipeline.meta only as a prefix
        "x = 1\n"
        "[pipeline]\n"  # 5: written itself later: that is its line
    )
    found = key_lines(document)
    assert found["channels.sms"] == 2
    assert found["pipeline.meta"] == 3
    assert found["pipeline"] == 5


# -- the CLI ------------------------------------------------------------------------------------


def problems_of(result: Result) -> dict[str, dict[str, object]]:
    return {str(p["path"]): p for p in json.loads(result.stdout)["problems"]}


def test_a_line_separator_in_a_value_does_not_shift_the_lines(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path)
    text = config.read_text(encoding="utf-8")
    text = text.replace(
        '[pipeline]\nname = "spring"\n',
        '[pipeline]\nname = "spring"\ndescription = "Spring\u2028sale"  # \x85\n',
    )
    text = text.replace("require_consent = false\n", "require_consent = false\nconcurency = 2\n", 1)
    config.write_text(text, encoding="utf-8")
    result = invoke("validate", str(config), "--json", env=env)
    assert result.exit_code == 2
    (number,) = [n for n, line in enumerate(text.split("\n"), 1) if line == "concurency = 2"]
    assert problems_of(result)["channels.sms.concurency"]["line"] == number


def test_a_channel_written_as_dotted_keys_is_located_where_it_is_written(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path)
    text = config.read_text(encoding="utf-8") + '\n[channels]\npush.template.body = "hi"\n'
    config.write_text(text, encoding="utf-8")
    result = invoke("validate", str(config), "--json", env=env)
    number = text.split("\n").index('push.template.body = "hi"') + 1
    assert problems_of(result)["channels.push.provider"]["line"] == number  # not [channels]


def test_a_look_alike_key_is_shown_escaped_and_located(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path)
    text = config.read_text(encoding="utf-8")
    # U+0443 CYRILLIC SMALL LETTER U looks like "y"
    text = text.replace(
        "require_consent = false\n", 'require_consent = false\n"concurrenc\u0443" = 2\n', 1
    )
    config.write_text(text, encoding="utf-8")
    result = invoke("validate", str(config), "--json", env=env)
    problem = problems_of(result)["channels.sms.concurrenc\u0443"]
    assert problem["message"] == "unknown key 'concurrenc\\u0443' (did you mean 'concurrency'?)"
    assert problem["line"] == text.split("\n").index('"concurrenc\u0443" = 2') + 1


def test_wrong_shapes_read_as_the_schema_not_as_python(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path)
    text = config.read_text(encoding="utf-8").replace(
        "require_consent = false\n",
        "require_consent = false\n"
        "frequency_cap = 3\n"
        "quiet_hours = []\n"
        'rate = "fast"\n'
        'suppression_files = "optouts.txt"\n',
        1,
    )
    text = text.replace("[channels.sms.options]\n", "[channels.sms.other]\n")
    config.write_text(text, encoding="utf-8")
    (tmp_path / "optouts.txt").write_text("+14155550100\n", encoding="utf-8")
    result = invoke("validate", str(config), "--json", env=env)
    found = {path: p["message"] for path, p in problems_of(result).items()}
    assert found["channels.sms.frequency_cap"] == "expected a table, got int"
    assert found["channels.sms.quiet_hours"] == "expected a table, got list"
    assert found["channels.sms.rate"] == "expected a table, got 'fast'"
    # not read as the list of its characters ("o", "p", "t" ...)
    assert found["channels.sms.suppression_files"] == (
        "expected an array of strings, got 'optouts.txt'"
    )


def test_a_value_with_a_problem_is_not_also_missing(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path)
    text = config.read_text(encoding="utf-8").replace(
        "require_consent = false\n",
        "require_consent = false\nfrequency_cap = { max_messages = 0 }\n",
        1,
    )
    config.write_text(text, encoding="utf-8")
    result = invoke("validate", str(config), "--json", env=env)
    messages = [
        p["message"]
        for p in json.loads(result.stdout)["problems"]
        if p["path"] == "channels.sms.frequency_cap.max_messages"
    ]
    assert messages == ["expected a positive number, got 0"]


def test_a_missing_suppression_list_names_its_key_and_line(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path)
    text = config.read_text(encoding="utf-8").replace(
        "require_consent = false\n",
        'require_consent = false\nsuppression_files = ["optouts.txt"]\n',
        1,
    )
    config.write_text(text, encoding="utf-8")
    result = invoke("validate", str(config), env=env)
    assert result.exit_code == 2
    number = text.split("\n").index('suppression_files = ["optouts.txt"]') + 1
    missing = tmp_path / "optouts.txt"
    assert result.stderr == (
        f"campaignkit: error: {config}:{number}: channels.sms.suppression_files: "
        f"{missing}: suppression list not found\n"
    )


TOKEN_AS_NAME = "SG.rtvalidateAAAAAAAAAAAA.BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB"


def test_a_token_written_as_token_env_is_never_printed(tmp_path: Path, sandbox: Sandbox) -> None:
    config, env = write_campaign(tmp_path, sandbox=sandbox)
    text = config.read_text(encoding="utf-8").replace(
        '[channels.email]\nprovider = "sendgrid"\n',
        f'[channels.email]\nprovider = "sendgrid"\ntoken_env = "{TOKEN_AS_NAME}"\n',
    )
    config.write_text(text, encoding="utf-8")
    env.pop("EMAIL_API_TOKEN")
    for args in (
        ["validate", str(config)],
        ["validate", str(config), "--json"],
        ["run", str(config)],
        ["run", str(config), "--dry-run"],
    ):
        result = invoke(*args, env=env)
        assert TOKEN_AS_NAME not in result.output, args
        assert "rtvalidate" not in result.output, args
    result = invoke("validate", str(config), env=env)
    assert result.exit_code == 2
    assert "channels.email.token_env: expected an environment variable name" in result.stderr
    assert sandbox.counts() == {"twilio": 0, "sendgrid": 0}
    assert not (tmp_path / "state").exists()


def test_a_bad_pipeline_name_does_not_hide_the_other_problems(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path, {"sms_template", "email_token"})
    text = config.read_text(encoding="utf-8").replace('name = "spring"', 'name = "Spring-Sale"')
    config.write_text(text, encoding="utf-8")
    result = invoke("validate", str(config), "--json", env=env)
    assert result.exit_code == 2
    assert set(problems_of(result)) == {
        "pipeline.name",
        "channels.sms.template.body",
        "channels.email.token_env",
    }


def test_a_file_saved_with_a_byte_order_mark_and_crlf_is_read(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path, {"wrong_type"})
    text = config.read_text(encoding="utf-8")
    config.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode("utf-8"))
    result = invoke("validate", str(config), "--json", env=env)
    assert result.exit_code == 2
    number = text.split("\n").index('target_customers = "ten"') + 1
    problems = problems_of(result)
    assert list(problems) == ["channels.email.target_customers"]  # not "invalid TOML"
    assert problems["channels.email.target_customers"]["line"] == number


@pytest.mark.parametrize(
    ("problem", "path"),
    [
        ("sms_sender", "channels.sms.options.from"),  # a ConfigError
        ("sms_template", "channels.sms.template.body"),  # a TemplateError
    ],
)
def test_run_with_one_problem_names_its_line_as_validate_does(
    tmp_path: Path, sandbox: Sandbox, problem: str, path: str
) -> None:
    config, env = write_campaign(tmp_path, {problem}, sandbox=sandbox)
    checked = invoke("validate", str(config), env=env)
    result = invoke("run", str(config), env=env)
    assert result.exit_code == checked.exit_code == 2
    assert result.stderr == checked.stderr  # campaignkit: error: FILE:LINE: key.path: ...
    assert result.stderr.startswith(f"campaignkit: error: {config}:")
    assert f": {path}: " in result.stderr
    assert sandbox.counts() == {"twilio": 0, "sendgrid": 0}
    assert not (tmp_path / "state").exists()


def test_a_name_key_in_a_channel_table_is_not_silently_ignored(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path)
    text = config.read_text(encoding="utf-8").replace(
        '[channels.sms]\nprovider = "twilio"\n',
        '[channels.sms]\nprovider = "twilio"\nname = "text_messages"\n',
    )
    config.write_text(text, encoding="utf-8")
    result = invoke("validate", str(config), "--json", env=env)
    assert result.exit_code == 2
    problem = problems_of(result)["channels.sms.name"]
    assert problem["message"] == "unknown key 'name'"
    assert problem["line"] == text.split("\n").index('name = "text_messages"') + 1


def test_a_key_written_above_every_table_is_called_a_key(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path)
    text = 'name = "spring"\nchanels = 1\n' + config.read_text(encoding="utf-8")
    config.write_text(text, encoding="utf-8")
    result = invoke("validate", str(config), "--json", env=env)
    found = problems_of(result)
    assert found["name"]["message"] == "unknown key 'name' (it belongs in the [pipeline] table)"
    assert found["name"]["line"] == 1
    assert str(found["chanels"]["message"]).startswith(
        "unknown key 'chanels' (did you mean 'channels'?)"
    )
    assert found["chanels"]["line"] == 2
