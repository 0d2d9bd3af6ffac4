"""`library-syncer sync`, `trust-host` and `apply`: the client's pull, its server's host key, its
schedule. Each handler loads the settings, calls the sync package and prints; nothing more."""

from __future__ import annotations

import argparse
import logging
import sys

from ..base import config as config_module
from ..base.errors import ExitStatus, Rotted
from ..base.sshkeys import PublicKey
from ..sync import hostkeys, run, timer

log = logging.getLogger("library-syncer")


def sync(args: argparse.Namespace) -> int:
    """`sync`: one run; its failure is raised, so main() prints it as one line with its status."""
    config = config_module.env_override_state(config_module.load(args.config))
    if getattr(args, "skip_unconfigured", False) and not config.sync.upstream_list():
        # The package installs the commented example and enables the timer: until the operator
        # names a server, a scheduled run says so and succeeds instead of failing every week.
        log.warning("not configured yet: sync.peer is empty in %s; nothing to do (set it, then "
                    "run library-syncer trust-host)", config.file)
        return int(ExitStatus.OK)
    allow_empty = getattr(args, "allow_empty", False)
    if getattr(args, "scrub", False):  # library-syncer-scrub.service
        return scrub(config, retry=not args.no_retry)
    if getattr(args, "if_changed", False):  # library-syncer-poll.service
        from ..sync import poll

        record = poll.run_if_changed(config, retry=not args.no_retry, allow_empty=allow_empty)
    else:
        record = run.run(config, retry=not args.no_retry, allow_empty=allow_empty,
                         allow_untraced=getattr(args, "allow_untraced", False))
    if record is not None and record.error is not None:
        raise record.error
    return int(ExitStatus.OK)


def scrub(config: config_module.Config, *, retry: bool) -> int:
    """`sync --scrub`: 0 when nothing rotted, REPAIRED when what rotted is published whole again;
    what is not raises Rotted."""
    from ..sync import scrub as scrubbing
    from ..sync.scrub_record import REPAIRED

    record = scrubbing.scrub(config, retry=retry)
    if record is None or not record.rotted:
        return int(ExitStatus.OK)
    if record.repair == REPAIRED:
        return int(ExitStatus.REPAIRED)
    raise Rotted(f"{len(record.rotted)} rotted published file(s) not repaired yet: "
                 f"{record.message}",
                 hint="the next run pulls them again (library-syncer sync); a disk that rots "
                      "needs a look (smartctl, the kernel log)")


def _ask(keys: list[PublicKey]) -> bool:
    if not sys.stdin.isatty():
        return False
    shown = "\n".join(f"  {k.type} {k.fingerprint}" for k in keys)
    answer = input(f"The server offers:\n{shown}\nCompare with `library-syncer server keys` on "
                   "the server. Trust it? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def trust_host(args: argparse.Namespace) -> int:
    """`trust-host`: record the server's host key (by fingerprint, prompt or --yes); with several
    upstreams, `--peer HOST [--port N]` names the one."""
    config = config_module.load(args.config)
    print(hostkeys.trust(config, fingerprint=args.fingerprint, yes=args.yes, confirm=_ask,
                         peer=getattr(args, "peer", None), port=getattr(args, "port", None)))
    return 0


def apply(args: argparse.Namespace) -> int:
    """`apply`: the schedule of the settings file onto library-syncer.timer (and the poll
    interval onto library-syncer-poll.timer)."""
    config = config_module.load(args.config)
    for line in timer.apply(config, args.dropin_dir, reload=not args.no_reload):
        print(line, file=sys.stdout)
    return 0
