"""The ``[source]`` table of the built-in sources: its option classes, how a table
becomes one, and a relative path resolved against the configuration's directory."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs

from .._config import structure_options
from ..exceptions import ConfigError

__all__ = ["CsvOptions", "JsonLinesOptions", "resolve_path", "structure_source", "under_source"]


@attrs.frozen
class CsvOptions:
    path: str
    columns: dict[str, str] = attrs.field(factory=dict)
    consent: dict[str, str] = attrs.field(factory=dict)
    delimiter: str = ","
    encoding: str = "utf-8"
    required: list[str] = attrs.field(factory=lambda: ["id"])
    strict_columns: list[str] = attrs.field(factory=list)


@attrs.frozen
class JsonLinesOptions:
    path: str
    columns: dict[str, str] = attrs.field(factory=dict)
    consent: dict[str, str] = attrs.field(factory=dict)
    encoding: str = "utf-8"
    required: list[str] = attrs.field(factory=lambda: ["id"])
    strict_columns: list[str] = attrs.field(factory=list)


def structure_source(options: Mapping[str, Any], cls: type[Any]) -> Any:
    """Structure the ``[source]`` table; ``type`` (the source type itself) is ignored."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"expected a table, got {type(options).__name__}", path="source")
    data = {k: v for k, v in options.items() if k != "type"}
    for key in ("required", "strict_columns"):
        if isinstance(data.get(key), str):
            raise ConfigError("expected a list of field names, got a string", path=f"source.{key}")
    return structure_options(data, cls, path="source")


def resolve_path(path: str, base_dir: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base_dir) / p


@contextlib.contextmanager
def under_source() -> Iterator[None]:
    """Re-raise a constructor's ConfigError with its key path under ``source``."""
    try:
        yield
    except ConfigError as exc:
        path = f"source.{exc.path}" if exc.path else "source"
        raise ConfigError(exc.detail, path=path) from None
