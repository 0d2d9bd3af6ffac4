"""The booted-systemd harness finds the Debian mirror in the host's apt configuration, in either
format, and ignores third-party repositories (tests/harness/nspawn.py: mirror_lines)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness import nspawn

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

DEB822 = f"""\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: {KEYRING}

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: {KEYRING}
"""

NODESOURCE = """\
Types: deb
URIs: https://deb.nodesource.com/node_20.x
Suites: nodistro
Components: main
Signed-By: /usr/share/keyrings/nodesource.gpg
"""

ONE_LINE = """\
# deb cdrom:[Debian GNU/Linux 12.5.0 _Bookworm_]/ bookworm main
deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main
deb http://ftp.fr.debian.org/debian/ bookworm main contrib non-free-firmware
deb-src http://ftp.fr.debian.org/debian/ bookworm main
deb [arch=amd64 signed-by=/etc/apt/keyrings/debian.gpg] http://security.debian.org/debian-security \
bookworm-security main
deb http://ftp.fr.debian.org/debian/ bookworm-updates main
"""


def _apt_dir(tmp_path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = tmp_path / "apt" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp_path / "apt" / "sources.list.d").mkdir(parents=True, exist_ok=True)
    return tmp_path / "apt"


def test_deb822_sources_give_the_debian_archive_and_security_mirrors(tmp_path):
    # Third-party entries first, in a name apt reads and in one it ignores.
    apt = _apt_dir(tmp_path, {"sources.list.d/a-nodesource.sources": NODESOURCE,
                              "sources.list.d/debian.sources": DEB822,
                              "sources.list.d/google.list.disabled": "deb http://x/debian y main"})
    assert nspawn.mirror_lines("trixie", apt, environ={}) == [
        f"deb [signed-by={KEYRING}] http://deb.debian.org/debian trixie main",
        f"deb [signed-by={KEYRING}] http://deb.debian.org/debian trixie-updates main",
        f"deb [signed-by={KEYRING}] http://deb.debian.org/debian-security trixie-security main",
    ]


def test_one_line_sources_list_gives_the_same(tmp_path):
    apt = _apt_dir(tmp_path, {"sources.list": ONE_LINE})
    assert nspawn.mirror_lines("bookworm", apt, environ={}) == [
        "deb http://ftp.fr.debian.org/debian/ bookworm main",
        "deb http://ftp.fr.debian.org/debian/ bookworm-updates main",
        "deb [signed-by=/etc/apt/keyrings/debian.gpg] http://security.debian.org/debian-security"
        " bookworm-security main",
    ]


def test_a_disabled_deb822_stanza_and_deb_src_are_not_mirrors(tmp_path):
    text = ("Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm\n"
            "Components: main\n\n"
            "Enabled: no\nTypes: deb\nURIs: http://old.example/debian\nSuites: bookworm\n"
            "Components: main\n\n"
            "Types: deb deb-src\nURIs: http://mirror.example/debian\nSuites: bookworm\n"
            "Components: main contrib\n")
    archive, security = nspawn.debian_mirrors(nspawn.parse_deb822(text))
    assert archive is not None and archive.uri == "http://mirror.example/debian"
    assert security is None


def test_environment_overrides_the_host_mirrors(tmp_path):
    apt = _apt_dir(tmp_path, {"sources.list": ONE_LINE})
    env = {"LSYNC_TEST_MIRROR": "http://proxy.example:3142/debian",
           "LSYNC_TEST_SECURITY_MIRROR": ""}
    assert nspawn.mirror_lines("trixie", apt, environ=env) == [
        "deb http://proxy.example:3142/debian trixie main",
        "deb http://proxy.example:3142/debian trixie-updates main",
    ]


def test_a_host_without_a_debian_mirror_fails_naming_the_variable(tmp_path):
    ubuntu = "deb http://archive.ubuntu.com/ubuntu noble main universe\n"
    apt = _apt_dir(tmp_path, {"sources.list": ubuntu, "sources.list.d/n.sources": NODESOURCE})
    with pytest.raises(AssertionError, match="LSYNC_TEST_MIRROR"):
        nspawn.mirror_lines("bookworm", apt, environ={})


def test_tested_suites_and_their_override(monkeypatch):
    monkeypatch.delenv("LSYNC_TEST_SUITES", raising=False)
    assert nspawn.suites() == ["bookworm", "trixie"]
    monkeypatch.setenv("LSYNC_TEST_SUITES", "trixie")
    assert nspawn.suites() == ["trixie"]
