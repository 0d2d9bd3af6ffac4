"""trust-host: record the server's SSH host key in our own known_hosts.

The key is fetched with ssh-keyscan and shown by its SHA256 fingerprint; it is recorded only when
it matches `--fingerprint` (compare with `library-syncer server keys` on the server), when the
operator says yes at the prompt, or with `--yes`. A key that differs from the one recorded is a
hard error (HostKeyError): nothing is written, because that is exactly what an attack looks like.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from ..base import execute, fsutil
from ..base.config import Config, SyncConfig
from ..base.errors import ConfigError, ConfigProblem, HostKeyError, NetworkError
from ..base.sshkeys import PublicKey, parse_line
from . import ssh

log = logging.getLogger("library-syncer")
SCAN_TYPES = "ed25519,ecdsa,rsa"  # what ssh-keyscan is asked for


def scan(sync: SyncConfig) -> list[PublicKey]:
    """The server's host keys, as it offers them now."""
    timeout = str(max(1, int(sync.connect_timeout)))
    result = execute.run(["ssh-keyscan", "-p", str(sync.port), "-T", timeout, "-t", SCAN_TYPES,
                          sync.peer], capture=True, check=False)
    keys = [k for k in (parse_line(line) for line in result.output.splitlines()
                        if line.strip() and not line.startswith("#")) if k]
    if not keys:
        detail = result.tail[-1] if result.tail else "no answer"
        raise NetworkError(f"{sync.peer} port {sync.port}: no SSH host key received ({detail})",
                           hint="check sync.peer and sync.port, and that the server role runs")
    return keys


def recorded(sync: SyncConfig) -> list[PublicKey]:
    """Keys already in our known_hosts for this server (hashed entries included)."""
    if not sync.known_hosts.is_file():
        return []
    result = execute.run(["ssh-keygen", "-F", ssh.host_pattern(sync), "-f",
                          str(sync.known_hosts)], capture=True, check=False)
    return [k for k in (parse_line(line) for line in result.output.splitlines()
                        if line.strip() and not line.startswith("#")) if k]


def _check_unchanged(sync: SyncConfig, offered: list[PublicKey], known: list[PublicKey]) -> bool:
    """True when the server's keys are already trusted; HostKeyError when one changed."""
    if not known:
        return False
    known_by_type = {k.type: k for k in known}
    common = [k for k in offered if k.type in known_by_type]
    changed = [k for k in common if known_by_type[k.type].blob != k.blob]
    if changed or not common:
        was = ", ".join(k.fingerprint for k in known)
        now = ", ".join(k.fingerprint for k in offered)
        raise HostKeyError(f"{ssh.host_pattern(sync)}: the server's host key has CHANGED "
                           f"(recorded {was}; offered now {now}); nothing was written",
                           hint="if the server was reinstalled, remove the old key with "
                                f"ssh-keygen -R '{ssh.host_pattern(sync)}' -f {sync.known_hosts}"
                                " and run trust-host again; otherwise investigate")
    return True


def _record(sync: SyncConfig, keys: list[PublicKey]) -> None:
    path = sync.known_hosts
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    new = "".join(k.line(ssh.host_pattern(sync)) + "\n" for k in keys)
    fsutil.atomic_write(path, old + new, 0o644)


def choose(config: Config, peer: str | None = None, port: int | None = None) -> SyncConfig:
    """The settings aimed at the upstream whose key is wanted: `peer` (and `port`; default the
    port listed for it, else sync.port), or the only upstream. With several listed, one must be
    named: each has its own key."""
    sync, listed = config.sync, config.sync.upstream_list()
    file = str(config.file)
    if peer:
        same = [u for u in listed if u.peer == peer and (port is None or u.port == port)]
        if same:
            return sync.for_upstream(same[0])
        from ..base.config import Upstream

        log.warning("%s is not listed in %s; recording its key all the same", peer, file)
        return sync.for_upstream(Upstream(peer, port or sync.port, sync.user))
    if not listed:
        raise ConfigError(ConfigProblem(file, "sync.peer", "nothing",
                                        "the server's host name or IP address"))
    if len(listed) > 1:
        names = ", ".join(f"{u.peer} --port {u.port}" for u in listed)
        raise ConfigError(ConfigProblem(file, "sync.upstreams", f"{len(listed)} upstreams",
                                        f"one named with --peer HOST [--port N] ({names})"))
    return sync.for_upstream(listed[0])


def trust(config: Config, *, fingerprint: str | None = None, yes: bool = False,
          confirm: Callable[[list[PublicKey]], bool] | None = None,
          peer: str | None = None, port: int | None = None) -> str:
    """Scan, compare, record; returns the line to show. See the module docstring."""
    sync = choose(config, peer, port)
    offered = scan(sync)
    target = ssh.host_pattern(sync)
    for key in offered:
        log.info("%s offers %s %s", target, key.type, key.fingerprint)
    wanted = None
    if fingerprint:
        wanted = fingerprint if fingerprint.startswith("SHA256:") else f"SHA256:{fingerprint}"
        wanted = wanted.rstrip("=")
    known = recorded(sync)
    if _check_unchanged(sync, offered, known):
        # Already trusted, but the operator named a key: it must be the server's, or someone
        # (the operator's source, the network, or the recorded key) is wrong.
        if wanted and wanted not in {k.fingerprint for k in (*offered, *known)}:
            raise HostKeyError(f"{target}: already trusted as "
                               f"{', '.join(k.fingerprint for k in known)}, which the server "
                               f"offers, but --fingerprint says {wanted}; nothing was written",
                               hint="compare with `library-syncer server keys` on the server")
        return f"{target}: already trusted ({sync.known_hosts})"
    if wanted:
        accepted = [k for k in offered if k.fingerprint == wanted]
        if not accepted:
            raise HostKeyError(f"{target} offers {', '.join(k.fingerprint for k in offered)}, "
                               f"none is {wanted}; nothing was written",
                               hint="compare with `library-syncer server keys` on the server")
    elif yes or (confirm is not None and confirm(offered)):
        accepted = offered
    else:
        raise HostKeyError(f"{target}: key not accepted; nothing was written",
                           hint="pass --fingerprint SHA256:… (from `library-syncer server keys` "
                                "on the server) or --yes")
    _record(sync, accepted)
    return (f"{target}: recorded {', '.join(k.fingerprint for k in accepted)} in "
            f"{sync.known_hosts}")


def trust_demo(config: Config, host_key: str) -> str:
    """Trust exactly `host_key` (a known_hosts or .pub line), as --fingerprint would."""
    key = parse_line(host_key)
    if key is None:
        raise HostKeyError(f"not a host key: {host_key[:40]}")
    return trust(config, fingerprint=key.fingerprint)
