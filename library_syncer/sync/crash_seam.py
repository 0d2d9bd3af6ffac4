"""The one test seam in shipped code: with LIBRARY_SYNCER_CRASH_AT=<point> in the environment,
a run kills itself with SIGKILL when it reaches that point (with its process group when it leads
one, as systemd kills a unit's control group), so tests/test_sync_crash.py can prove what a crash
at each step leaves. Does nothing otherwise.

Points: listed (the plan made: sync/plan.py), transfer, transferred, ovas, manifests, renamed,
switched, prune.
"""

from __future__ import annotations

import logging
import os
import signal

log = logging.getLogger("library-syncer.snapshot")

CRASH_ENV = "LIBRARY_SYNCER_CRASH_AT"


def crash_point(point: str) -> None:
    if os.environ.get(CRASH_ENV) != point:
        return
    log.warning("crash point %s reached (%s): killing the run", point, CRASH_ENV)
    if os.getpgrp() == os.getpid():
        os.killpg(0, signal.SIGKILL)
    os.kill(os.getpid(), signal.SIGKILL)
