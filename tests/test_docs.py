"""The documentation stays true: every hook, config key and exit code is documented,
links resolve, and the runnable snippets run (against the loopback sandbox)."""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import types
from pathlib import Path
from typing import Any

import attrs
import pytest
from click.testing import CliRunner

import campaignkit
import test_imports
from campaignkit import ChannelSettings, ConfigError, Secret, get_plugin_manager, hookspecs
from campaignkit._config import (
    Channel,
    Execution,
    ReceiptsConfig,
    RetryPolicy,
    Schedule,
    SourceConfig,
    Template,
    parse_config,
)
from campaignkit._config._loader import _PipelineMeta
from campaignkit._models import Rate
from campaignkit._plugins import BUILTIN_PLUGINS, Registry
from campaignkit._sources import _CsvOptions, _JsonLinesOptions
from campaignkit.cli import EXIT_FAILED, EXIT_INPUT_ERROR, EXIT_OK, EXIT_PARTIAL, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def snippet(name: str, marker: str) -> str:
    """The fenced block right after ``<!-- doctest: marker ... -->`` in ``docs/name``."""
    pattern = rf"<!-- doctest: {re.escape(marker)}[^>]*-->\n```[a-z]*\n(.*?)```"
    found = re.search(pattern, read(name), re.S)
    assert found, f"no doctest block {marker!r} in docs/{name}"
    return found.group(1)


# -- hooks -------------------------------------------------------------------------------------


def hookspec_signatures() -> dict[str, str]:
    out = {}
    for name, func in inspect.getmembers(hookspecs, inspect.isfunction):
        if hasattr(func, f"{hookspecs.PROJECT_NAME}_spec"):
            params = ", ".join(inspect.signature(func).parameters)
            out[name] = f"{name}({params})"
    return out


def test_there_are_hooks_to_document() -> None:
    assert "campaignkit_register_channels" in hookspec_signatures()


@pytest.mark.parametrize("name", sorted(hookspec_signatures()))
def test_plugin_hooks_are_documented(name: str) -> None:
    """Every hookspec has a heading ``name(arg1, arg2)`` in docs/hooks.md."""
    signature = hookspec_signatures()[name]
    headings = [line for line in read("hooks.md").splitlines() if line.startswith("#")]
    assert any(signature in line for line in headings), (
        f"docs/hooks.md has no heading for {signature}"
    )


def test_documented_hooks_exist() -> None:
    documented = re.findall(r"^#+ (campaignkit_\w+\([^)]*\))", read("hooks.md"), re.M)
    assert documented
    assert set(documented) <= set(hookspec_signatures().values())


# -- configuration -------------------------------------------------------------------------------


def top_level_tables() -> list[str]:
    """The loader's own list of top-level tables, from its "unknown table" error."""
    with pytest.raises(ConfigError) as info:
        parse_config({"__nope__": {}}, base_dir=ROOT)
    listed = re.search(r"expected one of (\[.*?\])", str(info.value))
    assert listed, str(info.value)
    tables: list[str] = ast.literal_eval(listed.group(1))
    return tables


def test_every_top_level_table_is_documented() -> None:
    doc = read("configuration.md")
    tables = top_level_tables()
    assert set(tables) >= {"pipeline", "source", "schedule", "execution", "channels"}
    for table in tables:
        heading = "## `[channels.<name>]`" if table == "channels" else f"## `[{table}]`"
        assert heading in doc, f"docs/configuration.md has no section {heading}"


def option_classes() -> list[type]:
    """The attrs options classes of the built-in channel modules."""
    import importlib

    found = []
    for module_name in BUILTIN_PLUGINS:
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if isinstance(obj, type) and attrs.has(obj) and name.endswith("Options"):
                found.append(obj)
    return found


def schema_keys() -> list[tuple[str, str]]:
    classes: list[type] = [
        _PipelineMeta,
        SourceConfig,
        Channel,
        Template,
        Execution,
        RetryPolicy,
        Schedule,
        ReceiptsConfig,
        Rate,
        _CsvOptions,
        _JsonLinesOptions,
        *option_classes(),
    ]
    keys = []
    for cls in classes:
        for field in attrs.fields(cls):
            key = field.name.rstrip("_")  # from_ is spelled "from" in TOML
            if cls is Channel and key == "name":
                continue  # the table's own name
            if cls is SourceConfig and key == "options":
                continue  # the source type's own keys
            keys.append((cls.__name__, key))
    return keys


def test_builtin_option_classes_are_found() -> None:
    names = {cls.__name__ for cls in option_classes()}
    assert {"SendGridOptions", "TwilioOptions", "ExpoOptions"} <= names


@pytest.mark.parametrize(("owner", "key"), schema_keys())
def test_every_config_key_is_documented(owner: str, key: str) -> None:
    assert f"`{key}`" in read("configuration.md"), (
        f"{owner}.{key} is not documented in docs/configuration.md"
    )


# -- command line ------------------------------------------------------------------------------


def test_exit_codes_are_documented() -> None:
    doc = read("cli.md")
    help_text = CliRunner().invoke(main, ["--help"]).stdout
    for code in (EXIT_OK, EXIT_PARTIAL, EXIT_INPUT_ERROR, EXIT_FAILED):
        assert f"| `{code}` |" in doc
        assert f"  {code}  " in help_text


def test_validate_options_and_groups_are_documented() -> None:
    doc = read("cli.md")
    section = doc[doc.index("## `campaignkit validate CONFIG`") :]
    section = section[: section.index("\n## ", 1)]
    command = main.commands["validate"]  # type: ignore[attr-defined]
    for param in command.params:
        if param.name in {"verbose", "quiet"}:  # every command's, documented once
            continue
        for opt in param.opts:
            if opt.startswith("--"):
                assert f"`{opt}" in section, opt
    for group in campaignkit.exceptions.PROBLEM_GROUPS:
        assert f"`{group.capitalize()}`" in section, group


def test_every_command_is_documented() -> None:
    doc = read("cli.md")
    for name in main.commands:  # type: ignore[attr-defined]
        assert f"## `campaignkit {name}" in doc, name


def all_commands() -> list[tuple[str, Any]]:
    return [("campaignkit", main), *((f"campaignkit {n}", c) for n, c in main.commands.items())]  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", [name for name, _ in all_commands()])
def test_every_command_and_option_has_help(name: str) -> None:
    """The CLI reference (docs/cli-reference.md) is generated from the commands' help:
    nothing in it may be blank."""
    import click

    command = dict(all_commands())[name]
    assert (command.help or "").strip(), f"{name} has no help text"
    for param in command.params:
        if isinstance(param, click.Option) and not param.hidden:
            assert (param.help or "").strip(), f"{name} {param.opts[0]} has no help text"


def test_cli_reference_is_generated_from_the_commands() -> None:
    doc = read("cli-reference.md")
    directive = re.search(r"^::: mkdocs-click\n((?:    :\w+: .*\n)+)", doc, re.M)
    assert directive, "docs/cli-reference.md does not generate the reference"
    options = dict(re.findall(r":(\w+): (.*)", directive.group(1)))
    assert (options["module"], options["command"]) == ("campaignkit.cli", "main")
    assert options["prog_name"] == "campaignkit"
    import importlib

    assert getattr(importlib.import_module(options["module"]), options["command"]) is main


# -- links -------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")))
def test_relative_links_resolve(page: str) -> None:
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", read(page)):
        if re.match(r"[a-z]+:", target):
            continue
        assert (DOCS / target).resolve().exists(), f"docs/{page}: broken link {target}"


# -- runnable snippets ---------------------------------------------------------------------------


def test_getting_started_toml_campaign_runs(tmp_path: Path) -> None:
    (tmp_path / "campaign.toml").write_text(snippet("getting-started.md", "campaign.toml"))
    (tmp_path / "customers.csv").write_text(snippet("getting-started.md", "customers.csv"))
    result = CliRunner().invoke(
        main,
        ["run", str(tmp_path / "campaign.toml"), "--sandbox", "--json"],
        env={"SMS_API_TOKEN": None},
    )
    assert result.exit_code == 0, result.output
    sms = json.loads(result.stdout)["sms_campaign_results"]
    assert (sms["sent"], sms["skipped"], sms["reasons"]) == (1, 1, {"no_consent": 1})


def test_getting_started_python_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(
        ROOT / "examples" / "multi_channel_campaign",
        tmp_path / "examples" / "multi_channel_campaign",
        ignore=shutil.ignore_patterns("campaignkit-results"),
    )
    monkeypatch.chdir(tmp_path)
    code = snippet("getting-started.md", "run")
    exec(compile(code, "docs/getting-started.md", "exec"), {})
    assert capsys.readouterr().out.startswith("partial ")
    assert list((tmp_path / "campaignkit-results").iterdir())


def test_channel_plugin_example_registers_and_validates() -> None:
    module = types.ModuleType("campaignkit_chat_example")
    exec(
        compile(
            snippet("writing-a-channel-plugin.md", "define"),
            "docs/writing-a-channel-plugin.md",
            "exec",
        ),
        module.__dict__,
    )
    registry = Registry(get_plugin_manager(load_entrypoints=False, plugins=[module]))
    cls: Any = registry.channels["chat"].factory
    assert issubclass(cls, campaignkit.HttpNotifier)
    notifier = cls(ChannelSettings(channel="team", options={"room": "sales"}, token=Secret("t")))
    assert notifier.base_url == "https://chat.example.com"
    with pytest.raises(ConfigError) as info:
        cls(ChannelSettings(channel="team", options={}, token=Secret("t")))
    assert info.value.path == "channels.team.options.room"


def test_recording_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet("sandbox.md", "recording"), "docs/sandbox.md", "exec"), {})
    assert (tmp_path / "out").is_dir()


def test_source_hook_example_registers_a_working_source(tmp_path: Path) -> None:
    module = types.ModuleType("campaignkit_tsv_example")
    exec(compile(snippet("hooks.md", "tsv-source"), "docs/hooks.md", "exec"), module.__dict__)
    (tmp_path / "segment.tsv").write_text("customer_id\temail\nC1\tada@example.com\n")
    registry = Registry(get_plugin_manager(load_entrypoints=False, plugins=[module]))
    source = registry.source_factory("tsv").from_config(
        {"path": "segment.tsv", "columns": {"id": "customer_id"}}, base_dir=tmp_path
    )
    [recipient] = list(source.records())
    assert (recipient.id, recipient.email) == ("C1", "ada@example.com")


# -- the sandbox and the plugin guide -------------------------------------------------------


def sandbox_options() -> list[str]:
    command = main.commands["sandbox"]  # type: ignore[attr-defined]
    # -v/-q are every command's options, documented once in cli.md.
    common = {"--verbose", "--quiet"}
    return [
        opt
        for param in command.params
        for opt in param.opts
        if opt.startswith("--") and opt not in common
    ]


def test_every_sandbox_option_is_documented() -> None:
    """The options are in the generated CLI reference (from their help texts, checked in
    test_every_command_and_option_has_help); the sandbox guide sends readers there and
    says what the help cannot (the JSON shape, the fault options' meaning)."""
    doc = read("sandbox.md")
    options = sandbox_options()
    assert len(options) >= 17
    assert "(cli-reference.md#campaignkit-sandbox)" in doc
    assert '`{"providers": {NAME: {"url", "options", "token",' in doc
    section = doc[doc.index("## `campaignkit sandbox`") : doc.index("## The servers")]
    for option in ("--error-rate", "--rate-limit", "--drop-rate", "--token", "--sender"):
        assert f"`{option}" in section, option


def test_sandbox_counts_are_those_of_the_example(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(
        ROOT / "examples" / "multi_channel_campaign",
        tmp_path / "example",
        ignore=shutil.ignore_patterns("campaignkit-results", ".campaignkit"),
    )
    monkeypatch.chdir(tmp_path / "example")
    code = snippet("sandbox.md", "counts")
    stated = re.search(r"print\(sandbox\.counts\(\)\)\s*# (\{.*\})", code)
    assert stated, "the counts snippet states no counts"
    exec(compile(code, "docs/sandbox.md", "exec"), {})
    assert capsys.readouterr().out.strip() == stated.group(1)


def test_sandbox_console_example_is_what_the_command_prints(tmp_path: Path) -> None:
    block = re.search(
        r"## `campaignkit sandbox`.*?```console\n\$ ((?:[^\n]*\\\n)*[^\n]*)\n(.*?)```",
        read("sandbox.md"),
        re.S,
    )
    assert block
    command = shlex.split(block.group(1).replace("\\\n", " "))
    proc = subprocess.Popen(
        [sys.executable, "-m", "campaignkit", *command[1:]],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if "Sandbox ready" in line:
                break
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    port = re.compile(r"127\.0\.0\.1:\d+")
    assert [port.sub("127.0.0.1:PORT", line) for line in lines] == [
        port.sub("127.0.0.1:PORT", line) for line in block.group(2).splitlines(keepends=True)
    ]


def test_plugin_pyproject_is_complete_and_uses_the_entry_point_group() -> None:
    project = tomllib.loads(snippet("writing-a-channel-plugin.md", "pyproject"))
    example = tomllib.loads(
        (ROOT / "examples" / "campaignkit-webhook" / "pyproject.toml").read_text()
    )
    assert project["build-system"] == example["build-system"]
    for key in ("name", "version", "requires-python", "dependencies"):
        assert project["project"][key], key
    [(name, module)] = project["project"]["entry-points"][hookspecs.PROJECT_NAME].items()
    assert set(example["project"]["entry-points"]) == {hookspecs.PROJECT_NAME}
    assert project["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"] == [f"src/{module}"]
    assert name == "chat"


def test_plugin_guide_names_the_default_token_variable() -> None:
    channel = Channel(name="team", provider="chat")
    assert f"reads\n`{channel.token_variable}`" in read("writing-a-channel-plugin.md")
    assert channel.token_variable == "TEAM_API_TOKEN"
    assert re.search(
        r"^from campaignkit import .*\bStaticSource\b",
        snippet("writing-a-channel-plugin.md", "fixtures"),
        re.M,
    )


def test_plugin_guide_fixture_example_passes(tmp_path: Path) -> None:
    (tmp_path / "test_fixtures_example.py").write_text(
        snippet("writing-a-channel-plugin.md", "fixtures")
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
         "-W", "error", "test_fixtures_example.py"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def readme_snippet(marker: str) -> str:
    """The fenced block right after ``<!-- doctest: marker -->`` in README.md."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(rf"<!-- doctest: {re.escape(marker)} -->\n```[a-z]*\n(.*?)```", text, re.S)
    assert found, f"no doctest block {marker!r} in README.md"
    return found.group(1)


def test_readme_python_snippet_rehearses_in_the_sandbox(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Pasted as it is, the README's snippet sends nothing for real: no token is set, and
    everything it records is the sandbox's (its own ledger and run directories)."""
    campaign = tmp_path / "examples" / "multi_channel_campaign"
    shutil.copytree(
        ROOT / "examples" / "multi_channel_campaign",
        campaign,
        ignore=shutil.ignore_patterns("campaignkit-results", ".campaignkit"),
    )
    for variable in ("EMAIL_API_TOKEN", "SMS_API_TOKEN", "PUSH_API_TOKEN"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.chdir(tmp_path)
    code = readme_snippet("readme-python")
    exec(compile(code, "README.md", "exec"), {})
    said = re.search(r"print\(.*\)\s+# (.+)$", code.strip().splitlines()[-1])
    assert said, "the snippet's last line says what it prints"
    assert capsys.readouterr().out == said.group(1) + "\n"
    assert (campaign / ".campaignkit" / "ledger.sandbox.db").exists()
    assert not (campaign / ".campaignkit" / "ledger.db").exists()
    assert [p.name for p in (campaign / "campaignkit-results").iterdir()] == ["sandbox"]


def test_getting_started_static_source_runs_as_printed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    code = snippet("getting-started.md", "from-dicts")
    exec(compile(code, "docs/getting-started.md", "exec"), {})
    assert capsys.readouterr().out == snippet("getting-started.md", "from-dicts-output")


def test_verbosity_options_are_documented() -> None:
    doc = read("cli.md")
    for option in ("`-v`, `--verbose`", "`-q`, `--quiet`"):
        assert f"| {option} |" in doc
    result = CliRunner().invoke(main, ["runs", "--help"])
    assert "-q, --quiet" in result.stdout and "-v, --verbose" in result.stdout


# -- the site ----------------------------------------------------------------------------------


def test_every_page_is_in_the_site_navigation() -> None:
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    nav = config[config.index("\nnav:\n") : config.index("\nvalidation:")]
    listed = re.findall(r"^\s+- (?:[^:\n]+: )?([\w-]+\.md)$", nav, re.M)
    assert sorted(listed) == sorted(p.name for p in DOCS.glob("*.md"))
    sections = re.findall(r"^  - ([\w -]+):$", nav, re.M)
    assert sections == ["Tutorial", "How-to guides", "Reference", "Explanation"]


def test_api_reference_is_generated_from_the_public_modules() -> None:
    import importlib

    modules = re.findall(r"^::: ([\w.]+)$", read("api.md"), re.M)
    assert modules[0] == "campaignkit"
    # Every public module but the CLI (its reference is generated from click).
    public = set(test_imports.PUBLIC_MODULES) - {"campaignkit.cli"}
    assert public <= set(modules)
    for name in modules:
        importlib.import_module(name)


def test_site_builds_without_a_warning(tmp_path: Path) -> None:
    """``mkdocs build --strict`` (the `docs` extra; .ci/run installs it): the generated
    references hold every command, option and public name."""
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocs_click")
    pytest.importorskip("mkdocstrings_handlers.python")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    cli = (tmp_path / "cli-reference" / "index.html").read_text(encoding="utf-8")
    for name, command in all_commands():
        assert name in cli, name
        for param in command.params:
            for opt in param.opts if param.param_type_name == "option" else ():
                assert opt in cli, f"{name} {opt}"
    api = (tmp_path / "api" / "index.html").read_text(encoding="utf-8")
    for name in campaignkit.__all__:
        assert f'id="campaignkit.{name}"' in api, name
    for name in ("testing.RecordingNotifier", "testing.sandbox.Sandbox", "testing.sandbox.Faults",
                 "hookspecs.campaignkit_register_channels"):  # fmt: skip
        assert f'id="campaignkit.{name}"' in api, name
