"""Structuring option tables into attrs classes, collecting every problem with its key path.

One cattrs converter with strict scalar hooks (no ``"10"`` read as 10), and the
conversion of cattrs' error trees into :class:`Problem` values: unknown keys with a
suggestion (:func:`did_you_mean`), missing keys, wrong types, and validators' errors.
"""

from __future__ import annotations

import difflib
import keyword
import types
import typing
from collections.abc import Iterable, Mapping
from datetime import date, datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs
import cattrs
from cattrs.errors import ClassValidationError, ForbiddenExtraKeysError, IterableValidationError

from ..exceptions import ConfigError, Problem

__all__ = [
    "collect_options",
    "describe",
    "did_you_mean",
    "known_keys",
    "shown",
    "structure_options",
    "unknown_key",
]

T = TypeVar("T")

_converter = cattrs.Converter(forbid_extra_keys=True)


class _Mismatch(ValueError):
    """A value of the wrong type; the message is final ("expected int, got 'ten'")."""


def _strict(kind: type, names: str) -> Any:
    def hook(value: Any, _: Any) -> Any:
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, kind) and not (kind is not bool and isinstance(value, bool)):
            return value
        raise _Mismatch(f"expected {names}, got {describe(value)}")

    return hook


_converter.register_structure_hook(str, _strict(str, "string"))
_converter.register_structure_hook(int, _strict(int, "int"))
_converter.register_structure_hook(float, _strict(float, "number"))
_converter.register_structure_hook(bool, _strict(bool, "true or false"))


def _strings(value: Any, _: Any) -> list[str]:
    # Not cattrs' default, which reads a string as the list of its characters.
    if not isinstance(value, list):
        raise _Mismatch(f"expected an array of strings, got {describe(value)}")
    for item in value:
        if not isinstance(item, str):
            raise _Mismatch(f"expected string, got {describe(item)}")
    return list(value)


_converter.register_structure_hook_func(lambda t: t == list[str], _strings)


def _bool_or_string(value: Any, _: Any) -> bool | str:
    if isinstance(value, bool | str):
        return value
    raise _Mismatch(f"expected true, false or a ledger URL or path, got {describe(value)}")


_converter.register_structure_hook_func(lambda t: t == (bool | str), _bool_or_string)


def _expects_table(kind: Any) -> bool:
    """Whether values of type ``kind`` (or ``kind | None``) are written as tables."""
    options = typing.get_args(kind) if isinstance(kind, types.UnionType) else (kind,)
    return any(attrs.has(k) or typing.get_origin(k) is dict or k is dict for k in options)


def describe(value: Any) -> str:
    """A value as problems show it: a string quoted, anything else by its type."""
    return f"{value!r}" if isinstance(value, str) else type(value).__name__


def _join(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


def known_keys(cls: type) -> list[str]:
    """The keys a table structured into ``cls`` accepts, as written in TOML."""
    if not attrs.has(cls):
        return []
    names = [a.name for a in attrs.fields(cls)]
    return [n[:-1] if n.endswith("_") and keyword.iskeyword(n[:-1]) else n for n in names]


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """`` (did you mean 'X'?)`` for the known key closest to ``key``, when one is close
    enough to be a typo; else the empty string."""
    close = difflib.get_close_matches(key, sorted(set(known)), n=1, cutoff=_SIMILAR)
    return f" (did you mean {close[0]!r}?)" if close else ""


#: How similar (difflib ratio) an unknown key must be to a known one to be suggested.
_SIMILAR = 0.75


def unknown_key(key: str, known: Iterable[str], *, path: str) -> Problem:
    """The problem of an unknown key, suggesting the known key it may be a typo of."""
    return Problem(f"unknown key {shown(key)}{did_you_mean(key, known)}", path=_join(path, key))


def shown(key: str) -> str:
    """``key`` quoted; escaped (``'concurrenc\\u0443'``) when it holds anything but
    printable ASCII, so that a look-alike letter or an invisible one shows."""
    if key.isascii() and key.isprintable():
        return repr(key)
    return "'" + key.encode("ascii", "backslashreplace").decode("ascii").replace("'", "\\'") + "'"


def _cattrs_note(exc: BaseException) -> Any:
    return next((n for n in getattr(exc, "__notes__", []) if hasattr(n, "name")), None)


def _note_name(exc: BaseException) -> object | None:
    return getattr(_cattrs_note(exc), "name", None)


def _child(data: Any, name: object) -> Any:
    if isinstance(data, Mapping):
        return data.get(name)
    if isinstance(name, int) and isinstance(data, (list, tuple)) and 0 <= name < len(data):
        return data[name]
    return None


def _problems(exc: BaseException, path: str, data: Any) -> list[Problem]:
    """Every problem in a cattrs error tree, each naming its key path."""
    if isinstance(exc, ForbiddenExtraKeysError):
        known = known_keys(exc.cl)
        return [unknown_key(key, known, path=path) for key in sorted(exc.extra_fields)]
    if isinstance(exc, (ClassValidationError, IterableValidationError)):
        out: list[Problem] = []
        for sub in exc.exceptions:
            name = _note_name(sub)
            if name is None:
                out.extend(_problems(sub, path, data))
            elif isinstance(sub, KeyError):
                out.append(Problem("missing required key", path=_join(path, name)))
            elif (
                isinstance(sub, (AttributeError, TypeError))
                and _expects_table(getattr(_cattrs_note(sub), "type", None))
                and not isinstance(_child(data, name), Mapping)
            ):  # not "'int' object has no attribute 'keys'"
                got = describe(_child(data, name))
                out.append(Problem(f"expected a table, got {got}", path=_join(path, name)))
            else:
                out.extend(_problems(sub, _join(path, name), _child(data, name)))
        return out
    if isinstance(exc, ConfigError):
        return [
            attrs.evolve(p, path=".".join(x for x in (path, p.path) if x) or None)
            for p in exc.problems
        ]
    if isinstance(exc, _Mismatch):
        return [Problem(str(exc), path=path or None)]
    named = exc.args[1] if isinstance(exc, (TypeError, ValueError)) and len(exc.args) > 1 else None
    if isinstance(named, attrs.Attribute):  # attrs' own validators (in_, matches_re...)
        return [Problem(str(exc.args[0]), path=_join(path, named.name))]
    if isinstance(exc, (TypeError, ValueError)):
        return [Problem(f"invalid value {describe(data)}: {exc}", path=path or None)]
    return [Problem(str(exc), path=path or None)]


def _drop(data: dict[str, Any], parts: list[str]) -> bool:
    """Remove the value at ``parts`` (relative key path) from ``data`` so that
    structuring can go on without it; a value inside a list drops the whole list.
    Whether anything was removed."""
    node: Any = data
    for i, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            return False
        if i == len(parts) - 1 or isinstance(node[part], list):
            del node[part]
            return True
        node[part] = dict(node[part]) if isinstance(node[part], Mapping) else node[part]
        node = node[part]
    return False


def collect_options(data: Any, cls: type[T], *, path: str) -> tuple[T | None, tuple[Problem, ...]]:
    """Structure ``data`` into ``cls`` and find every problem on the way.

    Returns the structured value (``None`` when a problem leaves nothing usable, such
    as a missing required key) and every problem, each naming its key path under
    ``path``. A value with a problem is left out (its default applies) so that the
    rest of the table is still checked, validators included.
    """
    if not isinstance(data, Mapping):
        return None, (Problem(f"expected a table, got {describe(data)}", path=path),)
    data = dict(data)
    renamed: dict[str, str] = {}
    # Keys spelled as the attribute (``from_``) are unknown: the key is ``from``.
    spelled = [k for k in data if k.endswith("_") and keyword.iskeyword(k[:-1])]
    early = tuple(unknown_key(k, known_keys(cls), path=path) for k in spelled)
    for key in spelled:
        del data[key]
    if attrs.has(cls):
        names = {a.name for a in attrs.fields(cls)}
        # problems name ``from``, never ``from_``, whether the key is written or missing
        renamed = {n: n[:-1] for n in names if n.endswith("_") and keyword.iskeyword(n[:-1])}
        for key in list(data):
            if keyword.iskeyword(key) and f"{key}_" in names:
                data[f"{key}_"] = data.pop(key)
    problems: list[Problem] = []
    seen = set()
    flagged: set[str | None] = set()
    while True:
        try:
            return _converter.structure(data, cls), early + _renamed(problems, renamed, path)
        except Exception as exc:  # cattrs raises several kinds
            found = [
                p
                for p in _problems(exc, path, data)
                if (p.path, p.message) not in seen
                # a value left out for its problem is not also "missing"
                and not (p.message.startswith("missing required key") and p.path in flagged)
            ]
            progress = False
            for problem in found:
                seen.add((problem.path, problem.message))
                flagged.add(problem.path)
                problems.append(problem)
                relative = (problem.path or "")[len(path) + 1 :] if path else problem.path or ""
                progress = _drop(data, relative.split(".")) or progress
            if not progress:
                problems += [p for p in _field_problems(data, cls, path) if p.path not in flagged]
                return None, early + _renamed(problems, renamed, path)


def _field_problems(data: Mapping[str, Any], cls: type, path: str) -> list[Problem]:
    """What the field validators of ``cls`` say of the values in ``data``, each value
    checked on its own: when a required key is missing no instance runs them."""
    if not attrs.has(cls):
        return []
    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve here: no such check
        return []
    out: list[Problem] = []
    for field in attrs.fields(cls):
        if field.validator is None or field.name not in data:
            continue
        try:
            value = _converter.structure(data[field.name], hints[field.name])
        except Exception:  # noqa: S112 - a type problem is reported by structuring
            continue
        try:
            field.validator(None, field, value)
        except (ConfigError, TypeError, ValueError) as exc:
            out.extend(_problems(exc, path, data))
    return out


def _renamed(problems: list[Problem], renamed: Mapping[str, str], path: str) -> tuple[Problem, ...]:
    """Problems naming keys as written (``from``), not as attributes (``from_``)."""
    out = []
    for problem in problems:
        for attr, key in renamed.items():
            head = _join(path, attr)
            if problem.path is not None and (
                problem.path == head or problem.path.startswith(head + ".")
            ):
                problem = attrs.evolve(problem, path=_join(path, key) + problem.path[len(head) :])
        out.append(problem)
    return tuple(out)


def structure_options(data: Mapping[str, Any], cls: type[T], *, path: str) -> T:
    """Structure a mapping into attrs class ``cls``, raising :class:`ConfigError`
    that names the offending key under ``path`` (e.g. ``channels.sms.options.from``);
    with several problems the error carries them all (:attr:`ConfigError.problems`).

    Unknown keys are errors (suggesting the known key a near miss may be a typo of).
    A key that is a Python keyword (``from``) fills the attribute of the same name with
    a trailing underscore (``from_``); errors name the key as written.
    """
    value, problems = collect_options(data, cls, path=path)
    if problems or value is None:
        raise ConfigError.of(problems or (Problem("invalid table", path=path),))
    return value


def _structure_datetime(value: Any, _: Any) -> datetime:
    # Naive values stay naive here: Schedule reads them in its own time zone.
    if isinstance(value, datetime):
        return value
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            raise _Mismatch(f"expected an ISO 8601 date-time, got {value!r}") from None
    raise _Mismatch(f"expected a date-time, got {describe(value)}")


_converter.register_structure_hook(datetime, _structure_datetime)
_converter.register_structure_hook(Path, lambda v, _: Path(v))
