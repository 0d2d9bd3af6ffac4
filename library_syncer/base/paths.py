"""Where things live on a host (FHS), and the directories systemd hands a unit.

systemd sets STATE_DIRECTORY, RUNTIME_DIRECTORY and CONFIGURATION_DIRECTORY for units that
declare them; we read them when set and fall back to the FHS paths otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = "library-syncer"
DEFAULT_CONFIG_DIR = Path("/etc") / PACKAGE
DEFAULT_CONFIG_FILE = DEFAULT_CONFIG_DIR / f"{PACKAGE}.toml"
DEFAULT_STATE_DIR = Path("/var/lib") / PACKAGE
DEFAULT_RUNTIME_DIR = Path("/run") / PACKAGE
DEFAULT_SERVER_LIBRARY = Path("/srv") / PACKAGE / "library"
# `config generate --all` as library-syncer-common installs it (debian/rules; dh_compress leaves
# examples/ uncompressed at debhelper compat >= 12).
REFERENCE_SETTINGS_FILE = Path(f"/usr/share/doc/{PACKAGE}-common/examples/{PACKAGE}.toml")


def _from_env(name: str, fallback: Path) -> Path:
    # systemd may pass several colon-separated directories; the first one is ours.
    value = os.environ.get(name, "")
    return Path(value.split(":")[0]) if value else fallback


def config_dir() -> Path:
    return _from_env("CONFIGURATION_DIRECTORY", DEFAULT_CONFIG_DIR)


def config_file() -> Path:
    return config_dir() / f"{PACKAGE}.toml"


def state_dir() -> Path:
    return _from_env("STATE_DIRECTORY", DEFAULT_STATE_DIR)


def runtime_dir() -> Path:
    return _from_env("RUNTIME_DIRECTORY", DEFAULT_RUNTIME_DIR)

