"""docs/benchmarks.md holds no hand-typed figure: its generated sections must be exactly what
bench/report.py renders from bench/results/*.json; each results file names a commit of this
repository's history, and figures measured on older code than they measure say so.

These tests need git and the history (a fresh clone): without them they fail, never skip."""

from __future__ import annotations

import importlib.util
import json
import subprocess
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
    result["date"] = "1999-12-31T23:59:59+00:00"
    (tmp_path / f"{name}.json").write_text(json.dumps(result))
    for other in names:
        source = report.RESULTS / f"{other}.json"
        if other != name and source.exists():
            (tmp_path / f"{other}.json").write_text(source.read_text())
    assert report.render(doc, tmp_path) != doc


# --- the commit a figure was measured on ------------------------------------------------------


def _git(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
                          cwd=cwd, capture_output=True, text=True, check=False)


@pytest.mark.parametrize("path", sorted(report.RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_results_were_measured_on_a_commit_of_this_history(path: Path) -> None:
    commit = json.loads(path.read_text())["commit"]
    assert _git("cat-file", "-e", f"{commit}^{{commit}}").returncode == 0, \
        f"{path.name}: commit {commit} is not in this repository"
    assert report.commit_problem(commit) is None


@pytest.mark.parametrize("path", sorted(report.RESULTS.glob("*.json")), ids=lambda p: p.name)
def test_figures_on_older_code_say_so_next_to_them(path: Path) -> None:
    """The section opens with the mark exactly when a file its benchmark measures differs
    from the results' commit (asked of git file by file, not as report.py asks), beyond its
    docstrings and comments (that rule: test_a_change_to_docstrings_or_comments_only_…)."""
    result = json.loads(path.read_text())
    files = [f"library_syncer/{f}" for f in report.measures(result["benchmark"])]
    files += report.harness(result["benchmark"])
    due = [f.removeprefix("library_syncer/") for f in files
           if _git("diff", "--quiet", result["commit"], "--", f).returncode
           and not report._same_code(result["commit"], f, report.ROOT)]
    body = next(m.group("body") for m in report.SECTION.finditer(report.DOC.read_text())
                if m.group("name") == path.stem)
    first = body.splitlines()[0]
    if due:
        assert first.startswith(f"**Measured on `{result['commit'][:10]}`; "), first
        assert all(f"`{f}`" in first for f in due) and "changed since" in first, first
    else:
        assert "**Measured on" not in body, f"{path.name}: marked, yet {files} are unchanged"


def test_every_benchmark_declares_what_it_measures() -> None:
    for benchmark in report.RENDERERS:
        files = report.measures(benchmark)
        harness = report.harness(benchmark)  # a harness-only benchmark measures no product code
        assert files or harness, benchmark
        assert all((ROOT / "library_syncer" / f).is_file() for f in files), benchmark
        assert all((ROOT / f).is_file() for f in harness), benchmark


def _toy_repo(root: Path) -> list[str]:
    """A repository with bench/bench_trace.py measuring two files; returns its commits: the
    first, one changing server/trace.py, one changing it back."""
    (root / "bench").mkdir(parents=True)
    (root / "library_syncer" / "server").mkdir(parents=True)
    (root / "bench" / "bench_trace.py").write_text(
        'MEASURES = ["server/trace.py", "server/reports.py"]\n')
    trace, reports = root / "library_syncer" / "server" / "trace.py", \
        root / "library_syncer" / "server" / "reports.py"
    trace.write_text("A = 1\n")
    reports.write_text("B = 1\n")
    assert _git("init", "-q", cwd=root).returncode == 0
    commits = []
    for content in (None, "A = 2\n", "A = 1\n"):
        if content:
            trace.write_text(content)
        assert _git("add", "-A", cwd=root).returncode == 0
        assert _git("commit", "-qm", "x", cwd=root).returncode == 0
        commits.append(_git("rev-parse", "HEAD", cwd=root).stdout.strip())
    return commits


def test_the_mark_follows_the_code(tmp_path: Path) -> None:
    first, changed, back = _toy_repo(tmp_path)
    result = json.loads((report.RESULTS / "bench_trace.scan.json").read_text())
    results = tmp_path / "results"
    results.mkdir()

    def section(commit: str) -> str:
        (results / "bench_trace.scan.json").write_text(json.dumps({**result, "commit": commit}))
        return report.render_section("bench_trace.scan", results, root=tmp_path)

    assert section(changed).startswith(f"**Measured on `{changed[:10]}`; `server/trace.py` "
                                       f"changed since:**")
    assert "`server/reports.py`" not in section(changed)
    assert "Measured on `" not in section(back)  # measured where the code is now
    assert "Measured on `" not in section(first)  # the change was taken back: same code
    (tmp_path / "library_syncer" / "server" / "reports.py").write_text("B = 2\n")
    assert section(back).startswith(f"**Measured on `{back[:10]}`; `server/reports.py` "
                                    f"changed since:**")  # an uncommitted change counts too


def test_a_change_to_docstrings_or_comments_only_is_no_change(tmp_path: Path) -> None:
    back = _toy_repo(tmp_path)[-1]  # trace.py is "A = 1" there
    trace = tmp_path / "library_syncer" / "server" / "trace.py"
    result = {"benchmark": "bench_trace", "commit": back}
    trace.write_text('"""What the scan does."""\n\nA = 1  # the same code\n')
    assert report.changed_since(result, root=tmp_path) == []
    trace.write_text('"""What the scan does."""\n\nA = 3\n')
    assert report.changed_since(result, root=tmp_path) == ["server/trace.py"]
    trace.write_text('A = 1\n"a string after the first statement is code"\n')
    assert report.changed_since(result, root=tmp_path) == ["server/trace.py"]
    trace.write_text('A = 1\ndef f():\n    "one docstring"\n    return A\n')
    _git("add", "-A", cwd=tmp_path)
    _git("commit", "-qm", "f", cwd=tmp_path)
    result["commit"] = _git("rev-parse", "HEAD", cwd=tmp_path).stdout.strip()
    trace.write_text('A = 1\ndef f():\n    "another docstring"\n    return A\n')
    assert report.changed_since(result, root=tmp_path) == []
    trace.write_text('A = 1\ndef f():\n    "one docstring"\n    return A + 0\n')
    assert report.changed_since(result, root=tmp_path) == ["server/trace.py"]


def test_without_git_or_history_it_fails_loudly(tmp_path: Path, monkeypatch) -> None:
    result = json.loads((report.RESULTS / "bench_trace.scan.json").read_text())
    (tmp_path / "export").mkdir()  # the tree without .git, as an archive would unpack
    with pytest.raises(report.ProvenanceError, match="not a git checkout"):
        report.changed_since(result, root=tmp_path / "export")
    first = _toy_repo(tmp_path / "clone")[0]
    with pytest.raises(report.ProvenanceError, match="is not in this repository"):
        report.changed_since(result, root=tmp_path / "clone")  # another repository's commit
    assert report.changed_since({**result, "commit": first}, root=tmp_path / "clone") == []
    monkeypatch.setenv("PATH", str(tmp_path / "no-tools"))
    with pytest.raises(report.ProvenanceError, match="git not found"):
        report.changed_since(result)
