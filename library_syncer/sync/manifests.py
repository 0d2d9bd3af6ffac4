"""What a snapshot publishes besides the library: its VCSP manifests (manifest/vcsp.py) and its
human page (web/page.py), both written into staging before the switch.
"""

from __future__ import annotations

import errno
import logging
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

from ..base.config import Config
from ..base.errors import SyncerError
from ..manifest import vcsp
from ..manifest.hashing import HashCache
from ..web import caddy, page
from . import trace_check
from .layout import Layout
from .staging import disk_full

log = logging.getLogger("library-syncer")


def _state(layout: Layout, staging: Path, published: Path | None) -> vcsp.StatePlace:
    """The state travels with the snapshots: written into staging's .library-syncer/, read
    from the published snapshot's (it advances only with the switch). A site upgraded from a
    version that kept it in cache/ continues from that copy once, until its first publication.
    The hash cache stays in cache/ (a cache is truthful whatever happened)."""
    place = vcsp.StatePlace.travelling(staging, published, layout.cache)
    legacy = legacy_state(layout)
    if published is not None and not place.read.is_file() and legacy.is_file():
        return replace(place, read=legacy)
    return place


def legacy_state(layout: Layout) -> Path:
    """Where versions before the state travelled in the snapshots kept it."""
    return layout.cache / vcsp.STATE_FILE


def build(config: Config, layout: Layout, staging: Path, published: Path | None
          ) -> tuple[vcsp.BuildReport, HashCache]:
    """The manifests of staging (its state: _state), and the hash cache the build used (the
    content check reads what the build did not with it). The tokens derive from the origin's
    revision document staging holds (none from the Docker original)."""
    lib = config.library
    warnings: list[str] = []
    try:
        cache = vcsp.open_cache(staging, published or staging, layout.cache, warnings)
        for warning in warnings:
            log.warning("warning: %s", warning)
        report = vcsp.build(staging, name=lib.name, state=_state(layout, staging, published),
                            previous=published, include_certs=lib.include_certs,
                            workers=lib.workers, description=lib.description, cache=cache,
                            revision_doc=trace_check.read(staging))
        return report, cache
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise disk_full(error, "writing the manifests") from None
        raise


def write_page(config: Config, staging: Path) -> None:
    """The human page (index.html) of the snapshot; never fatal."""
    held = trace_check.read(staging)  # the origin's revision, named on the page as by status
    revision = page.OriginRevision(held.origin, held.serial, held.time) if held else None
    try:
        page.write_index(staging, url=caddy.subscription_url(config),
                         synced_at=datetime.now(timezone.utc), revision=revision)
    except (SyncerError, OSError) as error:
        log.warning("index.html not written: %s", error)
