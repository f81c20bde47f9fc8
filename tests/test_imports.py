"""The house rules of the package's imports, and its public API as a snapshot.

* No module imports another module's private name (``from ._x import _helper``):
  what two modules share is public in the module that owns it.
* No import cycle between campaignkit's modules, counting imports inside functions
  and under ``TYPE_CHECKING`` (a cycle hidden that way is still a cycle to a reader).
* The public names (``__all__`` of the public modules) change only deliberately:
  update ``tests/public_api.txt`` with ``python tests/test_imports.py > tests/public_api.txt``.
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import attrs
import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
SNAPSHOT = Path(__file__).with_name("public_api.txt")
PUBLIC_MODULES = (
    "campaignkit",
    "campaignkit.cli",
    "campaignkit.exceptions",
    "campaignkit.hookspecs",
    "campaignkit.integrations.tasks",
    "campaignkit.options",
    "campaignkit.receipts",
    "campaignkit.testing",
    "campaignkit.testing.sandbox",
)


@attrs.frozen
class Module:
    name: str
    path: Path
    package: bool


@attrs.frozen
class Import:
    importer: str
    module: str  # the campaignkit module imported from
    name: str  # the name imported from it ("" for ``import x``)
    line: int


def modules() -> dict[str, Module]:
    found = {}
    for path in sorted((SRC / "campaignkit").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        package = parts[-1] == "__init__"
        if package:
            parts.pop()
        found[".".join(parts)] = Module(".".join(parts), path, package)
    return found


def imports(module: Module) -> Iterator[Import]:
    tree = ast.parse(module.path.read_text(encoding="utf-8"), str(module.path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("campaignkit"):
                    yield Import(module.name, alias.name, "", node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.name.split(".")
                if not module.package:
                    base.pop()
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("campaignkit"):
                for alias in node.names:
                    yield Import(module.name, target, alias.name, node.lineno)


def edges() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for module in known.values():
        for imp in imports(module):
            sub = f"{imp.module}.{imp.name}"
            graph[module.name].add(sub if sub in known else imp.module)
    return graph


def test_no_module_imports_another_modules_private_name() -> None:
    known = modules()
    private = [
        f"{m.path.relative_to(SRC)}:{imp.line}: {imp.name} from {imp.module}"
        for m in known.values()
        for imp in imports(m)
        if imp.name.startswith("_")
        and not imp.name.startswith("__")
        and f"{imp.module}.{imp.name}" not in known  # a private *module* is fine
        and imp.module != m.name
    ]
    assert private == []


def test_there_is_no_import_cycle() -> None:
    graph = edges()
    state: dict[str, int] = {}  # 1 on the stack, 2 done
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if nxt == node or nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checks_can_fail(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The two checks above see what they are meant to see."""
    pkg = tmp_path / "campaignkit"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "_a.py").write_text("from ._b import _helper\n")
    (pkg / "_b.py").write_text("def f():\n    from ._a import x\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", tmp_path)
    with pytest.raises(AssertionError, match=r"_helper from campaignkit\._b"):
        test_no_module_imports_another_modules_private_name()
    with pytest.raises(AssertionError, match=r"campaignkit\._a"):
        test_there_is_no_import_cycle()


def public_api() -> str:
    lines = []
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert exported is not None, f"{name} has no __all__"
        lines.append(f"{name}: {', '.join(sorted(exported))}")
    return "\n".join(lines) + "\n"


def test_public_api_matches_the_snapshot() -> None:
    assert public_api() == SNAPSHOT.read_text(encoding="utf-8"), (
        "the public API changed; if deliberately: python tests/test_imports.py > "
        "tests/public_api.txt"
    )


def test_every_exported_name_exists() -> None:
    for name in PUBLIC_MODULES:
        module = importlib.import_module(name)
        for exported in module.__all__:
            assert hasattr(module, exported), f"{name}.{exported}"


if __name__ == "__main__":
    sys.stdout.write(public_api())
