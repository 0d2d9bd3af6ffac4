"""`library-syncer demo [--once] [--workdir DIR]`: the whole main job on one machine, on loopback.

Real components only: the server role's own sshd_config on a free 127.0.0.1 port over
an example library, a generated client key authorized as a site, the host key trusted, the client
sync over SSH (rrsync -ro), the manifests, and Caddy serving the published snapshot. The demo then
walks the library like a subscriber (lib.json → items.json → item.json → every file, checking
sizes, and that every etag and version is a decimal Java long as vCenter reads it), prints the
lib.json URL and serves until Ctrl-C (or stops at once with --once). Everything it starts is
stopped, and everything it creates is removed (its work directory unless --workdir was given,
and the login account when the demo created it).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..base import config as config_module
from ..base import execute, revision
from ..base.config import Config
from ..base.config_toml import toml_string
from ..base.errors import SyncerError, VerifyError
from ..base.units import format_bytes
from ..server import sshd
from ..web import caddy

DEMO_USER = "library-syncer-demo"
WORK_ROOT = Path("/var/lib/library-syncer-demo")
SYSUSERS_LINE = f'u {DEMO_USER} - "library-syncer demo read-only account" /nonexistent /bin/sh\n'
TOOLS = {"sshd": "openssh-server", "ssh": "openssh-client", "ssh-keygen": "openssh-client",
         "rsync": "rsync", "rrsync": "rsync", "caddy": "caddy"}
LIBRARY_NAME = "library-syncer demo"


class DemoError(SyncerError):
    pass


def _say(text: str = "") -> None:
    print(text, flush=True)


# --- preconditions ------------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/usr/bin:/sbin")
    if not found:
        raise DemoError(f"{name} not found", hint=f"install it: apt-get install {TOOLS[name]} "
                        "(tests/demo installs everything the demo needs)")
    return found


def _check_root() -> None:
    if os.geteuid() != 0:
        raise DemoError("the demo starts its own sshd and switches users: run it as root",
                        hint="sudo library-syncer demo --once")


def _ensure_account() -> bool:
    """The unprivileged login for the demo's sshd, created as the package creates `syncer`.

    Returns True when this run created it (so it is removed at the end).
    """
    created = False
    try:
        pwd.getpwnam(DEMO_USER)
    except KeyError:
        execute.run(["systemd-sysusers", "-"], input=SYSUSERS_LINE.encode())
        pwd.getpwnam(DEMO_USER)
        created = True
    sshd.permit_key_logins(DEMO_USER)  # as the server package does for syncer (UsePAM no)
    return created


def _remove_account() -> None:
    with contextlib.suppress(SyncerError):
        execute.run(["userdel", DEMO_USER], check=False)


def _check_workdir(path: Path) -> None:
    """sshd's StrictModes refuses key files below a group/world-writable directory (/tmp)."""
    for parent in [path, *path.parents]:
        if parent.exists() and parent.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise DemoError(f"--workdir {path}: {parent} is writable by others and sshd refuses "
                            "keys below it", hint="choose a folder such as /var/lib/demo")


# --- the example library ------------------------------------------------------------------


def _data() -> Path:
    return Path(str(resources.files("library_syncer.host") / "demo_data"))


def build_example_library(library: Path) -> list[str]:
    """A small library: a real OVF template, the same as an OVA, and a vApp; returns items."""
    data = _data()
    library.mkdir(mode=0o755, parents=True, exist_ok=True)
    template = library / "ttylinux"
    template.mkdir(mode=0o755, exist_ok=True)
    for source in sorted((data / "ttylinux").iterdir()):
        shutil.copyfile(source, template / source.name)
    ova_dir = library / "ttylinux-ova"
    ova_dir.mkdir(mode=0o755, exist_ok=True)
    with tarfile.open(ova_dir / "ttylinux-pc_i486-16.1.ova", "w", format=tarfile.USTAR_FORMAT) \
            as ova:
        # OVF first, then the manifest, then the disk: the order the OVF spec requires.
        for suffix in (".ovf", ".mf", "-disk1.vmdk"):
            name = f"ttylinux-pc_i486-16.1{suffix}"
            ova.add(template / name, arcname=name)
    _build_vapp(library / "vapp-two-vms", data / "vApp_with_2vms.ovf")
    for path in library.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)  # the server account reads it
    return ["ttylinux", "ttylinux-ova", "vapp-two-vms"]


def _build_vapp(folder: Path, descriptor: Path) -> None:
    """The vApp descriptor with small synthetic disks, its File sizes set to theirs."""
    import re

    folder.mkdir(mode=0o755, exist_ok=True)
    text = descriptor.read_text()
    for number, name in enumerate(re.findall(r'ovf:href="([^"]+\.vmdk)"', text), 1):
        content = hashlib.sha256(f"disk {number}".encode()).digest() * 2048  # 64 KiB
        (folder / name).write_bytes(content)
        text = re.sub(rf'(ovf:href="{re.escape(name)}"[^>]*ovf:size=")\d+"',
                      rf'\g<1>{len(content)}"', text)
    (folder / descriptor.name).write_text(text)


# --- the parts ----------------------------------------------------------------------------


@dataclass
class Demo:
    workdir: Path
    runtime: Path  # short: Caddy's admin socket path must fit in 108 bytes
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)

    def spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log_file = self.workdir / f"{name}.log"
        self.processes.append((name, execute.spawn(argv, log_file=str(log_file), env=env)))

    def check_alive(self) -> None:
        for name, process in self.processes:
            if process.poll() is not None:
                tail = (self.workdir / f"{name}.log").read_text(errors="replace").strip()
                last = tail.splitlines()[-1] if tail else "no output"
                raise DemoError(f"{name} stopped (status {process.returncode}): {last}")

    def stop_all(self) -> None:
        for _, process in reversed(self.processes):
            execute.stop(process)
        self.processes.clear()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_listening(port: int, demo: Demo, timeout: float = 15.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        demo.check_alive()
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise DemoError(f"nothing answers on 127.0.0.1:{port} after {timeout:.0f} s")


def _open_to_all(path: str) -> bool:
    """Whether an account with no group of ours can run `path`: the file and every folder above
    it searchable by others (a clone or virtualenv in /root, 0700, is not)."""
    target = Path(path)
    try:
        if not target.stat().st_mode & stat.S_IXOTH:
            return False
        return all(parent.stat().st_mode & stat.S_IXOTH for parent in target.parents)
    except OSError:
        return False


def runnable_python() -> str:
    """A Python (>= 3.10) the demo's account can run: the running one when it is open to all,
    else the system's. A virtualenv built on a Python under a private home points at that
    Python, which sshd's account cannot execute (rsync then fails with status 126)."""
    for candidate in (os.path.realpath(sys.executable), "/usr/bin/python3"):
        if not _open_to_all(candidate):
            continue
        if candidate == os.path.realpath(sys.executable) or execute.run(
                [candidate, "-c", "import sys; sys.exit(sys.version_info < (3, 10))"],
                check=False).returncode == 0:
            return candidate
    raise DemoError(f"{os.path.realpath(sys.executable)} sits where other accounts cannot run "
                    "it, and there is no system Python 3.10 or later to run the server's "
                    "command with", hint="apt-get install python3, or run the demo from a "
                    "Python outside a private home folder")


def install_dispatcher(workdir: Path) -> Path:
    """The server's forced command for the demo account: this package copied into the work
    directory, run by the system's Python. The command beside the running Python (a checkout's
    .venv) may sit where that account cannot read it: a clone in /root, the usual place when the
    README's commands run as root."""
    folder = workdir / "server" / "dispatcher"
    package = Path(__file__).resolve().parents[1]
    shutil.copytree(package, folder / package.name,
                    ignore=shutil.ignore_patterns("__pycache__", "demo_data"))
    launcher = folder / "library-syncer"
    python = runnable_python()
    launcher.write_text(f"#!/bin/sh\nPYTHONPATH={folder} exec {python} -s -m {package.name} "
                        '"$@"\n')
    for path in [folder, *folder.rglob("*")]:
        path.chmod(0o755 if path.is_dir() or path == launcher else 0o644)
    return launcher


def write_settings(workdir: Path, runtime: Path, *, ssh_port: int, http_port: int) -> Path:
    """A real settings file, so `status`/`check -c` work on the running demo."""
    client = workdir / "client"
    text = f"""\
# Written by `library-syncer demo`: a client and a server on 127.0.0.1.
[library]
name = {toml_string(LIBRARY_NAME)}

[sync]
peer = "127.0.0.1"
port = {ssh_port}
user = "{DEMO_USER}"
identity_file = {toml_string(str(client / "ssh" / "id_syncer"))}
known_hosts = {toml_string(str(client / "ssh" / "known_hosts"))}
random_delay = 0
min_free_space = "10M"
rsync = {toml_string(_tool("rsync"))}
ssh = {toml_string(_tool("ssh"))}

[web]
listen = "127.0.0.1"
http_port = {http_port}
https_port = {_free_port()}
caddy = {toml_string(_tool("caddy"))}

[server]
library = {toml_string(str(workdir / "server" / "library"))}
listen = ["127.0.0.1"]
port = {ssh_port}
user = "{DEMO_USER}"
uid = {pwd.getpwnam(DEMO_USER).pw_uid}
config_dir = {toml_string(str(workdir / "server" / "etc"))}
sshd = {toml_string(_tool("sshd"))}
rrsync = {toml_string(_tool("rrsync"))}
state_dir = {toml_string(str(workdir / "server" / "state"))}
dispatcher = {toml_string(str(install_dispatcher(workdir)))}

[metrics]
textfile = {toml_string(str(client / "metrics" / "library-syncer.prom"))}

[paths]
state_dir = {toml_string(str(client / "state"))}
runtime_dir = {toml_string(str(runtime / "run"))}
"""
    (client / "metrics").mkdir(mode=0o755, parents=True, exist_ok=True)
    path = workdir / "library-syncer.toml"
    path.write_text(text)
    return path


def start_server(demo: Demo, config: Config) -> str:
    """Authorize the client key, render the real sshd_config, start sshd; returns the key line."""
    key = config.sync.identity_file
    key.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    execute.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "library-syncer-demo",
                 "-f", str(key)])
    sshd.authorize(config, Path(f"{key}.pub").read_text(), "demo")
    sshd_config = demo.workdir / "server" / "sshd_config"
    # sshd's compiled-in privilege separation directory: `sshd -t` (the check below) already
    # refuses to run without it, and on a host where no sshd ever ran nobody has created it.
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    sshd.write_config(config, sshd_config, host_keys=True, check=True)
    demo.spawn("sshd", [config.server.sshd, "-D", "-e", "-f", str(sshd_config)])
    _wait_listening(config.server.port, demo)
    host_pub = Path(f"{sshd.host_key_paths(config)[0]}.pub").read_text().split()
    return " ".join(host_pub[:2])


def trust_host(config: Config, host_key: str) -> str:
    """Record the server's host key as `library-syncer trust-host --fingerprint` does."""
    from ..sync import hostkeys

    return hostkeys.trust_demo(config, host_key)


def run_sync(config: Config) -> str:
    """One client sync over SSH, exactly as the timer runs it; returns its summary line."""
    from ..sync import run

    return run.run_once(config)


def start_web(demo: Demo, config: Config) -> str:
    caddyfile = caddy.web_runtime_dir(config) / "Caddyfile"
    caddy.write_validated(config, caddy.render_caddyfile(config), caddyfile, check_with_caddy=False)
    env = dict(os.environ)
    caddy_home = demo.workdir / "client" / "caddy"
    caddy_home.mkdir(parents=True, exist_ok=True)
    env.update(XDG_DATA_HOME=str(caddy_home), XDG_CONFIG_HOME=str(caddy_home),
               HOME=str(caddy_home))
    caddy.validate(config, caddyfile, env=env)
    demo.spawn("caddy", [config.web.caddy, "run", "--config", str(caddyfile), "--adapter",
                         "caddyfile"], env=env)
    _wait_listening(config.web.http_port, demo)
    return caddy.subscription_url(config)


# --- the subscriber's walk ----------------------------------------------------------------


def _get(port: int, href: str) -> bytes:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/" + href.lstrip("/"))
        response = connection.getresponse()
        body = response.read()
        if response.status != 200:
            raise VerifyError(f"GET /{href.lstrip('/')}: HTTP {response.status}")
        return body
    finally:
        connection.close()


def _get_json(port: int, href: str) -> dict:
    try:
        return json.loads(_get(port, href))
    except json.JSONDecodeError as error:
        raise VerifyError(f"GET /{href}: not JSON ({error})") from None


@dataclass
class WalkedItem:
    name: str
    type: str
    files: int
    size: int


def walk(port: int) -> tuple[dict, list[WalkedItem]]:
    """lib.json → items.json → each item.json → each file: sizes, and every version and etag
    a decimal Java long (vCenter reads etags with Long.valueOf; docs/manifest.md, "Tokens")."""
    lib = _get_json(port, "lib.json")
    if not (revision.is_token(lib["version"]) and revision.is_token(lib["contentVersion"])):
        raise VerifyError("lib.json: version is not a decimal Java long")
    listing = _get_json(port, lib["itemsHref"])
    walked = []
    for entry in listing["items"]:
        item = _get_json(port, entry["selfHref"])
        if item["id"] != entry["id"] or item["version"] != entry["version"]:
            raise VerifyError(f"{entry['selfHref']}: differs from its items.json entry")
        if not (revision.is_token(item["version"]) and revision.is_token(item["contentVersion"])):
            raise VerifyError(f"{entry['selfHref']}: version is not a decimal Java long")
        total = 0
        for file in item["files"]:
            body = _get(port, file["hrefs"][0])
            if len(body) != file["size"]:
                raise VerifyError(f"{file['hrefs'][0]}: {len(body)} bytes, item.json says "
                                  f"{file['size']}")
            if not revision.is_token(file["etag"]) or file.get("generationNum") != \
                    int(file["etag"]):
                raise VerifyError(f"{file['hrefs'][0]}: etag {file['etag']!r} is not a decimal "
                                  "Java long equal to generationNum")
            total += len(body)
        walked.append(WalkedItem(item["name"], item["type"], len(item["files"]), total))
    return lib, walked


def _print_walk(lib: dict, items: list[WalkedItem]) -> None:
    _say(f"walk: lib.json \"{lib['name']}\" version {lib['version']}, {len(items)} items")
    width = max((len(i.name) for i in items), default=4)
    for item in items:
        _say(f"  {item.name:<{width}}  {item.type:<9} {item.files} files  "
             f"{format_bytes(item.size):>7}  sizes and etags match")
    files = sum(i.files for i in items)
    _say(f"walk: ok ({files} files, {format_bytes(sum(i.size for i in items))} checked)")


# --- the command --------------------------------------------------------------------------


@contextlib.contextmanager
def _workdir(requested: Path | None) -> Iterator[Path]:
    if requested is not None:
        path = requested.resolve()
        path.mkdir(mode=0o755, parents=True, exist_ok=True)
        _check_workdir(path)
        if any(path.iterdir()):
            raise DemoError(f"--workdir {path} is not empty", hint="give an empty or new folder")
        yield path
        return
    WORK_ROOT.mkdir(mode=0o755, parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="run.", dir=WORK_ROOT))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        with contextlib.suppress(OSError):
            WORK_ROOT.rmdir()  # only when no other demo is using it


def _serve(demo: Demo) -> None:
    while True:
        demo.check_alive()
        time.sleep(1)


def run_demo(workdir: Path | None, *, once: bool) -> None:
    """Server, sync and web server on loopback over the example library (needs root);
    everything it started or created is stopped and removed at the end."""
    _check_root()
    for name in TOOLS:
        _tool(name)
    created = _ensure_account()
    try:
        with _workdir(workdir) as work:
            runtime = Path(tempfile.mkdtemp(prefix="library-syncer-demo.", dir="/run"))
            demo = Demo(work, runtime)
            try:
                _walkthrough(demo, once=once, keep=workdir is not None)
            finally:
                demo.stop_all()
                shutil.rmtree(runtime, ignore_errors=True)
    finally:
        if created:
            _remove_account()


def _walkthrough(demo: Demo, *, once: bool, keep: bool) -> None:
    workdir = demo.workdir
    _say(f"demo: working in {workdir}")
    items = build_example_library(workdir / "server" / "library")
    _say(f"server: example library with {len(items)} items: {', '.join(items)}")
    settings = write_settings(workdir, demo.runtime, ssh_port=_free_port(),
                              http_port=_free_port())
    config = config_module.load(settings)
    host_key = start_server(demo, config)
    _say(f"server: sshd on 127.0.0.1:{config.server.port}, account {DEMO_USER}, forced "
         f"command: {sshd.forced_command(config)}")
    _say(f"client: key {config.sync.identity_file} authorized as site \"demo\"")
    _say(f"client: {trust_host(config, host_key)}")
    run_sync(config)  # logs its own one-line summary
    url = start_web(demo, config)
    _say(f"web: caddy serving {config.published_dir}")
    _say(f"vCenter subscription URL: {url}")
    lib, walked = walk(config.web.http_port)
    _print_walk(lib, walked)
    cleanup = "stopping sshd and caddy" + ("" if keep else ", removing the demo's files")
    if once:
        _say(f"demo: --once: {cleanup}")
        return
    _say(f"demo: serving until Ctrl-C; meanwhile try:  library-syncer status -c {settings}")
    try:
        _serve(demo)
    except KeyboardInterrupt:
        _say(f"\ndemo: {cleanup}")



