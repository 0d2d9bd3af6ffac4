"""A small fake vCenter: the vSphere Automation REST API calls a site makes, over HTTPS on
127.0.0.1 with a trustme certificate (the one mock issue 20 allows: a real vCenter cannot run here).

It follows VMware's published reference for the `/api` endpoints (vSphere 7.0 U2+):
`POST /api/session` (Basic auth → the session id as a JSON string, 201), every other call
authenticated by the `vmware-api-session-id` header (401 without), `POST
/api/content/library?action=find` (a FindSpec body → a JSON list of ids; names compared without
case), `GET /api/content/subscribed-library/{id}` (the LibraryModel with `subscription_info`),
`POST /api/content/subscribed-library/{id}?action=sync` (204), `DELETE /api/session` (204);
errors carry /api's body `{"error_type": …, "messages": [{"default_message": …}]}`.

Every request is recorded (method, path, headers, body) for the tests to assert on; `stall`
makes it accept connections and requests but never answer; `fail_syncs` answers that many sync
actions with 503 first.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import ssl
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trustme

HOST_NAME = "vcenter.test"


@dataclass
class Library:
    id: str
    name: str
    url: str  # subscription_info.subscription_url
    thumbprint: str = ""  # subscription_info.ssl_thumbprint (SHA-1, as vCenter stores it)


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"error_type": kind, "messages": [{"id": f"vapi.{kind.lower()}", "args": [],
                                              "default_message": message}]}


@dataclass
class FakeVcenter:
    user: str
    password: str
    libraries: list[Library]
    stall: bool = False
    fail_syncs: int = 0
    requests: list[Request] = field(default_factory=list)
    synced: list[str] = field(default_factory=list)  # library ids, one per sync action taken
    sessions: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.ca = trustme.CA()
        self.cert = self.ca.issue_cert(HOST_NAME, "127.0.0.1")
        self._release = threading.Event()
        self._lock = threading.Lock()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.cert.configure_cert(context)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as vCenter

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                fake._handle(self)

            do_GET = do_DELETE = do_POST

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # --- what a test needs -------------------------------------------------------------------

    @property
    def thumbprint(self) -> str:
        """SHA-256 of the certificate it serves, as vCenter's own pages show it."""
        der = ssl.PEM_cert_to_DER_cert(self.cert.cert_chain_pems[0].bytes().decode())
        digest = hashlib.sha256(der).hexdigest().upper()
        return ":".join(digest[i:i + 2] for i in range(0, 64, 2))

    def write_ca(self, path: Path) -> Path:
        self.ca.cert_pem.write_to_path(str(path))
        return path

    def paths(self) -> list[str]:
        return [f"{r.method} {r.path}" for r in self.requests]

    def stop(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    # --- the API ---------------------------------------------------------------------------

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self._lock:
            self.requests.append(Request(handler.command, handler.path,
                                         {k.lower(): v for k, v in handler.headers.items()}, body))
        if self.stall:
            self._release.wait(120)
            handler.close_connection = True
            return
        status, answer = self._route(handler, body)
        data = b"" if answer is None else json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _route(self, handler: BaseHTTPRequestHandler, body: bytes) -> tuple[int, Any]:
        method, url = handler.command, urlsplit(handler.path)
        if (method, url.path) == ("POST", "/api/session"):
            expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if handler.headers.get("Authorization") != f"Basic {expected}":
                return 401, _error("UNAUTHENTICATED", "Authentication required.")
            session = secrets.token_hex(16)
            self.sessions.add(session)
            return 201, session
        session = handler.headers.get("vmware-api-session-id")
        if session not in self.sessions:
            return 401, _error("UNAUTHENTICATED", "This method requires authentication.")
        if (method, url.path) == ("DELETE", "/api/session"):
            self.sessions.discard(session)
            return 204, None
        if (method, url.path, url.query) == ("POST", "/api/content/library", "action=find"):
            spec = json.loads(body or b"{}")
            return 200, [lib.id for lib in self.libraries
                         if spec.get("type") in (None, "SUBSCRIBED")
                         and str(spec.get("name", lib.name)).lower() == lib.name.lower()]
        prefix = "/api/content/subscribed-library/"
        library = next((lib for lib in self.libraries if url.path == prefix + lib.id), None)
        if url.path.startswith(prefix) and library is None:
            return 404, _error("NOT_FOUND", "The library was not found.")
        if library is not None and (method, url.query) == ("GET", ""):
            return 200, {"id": library.id, "name": library.name, "type": "SUBSCRIBED",
                         "subscription_info": {
                             "authentication_method": "NONE", "automatic_sync_enabled": True,
                             "on_demand": False, "subscription_url": library.url,
                             "ssl_thumbprint": library.thumbprint}}
        if library is not None and (method, url.query) == ("POST", "action=sync"):
            if self.fail_syncs:
                self.fail_syncs -= 1
                return 503, _error("SERVICE_UNAVAILABLE", "The content library service is "
                                                          "not available.")
            self.synced.append(library.id)
            return 204, None
        return 404, _error("NOT_FOUND", f"No {method} {url.path}.")
