"""docs/benchmarks.md holds no hand-typed figure: its generated sections must be exactly what
bench/report.py renders from bench/results/*.json."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _report() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_report", module)
    spec.loader.exec_module(module)
    return module


report = _report()


def test_doc_matches_results() -> None:
    text = report.DOC.read_text()
    assert report.render(text) == text, (
        "docs/benchmarks.md disagrees with bench/results/*.json: run "
        ".venv/bin/python bench/report.py (and commit both)")


def test_every_results_file_is_shown() -> None:
    shown = set(report.sections(report.DOC.read_text()))
    files = {p.stem for p in report.RESULTS.glob("*.json")}
    assert files <= shown, f"results files without a section in docs/benchmarks.md: " \
                           f"{sorted(files - shown)}"


@pytest.mark.parametrize("path", sorted(report.RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_results_state_their_provenance(path: Path) -> None:
    result = json.loads(path.read_text())
    assert len(result["commit"]) == 40 and result["command"] and result["date"]
    assert result["benchmark"] in report.RENDERERS
    assert {"cpu_model", "cpus", "memory_gib", "kernel", "rsync", "openssh"} <= \
        set(result["machine"])


def test_a_changed_figure_is_caught(tmp_path: Path) -> None:
    doc = report.DOC.read_text()
    names = report.sections(doc)
    assert any((report.RESULTS / f"{n}.json").exists() for n in names), "no results files"
    name = next(n for n in names if (report.RESULTS / f"{n}.json").exists())
    result = json.loads((report.RESULTS / f"{name}.json").read_text())
    result["commit"] = "0" * 40
    (tmp_path / f"{name}.json").write_text(json.dumps(result))
    for other in names:
        source = report.RESULTS / f"{other}.json"
        if other != name and source.exists():
            (tmp_path / f"{other}.json").write_text(source.read_text())
    assert report.render(doc, tmp_path) != doc
