"""Publishing the library with Caddy: the Caddyfile, its checks, the vCenter URL and thumbprint.

Caddy serves only `config.published_dir` (the symlink to the current snapshot). Its admin API
listens on a private unix socket in the web unit's own runtime directory, so `caddy reload`
works and two instances on a host never clash. Everything that can be checked before Caddy
starts is checked here, each problem naming its setting.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import logging
import os
import re
import socket
import ssl
from pathlib import Path

from ..base import execute, fsutil, render
from ..base.config import Config, is_hostname
from ..base.errors import ConfigError, ConfigProblem, SyncerError

log = logging.getLogger(__name__)

ADMIN_SOCKET = "caddy-admin.sock"
# The web unit's own account (packaging/debian/library-syncer.sysusers), not the sync's: the
# sync parses what the server sends and must not reach the TLS key, the password or the admin
# socket; Caddy must not reach the site's SSH key.
WEB_USER = WEB_GROUP = "library-syncer-web"
THUMBPRINT_TIMEOUT = 3.0
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


# --- derived values -----------------------------------------------------------------------


def web_runtime_dir(config: Config) -> Path:
    """The web unit's own runtime directory: `/run/library-syncer` → `/run/library-syncer-web`.

    A sibling rather than the shared runtime directory, because systemd removes a unit's
    RuntimeDirectory= when that unit stops and the sync must not pull Caddy's socket away.
    """
    runtime = config.runtime_dir
    return runtime.parent / f"{runtime.name}-web"


def admin_address(config: Config) -> str:
    """Caddy's admin endpoint (`caddy reload` reads it back from the rendered file)."""
    return f"unix/{web_runtime_dir(config) / ADMIN_SOCKET}"


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def public_host(config: Config) -> str:
    """The name in the URL: web.hostname, else the listen address, else this host's FQDN."""
    web = config.web
    if web.hostname:
        return web.hostname.rstrip(".")
    if web.listen and not ipaddress.ip_address(web.listen).is_unspecified:
        return web.listen
    return socket.getfqdn()


def subscription_url(config: Config) -> str:
    """The URL to paste into vCenter's subscribed library: `http(s)://host[:port]/lib.json`."""
    web = config.web
    https = web.tls != "off"
    port, default = (web.https_port, 443) if https else (web.http_port, 80)
    suffix = "" if port == default else f":{port}"
    return f"{'https' if https else 'http'}://{_url_host(public_host(config))}{suffix}/lib.json"


def _caddy_quote(value: str) -> str:
    """A Caddyfile token: quoted when it holds spaces or quotes."""
    if value and not any(c in value for c in ' \t"\\{}#'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _address(config: Config) -> str:
    web = config.web
    if web.tls == "off":
        return f"http://:{web.http_port}"
    if web.tls == "custom":
        return f"https://:{web.https_port}"  # any Host: the certificate says who we are
    if web.tls == "internal":
        return f"https://{_url_host(public_host(config))}:{web.https_port}"
    return web.hostname.rstrip(".")  # acme: Caddy adds :https_port and the HTTP challenge


# --- checks -------------------------------------------------------------------------------


def _readable(path: Path, key: str, what: str, file: str) -> list[ConfigProblem]:
    try:
        with open(path, "rb") as handle:
            if not handle.read(1):
                return [ConfigProblem(file, key, f'"{path}"', f"{what} (the file is empty)")]
    except FileNotFoundError:
        return [ConfigProblem(file, key, f'"{path}"', f"{what} (no such file)")]
    except PermissionError:
        user = _user()
        return [ConfigProblem(file, key, f'"{path}"', f"{what} (not readable by user {user}: "
                              f"make it readable by group {WEB_GROUP})")]
    except IsADirectoryError:
        return [ConfigProblem(file, key, f'"{path}"', f"{what} (it is a directory)")]
    return []


def _user() -> str:
    import pwd

    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _no_password(*_: object) -> bytes:
    raise ValueError("encrypted")


def _check_cert_pair(config: Config) -> list[ConfigProblem]:
    """The certificate parses, the key parses, and they belong together (OpenSSL via ssl)."""
    web, file = config.web, str(config.file)
    problems = _readable(web.cert_file, "web.cert_file", "a readable PEM certificate", file)
    problems += _readable(web.key_file, "web.key_file", "a readable PEM private key", file)
    if problems:
        return problems
    try:
        ssl.create_default_context(cafile=str(web.cert_file))
    except ssl.SSLError as error:
        return [ConfigProblem(file, "web.cert_file", f'"{web.cert_file}"',
                              f"a PEM certificate (OpenSSL: {error.reason or error})")]
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(web.cert_file), str(web.key_file), password=_no_password)
    except (ssl.SSLError, ValueError) as error:
        reason = getattr(error, "reason", None) or str(error)
        if "KEY_VALUES_MISMATCH" in str(reason).upper():
            expected = "the private key of web.cert_file (the certificate does not match this key)"
        elif "encrypted" in str(error) or "BAD_DECRYPT" in str(reason).upper():
            expected = "an unencrypted PEM private key (Caddy cannot ask for a passphrase)"
        else:
            expected = f"a PEM private key (OpenSSL: {reason})"
        return [ConfigProblem(file, "web.key_file", f'"{web.key_file}"', expected)]
    return []


def _cert_warnings(config: Config) -> list[str]:
    """Things that work but that the operator should know (expired, name not covered)."""
    web, warnings = config.web, []
    expired = execute.run(["openssl", "x509", "-noout", "-checkend", "0", "-in", web.cert_file],
                          check=False, capture=True)
    if expired.returncode != 0:
        warnings.append(f"{config.file}: web.cert_file: {web.cert_file} has expired")
    if web.hostname:
        flag = "-checkip" if _is_ip(web.hostname) else "-checkhost"
        covered = execute.run(["openssl", "x509", "-noout", flag, web.hostname.rstrip("."),
                               "-in", web.cert_file], check=False, capture=True)
        if "does match" not in covered.output:
            warnings.append(f"{config.file}: web.cert_file: {web.cert_file} is not valid for "
                            f"web.hostname {web.hostname}; clients checking names will refuse it")
    return warnings


def check(config: Config) -> tuple[list[ConfigProblem], list[str]]:
    """Problems that stop a start (each naming its setting) and warnings."""
    web, file = config.web, str(config.file)
    problems: list[ConfigProblem] = []
    warnings: list[str] = []
    if web.hostname and not (is_hostname(web.hostname) or _is_ip(web.hostname)):
        problems.append(ConfigProblem(file, "web.hostname", f'"{web.hostname}"', "a host name"))
    if web.tls == "acme" and web.hostname and _is_ip(web.hostname):
        problems.append(ConfigProblem(file, "web.hostname", f'"{web.hostname}"',
                                      'a DNS name when web.tls = "acme" (no ACME '
                                      'certificates for IP addresses)'))
    if web.tls == "internal" and not web.hostname:
        problems.append(ConfigProblem(file, "web.hostname", "nothing",
                                      'the name in the URL when web.tls = "internal" (the '
                                      "certificate is issued for it)"))
    if web.tls == "custom":
        pair = _check_cert_pair(config)
        problems += pair
        if not pair:
            try:
                warnings += _cert_warnings(config)
            except SyncerError:  # no openssl command: these checks are a courtesy
                log.debug("openssl not available: certificate expiry and name not checked")
    # Only on a site (a peer to pull from, or the client package's state folder): a server-only
    # host has neither the synced copy nor Caddy.
    site = bool(config.sync.upstream_list()) or config.state_dir.is_dir()
    if site and not config.published_dir.is_dir():
        warnings.append(f"{config.published_dir} does not exist yet (no sync has completed): "
                        "Caddy answers 404 until the first sync publishes the library")
    if web.auth_password_file is not None and ":" in web.auth_user:
        problems.append(ConfigProblem(file, "web.auth_user", f'"{web.auth_user}"',
                                      "a user name without ':' (Basic authentication ends the "
                                      "name at the first ':')"))
    if web.auth_password_file is not None:
        problems += _readable(web.auth_password_file, "web.auth_password_file",
                              "a readable file holding the password", file)
    return problems, warnings


def _read_password(config: Config) -> str:
    path = config.web.auth_password_file
    assert path is not None
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(ConfigProblem(str(config.file), "web.auth_password_file", f'"{path}"',
                                        "a UTF-8 text file")) from None
    lines = text.splitlines()
    password = lines[0] if lines else ""
    if not password or "\0" in password or any(line.strip() for line in lines[1:]):
        raise ConfigError(ConfigProblem(str(config.file), "web.auth_password_file", f'"{path}"',
                                        "a file holding the password on one line"))
    return password


# bcrypt's cost (log2 of its rounds). Every failed login costs the server one hash: Caddy
# caches only the pairs it has seen, and an attacker sends new ones. `caddy hash-password`
# always uses cost 14: ≈0.95 s of CPU per try, measured with Debian's Caddy. Cost 6 costs
# ≈4 ms. A higher cost only slows guessing from a stolen hash, and the hash is kept only where
# the password file itself is readable (the web user, root): see docs/web.md.
BCRYPT_COST = 6
_BCRYPT_PREFIX = b"$2b$"
_CRYPT_DATA_SIZE = 32768  # sizeof(struct crypt_data) in libxcrypt


def hash_password(password: str, cost: int = BCRYPT_COST) -> str:
    """bcrypt of `password` at `cost`, by the C library's crypt (libxcrypt, in every Debian).

    `caddy hash-password` cannot choose the cost. The password never appears on a command
    line; Go's bcrypt, which Caddy uses to compare, accepts `$2b$` hashes of any cost.
    """
    import ctypes

    try:
        libcrypt = ctypes.CDLL("libcrypt.so.1")
    except OSError as error:
        raise SyncerError(f"cannot hash the web password: libcrypt.so.1: {error}",
                          hint="apt-get install libcrypt1") from None
    libcrypt.crypt_gensalt_rn.restype = ctypes.c_char_p
    libcrypt.crypt_gensalt_rn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                          ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    libcrypt.crypt_rn.restype = ctypes.c_char_p
    libcrypt.crypt_rn.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p,
                                  ctypes.c_int]
    salt_buffer = ctypes.create_string_buffer(128)
    # No random bytes given: libxcrypt takes them from the kernel (getrandom).
    salt = libcrypt.crypt_gensalt_rn(_BCRYPT_PREFIX, cost, None, 0, salt_buffer, 128)
    data = ctypes.create_string_buffer(_CRYPT_DATA_SIZE)
    hashed = libcrypt.crypt_rn(password.encode(), salt, data, _CRYPT_DATA_SIZE) if salt else None
    if not hashed or not hashed.startswith(_BCRYPT_PREFIX):
        raise SyncerError("cannot hash the web password: libcrypt refused bcrypt",
                          hint="report this with the output of `ldd --version`")
    return hashed.decode("ascii")


_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def base64_prefix_pattern(prefix: bytes) -> str:
    """A regular expression matching exactly the base64 texts whose decoding starts with
    `prefix` (anchored at the start, open at the end; RE2 syntax, no backslashes)."""
    whole = len(prefix) - len(prefix) % 3
    pattern = base64.b64encode(prefix[:whole]).decode()
    rest = prefix[whole:]
    if rest:
        bits = int.from_bytes(rest + b"\0" * (3 - len(rest)), "big")  # one 24-bit group
        fixed = len(rest) * 8 // 6  # characters wholly given by the prefix: 1 or 2
        for index in range(fixed):
            pattern += _BASE64[(bits >> (18 - 6 * index)) & 63]
        known = len(rest) * 8 - 6 * fixed  # leading bits of the next character: 2 or 4
        mask = ((1 << known) - 1) << (6 - known)
        top = (bits >> (18 - 6 * fixed)) & mask
        pattern += "[" + "".join(c for v, c in enumerate(_BASE64) if v & mask == top) + "]"
    return pattern


def foreign_user_pattern(user: str) -> str:
    """The Authorization header of Basic credentials for `user` (any password), as a regexp.

    Caddy compares credentials for an unknown user against a built-in cost-14 bcrypt hash
    (≈0.8 s of CPU, so that timing does not reveal user names). The Caddyfile strips every
    Authorization header that does not match this before basicauth sees it: a wrong user
    name then costs nothing and gets the same 401 as no credentials.
    """
    return ("^[Bb][Aa][Ss][Ii][Cc] " + base64_prefix_pattern(f"{user}:".encode())
            + "[A-Za-z0-9+/]*=*$")


# --- rendering ----------------------------------------------------------------------------


def render_caddyfile(config: Config, *, warn: bool = True) -> str:
    """The Caddyfile for the settings; raises ConfigError naming each setting at fault."""
    problems, warnings = check(config)
    if problems:
        raise ConfigError(problems)
    if warn:
        for warning in warnings:
            log.warning("%s", warning)
    web = config.web
    auth_hash = hash_password(_read_password(config)) if web.auth_password_file else ""
    fleet = config.server.fleet_page
    return render.render(
        "Caddyfile.j2",
        source=str(config.file),
        tls=web.tls,
        admin=admin_address(config),
        http_port=web.http_port,
        https_port=web.https_port,
        hostname=web.hostname.rstrip("."),
        acme_email=_caddy_quote(web.acme_email),
        address=_address(config),
        listen=web.listen,
        cert_file=_caddy_quote(str(web.cert_file)),
        key_file=_caddy_quote(str(web.key_file)),
        root=_caddy_quote(str(config.published_dir)),
        browse=web.browse,
        auth=bool(auth_hash),
        auth_user=_caddy_quote(web.auth_user),
        auth_hash=auth_hash,
        foreign_user=_caddy_quote(foreign_user_pattern(web.auth_user)),
        allow=list(web.allow),
        fleet_root=_caddy_quote(str(fleet.parent)) if fleet else "",
        fleet_file=_caddy_quote(f"/{fleet.name}") if fleet else "",
    )


def validate(config: Config, path: Path, *, env: dict[str, str] | None = None) -> None:
    """`caddy validate` on a rendered file; its reason becomes a one-line ConfigError."""
    result = execute.run([config.web.caddy, "validate", "--config", str(path),
                          "--adapter", "caddyfile"], check=False, env=env)
    if result.returncode != 0:
        reason = next((line for line in reversed(result.tail) if line.startswith("Error")),
                      result.tail[-1] if result.tail else "no output")
        raise ConfigError(ConfigProblem(str(path), "", "", f"caddy validate: {reason}"))


# --- the thumbprint vCenter asks about ----------------------------------------------------


def _format_thumbprint(der: bytes) -> str:
    digest = hashlib.sha1(der).hexdigest().upper()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _served_certificate(config: Config, timeout: float) -> bytes:
    web = config.web
    host = web.listen or "127.0.0.1"
    if ipaddress.ip_address(host).is_unspecified:
        host = "::1" if ":" in host else "127.0.0.1"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # we only read the certificate, we trust nothing here
    name = public_host(config)
    with socket.create_connection((host, web.https_port), timeout=timeout) as raw, \
            context.wrap_socket(raw, server_hostname=None if _is_ip(name) else name) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError("no certificate")
    return der


def tls_thumbprint(config: Config, timeout: float = THUMBPRINT_TIMEOUT) -> str | None:
    """SHA-1 thumbprint (AA:BB:…) of the certificate subscribers get; None without TLS.

    Asks the running server first (that is what vCenter sees, whatever the mode); when it is
    not running, a custom certificate is read from its file; otherwise None.
    """
    if config.web.tls == "off":
        return None
    try:
        return _format_thumbprint(_served_certificate(config, timeout))
    except (OSError, ssl.SSLError, ValueError):
        pass
    if config.web.tls == "custom":
        try:
            match = _PEM_CERT.search(config.web.cert_file.read_text(errors="replace"))
            if match:
                return _format_thumbprint(ssl.PEM_cert_to_DER_cert(match.group(0)))
        except (OSError, ValueError):
            pass
    return None


# --- the command --------------------------------------------------------------------------


def write_validated(config: Config, text: str, output: Path, *, check_with_caddy: bool) -> None:
    """Replace `output` only with a config Caddy accepts (a bad edit never breaks a reload)."""
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    candidate = output.with_name(f".{output.name}.new")
    fsutil.atomic_write(candidate, text, 0o640, sync_dir=False)
    try:
        if check_with_caddy:
            validate(config, candidate)
        os.replace(candidate, output)
    finally:
        if candidate.exists():
            candidate.unlink()
    fsutil.fsync_dir(output.parent)
