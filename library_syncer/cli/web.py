"""`library-syncer web render`: the Caddyfile of the current settings."""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from ..base import config as config_module
from ..web import caddy

log = logging.getLogger(__name__)


def render(args: argparse.Namespace) -> int:
    """`web render [--output F] [--validate]`."""
    config = config_module.load(args.config)
    text = caddy.render_caddyfile(config)
    if args.output:
        caddy.write_validated(config, text, args.output, check_with_caddy=args.validate)
        log.info("wrote %s; vCenter subscription URL: %s", args.output,
                 caddy.subscription_url(config))
        return 0
    if args.validate:
        with tempfile.TemporaryDirectory(prefix="library-syncer-web.") as tmp:
            caddy.write_validated(config, text, Path(tmp) / "Caddyfile", check_with_caddy=True)
    sys.stdout.write(text)
    return 0
