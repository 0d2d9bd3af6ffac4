"""The package as another account runs it: a copy outside the checkout.

Root clones into its home, and /root is 0700: sshd's account (the dispatcher, the forced command)
and `nobody` (the "as the service user" tests) cannot read a checkout there, nor a virtualenv in
it. Every test that runs our code as another user runs this copy instead — made once per test
session in a 0755 folder under the harness's work root, run by a Python that account can execute
(the same code path as the demo: library_syncer/host/demo.py:install_dispatcher).
"""

from __future__ import annotations

import atexit
import functools
import shutil
from pathlib import Path

from library_syncer.host.demo import install_dispatcher

from .sshd import WORK_ROOT, make_work_dir


@functools.cache
def launcher() -> Path:
    """The `library-syncer` command of the copy (a shell script: PYTHONPATH + system Python)."""
    folder = make_work_dir("package")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return install_dispatcher(folder)


def package_dir() -> Path:
    """The folder to put on PYTHONPATH for `python -c` code run as another account."""
    return launcher().parent


def python() -> str:
    """The interpreter the copy runs with."""
    return launcher().read_text().split(" exec ", 1)[1].split()[0]


def cli_as(user: str, *args: str) -> list[str]:
    """argv running `library-syncer ARGS` as `user`, from the copy."""
    return ["runuser", "-u", user, "--", str(launcher()), *args]


# Where such a process may start: the checkout's folder may be unreadable to it.
NEUTRAL_CWD = str(WORK_ROOT)
