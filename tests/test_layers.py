"""The layers hold: a package is an environment. `imageserver` (the Diffusers environment) and `demo_models` (the
engine environments' converters) never import `hub`; the import graph of the project's own modules has no cycle;
no source module grows past the size a reader can hold."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("hub", "imageserver", "demo_models", "benchmarks")
ENGINE_SIDE = ("imageserver", "demo_models")  # run where the hub's dependencies are not installed
MAX_LINES = 600


def module_name(path: Path) -> str:
    """The dotted name of a source file of the project."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, Path]:
    """Every module of the project's packages, by dotted name."""
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported(path: Path, name: str) -> set[str]:
    """Modules that `path` (module `name`) imports: at import time, inside functions, and under TYPE_CHECKING (an
    import that only a type checker runs is still a dependency: a circle hidden there is a circle of the design)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, *([base] if base else [])])
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import module`
    return out


def graph() -> dict[str, set[str]]:
    """Module -> the project's modules it imports (importing a.b.c also runs the packages a and a.b)."""
    mods = sources()
    edges: dict[str, set[str]] = {}
    for name, path in mods.items():
        targets = set()
        for imp in imported(path, name):
            parts = imp.split(".")
            for i in range(1, len(parts) + 1):
                target = ".".join(parts[:i])
                if target in mods and target != name and not name.startswith(target + "."):
                    targets.add(target)
        edges[name] = targets
    return edges


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        path.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return [*path[path.index(m):], m]
            if m not in state and (found := visit(m)):
                return found
        path.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_engine_side_packages_never_import_hub() -> None:
    mods = sources()
    bad = {name: hub for name, path in mods.items() if name.startswith(ENGINE_SIDE)
           if (hub := sorted(i for i in imported(path, name) if i == "hub" or i.startswith("hub.")))}
    assert not bad, f"engine-side modules import the hub: {bad}"


def test_the_checks_see_a_violation(tmp_path) -> None:
    """The walkers above are not vacuous: an imageserver module importing hub, and a cycle, are both found."""
    fake = tmp_path / "imageserver" / "bad.py"
    fake.parent.mkdir()
    fake.write_text("import json\nfrom hub.config import Registry\n\ndef f():\n    import hub.errors\n")
    assert {"hub.config", "hub.errors"} <= imported(fake, "imageserver.bad")
    typed = tmp_path / "imageserver" / "typed.py"
    typed.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from imageserver.worker import Job\n")
    assert "imageserver.worker" in imported(typed, "imageserver.typed")  # a type-only import is an edge too
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle() -> None:
    edges = graph()
    assert "hub.config" in edges and "hub.engines.base" in edges["hub.engines.vllm"]  # the walk sees the tree
    assert find_cycle(edges) is None, f"import cycle: {' -> '.join(find_cycle(edges) or [])}"


def test_config_is_a_leaf() -> None:
    """The registry's shapes import nothing of the hub but its errors and the route table, itself a leaf."""
    assert graph()["hub.config"] <= {"hub", "hub.errors", "hub.endpoints"}
    assert graph()["hub.endpoints"] <= {"hub"}


@pytest.mark.parametrize("module", ["imageserver", "imageserver.api", "imageserver.app", "demo_models",
                                    "demo_models.tiny_sd", "demo_models.smollm2", "demo_models.tiny_vlm",
                                    "demo_models.minilm", "demo_models.folders", "demo_models.tiny_flux2_klein",
                                    "demo_models.family_qwen", "demo_models.family_sd", "demo_models.family_flux"])
def test_engine_side_modules_import_with_hub_unimportable(module: str) -> None:
    """Imported in a fresh interpreter where `import hub` fails, as in an engine environment."""
    code = (
        "import sys, importlib.abc\n"
        "class NoHub(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'hub' or name.startswith('hub.'):\n"
        "            raise ImportError(f'{name} is not installed in an engine environment')\n"
        "sys.meta_path.insert(0, NoHub())\n"
        f"import {module}\n"
        "assert not any(m == 'hub' or m.startswith('hub.') for m in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]


def test_no_source_module_is_too_long() -> None:
    long = {name: n for name, path in sources().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_engine_names_a_runtime() -> None:
    """Engines describe what to run; the runtimes decide how (no `ctx.runtime`, no "docker"/"process" branches)."""
    found = []
    for path in sorted((ROOT / "hub" / "engines").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in ("docker", "process"):
                found.append(f"{path.name}:{node.lineno}: {node.value!r}")
            if isinstance(node, ast.Attribute) and node.attr == "runtime":
                found.append(f"{path.name}:{node.lineno}: .runtime")
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hub.runtimes"):
                found.append(f"{path.name}:{node.lineno}: imports {node.module}")
    assert not found, found
