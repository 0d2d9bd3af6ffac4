"""`library-syncer status`, `check` and `demo`: the whole host, across its roles."""

from __future__ import annotations

import argparse
import json
import sys

from ..base.errors import CheckFailed
from ..host.check import FAIL, run_checks
from ..host.demo import run_demo
from ..host.status import gather, to_text


def status(args: argparse.Namespace) -> int:
    """`status [--json]`."""
    report = gather(args.config)
    if args.json:
        sys.stdout.write(json.dumps(report, indent=2, default=str) + "\n")
    else:
        sys.stdout.write(to_text(report))
    return 0


def check(args: argparse.Namespace) -> int:
    """`check`: one line per check; CheckFailed (its own exit status) when any failed."""
    results = run_checks(args.config)
    for result in results:
        print(result, flush=True)
    failed = [r for r in results if r.status == FAIL]
    if failed:
        raise CheckFailed(f"{len(failed)} problem{'s' if len(failed) > 1 else ''} found")
    sys.stdout.flush()
    return 0


def demo(args: argparse.Namespace) -> int:
    """`demo [--once] [--workdir DIR]`."""
    run_demo(args.workdir, once=args.once)
    return 0
