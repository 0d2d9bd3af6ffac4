"""What every fleet scenario asserts: convergence to the server's library, and no torn snapshot.

`compare_site()` checks a site's published tree against the server's library by digest (every
template file), and its VCSP manifests against the files (every listed file exists with the
listed size, every item folder is listed once). The JSON manifests are the client's own, so
they are compared by their items/files, never as bytes against anything on the server.

`TornWatcher` walks every site's published tree while syncs run: each newly published snapshot
must be complete (manifests parse, listed files exist with their sizes, every `.mf` digest
matches its file) and must never change afterwards.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import unquote

from .library import sha256_file, tree_digests

# Files the client writes itself at the root of each snapshot (the page for humans).
CLIENT_OWN = ("index.html",)
_MF_LINE = re.compile(r"^(SHA256|SHA1|SHA512)\s*\((.+)\)\s*=\s*([0-9a-fA-F]+)\s*$")


def _item_entries(snapshot: Path) -> list[dict]:
    data = json.loads((snapshot / "items.json").read_text())
    return data["items"] if isinstance(data, dict) else data


def _file_path(snapshot: Path, folder: str, entry: dict) -> Path:
    hrefs = entry.get("hrefs") or []
    if hrefs:
        return snapshot / unquote(hrefs[0]).lstrip("/")
    return snapshot / folder / entry["name"]


def manifest_files(snapshot: Path) -> dict[str, dict[str, tuple[int, str]]]:
    """item folder → {file path relative to the snapshot: (size, etag) from the manifests}.

    items.json and each item's own item.json must agree."""
    result = {}
    for item in _item_entries(snapshot):
        self_href = unquote(item.get("selfHref", f"{item['name']}/item.json"))
        folder = self_href.rsplit("/", 1)[0]
        own = json.loads((snapshot / self_href).read_text())
        if own.get("files") != item.get("files"):
            raise ValueError(f"{self_href} and items.json list different files")
        result[folder] = {
            str(_file_path(snapshot, folder, f).relative_to(snapshot)):
                (int(f["size"]), str(f.get("etag", "")).strip('"'))
            for f in item["files"]}
    return result


def verify_mf(folder: Path, digests: dict[Path, str] | None = None) -> list[str]:
    """Problems with an item folder's `.mf` digests (empty when every listed file matches).
    `digests` holds SHA256 digests already computed, so no file is read twice."""
    problems = []
    digests = digests if digests is not None else {}
    for mf in folder.glob("*.mf"):
        for line in mf.read_text().splitlines():
            match = _MF_LINE.match(line)
            if not match:
                continue
            algorithm, name, expected = match.groups()
            target = folder / name
            if not target.is_file():
                problems.append(f"{target}: listed in {mf.name} but missing")
                continue
            if algorithm == "SHA256":
                if target not in digests:
                    digests[target] = sha256_file(target)
                actual = digests[target]
            else:
                digest = hashlib.new(algorithm.lower())
                with open(target, "rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                actual = digest.hexdigest()
            if actual != expected.lower():
                problems.append(f"{target}: content does not match {mf.name}")
    return problems


def _token(etag: str) -> bool:
    """What vCenter can read as an etag: a decimal Java long (docs/manifest.md, "Tokens")."""
    return etag.isascii() and etag.isdigit() and int(etag) < 2**63


def snapshot_problems(snapshot: Path) -> list[str]:
    """A published snapshot must be complete and self-consistent: every listed file present
    with its listed size and a decimal etag, every `.mf` digest matching."""
    problems = []
    try:
        listed = manifest_files(snapshot)
    except (OSError, ValueError, KeyError) as error:
        return [f"{snapshot}: manifests unreadable: {error}"]
    digests: dict[Path, str] = {}
    for item, files in listed.items():
        for rel, (size, etag) in files.items():
            path = snapshot / rel
            if not path.is_file():
                problems.append(f"{path}: listed in item {item} but missing")
                continue
            if path.stat().st_size != size:
                problems.append(f"{path}: size {path.stat().st_size}, manifest says {size}")
            digests[path] = sha256_file(path)
            if not _token(etag):
                problems.append(f"{path}: etag {etag!r} is not a decimal Java long")
    for folder in (p for p in snapshot.iterdir() if p.is_dir() and not p.name.startswith(".")):
        problems += verify_mf(folder, digests)
    return problems


def compare_site(published: Path, library: Path) -> list[str]:
    """Differences between a site's published library and the server's (empty = converged)."""
    if not published.exists():
        return [f"{published}: nothing published"]
    snapshot = Path(os.path.realpath(published))
    problems = []
    want, have = tree_digests(library), tree_digests(snapshot)
    for own in CLIENT_OWN:  # written by the client itself, like the JSON manifests
        if own not in want:
            have.pop(own, None)
    for rel in sorted(set(want) | set(have)):
        if rel not in have:
            problems.append(f"{rel}: missing at the site")
        elif rel not in want:
            problems.append(f"{rel}: at the site but not on the server")
        elif want[rel] != have[rel]:
            problems.append(f"{rel}: digest differs from the server's")
    try:
        listed = manifest_files(snapshot)
    except (OSError, ValueError, KeyError) as error:
        return [*problems, f"{snapshot}: manifests unreadable: {error}"]
    folders = {p.name for p in library.iterdir() if p.is_dir() and not p.name.startswith(".")}
    if set(listed) != folders:
        problems.append(f"manifest items {sorted(listed)} != server folders {sorted(folders)}")
    for item, files in listed.items():
        if set(files) != {rel for rel in want if rel.startswith(item + "/")}:
            problems.append(f"item {item}: manifest lists {sorted(files)}, the server has "
                            "other files")
        for rel, (size, _) in files.items():
            source = library / rel
            if not source.is_file() or source.stat().st_size != size or rel not in want:
                problems.append(f"{rel}: listed in item {item} with size {size}, the server's "
                                "file differs")
    return problems + snapshot_problems(snapshot)


class TornWatcher(threading.Thread):
    """Walks every site's published tree until stopped; collects every torn view it sees."""

    def __init__(self, published: list[Path], interval: float = 0.2) -> None:
        super().__init__(name="torn-watcher", daemon=True)
        self.published = published
        self.interval = interval
        self.stop_event = threading.Event()
        self.problems: list[str] = []
        self.snapshots_seen: dict[Path, set[str]] = {p: set() for p in published}
        self._fingerprints: dict[str, dict[str, tuple[int, int]]] = {}
        self.passes = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            for link in self.published:
                self._check(link)
            self.passes += 1
            self.stop_event.wait(self.interval)

    def stop(self) -> list[str]:
        self.stop_event.set()
        self.join()
        for link in self.published:  # the final state too
            self._check(link)
        return self.problems

    def _check(self, link: Path) -> None:
        try:
            target = os.path.realpath(link)
        except OSError:
            return
        if not os.path.isdir(target) or not link.is_symlink():
            if link.exists() and not link.is_symlink():
                self._report(link, target, [f"{link}: not a symlink"])
            return
        snapshot = Path(target)
        if target not in self.snapshots_seen[link]:
            problems = snapshot_problems(snapshot)
            if not problems:
                self.snapshots_seen[link].add(target)
                self._fingerprints[target] = _fingerprint(snapshot)
            self._report(link, target, problems)
            return
        now = _fingerprint(snapshot)
        if now != self._fingerprints[target]:
            self._report(link, target, [f"{snapshot}: a published snapshot changed after it "
                                        f"was published"])

    def _report(self, link: Path, target: str, problems: list[str]) -> None:
        # A snapshot retired between our readlink and our reads is not torn: only count what
        # is still published after the check.
        if problems and os.path.realpath(link) == target:
            stamp = time.strftime("%H:%M:%S")
            self.problems += [f"{stamp} {p}" for p in problems]


def _fingerprint(snapshot: Path) -> dict[str, tuple[int, int]]:
    result = {}
    for dirpath, _dirnames, filenames in os.walk(snapshot):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            result[path] = (st.st_size, st.st_mtime_ns)
    return result


__all__ = ["TornWatcher", "compare_site", "manifest_files", "sha256_file", "snapshot_problems"]
