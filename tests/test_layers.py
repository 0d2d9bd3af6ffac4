"""The package is layered: every import runs down the declared order, never up or sideways.

    cli ─► host ─► sync ─► manifest | server | web ─► base

A package may import its own modules and any package on a lower layer; packages on one layer
(manifest, server, web) know nothing of each other. Every import counts: module level, inside a
function, and the "package.module:function" strings the command line loads handlers from.
The package root (`library_syncer/__init__.py`, the version) imports nothing and may be imported
by anyone; `__main__.py` stands on the cli layer.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "library_syncer"
PACKAGE = "library_syncer"

# Top to bottom. A fleet piece joins the package whose layer it fits (see docs/design.md).
LAYERS: list[set[str]] = [
    {"cli"},
    {"host"},
    {"sync"},
    {"manifest", "server", "web"},
    {"base"},
]
LAYER_OF = {package: index for index, layer in enumerate(LAYERS) for package in layer}
HANDLER = re.compile(rf"^{PACKAGE}(\.\w+)+:\w+$")


def _modules() -> list[Path]:
    return sorted(ROOT.rglob("*.py"))


def _name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _area(module: str) -> str | None:
    """The top-level package a module belongs to (None: the package root itself)."""
    parts = module.split(".")
    if len(parts) < 2:
        return None
    return "cli" if parts[1] == "__main__" else parts[1]


def _imports(module: str, source: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute module) for every import of this package in a module's source."""
    package = module if is_package else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            # `from pkg import mod` imports pkg.mod: judge the deepest name that is a module.
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                known = (ROOT.parent / sub.replace(".", "/")).with_suffix(".py").exists() or \
                    (ROOT.parent / sub.replace(".", "/") / "__init__.py").exists()
                found.append((node.lineno, sub if known else target))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and HANDLER.match(node.value):
            found.append((node.lineno, node.value.split(":")[0]))
    return [(line, name) for line, name in found
            if name == PACKAGE or name.startswith(PACKAGE + ".")]


def _violations(path: Path, module: str | None = None, source: str | None = None) -> list[str]:
    module = module or _name(path)
    here = _area(module)
    problems = []
    for line, target in _imports(module, source or path.read_text(), path.name == "__init__.py"):
        there = _area(target)
        if there is None or there == here:
            continue
        where = f"{path.relative_to(ROOT.parent)}:{line}: {here} imports {target}"
        if here is None:
            problems.append(f"{where} (the package root imports nothing)")
        elif here not in LAYER_OF or there not in LAYER_OF:
            problems.append(f"{where} (a package on no layer: add it to LAYERS)")
        elif LAYER_OF[there] == LAYER_OF[here]:
            problems.append(f"{where} (sideways: {here} and {there} share a layer)")
        elif LAYER_OF[there] < LAYER_OF[here]:
            problems.append(f"{where} (upward: {there} stands above {here})")
    return problems


def test_every_package_is_on_a_layer() -> None:
    packages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").exists()}
    assert packages == set(LAYER_OF), "add the new package to LAYERS (and docs/design.md)"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_run_down_the_layers(path: Path) -> None:
    assert _violations(path) == []


def test_the_check_sees_a_violation() -> None:
    """The rule is not vacuous: upward (also inside a function) and sideways are caught."""
    upward = _violations(ROOT / "base" / "probe.py", f"{PACKAGE}.base.probe",
                         "from ..sync import run\n\ndef f():\n    from ..web import caddy\n")
    assert [v.split(" (")[1] for v in upward] == [
        "upward: sync stands above base)", "upward: web stands above base)"]
    sideways = _violations(ROOT / "manifest" / "probe.py", f"{PACKAGE}.manifest.probe",
                           "import library_syncer.server.sshd\n")
    assert len(sideways) == 1 and "sideways: manifest and server share a layer" in sideways[0]
    handler = _violations(ROOT / "sync" / "probe.py", f"{PACKAGE}.sync.probe",
                          'SPEC = "library_syncer.cli.sync:sync"\n')
    assert len(handler) == 1 and "upward: cli stands above sync" in handler[0]
