"""Imports go one way: proto <- shared (base) <- {cloud, edge runtime, router, loadtests}
<- {edge compression tooling, edge SDK} <- CLI. Every module's imports are parsed, those
inside functions included; an upward or sideways import the table does not allow fails."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parents[1]
# Folder -> import name (pyproject.toml's package-dir); generated stubs are not checked.
FOLDERS = {"shared": "tandem.shared", "cloud": "tandem.cloud", "edge": "tandem.edge",
           "router": "tandem.router", "loadtests": "tandem.loadtests"}
# Layer -> the layers its modules may import (besides their own).
ALLOWED: dict[str, set[str]] = {
    "tandem.v1": set(),
    "tandem.shared": {"tandem.v1"},
    "tandem.cloud": {"tandem.shared", "tandem.v1"},
    "tandem.edge": {"tandem.shared", "tandem.v1"},  # the on-device runtime
    "tandem.router": {"tandem.shared", "tandem.v1"},
    "tandem.loadtests": {"tandem.shared", "tandem.v1"},
    "tandem.edge.compress": {"tandem.edge", "tandem.shared", "tandem.v1"},
    "tandem.edge.sdk": {"tandem.edge", "tandem.router", "tandem.shared", "tandem.v1"},
    # The CLI is the one layer that imports everything.
    "tandem.shared.cli": {"tandem.v1", "tandem.shared", "tandem.cloud", "tandem.edge",
                          "tandem.router", "tandem.loadtests", "tandem.edge.compress",
                          "tandem.edge.sdk"},
}


def layer_of(module: str) -> str | None:
    matches = [layer for layer in ALLOWED if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


def imported(path: Path, known: set[str]) -> list[tuple[int, str]]:
    """(line, module) of every tandem import in the file, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:  # `from tandem.edge import compress` names a module
                sub = f"{node.module}.{alias.name}"
                out.append((node.lineno, sub if sub in known else node.module))
    return [(line, name) for line, name in out if name.startswith("tandem.")]


def violations() -> list[str]:
    found = modules()
    known = set(found) | {"tandem.v1"}
    bad = []
    for name, path in sorted(found.items()):
        own = layer_of(name)
        assert own is not None, name
        for line, target in imported(path, known):
            theirs = layer_of(target)
            if theirs != own and theirs not in ALLOWED[own]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {own} imports {target} ({theirs})")
    return bad


def test_imports_follow_the_layers():
    assert violations() == []


def test_the_checker_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from tandem.router.core import RouterCore\n")
    assert imported(sample, set()) == [(2, "tandem.router.core")]
