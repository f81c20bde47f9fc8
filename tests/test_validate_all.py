"""``campaignkit validate`` reports every problem of a campaign at once, grouped, with key
paths and lines; ``--rows`` reads the whole segment without sending or recording."""

from __future__ import annotations

import json
import tempfile
import tomllib
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest
from click.testing import CliRunner, Result
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from campaignkit import ConfigError, Pipeline, load_config
from campaignkit._config import key_lines
from campaignkit.cli import main
from campaignkit.testing.sandbox import Sandbox

SMS_TOKEN = "sms-secret-token-never-shown"
EMAIL_TOKEN = "email-secret-token-never-shown"
TOKENS = {"SMS_API_TOKEN": SMS_TOKEN, "EMAIL_API_TOKEN": EMAIL_TOKEN}

SEGMENT = "customer_id,email,phone,first_name,city\nC1,ann@example.com,+14155550100,Ann,Oslo\n"

# The campaign, one line per key so that every injected problem has a line of its own.
CAMPAIGN = """\
[pipeline]
name = "spring"

[source]
type = "csv"
path = "segment.csv"
columns = { id = "customer_id" }

[channels.sms]
provider = "twilio"
require_consent = false
@SMS_EXTRA@
[channels.sms.template]
body = "@SMS_BODY@"
[channels.sms.options]
base_url = "@TWILIO_URL@"
account_sid = "@TWILIO_SID@"
from = "@TWILIO_FROM@"

[channels.email]
provider = "sendgrid"
require_consent = false
@EMAIL_EXTRA@
[channels.email.template]
subject = "@EMAIL_SUBJECT@"
body = "Hello {{ first_name }}"
html = "@EMAIL_HTML@"
[channels.email.options]
base_url = "@SENDGRID_URL@"
from_email = "news@example.com"

[execution]
state_path = "state/ledger.db"
@EXECUTION_EXTRA@
[schedule]
@SCHEDULE_EXTRA@
"""

GOOD = {
    "@SMS_EXTRA@": "",
    "@SMS_BODY@": "Hi {{ first_name }}",
    "@EMAIL_EXTRA@": "",
    "@EMAIL_SUBJECT@": "News for {{ city }}",
    "@EMAIL_HTML@": "<p>{{ first_name }}</p>",
    "@EXECUTION_EXTRA@": "",
    "@SCHEDULE_EXTRA@": "",
    "@TWILIO_URL@": "http://127.0.0.1:9",
    "@TWILIO_SID@": "AC00000000000000000000000000000000",
    "@TWILIO_FROM@": "+15005550006",
    "@SENDGRID_URL@": "http://127.0.0.1:9",
}


@attrs.frozen
class Injected:
    """A problem put into the campaign: the edit, and what validate must report."""

    name: str
    group: str
    path: str
    edit: tuple[str, str] | None = None  # placeholder, replacement
    token: str | None = None  # the token variable left unset
    marker: str | None = None  # text on the line the problem must name
    hint: str | None = None  # a "did you mean" the message must hold


PROBLEMS = (
    Injected(
        "typo",
        "config",
        "channels.sms.concurency",
        edit=("@SMS_EXTRA@", "concurency = 2"),
        marker="concurency = 2",
        hint="did you mean 'concurrency'?",
    ),
    Injected(
        "wrong_type",
        "config",
        "channels.email.target_customers",
        edit=("@EMAIL_EXTRA@", 'target_customers = "ten"'),
        marker='target_customers = "ten"',
    ),
    Injected(
        "far_key",
        "config",
        "execution.zzz_quux",
        edit=("@EXECUTION_EXTRA@", "zzz_quux = true"),
        marker="zzz_quux = true",
    ),
    Injected(
        "bad_zone",
        "config",
        "schedule.timezone",
        edit=("@SCHEDULE_EXTRA@", 'timezone = "Mars/Olympus"'),
        marker='timezone = "Mars/Olympus"',
    ),
    Injected("sms_token", "tokens", "channels.sms.token_env", token="SMS_API_TOKEN"),
    Injected("email_token", "tokens", "channels.email.token_env", token="EMAIL_API_TOKEN"),
    Injected(
        "sms_sender",
        "channels",
        "channels.sms.options.from",
        edit=("@TWILIO_FROM@", "not a number!"),
        marker='from = "not a number!"',
    ),
    Injected(
        "sms_template",
        "templates",
        "channels.sms.template.body",
        edit=("@SMS_BODY@", "Hi {{ first_name }"),
        marker='body = "Hi {{ first_name }"',
    ),
    Injected(
        "email_template",
        "templates",
        "channels.email.template.subject",
        edit=("@EMAIL_SUBJECT@", "{% if %}"),
        marker='subject = "{% if %}"',
    ),
    Injected(
        "missing_column",
        "templates",
        "channels.email.template.html",
        edit=("@EMAIL_HTML@", "<p>{{ loyalty_tier }}</p>"),
        marker='html = "<p>{{ loyalty_tier }}</p>"',
    ),
)
BY_NAME = {p.name: p for p in PROBLEMS}


def write_campaign(
    directory: Path,
    problems: frozenset[str] | set[str] = frozenset(),
    *,
    segment: str = SEGMENT,
    sandbox: Sandbox | None = None,
) -> tuple[Path, dict[str, str]]:
    """The campaign with ``problems`` injected, and the environment to validate it in."""
    values = dict(GOOD)
    if sandbox is not None:
        twilio = sandbox.channel_options("twilio")
        values["@TWILIO_URL@"] = twilio["base_url"]
        values["@TWILIO_SID@"] = twilio["account_sid"]
        values["@TWILIO_FROM@"] = twilio["from"]
        values["@SENDGRID_URL@"] = sandbox.channel_options("sendgrid")["base_url"]
    env = (
        {
            "SMS_API_TOKEN": sandbox.servers["twilio"].token,
            "EMAIL_API_TOKEN": sandbox.servers["sendgrid"].token,
        }
        if sandbox is not None
        else dict(TOKENS)
    )
    for name in problems:
        problem = BY_NAME[name]
        if problem.edit is not None:
            values[problem.edit[0]] = problem.edit[1]
        if problem.token is not None:
            env.pop(problem.token)
    text = CAMPAIGN
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    config = directory / "campaign.toml"
    config.write_text(text, encoding="utf-8")
    (directory / "segment.csv").write_text(segment, encoding="utf-8")
    return config, env


def line_of(config: Path, marker: str) -> int:
    lines = config.read_text(encoding="utf-8").splitlines()
    (number,) = [n for n, text in enumerate(lines, 1) if text.strip() == marker]
    return number


def invoke(*args: str, env: dict[str, str]) -> Result:
    base: dict[str, str | None] = {
        "SMS_API_TOKEN": None,
        "EMAIL_API_TOKEN": None,
        "TWILIO_ACCOUNT_SID": None,
        "CAMPAIGNKIT_BLOCK_PLUGINS": None,
    }
    return CliRunner().invoke(main, list(args), env={**base, **env})


def reported(result: Result) -> list[dict[str, object]]:
    data = json.loads(result.stdout)
    problems: list[dict[str, object]] = data["problems"]
    return problems


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with Sandbox(["twilio", "sendgrid"]) as box:
        yield box


# -- every problem at once ---------------------------------------------------------------------


def test_validate_lists_every_problem_grouped_with_paths_and_lines(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path, {p.name for p in PROBLEMS})
    result = invoke("validate", str(config), env=env)
    assert result.exit_code == 2, result.output
    err = result.stderr
    assert f"campaignkit: error: {config}: {len(PROBLEMS)} problems" in err
    # Grouped: each heading once, in order, and each problem under its own heading.
    headings = [line for line in err.splitlines() if not line.startswith(" ")][1:]
    assert headings == ["Config:", "Tokens:", "Channels:", "Templates:"]
    sections: dict[str, list[str]] = {}
    current = ""
    for line in err.splitlines()[1:]:
        if line.startswith(" "):
            sections[current].append(line.strip())
        else:
            current = line[:-1].lower()
            sections[current] = []
    for problem in PROBLEMS:
        (line,) = [text for text in sections[problem.group] if f" {problem.path}: " in f" {text}"]
        where = f"{config}:{line_of(config, problem.marker)}: " if problem.marker else f"{config}: "
        assert line.startswith(where + problem.path + ": "), line
        if problem.hint is not None:
            assert problem.hint in line
    (far,) = [text for text in sections["config"] if "zzz_quux" in text]
    assert "did you mean" not in far
    assert "references field(s) the segment does not have: loyalty_tier" in err
    assert SMS_TOKEN not in result.output and EMAIL_TOKEN not in result.output


def test_did_you_mean_only_for_near_misses(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path, {"typo", "far_key"})
    text = (
        config.read_text(encoding="utf-8")
        .replace("[pipeline]\n", "[pipeline]\ndescripton = 'x'\n")
        .replace("[schedule]\n", "[schedule]\ncronn = '@daily'\n")
        .replace("[sauce]", "")
    )
    config.write_text(text + "[channelz.x]\nprovider = 'y'\n", encoding="utf-8")
    problems = {
        p["path"]: p["message"]
        for p in reported(invoke("validate", str(config), "--json", env=env))
    }
    assert (
        problems["pipeline.descripton"] == "unknown key 'descripton' (did you mean 'description'?)"
    )
    assert problems["schedule.cronn"] == "unknown key 'cronn' (did you mean 'cron'?)"
    assert problems["channels.sms.concurency"].endswith("(did you mean 'concurrency'?)")
    assert "did you mean 'channels'?" in str(problems["channelz"])
    assert problems["execution.zzz_quux"] == "unknown key 'zzz_quux'"


def test_source_and_provider_option_typos_get_suggestions(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path)
    text = config.read_text(encoding="utf-8")
    text = text.replace('path = "segment.csv"', 'pth = "segment.csv"')
    text = text.replace('from_email = "news@example.com"', 'from_emial = "news@example.com"')
    config.write_text(text, encoding="utf-8")
    result = invoke("validate", str(config), "--json", env=env)
    assert result.exit_code == 2
    problems = {(p["group"], p["path"]): p for p in reported(result)}
    assert set(problems) == {
        ("config", "source.path"),
        ("config", "source.pth"),
        ("channels", "channels.email.options.from_emial"),
        ("channels", "channels.email.options.from_email"),  # so the real key is missing
    }
    assert problems["config", "source.pth"]["message"] == (
        "unknown key 'pth' (did you mean 'path'?)"
    )
    assert problems["config", "source.pth"]["line"] == line_of(config, 'pth = "segment.csv"')
    assert problems["channels", "channels.email.options.from_emial"]["message"] == (
        "unknown key 'from_emial' (did you mean 'from_email'?)"
    )


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.sets(st.sampled_from([p.name for p in PROBLEMS])))
def test_validate_reports_exactly_the_injected_problems(chosen: set[str]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        config, env = write_campaign(Path(scratch), chosen)
        result = invoke("validate", str(config), "--json", env=env)
        data = json.loads(result.stdout)
        found = {(p["group"], p["path"]) for p in data["problems"]}
        assert found == {(BY_NAME[n].group, BY_NAME[n].path) for n in chosen}
        assert result.exit_code == (2 if chosen else 0)
        assert data["valid"] is (not chosen)
        for problem in data["problems"]:
            expected = BY_NAME[next(n for n in chosen if BY_NAME[n].path == problem["path"])]
            line = line_of(config, expected.marker) if expected.marker else None
            assert (problem["file"], problem["line"]) == (str(config), line)


def test_pipeline_problems_and_validate_raise_them_all(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path, {"sms_token", "email_token", "sms_template"})
    pipeline = Pipeline.from_file(config, env=env)
    problems = pipeline.problems()
    assert [(p.group, p.path) for p in problems] == [
        ("tokens", "channels.sms.token_env"),
        ("tokens", "channels.email.token_env"),
        ("templates", "channels.sms.template.body"),
    ]
    with pytest.raises(ConfigError) as info:
        pipeline.validate()
    assert info.value.problems == problems
    assert str(info.value).startswith(f"{config.resolve()}: 3 problems\n")


def test_load_config_collects_every_schema_problem(tmp_path: Path) -> None:
    config, _ = write_campaign(tmp_path, {"typo", "wrong_type", "far_key", "bad_zone"})
    with pytest.raises(ConfigError) as info:
        load_config(config)
    paths = [p.path for p in info.value.problems]
    assert sorted(paths) == sorted(
        [
            "channels.sms.concurency",
            "channels.email.target_customers",
            "execution.zzz_quux",
            "schedule.timezone",
        ]
    )
    for problem in info.value.problems:
        assert problem.file == str(config) and problem.line is not None
    assert str(info.value).count("\n") == 4  # the count, then one line per problem


def test_a_single_problem_reads_as_before(tmp_path: Path) -> None:
    config, _ = write_campaign(tmp_path, {"wrong_type"})
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert str(info.value) == (
        f"{config}: channels.email.target_customers: expected int, got 'ten'"
    )
    assert info.value.line == line_of(config, 'target_customers = "ten"')


def test_toml_syntax_error_is_one_problem_with_its_line(tmp_path: Path) -> None:
    config = tmp_path / "campaign.toml"
    config.write_text('[pipeline]\nname = "x"\n\n[source\n', encoding="utf-8")
    result = invoke("validate", str(config), "--json", env={})
    assert result.exit_code == 2
    (problem,) = reported(result)
    assert problem["line"] == 4 and "invalid TOML" in str(problem["message"])


def test_source_header_missing_the_address_column(tmp_path: Path) -> None:
    segment = "customer_id,email,first_name,city\nC1,ann@example.com,Ann,Oslo\n"
    config, env = write_campaign(tmp_path, {"sms_template"}, segment=segment)
    problems = reported(invoke("validate", str(config), "--json", env=env))
    assert [(p["group"], p["path"]) for p in problems] == [
        ("templates", "channels.sms.template.body"),
        ("source", None),
    ]
    assert problems[1]["file"] == str(tmp_path / "segment.csv")
    assert problems[1]["line"] == 1 and "phone" in str(problems[1]["message"])


# -- run checks the same, and sends nothing ----------------------------------------------------


def test_run_with_problems_lists_them_all_and_sends_nothing(
    tmp_path: Path, sandbox: Sandbox
) -> None:
    config, env = write_campaign(
        tmp_path, {"sms_template", "email_template", "email_token"}, sandbox=sandbox
    )
    result = invoke("run", str(config), env=env)
    assert result.exit_code == 2, result.output
    assert f"{config}: 3 problems" in result.stderr
    for path in (
        "channels.email.token_env",
        "channels.sms.template.body",
        "channels.email.template.subject",
    ):
        assert f": {path}: " in result.stderr
    assert sandbox.counts() == {"twilio": 0, "sendgrid": 0}
    assert not (tmp_path / "state").exists()


def test_run_with_schema_and_template_problems_lists_both(tmp_path: Path, sandbox: Sandbox) -> None:
    config, env = write_campaign(tmp_path, {"typo", "sms_template"}, sandbox=sandbox)
    result = invoke("run", str(config), env=env)
    assert result.exit_code == 2, result.output
    assert "Config:\n" in result.stderr and "Templates:\n" in result.stderr
    assert "channels.sms.concurency" in result.stderr
    assert "channels.sms.template.body" in result.stderr
    assert sandbox.counts() == {"twilio": 0, "sendgrid": 0}
    assert not (tmp_path / "state").exists()


# -- --rows ------------------------------------------------------------------------------------

BAD_ROWS = (
    "customer_id,email,phone,first_name,city\n"
    "C1,ann@example.com,+14155550100,Ann,Oslo\n"  # 2: fine
    "C2,not-an-email,+14155550101,Bo,Oslo\n"  # 3: bad email
    "C3,cy@example.com,12,Cy,Oslo\n"  # 4: bad phone
    "C4,d\x01i@example.com,+14155550102,Di,Oslo\n"  # 5: control character
    "C1,again@example.com,+14155550103,Ed,Oslo\n"  # 6: duplicate id
    "C6,fay@example.com,+14155550104,Fay\n"  # 7: wrong column count
    "C7,gus@example.com,+14155550105,Gus,Oslo\n"  # 8: fine
)


def test_rows_reports_every_bad_row_and_sends_nothing(tmp_path: Path, sandbox: Sandbox) -> None:
    config, env = write_campaign(tmp_path, segment=BAD_ROWS, sandbox=sandbox)
    result = invoke("validate", str(config), "--rows", env=env)
    assert result.exit_code == 0, result.output  # a run proceeds with rejects too
    out = result.stdout
    assert "Rows: segment.csv: 7 read, 4 accepted, 3 rejected" in out
    assert "segment.csv:5: email: control_character" in out
    assert "segment.csv:6: id: duplicate_id: customer id 'C1' already on line 2" in out
    assert "segment.csv:7: malformed_row: expected 5 fields, got 4" in out
    assert "segment.csv:3: [email] email: invalid_address" in out
    assert "segment.csv:4: [sms] phone: invalid_address" in out
    assert "again@example.com" not in out and "Gus" not in out  # only the offending field
    assert sandbox.counts() == {"twilio": 0, "sendgrid": 0}
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "campaignkit-results").exists()
    assert SMS_TOKEN not in result.output


def test_rows_json_strict_and_examples_cap(tmp_path: Path, sandbox: Sandbox) -> None:
    config, env = write_campaign(tmp_path, segment=BAD_ROWS, sandbox=sandbox)
    result = invoke(
        "validate", str(config), "--rows", "--json", "--examples", "1", "--strict", env=env
    )
    assert result.exit_code == 2
    rows = json.loads(result.stdout)["rows"]
    assert (rows["rows_read"], rows["accepted"], rows["rejected"]) == (7, 4, 3)
    assert rows["reasons"] == {"control_character": 1, "malformed_row": 1, "duplicate_id": 1}
    assert rows["invalid_addresses"] == {"sms": 1, "email": 1}
    assert len(rows["examples"]) == 1 and len(rows["address_examples"]) == 1
    assert rows["examples"][0] == {
        "file": "segment.csv",
        "line": 5,
        "reason": "control_character",
        "field": "email",
        "detail": rows["examples"][0]["detail"],
        "channel": None,
    }
    full = json.loads(invoke("validate", str(config), "--rows", "--json", env=env).stdout)["rows"]
    assert sorted((e["line"], e["reason"]) for e in full["examples"]) == [
        (5, "control_character"),
        (6, "duplicate_id"),
        (7, "malformed_row"),
    ]
    assert sandbox.counts() == {"twilio": 0, "sendgrid": 0}


def test_rows_needs_rows_for_its_options(tmp_path: Path) -> None:
    config, env = write_campaign(tmp_path)
    result = invoke("validate", str(config), "--strict", env=env)
    assert result.exit_code == 2
    assert "--strict and --examples need --rows" in result.output


# -- the documented examples are real output ----------------------------------------------------


def doc_block(after: str) -> str:
    """The first console block after ``after`` in docs/cli.md, without its command line."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text(encoding="utf-8")
    section = doc[doc.index("## `campaignkit validate CONFIG`") :]
    block = section[section.index(after) :].split("```console\n", 1)[1].split("```", 1)[0]
    return block.split("\n", 1)[1]


def test_documented_grouped_output_is_real(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = {"typo", "wrong_type", "sms_token", "sms_template", "missing_column"}
    _, env = write_campaign(tmp_path, chosen)
    monkeypatch.chdir(tmp_path)
    result = invoke("validate", "campaign.toml", env=env)
    assert result.exit_code == 2
    assert result.stderr == doc_block("Every problem is reported in one go")


def test_documented_rows_output_is_real(
    tmp_path: Path, sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, env = write_campaign(tmp_path, segment=BAD_ROWS, sandbox=sandbox)
    monkeypatch.chdir(tmp_path)
    result = invoke("validate", "campaign.toml", "--rows", env=env)
    assert result.exit_code == 0
    documented = doc_block("`--rows` also reads").removeprefix("...\n")
    assert result.stdout.endswith(documented)


# -- where keys are written ---------------------------------------------------------------------

WORD = st.text("abcxyz_-0", min_size=1, max_size=6)
BARE = st.builds(lambda head, tail: head + tail, st.sampled_from("abz_"), WORD)
QUOTED = st.builds(lambda a, b: f"{a} {b}", BARE, BARE)  # needs quotes in TOML
KEYS = st.one_of(BARE, QUOTED)
TRICKY_TEXT = st.sampled_from(
    ["plain", "a = 1", "[table]", "# not a comment", 'say "hi"', "x = [1, 2]", "{ y = 2 }"]
)
VALUES = st.one_of(
    st.integers(-5, 5),
    st.booleans(),
    TRICKY_TEXT,
    st.builds(lambda t: ("multiline", t), TRICKY_TEXT),  # a """ string over lines
    st.builds(lambda n: ("array", n), st.integers(0, 3)),  # an array over lines
    st.builds(lambda t: ("inline", t), TRICKY_TEXT),  # an inline table
)


def tables(depth: int) -> st.SearchStrategy[dict[str, object]]:
    leaf = st.dictionaries(KEYS, VALUES, max_size=4)
    if depth == 0:
        return leaf
    return st.tuples(leaf, st.dictionaries(KEYS, tables(depth - 1), max_size=3)).map(
        lambda pair: {**pair[0], **{k: v for k, v in pair[1].items() if k not in pair[0]}}
    )


def toml_key(key: str) -> str:
    return key if " " not in key else f'"{key}"'


def render(
    table: dict[str, object], path: list[str], out: list[str], lines: dict[str, int]
) -> dict[str, object]:
    """Write ``table`` as TOML into ``out``, recording each key's line; return the
    mapping tomllib must read back."""
    expected: dict[str, object] = {}
    subtables = {k: v for k, v in table.items() if isinstance(v, dict)}
    for key, value in table.items():
        if isinstance(value, dict):
            continue
        lines[".".join([*path, key])] = len(out) + 1
        if isinstance(value, tuple) and value[0] == "multiline":
            out.extend([f'{toml_key(key)} = """', str(value[1]), '"""'])
            expected[key] = f"{value[1]}\n"
        elif isinstance(value, tuple) and value[0] == "array":
            out.append(f"{toml_key(key)} = [")
            out.extend(f"  {i}," for i in range(int(value[1])))
            out.append("]")
            expected[key] = list(range(int(value[1])))
        elif isinstance(value, tuple):
            out.append(f"{toml_key(key)} = {{ inner = {json.dumps(value[1])} }}")
            expected[key] = {"inner": value[1]}
        else:
            out.append(f"{toml_key(key)} = {json.dumps(value)}  # {json.dumps(value)}")
            expected[key] = value
    for key, sub in subtables.items():
        assert isinstance(sub, dict)
        lines[".".join([*path, key])] = len(out) + 1
        out.append(f"[{'.'.join(toml_key(k) for k in [*path, key])}]")
        expected[key] = render(sub, [*path, key], out, lines)
    return expected


@settings(max_examples=80, deadline=None)
@given(st.dictionaries(KEYS, tables(2), min_size=1, max_size=3))
def test_key_lines_finds_every_key_where_it_is_written(document: dict[str, object]) -> None:
    out: list[str] = []
    lines: dict[str, int] = {}
    expected: dict[str, object] = {}
    for key, table in document.items():  # top-level tables only, as a campaign has
        lines[key] = len(out) + 1
        out.append(f"[{toml_key(key)}]")
        expected[key] = render(table, [key], out, lines)  # type: ignore[arg-type]
    text = "\n".join(out) + "\n"
    assert tomllib.loads(text) == expected  # the document is what we meant
    found = key_lines(text)
    for path, line in lines.items():
        assert found[path] == line, (path, text)
    assert set(found) == set(lines)  # nothing inside strings, arrays or inline tables
