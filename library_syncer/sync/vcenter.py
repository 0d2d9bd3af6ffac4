"""Tell vCenter now: after a run that changed the published library, the site asks its vCenter to
synchronise the subscribed library (`[vcenter]`; docs/vcenter.md is the operator's account).

vCenter syncs a subscribed library by itself only at its refresh interval; this request makes it
read lib.json within seconds of a publication. The API is the vSphere Automation REST API, its
`/api` endpoints (vSphere 7.0 U2 and later; the `/rest` ones of 6.7 are not used), as VMware's
reference documents them (developer.broadcom.com/xapis/vsphere-automation-api):

    POST   /api/session                                   Basic auth → "<session id>" (JSON string)
    POST   /api/content/library?action=find               {"name": …, "type": "SUBSCRIBED"} → [ids]
    GET    /api/content/subscribed-library/{id}           the LibraryModel (subscription_info)
    POST   /api/content/subscribed-library/{id}?action=sync   204; needs ContentLibrary.SyncLibrary
    DELETE /api/session                                   log out

Every call after the first carries the `vmware-api-session-id` header. The certificate is checked
(SHA-256 pin, a CA file, or the system's CAs) before the password leaves this host.

Never fails a run: a failure is one warning line, and the request stays pending in
<state>/vcenter.json until a later run (or change check) gets it through. A run that changed
nothing asks nothing. Neither the password nor the session id is ever logged.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import ssl
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..base import fsutil
from ..base.config import Config, VcenterConfig
from ..base.text import printable
from ..web import certificate

log = logging.getLogger("library-syncer")

STATE_FILE = "vcenter.json"  # in paths.state_dir: the pending flag and the last outcome
SESSION_HEADER = "vmware-api-session-id"
SYNC_PRIVILEGE = 'ContentLibrary.SyncLibrary ("Content library > Sync subscribed library")'
REQUESTED, FAILED = "requested", "failed"
MAX_BODY = 1 << 20  # vCenter's answers here are small; a larger one is not read whole
MAX_SAID = 200


class VcenterError(Exception):
    """One line saying what went wrong with vCenter (never a secret)."""


# --- the password file ---------------------------------------------------------------------


def password_problem(path: Path) -> str | None:
    """Why the password file cannot be used, or None. Only its owner may read it: a group- or
    world-readable password is refused before it is read."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return f"{path} does not exist"
    except PermissionError:
        return f"{path}: permission denied"
    if not stat.S_ISREG(st.st_mode):
        return f"{path} is not a file"
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        return (f"{path} has mode {mode:04o}: others than its owner may read or change it; "
                f"chmod 600 {path}")
    return None


def read_password(path: Path) -> str:
    problem = password_problem(path)
    if problem:
        raise VcenterError(f"vcenter.password_file: {problem} (the password is not used)")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except PermissionError:
        raise VcenterError(f"vcenter.password_file: {path}: permission denied (the sync's user "
                           "must own it: chown library-syncer: FILE)") from None
    except (OSError, UnicodeDecodeError) as error:
        raise VcenterError(f"vcenter.password_file: {path}: unreadable ({error})") from None
    if not lines or not lines[0] or any(line.strip() for line in lines[1:]):
        raise VcenterError(f"vcenter.password_file: {path}: expected the password on one line")
    return lines[0]


# --- the HTTPS client ----------------------------------------------------------------------


def _context(vc: VcenterConfig) -> ssl.SSLContext:
    if vc.thumbprint:  # pinned: the pin is compared after the handshake, before any request
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    try:
        return ssl.create_default_context(cafile=str(vc.ca_file) if vc.ca_file else None)
    except (OSError, ssl.SSLError) as error:
        raise VcenterError(f"vcenter.ca_file: {vc.ca_file}: not usable ({error})") from None


class _PinnedConnection(http.client.HTTPSConnection):
    """An HTTPS connection that checks the certificate's SHA-256 pin on every (re)connect, so
    nothing (no password) is sent to a server that is not the configured vCenter."""

    pin = ""

    def connect(self) -> None:
        super().connect()
        if self.pin:
            der = self.sock.getpeercert(binary_form=True) or b""
            seen = certificate.thumbprint(der, "sha256")
            if seen != self.pin:
                self.close()
                raise VcenterError(f"the certificate of {self.host}:{self.port} has SHA-256 "
                                   f"thumbprint {seen}, not vcenter.thumbprint: nothing was "
                                   "sent (if vCenter's certificate was renewed, set the new one)")


@dataclass
class Client:
    """One exchange with vCenter over one keep-alive connection, within `deadline`
    (time.monotonic()); `session` is set by `login()`."""

    vc: VcenterConfig
    deadline: float
    session: str = ""

    def __post_init__(self) -> None:
        self._conn = _PinnedConnection(self.vc.address, self.vc.port, timeout=self.vc.timeout,
                                       context=_context(self.vc))
        self._conn.pin = self.vc.thumbprint

    @property
    def where(self) -> str:
        return f"{self.vc.address}:{self.vc.port}" if self.vc.port != 443 else self.vc.address

    def call(self, method: str, path: str, body: Any = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any]:
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self._timed_out()
        self._conn.timeout = left
        if self._conn.sock is not None:
            self._conn.sock.settimeout(left)
        sent = {"Accept": "application/json", **(headers or {})}
        if self.session:
            sent[SESSION_HEADER] = self.session
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            sent["Content-Type"] = "application/json"
        try:
            self._conn.request(method, path, body=data, headers=sent)
            response = self._conn.getresponse()
            raw = response.read(MAX_BODY)
            if not response.isclosed():  # a larger answer than ours ever are: not reused
                self._conn.close()
        except TimeoutError:
            self._conn.close()
            raise self._timed_out() from None
        except ssl.SSLCertVerificationError as error:
            self._conn.close()
            raise VcenterError(f"cannot verify the certificate of {self.where} "
                               f"({error.verify_message}): set vcenter.thumbprint (its SHA-256) "
                               "or vcenter.ca_file (its CA, e.g. the VMCA root)") from None
        except (OSError, http.client.HTTPException) as error:
            self._conn.close()
            why = getattr(error, "strerror", None) or str(error) or type(error).__name__
            raise VcenterError(f"cannot reach vCenter at {self.where}: {why}") from None
        log.debug("vCenter: %s %s → %d", method, path.split("?")[0], response.status)
        try:
            answer = json.loads(raw) if raw.strip() else None
        except ValueError:
            answer = None
        return response.status, answer

    def _timed_out(self) -> VcenterError:
        return VcenterError(f"vCenter at {self.where} did not answer within "
                            f"{self.vc.timeout:g} s (vcenter.timeout)")

    def expect(self, status: int, answer: Any, what: str) -> Any:
        if 200 <= status < 300:
            return answer
        raise VcenterError(f"{what}: {_said(status, answer)}")

    def login(self, password: str) -> None:
        token = base64.b64encode(f"{self.vc.user}:{password}".encode()).decode()
        status, answer = self.call("POST", "/api/session",
                                   headers={"Authorization": f"Basic {token}"})
        if status == 401:
            raise VcenterError(f"vCenter at {self.where} refused the user {self.vc.user!r} or "
                               "its password (HTTP 401; vcenter.user, vcenter.password_file)")
        if status == 404:
            raise VcenterError(f"{self.where} has no /api/session: not a vCenter, or one older "
                               "than vSphere 7.0 U2 (not supported)")
        session = self.expect(status, answer, "logging in")
        if not isinstance(session, str) or not session:
            raise VcenterError(f"logging in: {self.where} answered no session id")
        self.session = session

    def logout(self) -> None:
        if self.session:
            try:
                self.call("DELETE", "/api/session")
            except VcenterError as error:  # the session expires by itself
                log.debug("vCenter: logging out: %s", error)
            self.session = ""
        self._conn.close()

    def find_library(self) -> str:
        """The subscribed library's id: vcenter.library_id as it is, or found by its name
        (vCenter compares names without regard to case)."""
        if self.vc.library_id:
            return self.vc.library_id
        status, answer = self.call("POST", "/api/content/library?action=find",
                                   {"name": self.vc.library, "type": "SUBSCRIBED"})
        found = self.expect(status, answer, f"finding the subscribed library {self.vc.library!r}")
        ids = [i for i in found if isinstance(i, str)] if isinstance(found, list) else []
        if not ids:
            raise VcenterError(f"{self.where} has no subscribed library named "
                               f"{self.vc.library!r} that {self.vc.user!r} can see "
                               "(vcenter.library)")
        if len(ids) > 1:
            raise VcenterError(f"{self.where} has {len(ids)} subscribed libraries named "
                               f"{self.vc.library!r}: set vcenter.library_id (one of "
                               f"{', '.join(ids[:5])})")
        return ids[0]

    def library(self, library_id: str) -> dict[str, Any]:
        status, answer = self.call("GET", f"/api/content/subscribed-library/{quote(library_id)}")
        if status == 404:
            raise VcenterError(f"{self.where} has no subscribed library with id "
                               f"{library_id!r} (vcenter.library_id)")
        model = self.expect(status, answer, f"reading subscribed library {library_id}")
        if not isinstance(model, dict):
            raise VcenterError(f"reading subscribed library {library_id}: not a library model")
        return model

    def sync(self, library_id: str) -> None:
        status, answer = self.call(
            "POST", f"/api/content/subscribed-library/{quote(library_id)}?action=sync")
        if status == 403:
            raise VcenterError(f"{self.vc.user!r} may not synchronise library {library_id} "
                               f"(HTTP 403): grant it {SYNC_PRIVILEGE} as a global permission")
        if status == 404:
            raise VcenterError(f"{self.where} has no subscribed library with id "
                               f"{library_id!r} (HTTP 404)")
        self.expect(status, answer, f"asking for a sync of library {library_id}")


def _said(status: int, answer: Any) -> str:
    """`HTTP 400 INVALID_ELEMENT_TYPE: …`, from vCenter's error body (/api's error format)."""
    said = f"HTTP {status}"
    if isinstance(answer, dict):
        kind = answer.get("error_type")
        messages = answer.get("messages")
        first = messages[0] if isinstance(messages, list) and messages else None
        text = first.get("default_message") if isinstance(first, dict) else None
        if isinstance(kind, str):
            said += f" {kind}"
        if isinstance(text, str) and text:
            said += f": {text}"
    return printable(said)[:MAX_SAID]


@contextmanager
def session(vc: VcenterConfig) -> Iterator[Client]:
    """A logged-in client (the password file checked first); logged out at the end."""
    assert vc.password_file is not None
    password = read_password(vc.password_file)
    client = Client(vc, time.monotonic() + vc.timeout)
    try:
        client.login(password)
        yield client
    finally:
        client.logout()


# --- what check shows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Subscription:
    """What vCenter's subscribed library says of its source (LibraryModel.subscription_info)."""

    library_id: str
    name: str
    url: str
    thumbprint: str  # SHA-1, as vCenter stores it ("" when it has none)
    automatic_sync: bool | None
    on_demand: bool | None


def subscription(config: Config) -> Subscription:
    """Log in, find the library and read its subscription (nothing is changed)."""
    with session(config.vcenter) as client:
        library_id = client.find_library()
        model = client.library(library_id)
    info = model.get("subscription_info") if isinstance(model.get("subscription_info"),
                                                          dict) else {}
    return Subscription(
        library_id=library_id, name=str(model.get("name") or ""),
        url=str(info.get("subscription_url") or ""),
        thumbprint=str(info.get("ssl_thumbprint") or ""),
        automatic_sync=info.get("automatic_sync_enabled")
        if isinstance(info.get("automatic_sync_enabled"), bool) else None,
        on_demand=info.get("on_demand") if isinstance(info.get("on_demand"), bool) else None)


# --- after a run: the pending flag ---------------------------------------------------------


def state_path(config: Config) -> Path:
    return Path(config.state_dir) / STATE_FILE


def read_state(config: Config) -> dict[str, Any]:
    return fsutil.read_json_object(state_path(config)) or {}


def _write_state(config: Config, state: dict[str, Any]) -> None:
    try:
        fsutil.atomic_write(state_path(config), json.dumps(state, indent=2) + "\n")
    except OSError as error:
        log.warning("vCenter: could not record the request's state in %s: %s",
                    state_path(config), error.strerror)


def served_version(snapshot: Path | None) -> tuple[str, str] | None:
    """(id, version) of a snapshot's lib.json: what vCenter compares to decide it must sync."""
    if snapshot is None:
        return None
    data = fsutil.read_json_object(snapshot / "lib.json")
    if data is None:
        return None
    return str(data.get("id", "")), str(data.get("version", ""))


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def after_publish(config: Config, before: Path | None, after: Path | None) -> None:
    """Called once per run after the switch: a library that changed (its lib.json id or
    version moved) makes a request pending; a pending request is made now. Never raises."""
    if not config.vcenter.enabled:
        return
    try:
        state = read_state(config)
        now = served_version(after)
        if now is not None and served_version(before) != now:
            state.update(pending=True, version=now[1], since=_now())
            _write_state(config, state)
        if state.get("pending"):
            _request(config, state)
    except Exception as error:  # a notification is worth less than the run: nothing escapes
        log.warning("vCenter: not asked to synchronise (internal error: %s: %s); asked again "
                    "at the next run", type(error).__name__, error)


def retry_pending(config: Config) -> None:
    """A change check that found nothing to sync still makes a pending request."""
    if config.vcenter.enabled and read_state(config).get("pending"):
        after_publish(config, None, None)


def _request(config: Config, state: dict[str, Any]) -> None:
    vc = config.vcenter
    name = repr(vc.library) if vc.library else vc.library_id
    state["attempts"] = int(state.get("attempts") or 0) + 1
    state["at"] = _now()
    try:
        with session(vc) as client:
            library_id = client.find_library()
            client.sync(library_id)
    except VcenterError as error:
        state.update(outcome=FAILED, said=str(error))
        _write_state(config, state)
        log.warning("vCenter %s: subscribed library %s not asked to synchronise: %s; asked "
                    "again at the next run", vc.address, name, str(error).rstrip("."))
        return
    state.update(pending=False, outcome=REQUESTED, said="", attempts=0, library_id=library_id)
    _write_state(config, state)
    log.info("vCenter %s: asked subscribed library %s to synchronise (library version %s)",
             vc.address, name, state.get("version", "?"))
