"""Publishing the library with Caddy: the Caddyfile, its checks and the vCenter URL.

Caddy serves only `config.published_dir` (the symlink to the current snapshot). Its admin API
listens on a private unix socket in the web unit's own runtime directory, so `caddy reload`
works and two instances on a host never clash. Everything that can be checked before Caddy
starts is checked here, each problem naming its setting. The password's hash is
web/password.py's; the thumbprint vCenter asks about, web/certificate.py's.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
from pathlib import Path

from ..base import execute, fsutil, render
from ..base.config import Config, is_hostname
from ..base.errors import ConfigError, ConfigProblem, SyncerError
from . import password

log = logging.getLogger(__name__)

ADMIN_SOCKET = "caddy-admin.sock"
# The web unit's own account (packaging/debian/library-syncer.sysusers), not the sync's: the
# sync parses what the server sends and must not reach the TLS key, the password or the admin
# socket; Caddy must not reach the site's SSH key.
WEB_USER = WEB_GROUP = "library-syncer-web"


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


def is_ip(text: str) -> bool:
    """An IP address, not a name (certificates and TLS name them differently)."""
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
        flag = "-checkip" if is_ip(web.hostname) else "-checkhost"
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
    if web.hostname and not (is_hostname(web.hostname) or is_ip(web.hostname)):
        problems.append(ConfigProblem(file, "web.hostname", f'"{web.hostname}"', "a host name"))
    if web.tls == "acme" and web.hostname and is_ip(web.hostname):
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
    auth_hash = password.hash_password(password.read(config)) if web.auth_password_file else ""
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
        foreign_user=_caddy_quote(password.foreign_user_pattern(web.auth_user)),
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
