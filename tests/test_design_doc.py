"""docs/design.md's module table matches the tree: every module under library_syncer/ has its
row under its package's heading, and every row names a module that exists. A module added
without a row, or removed with its row left behind, fails here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "library_syncer"
DOC = ROOT / "docs" / "design.md"
ROW = re.compile(r"^\| (?P<what>.+?) \|(?P<job>.*)\|$")
HEADING = re.compile(r"^\*\*(?P<package>\w+)/\*\*$")


def _table() -> list[tuple[str | None, str, str]]:
    """(package heading above it, first cell, job) for each row of "Modules, one job each"."""
    section = DOC.read_text().split("## Modules, one job each", 1)[1].split("\n## ", 1)[0]
    rows, package = [], None
    for line in section.splitlines():
        match = ROW.match(line)
        if not match or set(match["what"]) <= set("-|") or match["what"] == "module":
            continue
        heading = HEADING.match(match["what"])
        if heading:
            package = heading["package"]
            continue
        rows.append((package, match["what"], match["job"].strip()))
    return rows


def _named(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def _modules() -> set[str]:
    """Every module with a job of its own: package __init__.py files and `__main__.py` are
    described in the page's prose, not in the table (see the test below)."""
    return {p.relative_to(PACKAGE).as_posix() for p in PACKAGE.rglob("*.py")
            if p.name != "__init__.py" and p.relative_to(PACKAGE).as_posix() != "__main__.py"}


def test_every_module_has_a_row_and_every_row_a_module() -> None:
    rows = [(package, _named(what)[0] if _named(what) else what, job)
            for package, what, job in _table()]
    named = [module for _, module, _ in rows]
    missing = sorted(_modules() - set(named))
    assert not missing, (f"docs/design.md: no row for {', '.join(missing)} in \"Modules, one "
                         f"job each\" (add one: `package/module.py` | its one job)")
    stale = sorted(set(named) - _modules())
    assert not stale, f"docs/design.md: rows for modules that do not exist: {', '.join(stale)}"
    twice = sorted({m for m in named if named.count(m) > 1})
    assert not twice, f"docs/design.md: more than one row for {', '.join(twice)}"
    for package, module, job in rows:
        assert module.split("/")[0] == package, \
            f"docs/design.md: the row of {module} stands under **{package}/**"
        assert job, f"docs/design.md: the row of {module} says nothing of its job"


def test_what_a_row_names_besides_its_module_exists() -> None:
    for _, what, _ in _table():
        module, *also = _named(what)
        for extra in also:  # e.g. `host/demo.py` (+ `demo_data/`)
            assert (PACKAGE / module).parent.joinpath(extra).exists(), \
                f"docs/design.md: the row of {module} names {extra}, which does not exist"


def test_every_package_has_a_heading_in_the_table() -> None:
    headings = [package for package, _, _ in _table()]
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert set(headings) == packages, \
        f"docs/design.md headings {sorted(set(headings))}, packages {sorted(packages)}"


def test_what_the_table_leaves_to_the_prose_holds_no_code() -> None:
    """A package's __init__.py is its docstring only (the root's adds the version), and the
    prose names the root's two files: code there would be a module without a row."""
    text = DOC.read_text()
    assert "`library_syncer/__init__.py`" in text and "`__main__.py`" in text
    for init in PACKAGE.rglob("__init__.py"):
        body = ast.parse(init.read_text()).body
        code = [n for n in body if not (isinstance(n, ast.Expr)
                                        and isinstance(n.value, ast.Constant))]
        if init.parent == PACKAGE:
            code = [n for n in code if not (isinstance(n, ast.Assign) and
                                            [getattr(t, "id", "") for t in n.targets]
                                            == ["__version__"])]
        assert not code, f"{init.relative_to(ROOT)}: code in a package's __init__.py (give it " \
                         f"a module and a row in docs/design.md)"

