"""The floor plan holds (docs/ARCHITECTURE.md), measured over the whole product tree from the code.

* imports point one way: schemas <- producers, streams <- sinks <- queries <- traceline;
* no import circles between modules, and no function-local import of our own packages;
* one settings tree: ``BaseSettings`` and the environment only in ``traceline/settings.py``;
* no product module over 800 lines; every HTTP route in ``traceline/api.py``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("schemas", "producers", "streams", "sinks", "queries", "traceline")
# a package may import packages on a lower floor (and its own)
FLOOR = {"schemas": 0, "producers": 1, "streams": 1, "sinks": 2, "queries": 3, "traceline": 4}
ALLOWED_SIDEWAYS: set[tuple[str, str]] = set()  # none: producers and streams do not import each other
MAX_LINES = 800


def _modules() -> dict[str, Path]:
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


MODULES = _modules()


def _ours(name: str) -> bool:
    return name.split(".", 1)[0] in PACKAGES


def _imports(path: Path) -> list[tuple[str, bool]]:
    """(module imported, at module level?) for each import of our packages."""
    tree = ast.parse(path.read_text(), str(path))
    top = set()
    for node in tree.body:
        top.add(id(node))
        if isinstance(node, ast.If):  # `if TYPE_CHECKING:` / `if __name__ == "__main__":`
            top.update(id(n) for n in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            # `from pkg import module` imports the module
            names += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
        for name in names:
            if _ours(name):
                found.append((name, id(node) in top))
    return found


def _resolve(name: str) -> str | None:
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


GRAPH = {mod: {_resolve(n) for n, _ in _imports(path)} - {None, mod} for mod, path in MODULES.items()}


def test_the_tree_is_read() -> None:
    assert len(MODULES) > 40
    assert "sinks.ingest" in GRAPH and "streams.intake" in GRAPH["sinks.ingest"]


def test_imports_point_down_the_layers() -> None:
    wrong = []
    for mod, deps in GRAPH.items():
        here = mod.split(".")[0]
        for dep in deps:
            there = str(dep).split(".")[0]
            if there == here or (here, there) in ALLOWED_SIDEWAYS:
                continue
            if FLOOR[there] >= FLOOR[here]:
                wrong.append(f"{mod} -> {dep}")
    assert wrong == []


def test_no_import_circles() -> None:
    state: dict[str, int] = {}
    circles = []

    def visit(mod: str, stack: list[str]) -> None:
        state[mod] = 1
        for dep in sorted(str(d) for d in GRAPH[mod]):
            if state.get(dep) == 1:
                circles.append(stack[stack.index(dep) :] + [dep])
            elif dep not in state:
                visit(dep, [*stack, dep])
        state[mod] = 2

    for mod in sorted(GRAPH):
        if mod not in state:
            visit(mod, [mod])
    assert circles == []


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_no_function_local_imports_of_our_packages(mod: str) -> None:
    assert [name for name, at_top in _imports(MODULES[mod]) if not at_top] == []


def test_one_settings_tree() -> None:
    settings = ROOT / "traceline" / "settings.py"
    offenders = []
    for mod, path in MODULES.items():
        if path == settings:
            continue
        text = path.read_text()
        for needle in ("BaseSettings", "os.environ", "os.getenv", "getenv("):
            if needle in text:
                offenders.append(f"{mod}: {needle}")
    assert offenders == []


def test_no_product_module_over_800_lines() -> None:
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_every_http_route_in_one_module() -> None:
    routes = {
        mod
        for mod, path in MODULES.items()
        if any(
            f"@{obj}.{verb}(" in path.read_text()
            for obj in ("api", "app", "router")
            for verb in ("get", "post")
        )
    }
    assert routes == {"traceline.api"}
