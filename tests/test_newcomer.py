"""The newcomer's path, where no earlier test can help: a fresh Debian root filesystem (no sshd ever
ran, so no /run/sshd; nothing installed but a minimal system), a fresh clone of this repository
with nothing beside it, and the README's first command exactly as written.

The container shares the host's network only for apt (Debian's archive, as tests/bootstrap uses
on any machine); the demo itself talks to loopback. Downloaded .debs are kept in a cache folder
of the test harness so a rerun does not fetch them again.
"""

from __future__ import annotations

import re

import pytest

from tests.harness import nspawn, pristine

pytestmark = pytest.mark.system

README_FIRST_COMMAND = "tests/demo --once"


def test_readme_first_command_is_the_first_command_readme_gives():
    readme = (nspawn.TOP / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.DOTALL)
    assert block, "README has no sh block"
    first = block.group(1).splitlines()[0].split("#")[0].strip()
    assert first == README_FIRST_COMMAND


def test_demo_on_a_fresh_machine_from_a_fresh_clone(tmp_path):
    clone = pristine.fresh_clone(tmp_path / "library-syncer")
    result = pristine.run_in_fresh_root(
        clone, f"test ! -e /run/sshd && {README_FIRST_COMMAND}", log=tmp_path / "demo.log")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    assert "bootstrap: installing with apt:" in output  # it really started from nothing
    # the version is a time in microseconds (docs/manifest.md): a decimal Java long
    assert re.search(r'^walk: lib\.json "library-syncer demo" version \d{16}, 3 items', output,
                     re.MULTILINE), output[-4000:]
    assert re.search(r"^walk: ok \(9 files, ", output, re.MULTILINE), output[-4000:]
