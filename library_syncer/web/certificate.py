"""The thumbprint of the certificate a site's subscribers get, as vCenter shows and asks it.

Asked of the running web server (what vCenter sees, whatever web.tls is), else read from
web.cert_file. Also the thumbprint format itself: colon-separated upper-case hex of a digest of
the DER certificate (SHA-1 as vCenter shows a subscription's, SHA-256 as vcenter.thumbprint).
The settings' certificate pair is checked with the Caddyfile (web/caddy.py).
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
import socket
import ssl

from ..base.config import Config
from .caddy import is_ip, public_host

THUMBPRINT_TIMEOUT = 3.0
_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def thumbprint(der: bytes, algorithm: str = "sha1") -> str:
    """AA:BB:… of the DER certificate's digest."""
    digest = hashlib.new(algorithm, der).hexdigest().upper()
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
            context.wrap_socket(raw, server_hostname=None if is_ip(name) else name) as tls:
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
        return thumbprint(_served_certificate(config, timeout))
    except (OSError, ssl.SSLError, ValueError):
        pass
    if config.web.tls == "custom":
        try:
            match = _PEM_CERT.search(config.web.cert_file.read_text(errors="replace"))
            if match:
                return thumbprint(ssl.PEM_cert_to_DER_cert(match.group(0)))
        except (OSError, ValueError):
            pass
    return None
