"""`library-syncer check`: is this site able to sync and publish? One line per check.

A client (sync.peer set) gets the client checks; a host where the server role is set up gets the
server's (its account, the library folder, the authorized sites, `sshd -t`, the unit and its
socket, the congestion control the listening socket really has); both, when a host is both.

Each check prints `ok`, `FAIL` (with the fix on the same line) or `skip` (it cannot be checked
here, and why). Nothing is transferred: the server check is an SSH handshake and an rrsync
listing (`rsync --list-only`) with exactly the ssh options the sync uses. The exit status is
ExitStatus.CHECK when anything failed.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..base import config as config_module
from ..base import execute, systemd
from ..base.config import Config
from ..base.errors import ConfigError, SyncerError
from ..base.text import printable
from ..base.units import format_bytes
from ..server import sockdiag
from ..sync import rsync, runner, timer
from ..web import caddy, certificate

SYNC_USER = "library-syncer"  # the service's account (packaging/debian/library-syncer.sysusers)
OK, FAIL, SKIP, WARN = "ok", "FAIL", "skip", "warn"  # WARN: works, but should change
SYMLINKS_SHOWN = 10  # library symlinks named one per line; the rest are counted


@dataclass(frozen=True)
class CheckResult:
    status: str  # OK, FAIL, SKIP or WARN (not a failure: the exit status stays 0)
    what: str  # a short name: settings, key, host key, server, web, disk, timer
    message: str
    fix: str = ""

    def __str__(self) -> str:
        fix = f"; fix: {self.fix}" if self.fix else ""
        return f"{self.status:<5} {self.what}: {self.message}{fix}"


# --- the individual checks ----------------------------------------------------------------


def _sync_account() -> pwd.struct_passwd | None:
    """The account the sync service runs as, when this host has it and we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYNC_USER)
    except KeyError:
        return None


def _readable_by(st: os.stat_result, account: pwd.struct_passwd) -> bool:
    if st.st_uid == account.pw_uid:
        return bool(st.st_mode & stat.S_IRUSR)
    groups = {account.pw_gid} | {g.gr_gid for g in _groups_of(account.pw_name)}
    if st.st_gid in groups:
        return bool(st.st_mode & stat.S_IRGRP)
    return bool(st.st_mode & stat.S_IROTH)


def _groups_of(name: str) -> list:
    import grp

    return [g for g in grp.getgrall() if name in g.gr_mem]


def check_key(config: Config) -> list[CheckResult]:
    key = config.sync.identity_file
    try:
        st = key.stat()
    except FileNotFoundError:
        return [CheckResult(FAIL, "key", f"{key} does not exist",
                       f"ssh-keygen -t ed25519 -N '' -f {key}, then authorize {key}.pub on "
                       "the server (library-syncer server authorize)")]
    except PermissionError:
        return [CheckResult(FAIL, "key", f"{key}: permission denied", "run check as root")]
    if not stat.S_ISREG(st.st_mode):
        return [CheckResult(FAIL, "key", f"{key} is not a file", "point sync.identity_file at the "
                       "private key file")]
    mode = stat.S_IMODE(st.st_mode)
    if mode & (stat.S_IRWXO | stat.S_IWGRP | stat.S_IXGRP):
        return [CheckResult(FAIL, "key", f"{key} has mode {mode:04o}: others can read or change it",
                       f"chmod 640 {key}")]
    if st.st_uid == os.geteuid() and mode & stat.S_IRWXG and os.geteuid() != 0:
        return [CheckResult(FAIL, "key", f"{key} has mode {mode:04o} and ssh refuses an own key "
                       "readable by the group", f"chmod 600 {key}")]
    account = _sync_account()
    if account is not None and not _readable_by(st, account):
        return [CheckResult(FAIL, "key", f"{key}: the sync runs as {SYNC_USER}, who cannot read it",
                       f"chgrp {SYNC_USER} {key} && chmod 640 {key}")]
    if account is None and not os.access(key, os.R_OK):
        return [CheckResult(FAIL, "key", f"{key} is not readable by this user",
                            "run check as root")]
    owner = _name(pwd.getpwuid, st.st_uid)
    return [CheckResult(OK, "key", f"{key} ({mode:04o}, owner {owner})")]


def _name(lookup: Callable, number: int) -> str:
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def _each_upstream(check: Callable[[Config], list[CheckResult]]
                   ) -> Callable[[Config], list[CheckResult]]:
    """A client check run once per upstream (sync.upstreams, or the one sync.peer)."""
    from dataclasses import replace

    def every(config: Config) -> list[CheckResult]:
        return [result for upstream in config.sync.upstream_list() for result in
                check(replace(config, sync=config.sync.for_upstream(upstream)))]

    every.__name__ = check.__name__
    return every


def check_host_key(config: Config) -> list[CheckResult]:
    several = len(config.sync.upstream_list()) > 1
    return _each_upstream(lambda one: _check_host_key(one, several))(config)


def check_server(config: Config) -> list[CheckResult]:
    return _each_upstream(_check_server)(config)


def _check_host_key(config: Config, several: bool = False) -> list[CheckResult]:
    from ..sync import ssh

    known = config.sync.known_hosts
    pattern = ssh.host_pattern(config.sync)
    pick = f" --peer {config.sync.peer} --port {config.sync.port}" if several else ""
    fix = f"library-syncer trust-host{pick} --fingerprint SHA256:… (the server shows it: " \
          "library-syncer server keys)"
    try:
        with open(known, "rb"):
            pass
    except PermissionError:
        return [CheckResult(FAIL, "host key", f"{known}: permission denied", "run check as root")]
    except OSError:
        return [CheckResult(FAIL, "host key", f"{known} does not exist: the server's host key is "
                       "not known", fix)]
    try:
        result = execute.run(["ssh-keygen", "-F", pattern, "-f", str(known)], capture=True,
                             check=False)
    except SyncerError as error:
        return [CheckResult(FAIL, "host key", str(error), "install openssh-client")]
    if result.returncode != 0 or not result.output.strip():
        return [CheckResult(FAIL, "host key", f"no key for {pattern} in {known}", fix)]
    return [CheckResult(OK, "host key", f"{pattern} is in {known}")]


def _check_server(config: Config) -> list[CheckResult]:
    """SSH handshake + rrsync listing: the server answers and accepts this site's key."""
    job = runner.Job(rsync.list_argv(config.sync), capture=True,
                     timeout=config.sync.connect_timeout + 30)
    target = f"{config.sync.user}@{config.sync.peer}:{config.sync.port}"
    try:
        result = runner.run(job)
    except SyncerError as error:
        return [CheckResult(FAIL, "server", f"{target}: {error}", "check sync.peer and sync.port")]
    if result.returncode == 0:
        entries = [line for line in result.output.splitlines() if line.strip()]
        return [CheckResult(OK, "server", f"{target} answers and accepts the key "
                       f"({len(entries)} entr{'y' if len(entries) == 1 else 'ies'} at "
                       f"{config.sync.remote_path})")]
    return [_server_failure(config, target, result)]


def _server_failure(config: Config, target: str, result: execute.CommandResult) -> CheckResult:
    from ..sync import ssh

    last = result.tail[-1] if result.tail else f"exit status {result.returncode}"
    key, pattern = config.sync.identity_file, ssh.host_pattern(config.sync)
    cause = ssh.diagnose(result.tail)
    if cause == "host_key_changed":
        return CheckResult(FAIL, "server", f"{target}: the server's host key has CHANGED",
                      "if the server was reinstalled, remove the old key (ssh-keygen -R "
                      f"'{pattern}' -f {config.sync.known_hosts}) and run library-syncer "
                      "trust-host; otherwise investigate")
    if cause == "host_key_unknown":
        return CheckResult(FAIL, "server", f"{target}: the server's host key is not known",
                      "library-syncer trust-host --fingerprint SHA256:…")
    if cause == "auth":
        return CheckResult(FAIL, "server", f"{target}: the server refused this site's key ({key})",
                      f"on the server: library-syncer server authorize {key}.pub --site NAME")
    if cause == "unreachable":
        said = next((line for line in result.tail if any(p in line for p in ssh.UNREACHABLE)),
                    last)
        return CheckResult(FAIL, "server", f"{target} does not answer ({said})",
                      "start the server role there (systemctl start library-syncer-sshd) or "
                      "correct sync.peer / sync.port")
    return CheckResult(FAIL, "server", f"{target}: listing failed: {last}",
                  "check that sync.remote_path exists on the server; details: "
                  "library-syncer --debug check")


def check_web(config: Config) -> list[CheckResult]:
    try:
        text = caddy.render_caddyfile(config, warn=False)
    except ConfigError as error:
        return [CheckResult(FAIL, "web", str(p), "edit the [web] section") for p in error.problems]
    except SyncerError as error:
        return [CheckResult(FAIL, "web", str(error), "install caddy or set web.caddy")]
    with tempfile.TemporaryDirectory(prefix="library-syncer-check.") as tmp:
        path = Path(tmp) / "Caddyfile"
        path.write_text(text)
        env = dict(os.environ, XDG_DATA_HOME=tmp, XDG_CONFIG_HOME=tmp, HOME=tmp)
        try:
            caddy.validate(config, path, env=env)
        except ConfigError as error:
            return [CheckResult(FAIL, "web", error.problems[0].expected, "edit the [web] section")]
        except SyncerError as error:
            return [CheckResult(FAIL, "web", str(error), "install caddy or set web.caddy")]
    results = [CheckResult(OK, "web",
                           f"Caddyfile validates; vCenter URL {caddy.subscription_url(config)}")]
    web = config.web
    if web.auth_password_file is not None and not web.allow:
        port = web.http_port if web.tls == "off" else web.https_port
        results.append(CheckResult(
            WARN, "web", f"basic authentication without web.allow: anyone who reaches port "
            f"{port} can make Caddy check passwords (a CPU-bound bcrypt per failed try)",
            'set web.allow to the vCenter addresses, e.g. allow = ["192.0.2.7/32"]'))
    return results


def _library_size(config: Config) -> int:
    """Bytes of the published snapshot (what a full re-download would need at worst)."""
    total = 0
    published = config.published_dir
    if not published.exists():
        return 0
    for root, _dirs, files in os.walk(published, followlinks=False):
        for name in files:
            with contextlib.suppress(OSError):  # a file removed while we count
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def check_disk(config: Config) -> list[CheckResult]:
    state = config.state_dir
    existing = next((p for p in [state, *state.parents] if p.exists()), Path("/"))
    usage = shutil.disk_usage(existing)
    need = config.sync.min_free_space
    if usage.free < need:
        return [CheckResult(FAIL, "disk", f"{format_bytes(usage.free)} free on {existing}, "
                       f"sync.min_free_space is {format_bytes(need)}",
                       "free space there or move paths.state_dir to a larger disk")]
    size = _library_size(config)
    note = f"; the published library is {format_bytes(size)}" if size else ""
    if size and usage.free < size:
        # Unchanged files are hard links: only changed ones take room. A full rewrite may not fit.
        note += " (a sync rewriting every file would not fit)"
    return [CheckResult(OK, "disk", f"{format_bytes(usage.free)} free on {existing}{note}")]


def check_timer(config: Config) -> list[CheckResult]:
    if not systemd.systemd_running():
        return [CheckResult(SKIP, "timer", "systemd is not running here: cannot see whether "
                       f"{timer.TIMER} is enabled")]
    try:
        state = execute.run([systemd.SYSTEMCTL, "is-enabled", timer.TIMER], capture=True,
                            check=False).output.strip()
    except SyncerError as error:
        return [CheckResult(SKIP, "timer", f"cannot ask systemd: {error}")]
    if state == "enabled":
        return [CheckResult(OK, "timer", f"{timer.TIMER} is enabled")]
    return [CheckResult(FAIL, "timer", f"{timer.TIMER} is {state or 'not installed'}",
                   f"systemctl enable --now {timer.TIMER}")]


WEB_UNIT = "library-syncer-web.service"
DEBIAN_CADDY_UNIT = "caddy.service"  # enabled by Debian's caddy package; serves port 80


def _is_active(unit: str) -> str:
    return execute.run([systemd.SYSTEMCTL, "is-active", unit], capture=True,
                       check=False).output.strip()


def check_web_service(config: Config) -> list[CheckResult]:
    if not systemd.systemd_running():
        return [CheckResult(SKIP, "web service",
                            f"systemd is not running here: cannot see {WEB_UNIT}")]
    try:
        ours, debians = _is_active(WEB_UNIT), _is_active(DEBIAN_CADDY_UNIT)
    except SyncerError as error:
        return [CheckResult(SKIP, "web service", f"cannot ask systemd: {error}")]
    if ours == "active":
        return [CheckResult(OK, "web service", f"{WEB_UNIT} is active")]
    message, fix = f"{WEB_UNIT} is {ours or 'not installed'}", f"systemctl enable --now {WEB_UNIT}"
    if debians == "active":
        # Installing caddy starts Debian's own instance, which holds port 80 first.
        message += f"; Debian's {DEBIAN_CADDY_UNIT} is running and holds the HTTP port"
        fix = f"systemctl disable --now caddy && {fix}"
    return [CheckResult(FAIL, "web service", message, fix)]


def check_report(config: Config) -> list[CheckResult]:
    """The last run's report upstream: refused by our own server is a fault to fix (the
    origin's fleet view misses this site); an upstream that takes none (the Docker-based
    original) is said, not failed."""
    from ..sync import report

    if not config.sync.report:
        return []
    last = report.last_report(config)
    if last is None:
        return [CheckResult(SKIP, "report", "no report sent yet (one goes upstream after each "
                                            "run)")]
    to, said = last.get("to", "?"), last.get("said") or ""
    if last.get("outcome") == report.REFUSED:
        return [CheckResult(FAIL, "report", f"{to} refused this site's last report ({said})",
                            "see why on that server: journalctl -t library-syncer-dispatch "
                            "(a key not bound to a site: library-syncer server keys)")]
    if last.get("outcome") == report.FAILED:
        return [CheckResult(WARN, "report", f"the last report could not be sent to {to} "
                                            f"({said})",
                            "the next run sends one again; if this stays, check the network "
                            "to that server")]
    if last.get("outcome") == report.NOT_TAKEN:
        return [CheckResult(WARN, "report", f"{to} did not take the last report ({said}); "
                                            "the origin's fleet view does not show this site",
                            "normal against the Docker-based original server; else update "
                            "library-syncer-server there")]
    return [CheckResult(OK, "report", f"last report taken by {to} at {last.get('at')}")]


def check_vcenter(config: Config) -> list[CheckResult]:
    """[vcenter] (sync/vcenter.py): the password file, the last sync request, and what vCenter's
    subscribed library reads compared with what this site serves (log in, read, log out: nothing
    is changed there). vCenter unreachable is a warning: this site works without it."""
    from ..sync import vcenter

    vc = config.vcenter
    if not vc.enabled or vc.password_file is None:
        return []
    path, account = vc.password_file, _sync_account()
    problem = vcenter.password_problem(path)
    if problem is None and account is not None and path.stat().st_uid != account.pw_uid:
        problem = f"{path} is not owned by {SYNC_USER}, who runs the sync and must read it"
    if problem:
        create = "" if path.exists() else f"install -m 600 /dev/null {path}, write the " \
                                          "password in it, "
        return [CheckResult(FAIL, "vcenter", problem, f"{create}chown {SYNC_USER}: {path} && "
                                                      f"chmod 600 {path}")]
    results, state = [], vcenter.read_state(config)
    if state.get("pending") and state.get("outcome") == vcenter.FAILED:
        results.append(CheckResult(WARN, "vcenter", f"the last sync request failed at "
                                   f"{state.get('at')}: {state.get('said')}",
                                   "it is made again at the next run; fix what it says"))
    try:
        sub = vcenter.subscription(config)
    except vcenter.VcenterError as error:
        return [*results, CheckResult(WARN, "vcenter", str(error),
                                      "check the [vcenter] settings and the network to vCenter")]
    site_url, name = caddy.subscription_url(config), f'"{sub.name}" ({sub.library_id})'
    if sub.url and not _same_url(sub.url, site_url):
        results.append(CheckResult(WARN, "vcenter", f"vCenter's library {name} subscribes to "
                                   f"{sub.url}, this site serves {site_url}",
                                   "correct the library's subscription URL in vCenter, or "
                                   "web.hostname and the ports here"))
    site_print = certificate.tls_thumbprint(config) if site_url.startswith("https:") else None
    if site_print and sub.thumbprint and _bare(sub.thumbprint) != _bare(site_print):
        return [*results, CheckResult(FAIL, "vcenter", f"vCenter's library {name} trusts the "
                                      f"certificate {sub.thumbprint}, this site serves "
                                      f"{site_print}: its syncs fail",
                                      "in vCenter, edit the library's subscription and accept "
                                      "this site's certificate")]
    compared = ", same certificate" if site_print and sub.thumbprint else ""
    return [*results, CheckResult(OK, "vcenter", f"{vc.address}: {vc.user} logs in; library "
                                  f"{name} subscribes to {sub.url or '?'}{compared}")]


def _bare(thumbprint: str) -> str:
    return thumbprint.replace(":", "").upper()


def _same_url(a: str, b: str) -> bool:
    """The same URL up to the case of scheme and host and a default port left out."""
    from urllib.parse import urlsplit

    def key(url: str) -> tuple[str, str, int | None, str]:
        parts = urlsplit(url.strip())
        try:
            port = parts.port or {"http": 80, "https": 443}.get(parts.scheme.lower())
        except ValueError:
            port = None
        return parts.scheme.lower(), (parts.hostname or "").rstrip("."), port, parts.path

    return key(a) == key(b)


# The last run's outcome as a check line: (status, what to do).
_LAST_RUN = {
    "unsigned": (FAIL, "an upstream altered or withheld the origin's signature or bytes, or the "
                       "origin's key changed: see docs/trust.md (a new origin key is pinned in "
                       "sync.origin_keys)"),
    "stale": (WARN, "the upstream is behind what this site publishes (a stale relay, a "
                    "restored backup): the site keeps its library; see journalctl -u "
                    "library-syncer"),
    "network": (WARN, "the next run retries; if this stays, check the link and the server"),
    "interrupted": (WARN, "the next run resumes where it stopped"),
    "verify": (WARN, "the other items were published; fix the items named on the server"),
}


def check_last_run(config: Config) -> list[CheckResult]:
    """The last run: what it published, or why it did not (a refused revision is a failure:
    it may be an attack, and it stops this site from following the origin)."""
    from ..sync import last_run

    try:
        record = last_run.read(config)
    except (OSError, ValueError, TypeError):
        return [CheckResult(WARN, "last run", f"{last_run.path(config)} is unreadable",
                            "the next run writes it again")]
    if record is None:
        return [CheckResult(SKIP, "last run", "no run yet (systemctl start library-syncer)")]
    revision = f"revision {record.serial} of {record.origin}" if record.origin else \
        "an untraced library"
    if record.outcome in ("ok", "settling"):
        return [CheckResult(OK, "last run", f"{record.outcome} at {record.finished}; publishes "
                                            f"{revision}")]
    status, fix = _LAST_RUN.get(record.outcome, (FAIL, "journalctl -u library-syncer"))
    return [CheckResult(status, "last run", f"{record.outcome} at {record.finished}: "
                                            f"{printable(record.message)[:300]} (still publishes "
                                            f"{revision})", fix)]


def check_trust(config: Config) -> list[CheckResult]:
    """Whether this site verifies the origin's signature (docs/trust.md); without pinned keys
    it works as before, with a warning (the Docker-based original signs nothing)."""
    keys = config.sync.origin_keys
    if keys is None:
        return [CheckResult(WARN, "trust", "revisions are not verified against the origin's key "
                                           "(sync.origin_keys is empty): a relay or a writer of "
                                           "the origin's library could alter what this site "
                                           "publishes",
                            "pin the origin's key (library-syncer server keygen prints the "
                            "line; docs/trust.md)")]
    try:
        names = sorted({line.split()[0] for line in keys.read_text().splitlines()
                        if line.strip() and not line.startswith("#")})
    except (OSError, UnicodeDecodeError, IndexError) as error:
        return [CheckResult(FAIL, "trust", f"sync.origin_keys: {keys} is unreadable ({error})",
                            "write the origin's allowed-signers line there (docs/trust.md)")]
    if not names:
        return [CheckResult(FAIL, "trust", f"sync.origin_keys: {keys} names no origin key",
                            "write the origin's allowed-signers line there (docs/trust.md)")]
    return [CheckResult(OK, "trust", f"publishes only revisions signed by a key {keys} pins "
                                     f"for {', '.join(names)}")]


SCRUB_STALE_DAYS = 45  # library-syncer-scrub.timer runs monthly, plus its random delay


def check_scrub(config: Config) -> list[CheckResult]:
    """The last scrub of the published files (sync/scrub.py): never run, nothing rotted, rot
    repaired (the disk deserves a look), or rotted files still waiting for a run to pull them
    again."""
    from ..sync import repair, scrub_record
    from ..sync.layout import Layout

    last, layout = scrub_record.read(config), Layout.of(config)
    waiting = {*repair.pending(layout), *(last.unrepaired if last else ())}
    again = "library-syncer sync (it pulls them again); then library-syncer sync --scrub"
    if waiting:
        found = repair.since(layout) or (last.started if last else None)
        since = f" since {found}" if found else ""
        why = f" ({last.message})" if last and last.message else ""
        return [CheckResult(FAIL, "scrub", f"{len(waiting)} rotted file(s) wait to be pulled "
                                           f"again{since}{why}", again)]
    if last is None:
        return [CheckResult(SKIP, "scrub", "never run (library-syncer-scrub.timer reads every "
                                           "published file monthly; now: library-syncer sync "
                                           "--scrub)")]
    read = f"{last.files:,} files, {format_bytes(last.bytes)} read at {last.finished}"
    disk = "the disk of paths.state_dir may be failing: smartctl -a, the kernel log"
    if last.rotted and last.repair == scrub_record.REPAIRED:
        return [CheckResult(WARN, "scrub", f"{len(last.rotted)} rotted file(s), repaired in "
                                           f"snapshot {last.repair_snapshot} ({read})", disk)]
    if last.rotted:  # a later run pulled them again; no scrub has read them since
        return [CheckResult(WARN, "scrub", f"{len(last.rotted)} rotted file(s) found ({read}), "
                                           "pulled again by a later run",
                            f"{disk}; library-syncer sync --scrub reads them again")]
    if _days_since(last.finished) > SCRUB_STALE_DAYS:
        return [CheckResult(WARN, "scrub", f"the last scrub is older than {SCRUB_STALE_DAYS} "
                                           f"days ({read})",
                            "systemctl enable --now library-syncer-scrub.timer")]
    return [CheckResult(OK, "scrub", f"nothing rotted ({read})")]


def _days_since(iso: str) -> float:
    from datetime import datetime, timezone

    try:
        moment = datetime.fromisoformat(iso)
    except ValueError:
        return float("inf")
    if moment.tzinfo is None:
        return float("inf")
    return (datetime.now(timezone.utc) - moment).total_seconds() / 86400


CLIENT_CHECKS: list[Callable[[Config], list[CheckResult]]] = [
    check_key, check_host_key, check_server, check_web, check_web_service, check_disk,
    check_timer, check_trust, check_last_run, check_report, check_vcenter, check_scrub,
]

# --- the server role ----------------------------------------------------------------------

SERVER_UNIT = "library-syncer-sshd.service"


def is_server(config: Config) -> bool:
    """The server role is set up here (its package creates these; a client has neither)."""
    return config.server.config_dir.is_dir() or config.server.library.is_dir()


def check_server_account(config: Config) -> list[CheckResult]:
    from ..server import sshd

    try:
        account = sshd.check_account(config)
    except SyncerError as error:
        return [CheckResult(FAIL, "account", error.message, error.hint or "")]
    return [CheckResult(OK, "account", f"{account.pw_name} (UID {account.pw_uid}, shell "
                   f"{account.pw_shell})")]


def check_library(config: Config) -> list[CheckResult]:
    library = config.server.library
    if not library.is_dir():
        return [CheckResult(FAIL, "library", f"{library} is not a folder",
                       "create it and put the templates there, or set server.library")]
    mode = stat.S_IMODE(library.stat().st_mode)
    if not mode & stat.S_IXOTH and library.stat().st_uid != _uid_of(config.server.user):
        return [CheckResult(FAIL, "library", f"{library} ({mode:04o}) cannot be entered by "
                       f"{config.server.user}", f"chmod 755 {library}")]
    items = [p for p in library.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return [CheckResult(OK, "library", f"{library}: {len(items)} item folder"
                   f"{'' if len(items) == 1 else 's'}"), *_library_symlinks(library)]


def _library_symlinks(library: Path) -> list[CheckResult]:
    """One warning per symlink in the library (capped). Sites get a symlink as a symlink (or
    not at all), and rrsync names what a link outside the library points to in its errors."""
    links: list[Path] = []
    for root, dirs, files in os.walk(library, followlinks=False):
        links += [Path(root, name) for name in sorted(dirs + files)
                  if os.path.islink(os.path.join(root, name))]
    real = library.resolve()
    results = []
    for link in links[:SYMLINKS_SHOWN]:
        target = os.readlink(link)
        try:
            outside = not link.resolve().is_relative_to(real)
        except (OSError, RuntimeError):  # a loop
            outside = True
        where = "outside the library" if outside else "inside the library"
        results.append(CheckResult(
            WARN, "library", f"symlink {link} -> {target} ({where}): sites do not get its "
            "content, and rrsync's error messages name its target",
            "replace it with the file or folder itself, or remove it"))
    if len(links) > SYMLINKS_SHOWN:
        results.append(CheckResult(WARN, "library", f"{len(links) - SYMLINKS_SHOWN} more "
                                   f"symlink{'' if len(links) == SYMLINKS_SHOWN + 1 else 's'} "
                                   f"in {library}", "find " + str(library) + " -type l"))
    return results


def _uid_of(user: str) -> int | None:
    try:
        return pwd.getpwnam(user).pw_uid
    except KeyError:
        return None


def check_sites(config: Config) -> list[CheckResult]:
    from ..server import sshd

    sites = sshd.list_keys(config)
    if not sites:
        return [CheckResult(FAIL, "sites", f"no site is authorized in "
                       f"{sshd.authorized_keys_path(config)}",
                       "library-syncer server authorize SITE.pub --site NAME")]
    names = ", ".join(s.site for s in sites[:5]) + (" …" if len(sites) > 5 else "")
    return [CheckResult(OK, "sites", f"{len(sites)} authorized: {names}")]


def check_fleet(config: Config) -> list[CheckResult]:
    """What the sites reported (server/reports.py, as `server sites` shows it): a site silent
    for longer than its schedule allows (OVERDUE) is a warning, not a fault of this host."""
    from ..server import reports

    try:
        origin, current, rows = reports.fleet(config.server)
    except OSError as error:
        return [CheckResult(SKIP, "fleet", f"cannot read the site reports: {error.strerror}")]
    if not rows:
        return [CheckResult(SKIP, "fleet", "no site has reported yet (each reports after its "
                                           "runs)")]
    overdue = [" → ".join((origin, *row.path)) for row in rows if row.overdue]
    if overdue:
        shown = ", ".join(overdue[:5]) + (" …" if len(overdue) > 5 else "")
        return [CheckResult(WARN, "fleet", f"{len(overdue)} of {len(rows)} sites OVERDUE: "
                                           f"{shown}",
                            "library-syncer server sites; on a silent site: library-syncer "
                            "check and journalctl -u library-syncer")]
    behind = sum(1 for row in rows if row.lag)
    revision = f" of revision {current[1]}" if current else ""
    sites = f"{len(rows)} site{'' if len(rows) == 1 else 's'}"
    return [CheckResult(OK, "fleet", f"{sites} reported, none overdue; {behind} behind"
                                     f"{revision}")]


def check_signing(config: Config) -> list[CheckResult]:
    """The origin signs its revisions (docs/trust.md); unsigned ones still work (a warning)."""
    from ..base.statement import StatementRefused
    from ..server import signing, trace

    key = config.server.signing_key
    if trace.is_relay(config):
        return [CheckResult(SKIP, "signing", "a relay passes the origin's signed statements "
                                             "on; it signs nothing")]
    if key is None:
        return [CheckResult(WARN, "signing", "revisions are not signed (server.signing_key is "
                            "empty): sites cannot tell this origin's revisions from what a "
                            "relay or a writer of the library made up",
                            "library-syncer server keygen, then pin its line on every site "
                            "(docs/trust.md)")]
    try:
        found = signing.own_statement(config.server.library, key, trace.origin_name(config))
    except SyncerError as error:
        return [CheckResult(FAIL, "signing", error.message, error.hint or "")]
    except StatementRefused as refused:
        return [CheckResult(FAIL, "signing", f"{refused}", "systemctl start "
                            "library-syncer-trace.service; journalctl -u "
                            "library-syncer-trace.service")]
    return [CheckResult(OK, "signing", f"revision {found.serial} signed by {found.key}, valid "
                                       f"until {found.valid_until}")]


def check_sshd_config(config: Config) -> list[CheckResult]:
    from ..server import sshd

    missing = [p for p in sshd.host_key_paths(config) if not p.exists()]
    if missing:
        return [CheckResult(FAIL, "sshd", f"host key {missing[0]} is missing",
                       f"systemctl restart {SERVER_UNIT} (creates missing keys) or "
                       "library-syncer server render --host-keys")]
    problem = sshd.strict_modes_problem(config)
    if problem:
        return [CheckResult(FAIL, "sshd", problem, "move server.config_dir, or chmod go-w the "
                            "folder named")]
    if os.geteuid() != 0:
        return [CheckResult(SKIP, "sshd", "sshd -t needs root to read the host keys")]
    try:
        sshd.check_rendered(config)
    except SyncerError as error:
        return [CheckResult(FAIL, "sshd", error.message, error.hint or "")]
    return [CheckResult(OK, "sshd", f"the rendered sshd_config passes sshd -t (port "
                   f"{config.server.port})")]


def check_server_unit(config: Config) -> list[CheckResult]:
    from ..server.listener import SOCKET_UNIT

    if not systemd.systemd_running():
        return [CheckResult(SKIP, "service", f"systemd is not running here: cannot see whether "
                       f"{SERVER_UNIT} runs")]
    state = _is_active(SERVER_UNIT)
    if state != "active":
        return [CheckResult(FAIL, "service", f"{SERVER_UNIT} is {state or 'unknown'}",
                            f"systemctl enable --now {SERVER_UNIT}; journalctl -u {SERVER_UNIT} "
                            f"-u {SOCKET_UNIT}")]
    if _is_active(SOCKET_UNIT) != "active":
        # Started before the socket unit existed (an upgrade): sshd opened its own socket.
        return [CheckResult(WARN, "service", f"{SERVER_UNIT} is active but listens by itself, "
                            f"not through {SOCKET_UNIT} (no congestion control of its own)",
                            f"systemctl reload {SERVER_UNIT}")]
    return [CheckResult(OK, "service", f"{SERVER_UNIT} is active, on {SOCKET_UNIT}")]


def _same_address(found: str, wanted: str) -> bool:
    import ipaddress

    return ipaddress.ip_address(found) == ipaddress.ip_address(wanted)


def check_listener(config: Config) -> list[CheckResult]:
    """The dedicated sshd's listening sockets as the kernel has them: on the [server] addresses,
    and with the congestion control the sites' transfers are sent with (server/listener.py)."""
    server = config.server
    try:
        sockets = sockdiag.tcp_sockets(server.port)
    except OSError as error:
        return [CheckResult(SKIP, "listener", f"cannot read the kernel's sockets: {error}")]
    listening = [s for s in sockets if s.listening]
    if not listening:
        return [CheckResult(SKIP, "listener", f"nothing listens on port {server.port}")]
    wanted = list(server.listen) or ["::", "0.0.0.0"]  # [] = every address
    ours = [s for s in listening if any(_same_address(s.local, w) for w in wanted)]
    missing = [w for w in server.listen if not any(_same_address(s.local, w) for s in ours)]
    apply = f"systemctl reload {SERVER_UNIT}"
    if missing or not ours:
        held = ", ".join(sorted({s.local for s in listening}))
        return [CheckResult(WARN, "listener", f"port {server.port} is open on {held}, not on "
                            f"{', '.join(missing or server.listen) or 'every address'} as "
                            "server.listen says", apply)]
    where = ", ".join(sorted({f"[{s.local}]:{server.port}" if ":" in s.local
                              else f"{s.local}:{server.port}" for s in ours}))
    return [_congestion_result(server.congestion_control, where, ours,
                               [s for s in sockets if not s.listening], apply)]


AVAILABLE_CONGESTION = Path("/proc/sys/net/ipv4/tcp_available_congestion_control")


def _congestion_result(wanted: str, where: str, listeners: list[sockdiag.TcpSocket],
                       connections: list[sockdiag.TcpSocket], apply: str) -> CheckResult:
    """Which algorithm the listener hands the connections it accepts, against the setting; the
    connections open now, counted by what they really use."""
    used = ", ".join(sorted({s.congestion for s in listeners}))
    counts: dict[str, int] = {}
    for connection in connections:
        counts[connection.congestion] = counts.get(connection.congestion, 0) + 1
    now = "; connections now: " + ", ".join(f"{n} {name}" for name, n in
                                            sorted(counts.items())) if counts else ""
    if not wanted:
        return CheckResult(OK, "listener", f"{where}: sites' transfers sent with the system's "
                           f'default, {used} (server.congestion_control is ""){now}')
    if used != wanted:
        try:
            offered = AVAILABLE_CONGESTION.read_text().split()
        except OSError:
            offered = []
        fix = apply if not offered or wanted in offered else (
            f"this kernel offers {' '.join(offered)}: load tcp_{wanted} (modprobe) and run "
            f'{apply}, or set server.congestion_control to one of those or ""')
        return CheckResult(WARN, "listener", f"{where}: sites' transfers sent with {used}, not "
                           f"{wanted} as server.congestion_control says{now}", fix)
    if any(name != wanted for name in counts):
        return CheckResult(WARN, "listener", f"{where}: sites' transfers sent with {wanted}{now} "
                           "(a route's congctl lock decides for the others)",
                           "ip route show | grep congctl")
    return CheckResult(OK, "listener", f"{where}: sites' transfers sent with {wanted}{now}")


SERVER_CHECKS: list[Callable[[Config], list[CheckResult]]] = [
    check_server_account, check_library, check_sites, check_fleet, check_signing,
    check_sshd_config, check_server_unit, check_listener,
]


def run_checks(config_file: Path | None) -> list[CheckResult]:
    try:
        config = config_module.load(config_file)
    except ConfigError as error:
        # A file-level problem (missing, unreadable) already says what to do.
        return [CheckResult(FAIL, "settings", str(p), "edit the file, then library-syncer config "
                       "validate" if p.key else "") for p in error.problems]
    results = [CheckResult(OK, "settings", f"{config.file} is valid")]
    checks: list[Callable[[Config], list[CheckResult]]] = []
    if config.sync.upstream_list():
        checks += CLIENT_CHECKS
    if is_server(config):
        checks += SERVER_CHECKS
    if not checks:
        results.append(CheckResult(FAIL, "settings", f"{config.file}: sync.peer is not set (and no "
                              "server role here)", "set it to the server's host name"))
        return results
    for check in checks:
        if check is check_server and any(r.what == "key" and r.status == FAIL for r in results):
            # ssh would refuse or fail to read the key: its error would only blur the line above
            results.append(CheckResult(SKIP, "server", "not contacted until the key problem above "
                                  "is fixed"))
            continue
        try:
            results += check(config)
        except SyncerError as error:
            results.append(CheckResult(FAIL, check.__name__.removeprefix("check_"), str(error)))
    return results
