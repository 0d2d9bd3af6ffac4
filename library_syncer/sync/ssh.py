"""ssh command lines for the sync (pure functions of SyncConfig) and what ssh's errors mean.

The host key is always verified against our own known_hosts (checking is never turned off),
only our key is offered, and nothing ever prompts: a oneshot under systemd has no one to answer.
"""

from __future__ import annotations

from collections.abc import Iterable

from ..base.config import SyncConfig

# Phrases ssh prints (OpenSSH 8-9), mapped to what went wrong.
HOST_KEY_CHANGED = ("REMOTE HOST IDENTIFICATION HAS CHANGED", "Host key for",
                    "has changed and you have requested strict checking")
HOST_KEY_UNKNOWN = ("Host key verification failed", "No ED25519 host key is known",
                    "No ECDSA host key is known", "No RSA host key is known",
                    "host key is not known")
AUTH_REFUSED = ("Permission denied (publickey", "Too many authentication failures")
UNREACHABLE = ("Connection refused", "Connection timed out", "timed out", "No route to host",
               "Network is unreachable", "Connection reset", "Connection closed",
               "Broken pipe", "Shared connection to", "Could not resolve hostname",
               "Temporary failure in name resolution",
               "kex_exchange_identification", "Timeout, server", "not responding")

# A connection of its own (a stream's other than the first, whose is the run's shared master):
# never the shared master, nor one from ~/.ssh/config.
OWN_CONNECTION = ("-o", "ControlMaster=no", "-o", "ControlPath=none")


def host_pattern(sync: SyncConfig) -> str:
    """The known_hosts name ssh looks up: `peer`, or `[peer]:port` off port 22."""
    return sync.peer if sync.port == 22 else f"[{sync.peer}]:{sync.port}"


def alive_interval(sync: SyncConfig) -> int:
    """Keepalive probe period: a dead link is noticed within about io_timeout."""
    return max(1, min(30, int(sync.io_timeout / 3) or 1))


def file_value(path: object) -> str:
    """A path as the value of an ssh `-o` file option. ssh splits such values on whitespace
    (UserKnownHostsFile takes a list) unless double-quoted, reads backslash escapes inside the
    quotes, and expands %-tokens: `/etc/a b/known_hosts` would otherwise name two files."""
    text = str(path).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{text}"'


def path_arg(path: object) -> str:
    """A path as its own argv word (`-S`): never split, but ssh expands %-tokens there."""
    return str(path).replace("%", "%%")


def options(sync: SyncConfig) -> list[str]:
    """Every ssh option the sync, trust checks and `check` use (no user@host)."""
    return [
        "-p", str(sync.port),
        # not -i: ssh drops an -i path it cannot stat before expanding its %-tokens
        "-o", f"IdentityFile={file_value(sync.identity_file)}",
        "-l", sync.user,
        "-o", "IdentitiesOnly=yes",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=yes",
        "-o", f"UserKnownHostsFile={file_value(sync.known_hosts)}",
        "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "UpdateHostKeys=no",
        "-o", "CheckHostIP=no",
        "-o", f"ConnectTimeout={max(1, int(sync.connect_timeout))}",
        "-o", f"ServerAliveInterval={alive_interval(sync)}",
        "-o", "ServerAliveCountMax=3",
        "-o", "LogLevel=ERROR",
    ]


def argv(sync: SyncConfig, extra: Iterable[str] = ()) -> list[str]:
    return [sync.ssh, *options(sync), *extra]


def _quote(arg: str) -> str:
    """Quote one word for rsync's -e parser: it splits on spaces, honours single and double
    quotes, and reads a doubled quote inside quotes as one (it knows no backslashes). Any word
    can be quoted; the settings refuse paths holding both kinds of quote all the same."""
    if arg and not any(c in arg for c in " '\"\t"):
        return arg
    if "'" not in arg:
        return f"'{arg}'"
    if '"' not in arg:
        return f'"{arg}"'
    return "'" + arg.replace("'", "''") + "'"


def rsh(sync: SyncConfig, extra: Iterable[str] = ()) -> str:
    """The `rsync -e` string: rsync splits it on spaces, honouring quotes."""
    return " ".join(_quote(a) for a in argv(sync, extra))


def _any(text: str, phrases: Iterable[str]) -> bool:
    return any(p in text for p in phrases)


def diagnose(lines: Iterable[str]) -> str | None:
    """"host_key_changed", "host_key_unknown", "auth", "unreachable" or None from ssh's stderr."""
    text = "\n".join(lines)
    if _any(text, HOST_KEY_CHANGED):
        return "host_key_changed"
    if _any(text, HOST_KEY_UNKNOWN):
        return "host_key_unknown"
    if _any(text, AUTH_REFUSED):
        return "auth"
    if _any(text, UNREACHABLE):
        return "unreachable"
    return None
