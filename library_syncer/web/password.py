"""The web's Basic-authentication password, as the Caddyfile needs it.

Read from `web.auth_password_file` (one line), hashed with bcrypt by the C library (so the cost
is ours and the password is never on a command line), and the pattern of an Authorization
header for the configured user: the Caddyfile drops every other one before Caddy hashes it.
"""

from __future__ import annotations

import base64

from ..base.config import Config
from ..base.errors import ConfigError, ConfigProblem, SyncerError

# bcrypt's cost (log2 of its rounds). Every failed login costs the server one hash: Caddy
# caches only the pairs it has seen, and an attacker sends new ones. `caddy hash-password`
# always uses cost 14: ≈0.95 s of CPU per try, measured with Debian's Caddy. Cost 6 costs
# ≈4 ms. A higher cost only slows guessing from a stolen hash, and the hash is kept only where
# the password file itself is readable (the web user, root): see docs/web.md.
BCRYPT_COST = 6
_BCRYPT_PREFIX = b"$2b$"
_CRYPT_DATA_SIZE = 32768  # sizeof(struct crypt_data) in libxcrypt
_BASE64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


def read(config: Config) -> str:
    """The password in web.auth_password_file (set): its one line, else a ConfigError."""
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
