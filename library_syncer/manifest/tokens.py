"""The change tokens of the manifests, as vCenter reads them (docs/manifest.md, "Tokens").

vCenter parses every etag with Java's Long.valueOf and acts only when versions move: each token is
a decimal Java long that grows exactly when what it stands for changed. They derive from the
origin's revision document where the tree holds one (base/revision.py: the serial at which a
file's content changed), else from the files' mtimes; the previous build's tokens are kept
while the content is the same. Used by vcsp.py.
"""

from __future__ import annotations

import stat
from pathlib import Path

from ..base import revision
from .scan import DESCRIPTION_FILE
from .state import FileRow, Record


class Tokens:
    """The tokens a build derives from what it finds (docs/manifest.md, "Tokens"): from the
    origin's revision document where it states the file, else from the file's mtime."""

    def __init__(self, root: Path, rev: revision.Revision | None) -> None:
        self.root = root
        self.content = rev.content if rev is not None else None
        self.serial = rev.serial if rev is not None else 0
        self.ovas: dict[str, int] = {}  # folder → token of its newest .ova (unpacked here)
        for path, fact in (self.content.files.items() if self.content else ()):
            folder = revision.item_of(path)
            if folder is not None and path.lower().endswith(".ova"):
                token = revision.traced_token(fact.changed)
                self.ovas[folder] = max(self.ovas.get(folder, 0), token)

    def file(self, folder: str, name: str, sha: str | None, mtime_ns: int) -> int:
        if self.content is not None:
            fact = self.content.files.get(f"{folder}/{name}")
            if fact is not None:  # not the revision's bytes (never after trace_check): its serial
                same = sha is None or fact.sha256 == sha
                return revision.traced_token(fact.changed if same else self.serial)
            if folder.split("/")[0] in self.ovas:  # unpacked from the item's OVA at this site
                return self.ovas[folder.split("/")[0]]
        return revision.time_token(mtime_ns)

    def item(self, key: str, folder: str, files: tuple[FileRow, ...]) -> tuple[int, int]:
        """(contentVersion, version) derived for the item `key` (in `folder`) with these files."""
        content = max(token for *_, token in files)
        version = content
        sidecar = self.root / folder / DESCRIPTION_FILE
        try:
            st = sidecar.lstat()
        except OSError:
            st = None
        if st is not None and stat.S_ISREG(st.st_mode):
            version = max(version, self.file(folder, DESCRIPTION_FILE, None,
                                             st.st_mtime_ns))
        fact = self.content.items.get(folder.split("/")[0]) if self.content else None
        if fact is not None:
            if key == folder and fact.removed:  # a file left: the item's content moved
                content = max(content, revision.traced_token(fact.removed))
            version = max(version, content, revision.traced_token(fact.first))
        return content, max(version, content)


def file_rows(folder: str, found: tuple[tuple[str, int, str], ...], mtimes: dict[str, int],
              old: Record | None, tokens: Tokens) -> tuple[FileRow, ...]:
    """Each file's (name, size, sha256, token): the token is kept while the file's content is
    the same as in `old`, grown when it changed, derived when there is nothing to keep."""
    before = {row[0]: row for row in old.files} if old else {}
    rows = []
    for name, size, sha in found:
        derived = tokens.file(folder, name, sha, mtimes[name])
        prior = before.get(name)
        if prior is None or not prior[3]:
            token = derived
        elif prior[2] == "":  # recovered from the published JSON: content unknown
            token = max(prior[3], derived)
        elif (prior[1], prior[2]) == (size, sha):
            token = prior[3]
        else:
            token = revision.grown(prior[3], derived)
        rows.append((name, size, sha, token))
    return tuple(rows)
