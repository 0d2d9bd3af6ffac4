"""`library-syncer manifest build PATH`: write the VCSP manifests of a library folder."""

from __future__ import annotations

import argparse
import logging

from ..base.errors import ExitStatus
from ..manifest import vcsp
from ..server import trace

log = logging.getLogger("library-syncer")


def build(args: argparse.Namespace) -> int:
    """Build, print a summary; exit with the verification status when an item was left out."""
    root = args.path
    name = args.name or root.resolve().name
    # A tree holding an origin's revision document (a site's snapshot, an origin's library)
    # derives its tokens from it, as the sync does.
    state = vcsp.StatePlace.folder(args.state) if args.state else None  # else: with the tree
    report = vcsp.build(root, name=name, state=state,
                        include_certs=not args.no_certs, workers=args.workers,
                        revision_doc=trace.read(root))
    for warning in report.warnings:
        log.warning("library-syncer: warning: %s", warning)
    for problem in report.problems:
        log.error("library-syncer: %s", problem)
    changed = ", ".join(report.items_changed) if report.items_changed else "nothing changed"
    log.info("%s: library version %d, %d items (%s); hashed %d files, %.1f MB; %.1f MB listed",
             root, report.library_version, report.items, changed, report.files_hashed,
             report.bytes_hashed / 1e6, report.content_bytes / 1e6)
    if report.problems:
        log.error("library-syncer: %d item(s) left out; fix them and build again",
                  len({p.item for p in report.problems}))
        return int(ExitStatus.VERIFY)
    return int(ExitStatus.OK)
