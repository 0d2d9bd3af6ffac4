"""Publishing with the real Caddy (Debian's 2.6): every mode rendered, validated and served.

Each test starts its own Caddy on 127.0.0.1 and free ports, serving a small library (a real
VMware template, a vApp with a multi-MB disk, an ISO with a non-ASCII name) through the
`published` symlink, with private state files beside it that must never be reachable.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from urllib.parse import unquote

import pytest
import trustme

from library_syncer.base.errors import ConfigError
from library_syncer.web import caddy as web
from library_syncer.web import certificate
from library_syncer.web import password as web_password
from tests.harness import caddy as harness
from tests.harness import readable
from tests.harness.caddy import SENTINEL, fetch, make_config, make_state, start_caddy
from tests.harness.wait import wait_for

PASSWORD = "s3cret pass/word"
ROOT = Path(__file__).resolve().parent.parent


def walk_paths(port: int, **request) -> list[str]:
    """Every URL path a subscriber fetches, discovered the way vCenter does (from lib.json)."""
    lib = json.loads(fetch(port, "/lib.json", **request).body)
    paths = ["/lib.json", "/" + lib["itemsHref"]]
    for item in json.loads(fetch(port, paths[1], **request).body)["items"]:
        paths.append("/" + item["selfHref"])
        paths += ["/" + href for f in item["files"] for href in f["hrefs"]]
    return paths


@pytest.fixture
def tls_files(work_dir: Path) -> tuple[trustme.CA, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("library.test", "127.0.0.1")
    cert_file, key_file = work_dir / "cert.pem", work_dir / "key.pem"
    cert_file.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key_file))
    return ca, cert_file, key_file


@pytest.fixture
def password_file(work_dir: Path) -> Path:
    path = work_dir / "password"
    path.write_text(PASSWORD + "\n")
    return path


@pytest.fixture
def served(request, work_dir: Path):
    """start(**web settings) → a running Caddy over a fresh state tree; stopped afterwards."""
    started = []

    def start(**settings):
        if not (work_dir / "state").exists():
            make_state(work_dir)
        server = start_caddy(make_config(work_dir, **settings), work_dir)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# --- rendering and validation --------------------------------------------------------------

MODES = {
    "off": {},
    "off-browse": {"browse": True},
    "auth-allow": {"allow": ["198.51.100.0/24", "127.0.0.1/32"]},
    "custom": {"tls": "custom", "hostname": "library.test"},
    "internal": {"tls": "internal", "hostname": "library.test"},
    "acme": {"tls": "acme", "hostname": "library.example.org", "acme_email": "ops@example.org"},
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_mode_renders_and_caddy_validates_it(mode, work_dir, tls_files, password_file):
    settings = dict(MODES[mode])
    if mode == "custom":
        settings.update(cert_file=str(tls_files[1]), key_file=str(tls_files[2]))
    if mode == "auth-allow":
        settings["auth_password_file"] = str(password_file)
    config = make_config(work_dir, **settings)
    text = web.render_caddyfile(config)
    path = work_dir / "Caddyfile"
    path.write_text(text)
    web.validate(config, path, env=harness.caddy_env(work_dir))
    assert f"root * {work_dir}/state/published\n" in text
    assert f"admin unix/{work_dir}/run-web/caddy-admin.sock" in text
    assert PASSWORD not in text
    assert ("browse\n" in text) == (mode == "off-browse")
    formatted = subprocess.run(["caddy", "fmt", str(path)], capture_output=True, text=True)
    assert formatted.stdout == text, "the rendered Caddyfile is not in `caddy fmt` form"


def test_acme_mode_has_the_site_and_http_listener_caddy_needs(work_dir):
    config = make_config(work_dir, tls="acme", hostname="library.example.org",
                         acme_email="ops@example.org")
    path = work_dir / "Caddyfile"
    path.write_text(web.render_caddyfile(config))
    web.validate(config, path, env=harness.caddy_env(work_dir))
    adapted = subprocess.run(["caddy", "adapt", "--config", str(path), "--adapter", "caddyfile"],
                             capture_output=True, text=True, check=True)
    doc = json.loads(adapted.stdout)
    http = doc["apps"]["http"]
    # Port 80's stand-in: Caddy answers the HTTP-01 challenge and redirects there.
    assert http["http_port"] == config.web.http_port
    assert http["https_port"] == config.web.https_port
    (server,) = http["servers"].values()
    assert server["listen"] == [f"127.0.0.1:{config.web.https_port}"]
    assert server["routes"][0]["match"] == [{"host": ["library.example.org"]}]
    assert "automatic_https" not in server  # redirects and the challenge stay on
    assert doc["apps"]["tls"]["automation"]["policies"][0]["issuers"][0]["email"] == \
        "ops@example.org"
    assert web.subscription_url(config) == "https://library.example.org/lib.json" or \
        web.subscription_url(config).endswith(f":{config.web.https_port}/lib.json")


def test_bad_settings_name_the_setting(work_dir, tls_files, password_file):
    ca, cert_file, key_file = tls_files
    cases = {
        "web.key_file": dict(tls="custom", cert_file=str(cert_file),
                             key_file=str(work_dir / "missing.pem")),
        "web.cert_file": dict(tls="custom", cert_file=str(work_dir / "nope.pem"),
                              key_file=str(key_file)),
        "web.auth_password_file": dict(auth_password_file=str(work_dir / "nope")),
        "web.hostname": dict(tls="internal"),
    }
    for key, settings in cases.items():
        with pytest.raises(ConfigError) as error:
            web.render_caddyfile(make_config(work_dir, **settings))
        assert f": {key}: " in str(error.value), str(error.value)
    other_key = work_dir / "other-key.pem"
    ca.issue_cert("other.test").private_key_pem.write_to_path(str(other_key))
    with pytest.raises(ConfigError, match=r"web.key_file.*does not match"):
        web.render_caddyfile(make_config(work_dir, tls="custom", cert_file=str(cert_file),
                                         key_file=str(other_key)))
    with pytest.raises(ConfigError, match=r"web.hostname.*DNS name"):
        web.render_caddyfile(make_config(work_dir, tls="acme", hostname="192.0.2.7"))


def _cli(work_dir: Path, toml: str, *args: str, user: str | None = None):
    (work_dir / "t.toml").write_text(toml)
    args = ("web", "render", "-c", str(work_dir / "t.toml"), *args)
    if user:  # another account runs a copy: the checkout may sit in /root (0700)
        return subprocess.run(readable.cli_as(user, *args), capture_output=True, text=True,
                              cwd=readable.NEUTRAL_CWD, timeout=60)
    return subprocess.run([sys.executable, "-m", "library_syncer", *args], capture_output=True,
                          text=True, cwd=ROOT, timeout=60)


def test_cli_errors_are_one_line_naming_the_setting(work_dir, tls_files):
    _, cert_file, key_file = tls_files
    os.chmod(key_file, 0o600)  # root-only: the service user cannot read it
    custom = (f'[web]\ntls = "custom"\ncert_file = "{cert_file}"\nkey_file = "{key_file}"\n'
              f'[paths]\nstate_dir = "{work_dir}/state"\nruntime_dir = "{work_dir}/run"\n')
    result = _cli(work_dir, custom, user="nobody")
    assert result.returncode == 3, result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "web.key_file" in result.stderr and "not readable by user nobody" in result.stderr
    bad_name = '[web]\ntls = "acme"\nhostname = "bad_name!.example"\n'
    result = _cli(work_dir, bad_name)
    assert result.returncode == 3 and "web.hostname" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


def test_cli_render_writes_only_a_config_caddy_accepts(work_dir, password_file):
    toml = (f'[web]\nhttp_port = 8088\nauth_password_file = "{password_file}"\n'
            f'caddy = "/usr/bin/caddy"\n[paths]\nstate_dir = "{work_dir}/state"\n'
            f'runtime_dir = "{work_dir}/run"\n')
    output = work_dir / "run-web" / "Caddyfile"
    result = _cli(work_dir, toml, "--output", str(output), "--validate")
    assert result.returncode == 0, result.stderr
    first = output.read_text()
    assert "http://:8088 {" in first and "basicauth" in first and PASSWORD not in first
    assert PASSWORD not in result.stderr + result.stdout
    # A config Caddy refuses is never installed: the running server's file stays as it was.
    refused = toml.replace(f'auth_password_file = "{password_file}"\ncaddy = "/usr/bin/caddy"',
                           'caddy = "/bin/false"')
    result = _cli(work_dir, refused, "--output", str(output), "--validate")
    assert result.returncode == 3 and "caddy validate" in result.stderr, result.stderr
    assert output.read_text() == first
    assert sorted(p.name for p in output.parent.iterdir()) == ["Caddyfile"]
    printed = _cli(work_dir, toml)
    assert printed.returncode == 0 and printed.stdout.startswith("# Rendered by")


def test_subscription_url():
    from library_syncer.base.config import parse

    def url(**settings):
        return web.subscription_url(parse({"web": settings}, Path("/x.toml")))

    assert url(hostname="lib.example.org") == "http://lib.example.org/lib.json"
    assert url(hostname="lib.example.org", http_port=8080) == \
        "http://lib.example.org:8080/lib.json"
    assert url(tls="acme", hostname="lib.example.org") == "https://lib.example.org/lib.json"
    assert url(tls="custom", hostname="lib.test", https_port=8443) == \
        "https://lib.test:8443/lib.json"
    assert url(listen="fd00::5") == "http://[fd00::5]/lib.json"
    assert url(listen="192.0.2.5") == "http://192.0.2.5/lib.json"


# --- serving --------------------------------------------------------------------------------


def _check_files(port: int, state: Path, **request) -> None:
    published = state / "published"
    for path in walk_paths(port, **request):
        response = fetch(port, path, **request)
        on_disk = (published / unquote(path.lstrip("/"))).read_bytes()
        assert response.status == 200, path
        assert response.body == on_disk, path
        assert int(response.headers["content-length"]) == len(on_disk)
        assert response.headers["accept-ranges"] == "bytes"
        expected = {".json": "application/json", ".ovf": "application/xml; charset=utf-8",
                    ".mf": "text/plain; charset=utf-8", ".vmdk": "application/octet-stream",
                    ".iso": "application/octet-stream"}[Path(path).suffix]
        assert response.headers["content-type"] == expected, path


def _check_range(port: int, state: Path, **request) -> None:
    disk = "/Web%20tier%20%232/3VMvApp-disk1.vmdk"
    data = (state / "published" / "Web tier #2" / "3VMvApp-disk1.vmdk").read_bytes()
    assert len(data) >= 5 * 2**20
    headers = dict(request.pop("headers", {}), Range="bytes=3000000-3999999")
    response = fetch(port, disk, headers=headers, **request)
    assert response.status == 206
    assert response.headers["content-range"] == f"bytes 3000000-3999999/{len(data)}"
    assert response.body == data[3000000:4000000]


def test_plain_http_serves_the_whole_library(served, work_dir):
    server = served()
    _check_files(server.port, work_dir / "state")
    _check_range(server.port, work_dir / "state")
    assert fetch(server.port, "/ttylinux/").status == 404  # browsing off: no listing


PRIVATE_PATHS = [
    "/staging/secret.txt", "/cache/secret.txt", "/last-run.json", "/published/lib.json",
    "/snapshots/1/lib.json", "/../staging/secret.txt", "/../../state/last-run.json",
    "/%2e%2e/staging/secret.txt", "/..%2fstaging%2fsecret.txt", "/%2e%2e%2flast-run.json",
    "/ttylinux/../../cache/secret.txt", "/ttylinux/%2e%2e/%2e%2e/cache/secret.txt",
    "/.library-syncer/cache.json", "/%2elibrary-syncer/cache.json", "/.library-syncer/",
    "//staging/secret.txt", "/ttylinux/..%5c..%5ccache%5csecret.txt",
]


@pytest.mark.parametrize("browse", [False, True])
def test_private_state_is_never_reachable(served, browse):
    server = served(browse=browse)
    for path in PRIVATE_PATHS:
        response = fetch(server.port, path)
        assert response.status == 404, (path, response.status)
        assert SENTINEL.encode() not in response.body
    listing = fetch(server.port, "/ttylinux/")
    if browse:
        assert listing.status == 200 and b"ttylinux-pc_i486-16.1.ovf" in listing.body
        root = fetch(server.port, "/")
        assert b".library-syncer" not in root.body  # dot folders are not even listed
    else:
        assert listing.status == 404 and b"ttylinux-pc_i486" not in listing.body


def test_basic_auth_guards_every_file(served, work_dir, password_file):
    server = served(auth_password_file=str(password_file))
    paths = walk_paths(server.port, auth=("vcsp", PASSWORD))
    assert len(paths) == 14  # lib, items, 3 x item.json, 9 files
    for path in paths:
        assert fetch(server.port, path).status == 401, path
        assert fetch(server.port, path, auth=("vcsp", "wrong")).status == 401, path
        assert fetch(server.port, path, auth=("admin", PASSWORD)).status == 401, path
    _check_files(server.port, work_dir / "state", auth=("vcsp", PASSWORD))
    _check_range(server.port, work_dir / "state", auth=("vcsp", PASSWORD))
    import base64

    token = base64.b64encode(f"vcsp:{PASSWORD}".encode()).decode()
    for text in (server.log_text(), server.caddyfile.read_text()):
        assert PASSWORD not in text and token not in text


def test_allow_list_refuses_other_networks(served, work_dir, password_file):
    server = served(allow=["127.0.0.1/32", "203.0.113.0/24"], auth_password_file=str(password_file))
    paths = walk_paths(server.port, auth=("vcsp", PASSWORD))
    for path in paths:
        outsider = fetch(server.port, path, source="127.0.0.2", auth=("vcsp", PASSWORD))
        assert outsider.status == 403, path
        assert "www-authenticate" not in outsider.headers  # not even told a password exists
        assert fetch(server.port, path, source="127.0.0.1").status == 401
        assert fetch(server.port, path, source="127.0.0.1", auth=("vcsp", PASSWORD)).status == 200
    curl = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--interface",
                           "127.0.0.2", f"http://127.0.0.1:{server.port}/lib.json"],
                          capture_output=True, text=True, timeout=30)
    assert curl.stdout == "403"


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# CPU Caddy may spend on one failed login. `caddy hash-password`'s cost 14 takes ≈0.95 s on the
# test machine (docs/web.md); the chosen cost ≈4 ms. The bound leaves room for a loaded host.
FAILED_LOGIN_CPU = 0.05


def test_a_failed_login_costs_little_cpu(served, password_file):
    """Wrong passwords and wrong user names, each one new (Caddy caches pairs it has seen)."""
    server = served(auth_password_file=str(password_file))
    assert f"$2b${web_password.BCRYPT_COST:02d}$" in server.caddyfile.read_text()
    assert fetch(server.port, "/lib.json", auth=("vcsp", PASSWORD)).status == 200
    tries = 20
    for user in ("vcsp", "admin", "vcs", "vcspx", ""):
        before = _cpu_seconds(server.process.pid)
        for n in range(tries):
            refused = fetch(server.port, "/lib.json", auth=(user, f"guess-{user}-{n}"))
            assert refused.status == 401
            assert refused.headers["www-authenticate"] == 'Basic realm="restricted"'
        per_try = (_cpu_seconds(server.process.pid) - before) / tries
        assert per_try < FAILED_LOGIN_CPU, f"user {user!r}: {per_try * 1000:.0f} ms per try"
    # Two Authorization headers (basicauth reads the first): refused, and cheaply.
    import base64

    def basic(user: str, password: str) -> str:
        return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()

    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.putrequest("GET", "/lib.json")
    connection.putheader("Authorization", basic("admin", "x"))
    connection.putheader("Authorization", basic("vcsp", PASSWORD))
    connection.endheaders()
    assert connection.getresponse().status == 401
    connection.close()
    lower = fetch(server.port, "/lib.json",
                  headers={"Authorization": basic("vcsp", PASSWORD).lower()[:6]
                           + basic("vcsp", PASSWORD)[6:]})
    assert lower.status == 200  # "basic" in any case, as Go's parser takes it


@pytest.mark.parametrize("user", ["vcsp", "a", "ab", "abc", "vé", "x.y-z_w"])
def test_foreign_user_pattern_matches_exactly_that_users_credentials(user):
    import base64
    import random
    import re

    pattern = re.compile(web_password.foreign_user_pattern(user))
    rng = random.Random(user)
    for _ in range(500):
        password = bytes(rng.randrange(256) for _ in range(rng.randrange(12))).decode("latin-1")
        assert pattern.match("Basic " + base64.b64encode(f"{user}:{password}".encode()).decode())
        other = user.encode()[:rng.randrange(len(user.encode()) + 1)]
        other += bytes(rng.randrange(256) for _ in range(rng.randrange(1, 4)))
        decoded = other + b":" + password.encode()
        if not decoded.startswith(f"{user}:".encode()):
            assert not pattern.match("Basic " + base64.b64encode(decoded).decode()), decoded


PLANTED = (b"<!doctype html><html><head><title>planted</title></head><body>"
           b"<script>document.title = 'script ran'</script></body></html>")


def test_every_response_is_sandboxed(served, work_dir):
    """A file the server planted in the library (.html, .svg) must not run on this origin."""
    server = served(browse=True)
    snapshot = (work_dir / "state" / "published").resolve()
    (snapshot / "ttylinux" / "planted.html").write_bytes(PLANTED)
    (snapshot / "ttylinux" / "planted.svg").write_bytes(
        b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>')
    (snapshot / "index.html").write_text("<!doctype html><title>page</title>")
    for path in ("/ttylinux/planted.html", "/ttylinux/planted.svg", "/lib.json", "/",
                 "/index.html", "/ttylinux/", "/ttylinux/ttylinux-pc_i486-16.1.ovf"):
        response = fetch(server.port, path)
        assert response.status == 200, path
        policy = response.headers.get("content-security-policy", "")
        assert policy.split(";")[0] == "sandbox", (path, policy)
        assert "default-src 'none'" in policy and "script-src" not in policy
    assert fetch(server.port, "/nothing-here").headers["content-security-policy"]


def test_https_with_a_custom_certificate(served, work_dir, tls_files):
    ca, cert_file, key_file = tls_files
    server = served(tls="custom", hostname="library.test", cert_file=str(cert_file),
                    key_file=str(key_file))
    trusted = ssl.create_default_context()
    ca.configure_trust(trusted)
    _check_files(server.port, work_dir / "state", host="library.test", tls=trusted)
    _check_range(server.port, work_dir / "state", host="library.test", tls=trusted)
    with pytest.raises(ssl.SSLCertVerificationError, match=r"mismatch|doesn.t match"):
        fetch(server.port, "/lib.json", host="wrong.test", tls=trusted)
    with pytest.raises(ssl.SSLCertVerificationError):  # a client without the CA refuses too
        fetch(server.port, "/lib.json", host="library.test", tls=ssl.create_default_context())
    served_der = ssl.PEM_cert_to_DER_cert(cert_file.read_text().split("-----END")[0] +
                                          "-----END CERTIFICATE-----\n")
    expected = hashlib.sha1(served_der).hexdigest().upper()
    thumbprint = certificate.tls_thumbprint(server.config)
    assert thumbprint is not None and thumbprint.replace(":", "") == expected
    assert len(thumbprint) == 59
    assert web.subscription_url(server.config) == \
        f"https://library.test:{server.config.web.https_port}/lib.json"
    server.stop()  # not running: the thumbprint comes from the certificate file
    assert certificate.tls_thumbprint(server.config) == thumbprint


def test_https_with_caddys_internal_ca(served, work_dir):
    server = served(tls="internal", hostname="library.test")
    root_ca = work_dir / "caddy-data" / "caddy" / "pki" / "authorities" / "local" / "root.crt"
    wait_for(root_ca.exists, what=f"caddy to write {root_ca}")
    trusted = ssl.create_default_context(cafile=str(root_ca))

    def issued() -> bool:  # Caddy issues the name's certificate after writing its root
        try:
            fetch(server.port, "/lib.json", host="library.test", tls=trusted)
        except ssl.SSLError as error:
            if "ALERT_INTERNAL_ERROR" not in str(error):  # anything but "no certificate yet"
                raise
            return False
        return True

    wait_for(issued, what="caddy to serve its certificate for library.test")
    _check_files(server.port, work_dir / "state", host="library.test", tls=trusted)
    with pytest.raises(ssl.SSLError):  # Caddy has no certificate for that name at all
        fetch(server.port, "/lib.json", host="wrong.test", tls=trusted)
    assert certificate.tls_thumbprint(server.config) is not None
    assert certificate.tls_thumbprint(make_config(work_dir)) is None  # plain HTTP has none


def test_reload_does_not_drop_a_download_in_flight(served, work_dir):
    """`systemctl reload` = re-render + `caddy reload` over the admin socket."""
    import socket

    server = served()
    disk = (work_dir / "state" / "published" / "Web tier #2" / "3VMvApp-disk1.vmdk").read_bytes()
    # A small receive window keeps most of the 6 MiB on Caddy's side of the connection.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32768)
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(b"GET /Web%20tier%20%232/3VMvApp-disk1.vmdk HTTP/1.1\r\nHost: x\r\n"
                 b"Connection: close\r\n\r\n")
    received = sock.recv(65536)
    server.config = make_config(work_dir, browse=True, http_port=server.config.web.http_port,
                                https_port=server.config.web.https_port)
    server.reload()  # the new config is live while our download is still half-way
    assert fetch(server.port, "/ttylinux/").status == 200
    while chunk := sock.recv(1 << 20):
        received += chunk
    sock.close()
    body = received.split(b"\r\n\r\n", 1)[1]
    assert body == disk
    assert server.process.poll() is None


# --- the subscriber walk while snapshots switch --------------------------------------------


def _truth(snapshot: Path) -> dict[str, tuple[int, str, str | None]]:
    """path → (size, sha256, etag listed in the manifests) for everything a subscriber reads."""
    facts: dict[str, tuple[int, str, str | None]] = {}

    def add(path: str, etag: str | None = None) -> None:
        data = (snapshot / unquote(path)).read_bytes()
        facts["/" + path] = (len(data), hashlib.sha256(data).hexdigest(), etag)

    lib = json.loads((snapshot / "lib.json").read_text())
    add("lib.json")
    add(lib["itemsHref"])
    for item in json.loads((snapshot / lib["itemsHref"]).read_text())["items"]:
        add(item["selfHref"])
        for f in item["files"]:
            for href in f["hrefs"]:
                add(href, f["etag"])
    return facts


def _walk(port: int, between=None) -> dict:
    """One subscriber pass: lib.json → itemsHref → each selfHref → each file's hrefs.

    Returns the lib.json versions seen at the start and at the end, every body's digest, and
    the files whose size or etag disagree between the items.json and item.json this walk read.
    """
    got: dict[str, str] = {}

    def get(path: str) -> bytes:
        response = fetch(port, path)
        assert response.status == 200, (path, response.status)
        got[path] = hashlib.sha256(response.body).hexdigest()
        return response.body

    lib = json.loads(get("/lib.json"))
    items = json.loads(get("/" + lib["itemsHref"]))["items"]
    if between:
        between()
    stale = []  # files disagreeing with the items.json or item.json this walk read
    for listed in items:
        item = json.loads(get("/" + listed["selfHref"]))
        etags = {href: f["etag"] for f in listed["files"] for href in f["hrefs"]}
        for f in item["files"]:
            for href in f["hrefs"]:
                body = get("/" + href)
                if len(body) != f["size"] or etags.get(href) != f["etag"]:
                    stale.append(href)
    end = json.loads(fetch(port, "/lib.json").body)["version"]
    return {"start": int(lib["version"]), "end": int(end), "got": got, "stale": stale}


class Switcher:
    """Publishes version after version as the sync does: build the next snapshot complete
    (unchanged files hard-linked from the current one), switch the symlink atomically, and
    delete the one before the previous (the previous stays until the next switch)."""

    def __init__(self, state: Path) -> None:
        self.state, self.version = state, 1
        self.truth = {1: _truth(state / "snapshots" / "1")}
        self.numbers = {_lib_version(state / "snapshots" / "1"): 1}  # lib.json version → n

    def switch(self) -> None:
        from library_syncer.base.fsutil import atomic_symlink

        snapshots, new = self.state / "snapshots", self.version + 1
        harness.write_library(snapshots / str(new), new, previous=snapshots / str(self.version),
                              state_dir=self.state / "cache" / "manifest")
        self.truth[new] = _truth(snapshots / str(new))
        self.numbers[_lib_version(snapshots / str(new))] = new
        atomic_symlink(f"snapshots/{new}", self.state / "published")
        shutil.rmtree(snapshots / str(new - 2), ignore_errors=True)
        self.version = new


def _lib_version(snapshot: Path) -> int:
    return int(json.loads((snapshot / "lib.json").read_text())["version"])


def _check_walk(walk: dict, switcher: Switcher) -> bool:
    """Every body is one version's complete file (never torn); a walk that stayed inside one
    version is exact: every file matches the manifests it read."""
    truth = switcher.truth
    walk = walk | {"start": switcher.numbers[walk["start"]],
                   "end": switcher.numbers[walk["end"]]}
    versions = range(walk["start"], walk["end"] + 1)
    for path, digest in walk["got"].items():
        assert any(truth[v][path][1] == digest for v in versions), (path, walk["start"])
    if walk["start"] == walk["end"]:
        assert all(truth[walk["start"]][p][1] == d for p, d in walk["got"].items())
        assert walk["stale"] == []
        return True
    return False


def test_subscriber_walk_sees_one_consistent_version_while_snapshots_switch(served, work_dir):
    import threading

    server = served()
    switcher = Switcher(work_dir / "state")
    # A walk crossing a switch, made deterministic: vCenter read version 1's item list, the
    # sync published version 2, then vCenter fetched the files. It gets complete files of
    # version 2 (never a torn one), sees the etag change, and lib.json has moved on, so its
    # next poll re-syncs. A walk that stays inside one version is exact.
    crossing = _walk(server.port, between=switcher.switch)
    assert not _check_walk(crossing, switcher)
    assert sorted(crossing["stale"]) == ["Web%20tier%20%232/3VMvApp-disk1.vmdk",
                                         "Web%20tier%20%232/3VMvApp.mf"]
    assert (switcher.numbers[crossing["start"]], switcher.numbers[crossing["end"]]) == (1, 2)
    # Many walks while the sync keeps switching.
    stop = threading.Event()
    errors: list[BaseException] = []

    def keep_switching() -> None:
        try:
            while not stop.is_set() and switcher.version < 40:
                switcher.switch()
        except BaseException as error:  # surfaced in the main thread
            errors.append(error)

    thread = threading.Thread(target=keep_switching)
    thread.start()
    walks = []
    try:
        while thread.is_alive() or len(walks) < 5:
            walks.append(_walk(server.port))
    finally:
        stop.set()
        thread.join()
    assert not errors
    consistent = sum(_check_walk(walk, switcher) for walk in walks)
    assert switcher.version == 40 and consistent >= 1
    assert len({w["start"] for w in walks}) > 3  # the walks really ran across the switches
    final = _walk(server.port)
    assert _check_walk(final, switcher) and switcher.numbers[final["start"]] == 40


def test_certificate_warnings_expired_or_other_name(work_dir, caplog):
    import datetime

    ca = trustme.CA()
    past = datetime.datetime(2020, 1, 1)
    expired = ca.issue_cert("library.test", not_before=past,
                            not_after=past + datetime.timedelta(days=30))
    cert_file, key_file = work_dir / "old.pem", work_dir / "old-key.pem"
    expired.cert_chain_pems[0].write_to_path(str(cert_file))
    expired.private_key_pem.write_to_path(str(key_file))
    config = make_config(work_dir, tls="custom", hostname="other.test", cert_file=str(cert_file),
                         key_file=str(key_file))
    with caplog.at_level("WARNING", logger="library_syncer.web"):
        text = web.render_caddyfile(config)  # warnings, not errors: vCenter may still accept
    assert "tls " in text
    messages = " | ".join(r.getMessage() for r in caplog.records)
    assert "web.cert_file" in messages and "has expired" in messages
    assert "is not valid for web.hostname other.test" in messages
