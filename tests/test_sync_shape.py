"""The shape of the client's pull, read from the syntax tree (issue 22): one upstream loop, one
function that starts rsync, every rsync argv built in sync/rsync.py, every path of the state
folder named in base/statedir.py.

Each rule is a function of {module path: source}, run on the package here, and on a small
source that breaks it (the `_catches_` tests): a rule that cannot fail proves nothing.
The server side is out of scope: its forced command execs rrsync for the peer (server/dispatch.py)
and its state folder is server.state_dir, another folder.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "library_syncer"
ARGV_OWNER = "sync/rsync.py"
STATE_OWNER = "base/statedir.py"
PROCESS_LAYER = "base/execute.py"  # starts every process, rsync's as any other
OUT_OF_SCOPE = ("server/",)
RUN_ERRORS = {"BaseException", "Exception", "SyncerError", "NetworkError", "StaleUpstream",
              "Settling", "HostKeyError", "TransientError"}
STARTERS = {("execute", "run"), ("execute", "capture"), ("execute", "popen"),
            ("subprocess", "run"), ("subprocess", "Popen"), ("subprocess", "call"),
            ("subprocess", "check_call"), ("subprocess", "check_output"),
            ("os", "execv"), ("os", "execvp"), ("os", "execve"), ("os", "spawnv")}


def _package() -> dict[str, str]:
    return {p.relative_to(ROOT).as_posix(): p.read_text() for p in sorted(ROOT.rglob("*.py"))
            if not p.relative_to(ROOT).as_posix().startswith(OUT_OF_SCOPE)}


def _trees(sources: dict[str, str]) -> Iterator[tuple[str, ast.Module]]:
    for path, text in sources.items():
        yield path, ast.parse(text, filename=path)


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def _identifiers(node: ast.AST) -> set[str]:
    names = set()
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name):
            names.add(sub.id)
        elif isinstance(sub, ast.Attribute):
            names.add(sub.attr)
        elif isinstance(sub, ast.arg):
            names.add(sub.arg)
    return names


# --- one failover loop --------------------------------------------------------------------------


def _assigned(function: ast.AST) -> dict[str, ast.AST]:
    return {target.id: node.value for node in ast.walk(function) if isinstance(node, ast.Assign)
            for target in node.targets if isinstance(target, ast.Name)}


def _run_error(handler: ast.ExceptHandler) -> bool:
    """The handler catches what a run or a check fails with (a SyncerError, or anything)."""
    if handler.type is None:
        return True
    names = _identifiers(handler.type)
    return bool(names & RUN_ERRORS)


def failover_loops(sources: dict[str, str]) -> list[str]:
    """Loops over the upstreams that go on after an error (a try inside): what a failover is.
    A loop is over the upstreams when its iterable names them, directly or through a name the
    function assigned from an expression that does."""
    found = []
    for path, tree in _trees(sources):
        for function in _functions(tree):
            assigned = _assigned(function)
            for loop in ast.walk(function):
                if not isinstance(loop, (ast.For, ast.AsyncFor)):
                    continue
                names = _identifiers(loop.iter) | _identifiers(loop.target)
                names |= {n for name in names if name in assigned
                          for n in _identifiers(assigned[name])}
                over_upstreams = any("upstream" in name.lower() for name in names)
                moves_on = any(isinstance(n, ast.ExceptHandler) and _run_error(n)
                               for n in ast.walk(loop))
                if over_upstreams and moves_on:
                    found.append(f"{path}:{loop.lineno} ({function.name})")
    return found


def test_exactly_one_failover_loop() -> None:
    loops = failover_loops(_package())
    assert len(loops) == 1 and loops[0].startswith("sync/failover.py:"), loops



# --- one function that starts rsync -------------------------------------------------------------


def _starter(call: ast.Call) -> bool:
    func = call.func
    return isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and \
        (func.value.id, func.attr) in STARTERS


def _mentions_rsync(function: ast.AST, constants: dict[str, ast.AST]) -> bool:
    """The function names rsync (an identifier, or a string that is not its docstring), itself
    or through a module constant it reads (`IGNORED_ENV = ("RSYNC_RSH", …)`)."""
    body = getattr(function, "body", [])
    docstring = body[0].value if body and isinstance(body[0], ast.Expr) else None
    for node in ast.walk(function):
        if node is docstring:
            continue
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                "rsync" in node.value.lower():
            return True
    names = _identifiers(function)
    if any("rsync" in name.lower() for name in names):
        return True
    return any("rsync" in ast.unparse(constants[name]).lower() for name in names
               if name in constants)


def rsync_starters(sources: dict[str, str]) -> list[str]:
    """Functions that start a process and name rsync: the ones that start rsync."""
    found = []
    for path, tree in _trees(sources):
        if path == PROCESS_LAYER:
            continue
        constants = {target.id: node.value for node in tree.body if isinstance(node, ast.Assign)
                     for target in node.targets if isinstance(target, ast.Name)}
        for function in _functions(tree):
            starts = any(isinstance(n, ast.Call) and _starter(n) for n in ast.walk(function))
            if starts and _mentions_rsync(function, constants):
                found.append(f"{path}:{function.lineno} ({function.name})")
    return found


def test_exactly_one_function_starts_rsync() -> None:
    starters = rsync_starters(_package())
    assert starters == [s for s in starters if s.startswith("sync/runner.py:")] and \
        len(starters) == 1, starters


# --- every rsync argv in sync/rsync.py ----------------------------------------------------------


@cache
def _rsync_options() -> frozenset[str]:
    """rsync's long options, as the installed rsync lists them."""
    # tests/bootstrap installs rsync: without it this rule would check nothing, so it fails
    assert shutil.which("rsync") is not None, "rsync is not installed (run tests/run)"
    text = subprocess.run(["rsync", "--help"], capture_output=True, text=True).stdout
    return frozenset(re.findall(r"(?<![\w-])--([a-z0-9][a-z0-9-]*)", text))


def _is_rsync_option(text: str) -> bool:
    if not text.startswith("--"):
        return False
    name = text[2:].split("=", 1)[0]
    return name in _rsync_options() or name.removeprefix("no-") in _rsync_options()


def rsync_options_outside(sources: dict[str, str]) -> list[str]:
    """String literals (f-strings by their first part) that are rsync options, outside the
    argv's owner; the options of our own command line (`add_argument`) are not rsync's."""
    found = []
    for path, tree in _trees(sources):
        if path == ARGV_OWNER:
            continue
        ours = {id(arg) for node in ast.walk(tree) if isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute) and node.func.attr == "add_argument"
                for arg in node.args}
        parts = {id(part) for node in ast.walk(tree) if isinstance(node, ast.JoinedStr)
                 for part in node.values}
        for node in ast.walk(tree):
            if isinstance(node, ast.JoinedStr) and node.values and \
                    isinstance(node.values[0], ast.Constant):
                text = node.values[0].value
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and \
                    id(node) not in parts:
                text = node.value
            else:
                continue
            if id(node) not in ours and _is_rsync_option(str(text)):
                found.append(f"{path}:{node.lineno} {text!r}")
    return found


def test_no_rsync_argv_is_built_outside_sync_rsync() -> None:
    assert rsync_options_outside(_package()) == []



# --- every state-folder path in base/statedir.py ------------------------------------------------


@cache
def _state_names() -> frozenset[str]:
    """The file names the owner gives the state folder's entries (its folders have plain words
    for names, "published", "cache": those are found by the `/` rule)."""
    from library_syncer.base.statedir import StateDir

    root = Path("/state")
    state = StateDir(root)
    names = {getattr(state, name).name for name, value in vars(StateDir).items()
             if isinstance(value, property)}
    return frozenset(name for name in names if "." in name)


def _state_root(node: ast.AST) -> bool:
    """`x.state_dir`, `x.paths.state_dir`, `Path(x.state_dir)`, `layout.root`: the folder."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and \
            node.func.id == "Path" and node.args:
        return _state_root(node.args[0])
    if isinstance(node, ast.Attribute):
        if node.attr == "state_dir":
            return True
        return node.attr == "root" and isinstance(node.value, ast.Name) and \
            node.value.id == "layout"
    return False


def state_paths_outside(sources: dict[str, str]) -> list[str]:
    """Paths of the state folder built outside its owner: `<state folder> / …`, or a string
    that is the name of one of its entries."""
    found = []
    for path, tree in _trees(sources):
        if path == STATE_OWNER:
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) and \
                    _state_root(node.left):
                found.append(f"{path}:{node.lineno} {ast.unparse(node)}")
            elif isinstance(node, ast.Constant) and node.value in _state_names():
                found.append(f"{path}:{node.lineno} {node.value!r}")
    return found


def test_no_state_folder_path_is_built_outside_its_owner() -> None:
    assert state_paths_outside(_package()) == []


# --- each rule can fail -------------------------------------------------------------------------

# (rule, a module replaced by a source that breaks the rule, that source, what the rule finds)
BROKEN = {
    "a second failover loop": (
        failover_loops, "sync/poll.py",
        "def check(config):\n    upstreams = upstream_configs(config)\n"
        "    for index in range(len(upstreams)):\n        try:\n            return go()\n"
        "        except NetworkError:\n            continue\n", 2),
    "a second rsync runner": (
        rsync_starters, "sync/poll.py",
        "import os\nfrom ..base import execute\n\ndef _rsync(argv):\n"
        "    env = {k: v for k, v in os.environ.items() if k != 'RSYNC_RSH'}\n"
        "    return execute.run(argv, env=env)\n", 2),
    "rsync options elsewhere": (
        rsync_options_outside, "sync/poll.py",
        "def serial_argv(sync):\n"
        "    return [sync.rsync, f'--timeout={sync.io_timeout}', '--list-only']\n", 2),
    "a state path built elsewhere": (
        state_paths_outside, "sync/last_run.py",
        "from pathlib import Path\n\ndef path(config):\n"
        "    return Path(config.state_dir) / FILE_NAME\n\nFILE_NAME = 'last-run.json'\n", 2),
}


@pytest.mark.parametrize("case", BROKEN)
def test_each_rule_catches_what_it_forbids(case: str) -> None:
    rule, module, source, found = BROKEN[case]
    assert len(rule({**_package(), module: source})) == found, rule({**_package(), module: source})
