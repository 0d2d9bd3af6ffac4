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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from library_syncer import config as config_module
from library_syncer import web

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


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# --- a small VCSP library on disk, one snapshot per version -------------------------------

FIXTURE_OVF = Path(__file__).resolve().parents[3] / "shared" / "fixtures" / "ovf"
LIBRARY_ID = "urn:uuid:6f1b0b6e-2f55-4d4c-9d3a-0c1d2e3f4a5b"
CREATED = "2026-01-02T03:04:05.000Z"


def _disk_bytes(version: int, size: int) -> bytes:
    """Content that differs per version (same size), cheap to make."""
    block = (f"disk v{version:06d} ".encode() * 4096)[:65536]
    return (block * (size // len(block) + 1))[:size]


def _file_entry(path: Path, href: str) -> dict[str, Any]:
    import hashlib

    return {"name": path.name, "size": path.stat().st_size,
            "etag": hashlib.sha256(path.read_bytes()).hexdigest(), "hrefs": [href]}


def _item(folder: str, name: str, kind: str, version: int, files: list[dict[str, Any]],
          vapp: bool = False) -> dict[str, Any]:
    import json
    from urllib.parse import quote

    meta = json.dumps({"id": f"urn:uuid:00000000-0000-0000-0000-{len(name):012d}",
                       "version": str(version), "libraryIdParent": "",
                       "isVappTemplate": "true" if vapp else "false", "vmTemplate": None,
                       "vappTemplate": None, "networks": [], "storagePolicyGroups": None})
    item = {
        "created": CREATED, "description": f"{name} (test item)", "version": str(version),
        "contentVersion": str(version), "files": files,
        "id": f"urn:uuid:11111111-2222-3333-4444-{abs(hash(name)) % 10**12:012d}",
        "name": name, "properties": {}, "selfHref": f"{quote(folder)}/item.json", "type": kind,
    }
    if kind == "vcsp.ovf":
        item["metadata"] = [{"key": "type-metadata", "value": meta, "type": "String",
                             "domain": "SYSTEM", "visibility": "READONLY"}]
    return item


def write_library(root: Path, version: int, *, disk_size: int = 6 * 2**20,
                  previous: Path | None = None) -> None:
    """Write a complete library (files, item.json, items.json, lib.json last) into `root`.

    Only the big disk changes between versions; other files are hard-linked from `previous`
    (as rsync --link-dest does), so consecutive snapshots share unchanged inodes.
    """
    import json
    import shutil
    from urllib.parse import quote

    root.mkdir(parents=True)
    items = []
    # 1. The real ttylinux template (ovf + mf + vmdk) from VMware's tools.
    tty = root / "ttylinux"
    tty.mkdir()
    for source in sorted((FIXTURE_OVF / "ttylinux-template").iterdir()):
        old = previous / "ttylinux" / source.name if previous else None
        if old and old.exists():
            os.link(old, tty / source.name)
        else:
            shutil.copyfile(source, tty / source.name)
    items.append(_item("ttylinux", "ttylinux", "vcsp.ovf", 1, [
        _file_entry(p, f"ttylinux/{quote(p.name)}") for p in sorted(tty.iterdir())]))
    # 2. A vApp whose multi-MB disk changes with every version.
    app = root / "Web tier #2"
    app.mkdir()
    shutil.copyfile(FIXTURE_OVF / "descriptors" / "vApp_with_2vms.ovf", app / "web.ovf")
    (app / "web-disk1.vmdk").write_bytes(_disk_bytes(version, disk_size))
    (app / "web.mf").write_text("SHA256(web.ovf)= 00\nSHA256(web-disk1.vmdk)= 00\n")
    items.append(_item("Web tier #2", "Web tier #2", "vcsp.ovf", version, [
        _file_entry(p, f"{quote('Web tier #2')}/{quote(p.name)}")
        for p in sorted(app.iterdir())], vapp=True))
    # 3. An ISO with a non-ASCII name.
    iso = root / "médias"
    iso.mkdir()
    (iso / "tools.iso").write_bytes(b"ISO" * 1000)
    items.append(_item("médias", "médias", "vcsp.iso", 1,
                       [_file_entry(iso / "tools.iso", f"{quote('médias')}/tools.iso")]))
    for item in items:
        folder = root / item["name"]
        (folder / "item.json").write_text(json.dumps(item, indent=2))
    (root / "items.json").write_text(json.dumps({"items": items}, indent=2))
    (root / "lib.json").write_text(json.dumps({
        "vcspVersion": "2", "version": str(version), "contentVersion": str(version),
        "name": "Site templates", "id": LIBRARY_ID, "created": CREATED,
        "capabilities": {"transferIn": ["httpGet"], "transferOut": ["httpGet"]},
        "itemsHref": "items.json"}, indent=2))


def make_state(work_dir: Path, version: int = 1, **kwargs: Any) -> Path:
    """state/snapshots/<version> published through the `published` symlink, plus the private
    things that live beside it (staging, cache, last-run record) holding a sentinel string."""
    from library_syncer.fsutil import atomic_symlink

    state = work_dir / "state"
    snapshot = state / "snapshots" / str(version)
    write_library(snapshot, version, **kwargs)
    (snapshot / ".library-syncer").mkdir()
    (snapshot / ".library-syncer" / "cache.json").write_text(SENTINEL)
    for private in ("staging", "cache"):
        (state / private).mkdir()
        (state / private / "secret.txt").write_text(SENTINEL)
    (state / "last-run.json").write_text(SENTINEL)
    atomic_symlink(f"snapshots/{version}", state / "published")
    return state


SENTINEL = "PRIVATE-STATE-SENTINEL"
