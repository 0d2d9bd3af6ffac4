"""Headless Chromium, as the page tests look at what people see (tests/bootstrap installs it)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def run(work_dir: Path, url: str, *args: str, window: str = "1200,900"
        ) -> subprocess.CompletedProcess:
    """One headless Chromium on `url` with its own profile in `work_dir`, nothing fetched from
    anywhere else (no background networking, updates or sync)."""
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={work_dir / 'chromium'}", f"--window-size={window}",
         *args, url],
        capture_output=True, text=True, timeout=120)
