"""The human page (index.html): rendered from the manifests, served by Caddy, seen by Chromium."""

from __future__ import annotations

import json
import re
import subprocess
from datetime import datetime, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from library_syncer.base.errors import VerifyError
from library_syncer.web import page
from tests.harness import chromium
from tests.harness.caddy import fetch, make_config, make_state, start_caddy, write_library

URL = "https://library.test:8443/lib.json"
SYNCED = datetime(2026, 11, 25, 21, 0, 5, tzinfo=timezone.utc)


class _Collector(HTMLParser):
    """Tags, attributes and text of a page (enough to assert on without a DOM library)."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        if data.strip():
            self.text.append(data.strip())


def _parse(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    return collector


def test_page_shows_the_library_and_every_item(tmp_path: Path):
    root = tmp_path / "lib"
    write_library(root, 7, disk_size=3 * 2**20)
    page.write_index(root, url=URL, synced_at=SYNCED)
    html = (root / "index.html").read_text()
    doc = _parse(html)
    text = " ".join(doc.text)
    assert "Site templates" in text and "2026-11-25 21:00:05 UTC" in text
    assert ("input", {"id": "subscription-url", "type": "text", "readonly": None, "value": URL,
                      "aria-label": "Subscription URL"}) in doc.tags
    lib = json.loads((root / "lib.json").read_text())
    assert re.search(f'id="library-version">{lib["version"]}<', html)
    rows = re.findall(r'<tr class="item" data-name="([^"]*)">(.*?)</tr>', html, re.S)
    assert [name for name, _ in rows] == ["médias", "ttylinux", "Web tier #2"]
    cells = {name: body for name, body in rows}
    assert "ISO image" in cells["médias"] and "vApp" not in cells["médias"]
    assert "OVF template" in cells["ttylinux"] and 'class="badge">VM<' in cells["ttylinux"]
    assert 'badge vapp">vApp<' in cells["Web tier #2"]
    assert "3.0 MB" in cells["Web tier #2"]  # the disk dominates the item's size
    items = json.loads((root / "items.json").read_text())["items"]
    vapp = next(i for i in items if i["name"] == "Web tier #2")
    assert re.search(f'<td class="num">{vapp["version"]}</td>', cells["Web tier #2"])
    links = [a["href"] for tag, a in doc.tags if tag == "a"]
    for item in items:
        for f in item["files"]:
            assert f["hrefs"][0] in links  # every file is linked, hrefs as the manifest has them
    # Self-contained: no script, no external stylesheet, image or link.
    assert not any(tag in ("script", "link", "img", "iframe") for tag, _ in doc.tags)
    assert not any((a.get("href") or "").startswith(("http:", "https:", "//"))
                   for _, a in doc.tags)
    assert [p.name for p in root.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_page_names_the_origin_revision_the_site_holds(tmp_path: Path):
    """Issue 20 item 5: the revision as `status` names it (the page is what operators show
    their vCenter admins); an upstream without a trace is said as such."""
    root = tmp_path / "lib"
    write_library(root, 1, disk_size=1024)
    held = page.OriginRevision("hq", 42, "2026-11-25T20:58:00+00:00")
    assert str(held) == "revision 42 of hq"  # status's phrase
    page.write_index(root, url=URL, synced_at=SYNCED, revision=held)
    html = (root / "index.html").read_text()
    assert re.search(r'<dd id="origin-revision" data-origin="hq" data-serial="42">42 of hq '
                     r'<span class="muted">\(declared 2026-11-25T20:58:00\+00:00\)</span></dd>',
                     html), html
    page.write_index(root, url=URL, synced_at=SYNCED)
    assert re.search(r'<dd id="origin-revision" class="muted">none declared \(the upstream '
                     r"publishes no trace\)</dd>", (root / "index.html").read_text())
    page.write_index(root, url=URL, revision=page.OriginRevision('<b>"x"</b>', 1))
    assert "<b>" not in (root / "index.html").read_text()


def test_page_escapes_what_the_manifests_say(tmp_path: Path):
    root = tmp_path / "lib"
    write_library(root, 1, disk_size=1024)
    lib = json.loads((root / "lib.json").read_text())
    lib["name"] = '<script>alert("x")</script> & Co'
    (root / "lib.json").write_text(json.dumps(lib))
    items = json.loads((root / "items.json").read_text())
    items["items"][0]["files"][0]["hrefs"] = ["javascript:alert(1)"]
    items["items"][1]["description"] = "<b>bold</b>"
    (root / "items.json").write_text(json.dumps(items))
    page.write_index(root, url='http://x/lib.json"><script>', synced_at=SYNCED)
    html = (root / "index.html").read_text()
    assert "<script>" not in html and "<b>bold" not in html and "javascript:" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; Co" in html


def test_page_reports_missing_or_broken_manifests(tmp_path: Path):
    with pytest.raises(VerifyError, match=r"lib\.json: not found"):
        page.write_index(tmp_path, url=URL)
    (tmp_path / "lib.json").write_text('{"name": "x", "itemsHref": "items.json"}')
    (tmp_path / "items.json").write_text("{broken")
    with pytest.raises(VerifyError, match=r"items\.json: not valid JSON"):
        page.write_index(tmp_path, url=URL)
    (tmp_path / "items.json").write_text('{"items": []}')
    page.write_index(tmp_path, url=URL)
    assert "This library has no items yet." in (tmp_path / "index.html").read_text()


def _chromium(work_dir: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return chromium.run(work_dir, url, *args)


@pytest.mark.parametrize("browse", [True, False])
def test_page_served_and_seen_in_headless_chromium(work_dir: Path, browse: bool):
    state = make_state(work_dir)
    config = make_config(work_dir, browse=browse)
    from library_syncer.web.caddy import subscription_url

    page.write_index(state / "published", url=subscription_url(config), synced_at=SYNCED,
                     revision=page.OriginRevision("hq", 42, "2026-11-25T20:58:00+00:00"))
    server = start_caddy(config, work_dir)
    try:
        url = f"http://127.0.0.1:{server.port}/"
        # The page is served sandboxed (Content-Security-Policy, see the Caddyfile) and needs
        # nothing the policy forbids: Chromium reports every refusal on its console.
        assert fetch(server.port, "/").headers["content-security-policy"].startswith("sandbox;")
        dom = _chromium(work_dir, url, "--dump-dom", "--enable-logging=stderr", "--v=0")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "Content Security Policy" not in dom.stderr and "Refused to" not in dom.stderr
        doc = _parse(dom.stdout)
        names = [a.get("data-name") for tag, a in doc.tags if tag == "tr" and a.get("class")]
        assert names == ["médias", "ttylinux", "Web tier #2"]
        assert any(a.get("value") == subscription_url(config) for _, a in doc.tags)
        # The origin revision the site holds, as the browser shows it.
        held = re.search(r'<dd id="origin-revision"[^>]*>(.*?)</dd>', dom.stdout, re.S)
        assert held and re.sub(r"<[^>]+>", "", held.group(1)) == \
            "42 of hq (declared 2026-11-25T20:58:00+00:00)", dom.stdout
        shot = work_dir / "index.png"
        taken = _chromium(work_dir, url, f"--screenshot={shot}")
        assert taken.returncode == 0, taken.stderr[-2000:]
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
        # Every request the browser made was answered (nothing missing, nothing external).
        requests = [json.loads(line) for line in server.log_text().splitlines()
                    if '"handled request"' in line]
        assert requests, "Caddy logged no request"
        assert all(r["status"] < 400 for r in requests if r["request"]["uri"] != "/favicon.ico")
        # Browsing, when on, still lists the item folders beside the page.
        listing = fetch(server.port, "/ttylinux/")
        assert (listing.status == 200) == browse
    finally:
        server.stop()


def test_a_planted_page_runs_no_script_in_headless_chromium(work_dir: Path):
    """An .html the server put in the library opens on this site's origin: sandboxed, its
    script does not run (it would rename the page)."""
    make_state(work_dir)
    planted = (work_dir / "state" / "published").resolve() / "ttylinux" / "planted.html"
    planted.write_text("<!doctype html><html><head><title>planted</title></head><body>"
                       "<script>document.title = 'script ran'</script></body></html>")
    server = start_caddy(make_config(work_dir), work_dir)
    try:
        dom = _chromium(work_dir, f"http://127.0.0.1:{server.port}/ttylinux/planted.html",
                        "--dump-dom", "--enable-logging=stderr", "--v=0")
        assert dom.returncode == 0, dom.stderr[-2000:]
        assert "<title>planted</title>" in dom.stdout, dom.stdout
        assert "Blocked script execution" in dom.stderr and "sandboxed" in dom.stderr
    finally:
        server.stop()
