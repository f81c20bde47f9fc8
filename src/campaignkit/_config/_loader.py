"""Reading a campaign file: TOML to :class:`PipelineConfig`, every problem located."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ..exceptions import ConfigError, Problem
from ._key_lines import key_lines, line_of
from ._schema import Channel, Execution, PipelineConfig, ReceiptsConfig, Schedule, SourceConfig
from ._structure import collect_options, describe, did_you_mean, known_keys, shown, unknown_key
from ._validators import ROWS_PER_CUSTOMER, check_name

__all__ = ["ConfigCheck", "check_config", "check_config_data", "load_config", "parse_config"]

T = TypeVar("T")


def _read_template_files(
    table: dict[str, Any], base_dir: Path, path: str, problems: list[Problem]
) -> dict[str, Any]:
    """Read every ``<part>_file`` into its part; a part that cannot be read is left out
    (its problem added to ``problems``)."""
    out = dict(table)
    for part in ("body", "subject", "html", "title"):
        ref = out.get(f"{part}_file")
        if ref is None:
            continue
        problem = None
        if out.get(part) is not None:
            problem = Problem(
                f"give {part!r} or {part + '_file'!r}, not both", path=f"{path}.{part}"
            )
        elif not isinstance(ref, str):
            problem = Problem(f"expected a path, got {describe(ref)}", path=f"{path}.{part}_file")
        else:
            file = (base_dir / ref).resolve()
            try:
                out[part] = file.read_text(encoding="utf-8")
            except OSError as exc:
                problem = Problem(f"cannot read {file}: {exc.strerror}", path=f"{path}.{part}_file")
            except UnicodeDecodeError:
                problem = Problem(f"{file} is not UTF-8 text", path=f"{path}.{part}_file")
        if problem is not None:  # an empty part stands in, so the rest is still checked
            problems.append(problem)
            out.pop(f"{part}_file", None)
            out[part] = out.get(part) or ""
    return out


@attrs.frozen
class ConfigCheck:
    """Every problem of a campaign file, and as much of it as could be structured.

    Attributes:
        config: the configuration with every offending value left out (defaults in
            their place, a channel that cannot be built at all omitted), so that the
            rest can still be checked; ``None`` when nothing usable is left (the file
            is not TOML, has no ``[pipeline]``, ``[source]`` or usable channel).
        problems: every problem found, in file order of discovery, each with its key
            path and (when read from a file) its file and line.
    """

    config: PipelineConfig | None
    problems: tuple[Problem, ...]


def parse_config(
    data: Mapping[str, Any], *, base_dir: Path, file: str | None = None
) -> PipelineConfig:
    """Structure a campaign mapping (a parsed TOML file) into :class:`PipelineConfig`.

    Raises:
        ConfigError: carrying every problem found (:attr:`ConfigError.problems`), each
            naming its key path.
    """
    check = check_config_data(data, base_dir=base_dir, file=file)
    if check.problems or check.config is None:
        raise ConfigError.of(check.problems, file=file)
    return check.config


def check_config_data(
    data: Mapping[str, Any], *, base_dir: Path, file: str | None = None, text: str | None = None
) -> ConfigCheck:
    """Structure a campaign mapping, collecting every problem instead of stopping at
    the first. ``text`` (the TOML the mapping was parsed from) gives the problems
    their lines."""
    problems: list[Problem] = []
    config = _Parser(base_dir, problems).parse(data)
    if config is not None:
        config = attrs.evolve(config, file=file)
    lines = key_lines(text) if text is not None else {}
    located = [
        attrs.evolve(p, file=p.file or file, line=p.line or line_of(lines, p.path))
        for p in problems
    ]
    located.sort(key=lambda p: p.line or 0)  # in file order (stable: as found otherwise)
    return ConfigCheck(config, tuple(located))


@attrs.define
class _Parser:
    """Structures a campaign mapping table by table, collecting problems."""

    base_dir: Path
    problems: list[Problem]

    def add(self, message: str, path: str | None) -> None:
        self.problems.append(Problem(message, path=path))

    def table(self, data: Any, cls: type[T], path: str) -> T | None:
        value, found = collect_options(data, cls, path=path)
        self.problems.extend(found)
        return value

    def parse(self, data: Mapping[str, Any]) -> PipelineConfig | None:
        known = ("pipeline", "source", "channels", "execution", "schedule", "receipts")
        for key in data:
            if key in known:
                continue
            if isinstance(data[key], Mapping):
                self.add(
                    f"unknown table {shown(key)}{did_you_mean(key, known)} "
                    f"(expected one of {sorted(known)})",
                    key,
                )
            elif key in known_keys(_PipelineMeta):  # written above [pipeline]
                self.add(f"unknown key {shown(key)} (it belongs in the [pipeline] table)", key)
            else:
                self.add(
                    f"unknown key {shown(key)}{did_you_mean(key, known)} (the file holds "
                    f"only the tables {sorted(known)})",
                    key,
                )
        meta = self.meta(data.get("pipeline"))
        source = self.source(data.get("source"))
        channels = self.channels(data.get("channels"))
        execution = self.table(data.get("execution", {}), Execution, "execution")
        schedule = self.table(data.get("schedule", {}), Schedule, "schedule")
        receipts = self.table(data.get("receipts", {}), ReceiptsConfig, "receipts")
        if meta is None or source is None or not channels:
            return None
        return PipelineConfig(
            name=meta.name,
            description=meta.description,
            tags=tuple(meta.tags),
            owner=meta.owner,
            source=source,
            channels=tuple(channels),
            execution=execution or Execution(),
            schedule=schedule or Schedule(),
            receipts=receipts or ReceiptsConfig(),
            base_dir=self.base_dir,
        )

    def meta(self, pipeline: Any) -> _PipelineMeta | None:
        if not isinstance(pipeline, Mapping):
            self.add("missing [pipeline] table with a name", "pipeline")
            return None
        meta = self.table(pipeline, _PipelineMeta, "pipeline")
        if meta is None:  # its problem is listed; the rest of the file is still checked
            meta = _PipelineMeta(name="unnamed")
        return meta

    def source(self, table: Any) -> SourceConfig | None:
        if not isinstance(table, Mapping):
            self.add("missing [source] table", "source")
            return None
        options = dict(table)
        rows_per_customer = options.pop("rows_per_customer", "one")
        if not isinstance(rows_per_customer, str):
            self.add(
                f"expected a string, got {describe(rows_per_customer)}", "source.rows_per_customer"
            )
            rows_per_customer = "one"
        elif rows_per_customer not in ROWS_PER_CUSTOMER:
            self.add(
                f"expected one of {', '.join(map(repr, ROWS_PER_CUSTOMER))}, "
                f"got {rows_per_customer!r}",
                "source.rows_per_customer",
            )
            rows_per_customer = "one"
        kind = options.pop("type", "csv")
        if not isinstance(kind, str):
            self.add(f"expected a string, got {describe(kind)}", "source.type")
            return None
        return SourceConfig(type=kind, options=options, rows_per_customer=rows_per_customer)

    def channels(self, table: Any) -> list[Channel]:
        if not isinstance(table, Mapping) or not table:
            self.add("at least one [channels.<name>] table is required", "channels")
            return []
        out = []
        for name, channel_table in table.items():
            channel = self.channel(str(name), channel_table)
            if channel is not None:
                out.append(channel)
        return out

    def channel(self, name: str, table: Any) -> Channel | None:
        path = f"channels.{name}"
        if not isinstance(table, Mapping):
            self.add("expected a table", path)
            return None
        table = dict(table)
        if "template" in table:
            if not isinstance(table["template"], Mapping):
                self.add("expected a table", f"{path}.template")
                del table["template"]
            else:
                table["template"] = _read_template_files(
                    dict(table["template"]), self.base_dir, f"{path}.template", self.problems
                )
        if "name" in table:  # the table's name is the channel's: not a key of its own
            known = [k for k in known_keys(Channel) if k != "name"]
            self.problems.append(unknown_key("name", known, path=path))
        table["name"] = name
        return self.table(table, Channel, path)


@attrs.frozen
class _PipelineMeta:
    name: str = attrs.field(validator=check_name)
    description: str = ""
    tags: list[str] = attrs.field(factory=list)
    owner: str = ""


def load_config(path: str | Path) -> PipelineConfig:
    """Read and structure a campaign TOML file.

    Raises:
        ConfigError: the file cannot be read, is not TOML, or does not fit the schema;
            it carries every problem of the file (:attr:`ConfigError.problems`), each
            with its key path and line.
    """
    check = check_config(path)
    if check.problems or check.config is None:
        raise ConfigError.of(check.problems, file=str(path))
    return check.config


def check_config(path: str | Path) -> ConfigCheck:
    """Read a campaign TOML file and find every problem in it (see :class:`ConfigCheck`).

    A file that cannot be read or parsed as TOML is one problem (with its line and
    column for a TOML syntax error), and nothing else is checked.
    """
    file = Path(path)
    try:
        raw = file.read_bytes()
    except OSError as exc:
        return _unusable(f"cannot read configuration: {exc.strerror}", file)
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark (Notepad) is not TOML
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        return _unusable("configuration is not UTF-8 text", file)
    except tomllib.TOMLDecodeError as exc:
        return _unusable(f"invalid TOML: {exc}", file, line=_toml_error_line(exc))
    return check_config_data(data, base_dir=file.resolve().parent, file=str(file), text=text)


def _unusable(message: str, file: Path, *, line: int | None = None) -> ConfigCheck:
    return ConfigCheck(None, (Problem(message, file=str(file), line=line),))


def _toml_error_line(exc: tomllib.TOMLDecodeError) -> int | None:
    found = re.search(r"\(at line (\d+), column \d+\)", str(exc))
    return int(found.group(1)) if found else None
