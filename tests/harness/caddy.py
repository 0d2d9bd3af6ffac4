"""A real Caddy on 127.0.0.1 and free ports, from a Caddyfile rendered by library_syncer.web.

Each instance gets its own runtime directory (so its admin socket never clashes with another
one) and its own XDG data/config directories (Caddy's internal CA and autosave), all inside the
test's work directory. `fetch()` is a small HTTP(S) client that can connect to 127.0.0.1 while
presenting any host name (SNI and Host), from any loopback source address.
"""

from __future__ import annotations

import base64
import http.client
import os
import signal
import socket
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library_syncer.base import config as config_module
from library_syncer.web import caddy as web

from .net import free_port, wait_listening

CADDY = "/usr/bin/caddy"


def make_config(work_dir: Path, **web_settings: Any) -> config_module.Config:
    """A validated Config whose state and runtime directories live in `work_dir`."""
    settings: dict[str, Any] = {
        "listen": "127.0.0.1", "http_port": free_port(), "https_port": free_port(),
        "caddy": CADDY,
    }
    settings.update(web_settings)
    data = {
        "web": settings,
        "paths": {"state_dir": str(work_dir / "state"), "runtime_dir": str(work_dir / "run")},
    }
    return config_module.parse(data, work_dir / "library-syncer.toml")


def caddy_env(work_dir: Path) -> dict[str, str]:
    """Caddy's own data (internal CA, certificates) and autosave kept inside the test."""
    data = work_dir / "caddy-data"
    data.mkdir(exist_ok=True)
    env = dict(os.environ)
    env.update(XDG_DATA_HOME=str(data), XDG_CONFIG_HOME=str(data), HOME=str(data))
    return env


@dataclass
class Caddy:
    config: config_module.Config
    process: subprocess.Popen
    caddyfile: Path
    log_file: Path
    env: dict[str, str] = field(repr=False)

    @property
    def port(self) -> int:
        web_config = self.config.web
        return web_config.http_port if web_config.tls == "off" else web_config.https_port

    def log_text(self) -> str:
        return self.log_file.read_text(errors="replace")

    def reload(self) -> None:
        """Re-render and `caddy reload` through the admin socket, as ExecReload= does."""
        web.write_validated(self.config, web.render_caddyfile(self.config), self.caddyfile,
                            check_with_caddy=False)
        subprocess.run([CADDY, "reload", "--config", str(self.caddyfile), "--adapter",
                        "caddyfile"], check=True, env=self.env, capture_output=True, timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_caddy(config: config_module.Config, work_dir: Path) -> Caddy:
    """Render, validate and run Caddy; return once its port answers."""
    env = caddy_env(work_dir)
    caddyfile = web.web_runtime_dir(config) / "Caddyfile"
    text = web.render_caddyfile(config)
    web.web_runtime_dir(config).mkdir(parents=True, exist_ok=True)
    web.write_validated(config, text, caddyfile, check_with_caddy=False)
    web.validate(config, caddyfile, env=env)
    log_file = work_dir / f"caddy-{config.web.http_port}.log"
    with open(log_file, "wb") as log:
        process = subprocess.Popen([CADDY, "run", "--config", str(caddyfile), "--adapter",
                                    "caddyfile"], stdout=log, stderr=subprocess.STDOUT, env=env)
    caddy = Caddy(config, process, caddyfile, log_file, env)
    try:
        wait_listening(caddy.port, "127.0.0.1")
    except AssertionError:
        caddy.stop()
        raise AssertionError("caddy did not start:\n" + caddy.log_text()[-3000:]) from None
    return caddy


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


def fetch(port: int, path: str, *, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None,
          auth: tuple[str, str] | None = None, headers: dict[str, str] | None = None,
          source: str | None = None, timeout: float = 30.0) -> Response:
    """GET `path` as-is (no normalisation: `..` and %-escapes reach the server untouched)."""
    source_address = (source, 0) if source else None

    def connect(_address: Any, timeout: Any = None, source_address: Any = None) -> socket.socket:
        return socket.create_connection(("127.0.0.1", port), timeout, source_address)

    if tls is None:
        connection: http.client.HTTPConnection = http.client.HTTPConnection(
            host, port, timeout=timeout, source_address=source_address)
    else:
        connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls,
                                                 source_address=source_address)
    connection._create_connection = connect  # type: ignore[attr-defined]
    request_headers = dict(headers or {})
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        request_headers["Authorization"] = f"Basic {token}"
    try:
        connection.request("GET", path, headers=request_headers)
        response = connection.getresponse()
        body = response.read()
        return Response(response.status, {k.lower(): v for k, v in response.getheaders()}, body)
    finally:
        connection.close()


# --- a small VCSP library on disk, one snapshot per version -------------------------------

VAPP = "Web tier #2"  # a folder name that needs percent-encoding in hrefs
VAPP_DISK = "3VMvApp-disk1.vmdk"


def _disk_bytes(version: int, size: int) -> bytes:
    """Content that differs per version (same size), cheap to make."""
    block = (f"disk v{version:06d} ".encode() * 4096)[:65536]
    return (block * (size // len(block) + 1))[:size]


def _link_or_copy(source: Path, target: Path, previous: Path | None) -> None:
    old = previous / target.parent.name / target.name if previous else None
    if old is not None and old.exists():
        os.link(old, target)  # unchanged: hard-linked, as rsync --link-dest does
    else:
        import shutil

        shutil.copyfile(source, target)


def write_library(root: Path, version: int, *, disk_size: int = 6 * 2**20,
                  previous: Path | None = None, state_dir: Path | None = None) -> None:
    """A complete library in `root`, its manifests built by library_syncer.manifest.build.

    Items: the built ttylinux template (tests/harness/fixtures.py: ovf + mf + vmdk), a vApp
    whose multi-MB first disk changes with every version (with a correct .mf), and an ISO in a
    non-ASCII folder. Only that disk changes between versions; everything else is hard-linked
    from `previous`.
    """
    import hashlib

    from library_syncer.manifest import vcsp as manifest
    from tests.harness import fixtures

    fixture_ovf = fixtures.default_dir() / "ovf"
    root.mkdir(parents=True)
    tty = root / "ttylinux"
    tty.mkdir()
    for source in sorted((fixture_ovf / "ttylinux-template").iterdir()):
        _link_or_copy(source, tty / source.name, previous)
    app = root / VAPP
    app.mkdir()
    _link_or_copy(fixture_ovf / "descriptors" / "3VMvApp.ovf", app / "3VMvApp.ovf", previous)
    (app / VAPP_DISK).write_bytes(_disk_bytes(version, disk_size))
    for n in (2, 3):
        (app / f"3VMvApp-disk{n}.vmdk").write_bytes(bytes([n]) * 68096)
    (app / "3VMvApp.mf").write_text("".join(
        f"SHA256({p.name})= {hashlib.sha256(p.read_bytes()).hexdigest()}\n"
        for p in sorted(app.iterdir())))
    iso = root / "médias"
    iso.mkdir()
    (iso / "tools.iso").write_bytes(b"ISO" * 1000)
    state = state_dir or root.parent / f".manifest-state-{root.name}"
    report = manifest.build(root, name="Site templates", state=manifest.StatePlace.folder(state),
                            previous=previous)
    assert not report.problems, report.problems
    assert (root / "lib.json").exists()


def make_state(work_dir: Path, version: int = 1, **kwargs: Any) -> Path:
    """state/snapshots/<version> published through the `published` symlink, plus the private
    things that live beside it (staging, cache, last-run record) holding a sentinel string."""
    from library_syncer.base.fsutil import atomic_symlink

    state = work_dir / "state"
    snapshot = state / "snapshots" / str(version)
    write_library(snapshot, version, state_dir=state / "cache" / "manifest", **kwargs)
    (snapshot / ".library-syncer").mkdir()
    (snapshot / ".library-syncer" / "cache.json").write_text(SENTINEL)
    for private in ("staging", "cache"):
        (state / private).mkdir(exist_ok=True)
        (state / private / "secret.txt").write_text(SENTINEL)
    (state / "last-run.json").write_text(SENTINEL)
    atomic_symlink(f"snapshots/{version}", state / "published")
    return state


SENTINEL = "PRIVATE-STATE-SENTINEL"
