"""`library-syncer config validate|show|generate|import-env`: the settings file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from ..base import config as config_module
from ..base import config_toml
from ..base.errors import ConfigError
from ..host import migrate
from ..web import caddy

log = logging.getLogger(__name__)


def validate(args: argparse.Namespace) -> int:
    """`config validate`: every problem of the file (and of the web settings' files) at once."""
    config = config_module.load(args.config)
    problems, warnings = caddy.check(config)
    for warning in warnings:
        log.warning("library-syncer: warning: %s", warning)
    if problems:
        raise ConfigError(problems)
    print(f"{config.file}: valid")
    return 0


def show(args: argparse.Namespace) -> int:
    """`config show`: the effective settings, defaults filled in, relative paths resolved."""
    config = config_module.load(args.config)
    sys.stdout.write(f"# effective settings of {config.file}\n"
                     + config_toml.to_toml(config, comments=False))
    return 0


def generate(args: argparse.Namespace) -> int:
    """`config generate [--all]`: the shipped conffile, or the reference with every default."""
    sys.stdout.write(config_toml.generated_text(full=getattr(args, "all", False)))
    return 0


def import_env(args: argparse.Namespace) -> int:
    """`config import-env FILE...`: print the TOML; name what is not carried over on stderr."""
    conversion, text = migrate.import_env([Path(path) for path in args.files])
    sys.stdout.write(text)
    for dropped in conversion.dropped:
        log.warning("library-syncer: not carried over: %s", dropped)
    return 0
