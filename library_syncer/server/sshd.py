"""The server role: a dedicated, locked-down sshd whose only account can only run `rrsync -ro`.

Three things live in `server.config_dir` (default /etc/library-syncer/server, root-owned):
the instance's host keys, and `authorized_keys`, one line per site:

    restrict,command="/usr/bin/rrsync -ro /srv/library-syncer/library/" ssh-ed25519 AAAA… site=paris
    restrict,from="192.0.2.0/24",command="…" ssh-ed25519 AAAA… site=lyon     (authorize --from)

The `syncer` account cannot change that file (root owns it; sshd reads it through an absolute
`AuthorizedKeysFile`). The rendered sshd_config also forces the same command (`ForceCommand`), so
even a hand-added line without `command=` gets nothing but a read-only rsync. Every time the config
is rendered the key lines are rewritten from (site, key) so they always carry the current library
path and rrsync; a line that cannot be understood stops the render instead of being trusted.
A site's source restriction (`from="…"`) is kept; any other option is dropped with a warning
naming the site (`restrict` and the forced command already take away what the usual ones do).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
import pwd
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ..base import execute, fsutil, render, sshkeys
from ..base.config import Config, ServerConfig
from ..base.errors import CommandFailed, ConfigError, ConfigProblem, SyncerError
from ..base.sshkeys import KeyRefused

log = logging.getLogger(__name__)

AUTHORIZED_KEYS = "authorized_keys"
HOST_KEY_TYPES = ("ed25519", "rsa")  # ed25519 for current clients, RSA for old ones
SITE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
SITE_EXPECTED = "letters, digits, '.', '_' or '-' (up to 63, starting with a letter or digit)"
SITE_PREFIX = "site="
RELAY_MARK = "role=relay"  # after site=: the key may forward its sites' reports (reports.py)



# Options a line may carry that `restrict` + the forced command make redundant: dropped
# silently (the Docker version's lines have them). Any other option but from= is reported.
_REDUNDANT_OPTIONS = frozenset({"restrict", "command", "no-pty", "no-port-forwarding",
                                "no-agent-forwarding", "no-x11-forwarding", "no-user-rc"})
# An sshd from= pattern list as we write it back: addresses, networks, host name patterns,
# `!` negations; nothing that could end the quoted option or be read as another one.
_FROM_PATTERN = re.compile(r"[A-Za-z0-9.:/*?!_%-]+")
_OPTION_RE = re.compile(r'([A-Za-z0-9-]+)(?:=("(?:\\.|[^"\\])*"|[^,]*))?(?:,|$)')


@dataclass(frozen=True)
class SiteKey:
    """One authorized site: its name, its public key (type + base64 blob) and the source
    addresses it may connect from (sshd's from=; empty: anywhere)."""

    site: str
    key_type: str
    blob: str
    sources: tuple[str, ...] = ()
    dropped: tuple[str, ...] = field(default=(), compare=False)  # options read, not kept
    relay: bool = False  # authorized as a relay: may forward downstream reports

    @property
    def fingerprint(self) -> str:
        return sshkeys.fingerprint(self.blob)

    def line(self, server: ServerConfig) -> str:
        source = f'from="{",".join(self.sources)}",' if self.sources else ""
        return (f'restrict,{source}command="{forced_command(server)}" '
                f"{self.key_type} {self.blob} {SITE_PREFIX}{self.site}"
                f"{' ' + RELAY_MARK if self.relay else ''}")


def parse_sources(text: str, where: str = "--from") -> tuple[str, ...]:
    """`--from 192.0.2.0/24,2001:db8::/32`: addresses or networks (host bits zero)."""
    sources = []
    for part in text.split(","):
        part = part.strip()
        try:
            network = ipaddress.ip_network(part, strict=True)
        except ValueError:
            raise KeyRefused(f'{where}: found "{part}", expected an address or network such as '
                             '192.0.2.0/24 (comma-separated; host bits zero)') from None
        sources.append(str(network.network_address) if "/" not in part else str(network))
    return tuple(sources)


def _options(line: str, key_type: str) -> list[tuple[str, str | None]]:
    """The (name, value) options before the key type of an authorized_keys line."""
    words = sshkeys.split_words(line)
    index = words.index(key_type) if key_type in words else 0
    if index == 0:
        return []
    text, options, position = words[index - 1], [], 0
    while position < len(text):
        match = _OPTION_RE.match(text, position)
        if not match or match.end() == position:
            return [(text, None)]  # not understood: reported as dropped
        value = match.group(2)
        if value is not None and value.startswith('"'):
            value = value[1:-1]
        options.append((match.group(1), value))
        position = match.end()
    return options


def _server(config: Config | ServerConfig) -> ServerConfig:
    return config.server if isinstance(config, Config) else config


_SHELL_SAFE = re.compile(r"[A-Za-z0-9/._+:@,=~-]+")


def dispatcher_path(config: Config | ServerConfig) -> str:
    """server.dispatcher, or the library-syncer command beside the running Python
    (/usr/bin/library-syncer on Debian, .venv/bin/library-syncer in a checkout)."""
    server = _server(config)
    if server.dispatcher:
        return server.dispatcher
    beside = Path(sys.executable).parent / "library-syncer"
    return str(beside) if beside.is_file() else "/usr/bin/library-syncer"


def forced_command(config: Config | ServerConfig) -> str:
    """The only command a client can run: the dispatcher (server/dispatch.py), which execs
    `rrsync -ro <library>/` for a pull and stores a report for the key's site.

    sshd hands it to the login shell, so every path must be a plain word: a space would split
    it, a `;` or `$` would be shell syntax.
    """
    server = _server(config)
    values = [("server.dispatcher", dispatcher_path(server)), ("server.rrsync", server.rrsync),
              ("server.library", str(server.library)), ("server.state_dir", str(server.state_dir)),
              ("server.config_dir", str(server.config_dir))]
    if server.metrics_textfile is not None:
        values.append(("server.metrics_textfile", str(server.metrics_textfile)))
    if server.fleet_page is not None:
        values.append(("server.fleet_page", str(server.fleet_page)))
    for key, value in values:
        if not _SHELL_SAFE.fullmatch(value) or not value.startswith("/"):
            raise ConfigError(ConfigProblem(
                str(config.file) if isinstance(config, Config) else "settings", key,
                f'"{value}"', "an absolute path of letters, digits and / . _ + : @ , = ~ - "
                "(sshd runs the forced command through a shell)"))
    words = [dispatcher_path(server), "server", "dispatch", "--rrsync", server.rrsync,
             "--library", f"{str(server.library).rstrip('/')}/", "--state-dir",
             str(server.state_dir), "--keys", str(authorized_keys_path(server)),
             "--grace", f"{server.report_grace:.0f}"]
    if server.metrics_textfile is not None:
        words += ["--metrics-textfile", str(server.metrics_textfile)]
    if server.fleet_page is not None:
        words += ["--fleet-page", str(server.fleet_page)]
    return " ".join(words)


def authorized_keys_path(config: Config | ServerConfig) -> Path:
    return _server(config).config_dir / AUTHORIZED_KEYS


def host_key_paths(config: Config | ServerConfig) -> list[Path]:
    return [_server(config).config_dir / f"ssh_host_{kind}_key" for kind in HOST_KEY_TYPES]


# --- sshd_config ----------------------------------------------------------------------------


def render_sshd_config(config: Config | ServerConfig) -> str:
    """The instance's sshd_config (pure: reads nothing, writes nothing)."""
    server = _server(config)
    return render.render(
        "sshd_config.j2",
        server=server,
        listen=[f"[{a}]" if ":" in a else a for a in server.listen],
        host_keys=host_key_paths(server),
        authorized_keys=authorized_keys_path(server),
        forced_command=forced_command(server),
        login_grace_time=int(server.login_grace_time),
        client_alive_interval=int(server.client_alive_interval),
    )


def ensure_host_keys(config: Config | ServerConfig) -> list[Path]:
    """Create the instance's host keys when missing (never replaces one); return their paths."""
    server = _server(config)
    _ensure_config_dir(server)
    for path, kind in zip(host_key_paths(server), HOST_KEY_TYPES, strict=True):
        if path.exists():
            continue
        log.info("creating %s host key %s", kind, path)
        # Generated under a temporary name: an interrupted ssh-keygen leaves no half key behind
        # that the next start would take for a real one. The private key is renamed last.
        tmp = path.with_name(f".{path.name}.new")
        for leftover in (tmp, Path(f"{tmp}.pub")):
            leftover.unlink(missing_ok=True)
        argv = ["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", "library-syncer-server",
                "-f", str(tmp)]
        if kind == "rsa":
            argv[4:4] = ["-b", "3072"]
        execute.run(argv)
        os.chmod(tmp, 0o600)
        os.replace(f"{tmp}.pub", f"{path}.pub")
        os.replace(tmp, path)
        fsutil.fsync_dir(path.parent)
    return host_key_paths(server)


def _ensure_config_dir(server: ServerConfig) -> None:
    # sshd's StrictModes wants every directory above the keys owned by root and not writable by
    # others; 0755 keeps the public parts readable for `server keys` run by an operator.
    server.config_dir.mkdir(mode=0o755, parents=True, exist_ok=True)


def write_config(config: Config | ServerConfig, output: Path, *, host_keys: bool = False,
                 check: bool = False) -> None:
    """Render to `output` atomically; with `check`, `sshd -t` must accept it first."""
    server = _server(config)
    if host_keys:
        ensure_host_keys(server)
    sync_authorized_keys(server)
    ensure_report_dirs(server)
    text = render_sshd_config(server)
    problem = strict_modes_problem(server)
    if problem:
        log.warning("%s; move server.config_dir or fix the folder's mode (chmod go-w)", problem)
    output.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    if check:
        candidate = output.with_name(f".{output.name}.check")
        candidate.write_text(text)
        try:
            check_config(server, candidate, shown=output)
        finally:
            candidate.unlink(missing_ok=True)
    fsutil.write_if_changed(output, text, 0o644)


def ensure_report_dirs(config: Config | ServerConfig) -> None:
    """`<state_dir>/reports`: the one place the account may write (0755, owned by it; the
    package's tmpfiles.d line creates the default one so). Reports hold no secrets and a
    relay's sync reads them to forward them, hence readable. The folders of the metrics
    textfile and the fleet page, when missing, are made the account's too. Ownership is given
    only when this process may (root with CAP_CHOWN); otherwise a wrong owner is a warning:
    pulls work, reports cannot be stored until an operator runs the command it names."""
    from .reports import reports_dir
    from .sessions import SESSIONS_DIR

    server = _server(config)
    server.state_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    folders = [reports_dir(server.state_dir), server.state_dir / SESSIONS_DIR]
    for written in (server.metrics_textfile, server.fleet_page):  # by the account: its folder
        if written is not None and not written.parent.exists():
            folders.append(written.parent)
    try:
        uid = pwd.getpwnam(server.user).pw_uid
    except KeyError:
        uid = None  # check_account says so where it matters
    for folder in folders:
        folder.mkdir(mode=0o755, parents=True, exist_ok=True)
        if uid is None or os.geteuid() != 0 or folder.stat().st_uid == uid:
            continue
        try:
            os.chown(folder, uid, 0)
        except PermissionError:
            log.warning("%s: cannot give it to %s, so sites cannot report there; run "
                        "`install -d -o %s -m 0755 %s`", folder, server.user, server.user,
                        folder)


def strict_modes_problem(config: Config | ServerConfig) -> str | None:
    """Why sshd's StrictModes would refuse every key in authorized_keys, or None. sshd checks
    the file and each folder above it, up to /: owned by root (or the account), not writable
    by group or others, sticky bit or not (a server.config_dir under /tmp fails). `sshd -t`
    cannot see it: sites are refused at login ("bad ownership or modes")."""
    server = _server(config)
    keys = authorized_keys_path(server)
    try:
        uid = pwd.getpwnam(server.user).pw_uid
    except KeyError:
        uid = 0
    for path in (keys, *keys.parents):
        try:
            info = path.stat()
        except OSError:
            continue  # not there yet: render creates it root-owned 0755
        if info.st_uid not in (0, uid) or info.st_mode & 0o022:
            return (f"{path} (mode {info.st_mode & 0o7777:04o}, owner UID {info.st_uid}) is "
                    "writable by others or not root's: sshd's StrictModes refuses every key "
                    f"in {keys} below it")
    return None


def check_rendered(config: Config | ServerConfig) -> None:
    """`sshd -t` on the config these settings render to, in a temporary file (nothing
    installed); its complaint is the error, naming "(rendered sshd_config)"."""
    with tempfile.TemporaryDirectory(prefix="library-syncer-sshd.") as tmp:
        path = Path(tmp) / "sshd_config"
        path.write_text(render_sshd_config(config))
        check_config(config, path, shown=Path("(rendered sshd_config)"))


def check_config(config: Config | ServerConfig, path: Path, shown: Path | None = None) -> None:
    """`sshd -t` on a rendered file; its complaint becomes the error line (naming `shown`)."""
    server = _server(config)
    try:
        execute.run([server.sshd, "-t", "-f", str(path)], capture=True)
    except CommandFailed as error:
        detail = error.tail[-1] if error.tail else f"status {error.returncode}"
        detail = detail.replace(f"{path} ", "").replace(str(path), "")
        raise SyncerError(f"sshd rejected the rendered config {shown or path}: {detail}",
                          hint="check the [server] section of the settings file") from None


SHADOW = Path("/etc/shadow")


def password_field(user: str) -> str:
    """The account's password field in /etc/shadow ("" when unreadable: not root, or absent).
    (Python 3.13 has no spwd module.)"""
    with contextlib.suppress(OSError):
        for line in SHADOW.read_text(encoding="utf-8", errors="replace").splitlines():
            name, _, rest = line.partition(":")
            if name == user:
                return rest.split(":", 1)[0]
    return ""


def permit_key_logins(user: str) -> None:
    """Turn the lock systemd-sysusers puts on a new account ("!*") into "*": no password can
    match, but sshd without PAM (UsePAM no) accepts key logins. What the server package's
    postinst does for `syncer`; the demo and the tests create their accounts the same way."""
    if password_field(user) == "!*":
        execute.run(["usermod", "-p", "*", user], capture=True)


def check_account(config: Config | ServerConfig) -> pwd.struct_passwd:
    """The account sites log in as must exist and have a shell (sshd runs the forced command
    through it); a different UID than the settings say is only worth a warning."""
    server = _server(config)
    try:
        account = pwd.getpwnam(server.user)
    except KeyError:
        raise SyncerError(f'server.user: the account "{server.user}" does not exist',
                          hint="the library-syncer-server package creates it with "
                          "systemd-sysusers; run `systemd-sysusers`") from None
    shell = account.pw_shell
    if not shell or Path(shell).name in ("nologin", "false") or not os.access(shell, os.X_OK):
        raise SyncerError(f'server.user: the account "{server.user}" has shell "{shell}"; sshd '
                          "runs the forced rrsync through the login shell, so no site could pull",
                          hint=f"usermod --shell /bin/sh {server.user}")
    if password_field(server.user).startswith("!"):
        raise SyncerError(f'server.user: the account "{server.user}" is locked ("!" in '
                          f"{SHADOW}); the dedicated sshd runs without PAM and refuses locked "
                          "accounts even for keys, so no site could pull",
                          hint=f"usermod -p '*' {server.user} (no password, key logins only)")
    if account.pw_uid != server.uid:
        log.warning('server.uid is %d but the account "%s" has UID %d (files the library '
                    "export writes for it should use that UID)", server.uid, server.user,
                    account.pw_uid)
    return account


# --- authorized keys ------------------------------------------------------------------------


def read_authorized(config: Config | ServerConfig) -> list[SiteKey]:
    """The authorized sites, in file order. A line we cannot understand is an error."""
    path = authorized_keys_path(config)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (PermissionError, UnicodeDecodeError) as error:
        raise SyncerError(f"{path}: cannot read: {error}", hint="run as root") from None
    entries: list[SiteKey] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}: line {number}"
        try:
            key = sshkeys.parse_public_key(line, where)
        except KeyRefused as error:
            detail = error.message.removeprefix(f"{where}: ")
            raise ConfigError(ConfigProblem(where, "", "", detail)) from None
        site = next((t[len(SITE_PREFIX):] for t in sshkeys.split_words(line)
                     if t.startswith(SITE_PREFIX)), "")
        if not SITE_RE.fullmatch(site):
            raise ConfigError(ConfigProblem(
                where, "", "", "no site name (site=NAME at the end); remove the line and add the "
                "key with `library-syncer server authorize KEY.pub --site NAME`"))
        sources: tuple[str, ...] = ()
        dropped = []
        for name, value in _options(line, key.type):
            if name.lower() == "from" and value is not None:
                patterns = tuple(value.split(","))
                if not all(_FROM_PATTERN.fullmatch(p) for p in patterns):
                    # Dropping it would let the key in from anywhere: stop instead.
                    raise ConfigError(ConfigProblem(
                        where, "", f'from="{value}"', "a from= list of addresses, networks or "
                        f"host patterns; fix the line, or revoke site {site} and authorize "
                        "it again with --from"))
                sources += patterns
            elif name.lower() not in _REDUNDANT_OPTIONS:
                dropped.append(name if value is None else f'{name}="{value}"')
        relay = RELAY_MARK in sshkeys.split_words(line)
        entries.append(SiteKey(site, key.type, key.blob, sources, tuple(dropped), relay))
    return entries


def _write_authorized(server: ServerConfig, entries: list[SiteKey]) -> None:
    _ensure_config_dir(server)
    header = ("# Managed by `library-syncer server authorize/revoke`: every key may only pull "
              "the library (rrsync -ro) and report for its own site.\n")
    body = "".join(entry.line(server) + "\n" for entry in entries)
    for entry in entries:
        if entry.dropped:
            log.warning("%s: site %s: dropped option %s (only from= is kept; every key may only "
                        "run rrsync -ro)", authorized_keys_path(server), entry.site,
                        ", ".join(entry.dropped))
    # Root-owned and not writable by anyone else: the syncer account cannot add itself keys.
    fsutil.write_if_changed(authorized_keys_path(server), header + body, 0o644)


def sync_authorized_keys(config: Config | ServerConfig) -> None:
    """Rewrite every line from (site, key) so it carries the current library path and rrsync."""
    server = _server(config)
    if authorized_keys_path(server).exists():
        with _keys_lock(server):
            _write_authorized(server, read_authorized(server))


@contextlib.contextmanager
def _keys_lock(server: ServerConfig):
    """Serialise read-modify-write of authorized_keys (two operators at once lose no key)."""
    _ensure_config_dir(server)
    with open(server.config_dir / ".authorized_keys.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def authorize(config: Config | ServerConfig, pubkey_text: str, site: str,
              source: str = "key", sources: tuple[str, ...] = (), relay: bool = False
              ) -> SiteKey:
    """Add one site's public key, usable only from `sources` when given (see parse_sources),
    as a relay's when `relay`; refuses invalid keys, private keys and duplicates."""
    server = _server(config)
    if not SITE_RE.fullmatch(site):
        raise KeyRefused(f'--site: found "{site}", expected {SITE_EXPECTED}')
    key = sshkeys.parse_public_key(pubkey_text, source)
    entry = SiteKey(site, key.type, key.blob, tuple(sources), relay=relay)
    with _keys_lock(server):
        entries = read_authorized(server)
        for other in entries:
            if other.site == site:
                raise KeyRefused(f'site "{site}" already has a key ({other.fingerprint}); '
                                 f"run `library-syncer server revoke {site}` first to replace it")
            if other.blob == key.blob:
                raise KeyRefused(f"{source}: this key ({entry.fingerprint}) is already "
                                 f'authorized for site "{other.site}"; each site needs its own key')
        _write_authorized(server, [*entries, entry])
    return entry


def revoke(config: Config | ServerConfig, site: str) -> SiteKey:
    """Remove a site's key (new connections with it are refused at once)."""
    server = _server(config)
    with _keys_lock(server):
        entries = read_authorized(server)
        kept = [e for e in entries if e.site != site]
        if len(kept) == len(entries):
            known = ", ".join(e.site for e in entries) or "none"
            raise KeyRefused(f'no site named "{site}" (authorized: {known})')
        _write_authorized(server, kept)
    return next(e for e in entries if e.site == site)


def mark_relay(config: Config | ServerConfig, site: str, relay: bool = True) -> SiteKey:
    """Let a site's key forward its own sites' reports (or no longer)."""
    from dataclasses import replace

    server = _server(config)
    with _keys_lock(server):
        entries = read_authorized(server)
        if not any(e.site == site for e in entries):
            known = ", ".join(e.site for e in entries) or "none"
            raise KeyRefused(f'no site named "{site}" (authorized: {known})')
        entries = [replace(e, relay=relay) if e.site == site else e for e in entries]
        _write_authorized(server, entries)
    return next(e for e in entries if e.site == site)


def list_keys(config: Config | ServerConfig) -> list[SiteKey]:
    return read_authorized(config)
