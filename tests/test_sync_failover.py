"""Several upstreams (sync.upstreams): a site moves on from a relay that is down or stale to the
next upstream, never publishes an older revision, stops on a changed host key, and records and
reports to the upstream that served. Real sshd instances of the server role (the dispatcher as
forced command, real rrsync -ro), real rsync, the real command line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from library_syncer.base import config as config_module
from library_syncer.server import reports, trace
from tests.harness import sshd as harness
from tests.test_sync_helpers import cli, last_run, published, random_bytes, sync, write_config

MB = 1 << 20


class Upstream:
    """A server role with its own library and its own trace (origin name and serial)."""

    def __init__(self, root: Path, name: str, pub: str) -> None:
        self.root = root
        self.library = root / "library"
        self.library.mkdir(mode=0o755, parents=True)
        self.server = harness.start_server_role(root / "sshd", self.library, sites={"paris": pub})

    @property
    def where(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    @property
    def stored_reports(self) -> Path:
        return reports.reports_dir(self.server.server_config.state_dir)  # type: ignore[attr-defined]

    def disk(self, item: str, seed: int) -> None:
        path = self.library / item / f"{item}.vmdk"
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        path.write_bytes(random_bytes(1 * MB, seed))
        os.chmod(path, 0o644)

    def declare(self, origin: str = "hq") -> int:
        settings = self.root / "trace.toml"
        settings.write_text(f'[server]\nlibrary = "{self.library}"\nstate_dir = '
                            f'"{self.root / "trace-state"}"\nsettle = "60s"\nname = "{origin}"\n')
        return trace.tick(config_module.load(settings), now=time.time() + 61).serial

    def copy_of(self, other: Upstream) -> None:
        """This (relay) library becomes exactly the other's, its trace included."""
        shutil.rmtree(self.library)
        shutil.copytree(other.library, self.library)


@pytest.fixture
def site(work_dir, client_key):
    servers: list[Upstream] = []

    def start(name: str) -> Upstream:
        server = Upstream(work_dir / name, name, client_key[1])
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.server.stop()


def _settings(work_dir: Path, key: Path, upstreams: list[Upstream], **sync: object) -> Path:
    """A site's settings with sync.upstreams in this order; every host key trusted."""
    known = work_dir / "client-ssh" / "known_hosts"
    known.write_text("".join(u.server.known_hosts_line + "\n" for u in upstreams))
    (work_dir / "metrics").mkdir(exist_ok=True)
    path = write_config(work_dir, upstreams[0].server, key, known_hosts=False, peer="",
                        random_delay="0", schedule="daily",
                        metrics=work_dir / "metrics" / "site.prom", **sync)
    listed = ", ".join(f'{{peer = "127.0.0.1", port = {u.server.port}}}' for u in upstreams)
    path.write_text(path.read_text().replace("[sync]\n", f"[sync]\nupstreams = [{listed}]\n", 1))
    with path.open("a") as handle:  # a site of its own (no reports forwarded from here)
        handle.write(f'\n[server]\nstate_dir = "{work_dir / "site-server-state"}"\n')
    return path


def _serial(state: Path) -> tuple[str, int]:
    data = json.loads((published(state) / ".library-syncer" / "trace.json").read_text())
    return data["origin"], data["serial"]


def _metrics(work_dir: Path) -> str:
    return (work_dir / "metrics" / "site.prom").read_text()


def test_a_relay_that_is_down_is_skipped_and_the_origin_serves(work_dir, client_key, site):
    relay, origin = site("relay"), site("origin")
    origin.disk("ubuntu", 1)
    assert origin.declare() == 1
    relay.copy_of(origin)
    config = _settings(work_dir, client_key[0], [relay, origin])
    state = work_dir / "state"
    relay.server.stop()  # the relay is down

    result = sync(config)

    assert result.returncode == 0, result.stderr
    assert f"upstream {relay.where}: " in result.stderr and f"trying {origin.where}" in \
        result.stderr
    assert f"; from {origin.where}, revision 1 of hq (1 upstream skipped)" in result.stderr
    assert _serial(state) == ("hq", 1)
    record = last_run(state)
    assert (record["upstream"], record["upstream_index"]) == (origin.where, 1)
    assert (record["origin"], record["serial"]) == ("hq", 1)
    assert len(record["skipped"]) == 1 and record["skipped"][0].startswith(relay.where)
    # the report went to the upstream that served, over its own connection
    stored = json.loads((origin.stored_reports / "paris.json").read_text())["report"]
    assert stored["via"] == origin.where and stored["serial"] == 1
    assert not (relay.stored_reports / "paris.json").exists()
    metrics = _metrics(work_dir)
    assert "library_syncer_last_run_upstream_index 1" in metrics
    assert 'library_syncer_library_serial{origin="hq"} 1' in metrics
    assert f'library_syncer_last_run_upstream_info{{upstream="{origin.where}"}} 1' in metrics
    status = json.loads(cli("status", "--json", "--config", str(config)).stdout)
    assert status["last_sync"]["upstream"] == origin.where
    assert (status["library"]["origin"], status["library"]["serial"]) == ("hq", 1)
    text = cli("status", "--config", str(config)).stdout
    assert f"from {origin.where}, revision 1 of hq" in text

    # the relay is back: the first upstream serves again, and takes the report
    relay.server.start()
    result = sync(config)
    assert result.returncode == 0, result.stderr
    assert f"; from {relay.where}, revision 1 of hq\n" in result.stderr
    assert last_run(state)["upstream_index"] == 0 and last_run(state)["skipped"] == []
    assert json.loads((relay.stored_reports / "paris.json").read_text())["report"]["via"] == \
        relay.where
    assert "library_syncer_last_run_upstream_index 0" in _metrics(work_dir)


def test_a_stale_relay_is_skipped_and_when_every_upstream_is_stale_the_site_keeps_its_library(
        work_dir, client_key, site):
    relay, origin = site("relay"), site("origin")
    origin.disk("ubuntu", 2)
    origin.declare()
    relay.copy_of(origin)  # the relay holds revision 1 and stops following
    old_origin_trace = (origin.library / ".library-syncer" / "trace.json").read_text()
    origin.disk("photon", 3)
    assert origin.declare() == 2
    state = work_dir / "state"
    assert sync(_settings(work_dir, client_key[0], [origin])).returncode == 0
    assert _serial(state) == ("hq", 2)

    config = _settings(work_dir, client_key[0], [relay, origin])
    result = sync(config)

    assert result.returncode == 0, result.stderr
    assert "offers revision 1 of hq, older than revision 2 of hq published here" in result.stderr
    assert f"from {origin.where}, revision 2 of hq" in result.stderr
    assert _serial(state) == ("hq", 2)
    assert (published(state) / "photon" / "photon.vmdk").is_file()  # never rolled back
    assert last_run(state)["upstream_index"] == 1

    # the origin is restored from an old backup too: every upstream is stale
    (origin.library / ".library-syncer" / "trace.json").write_text(old_origin_trace)
    shutil.rmtree(origin.library / "photon")
    before = os.readlink(state / "published")
    result = sync(config)

    assert result.returncode == 11, result.stderr
    lines = [line for line in result.stderr.splitlines() if "every upstream is stale" in line]
    assert len(lines) == 1 and relay.where in lines[0] and origin.where in lines[0]
    assert "sync failed (stale)" in result.stderr and "keeps revision 2 of hq" in result.stderr
    assert os.readlink(state / "published") == before
    assert (published(state) / "photon" / "photon.vmdk").is_file()
    record = last_run(state)
    assert record["outcome"] == "stale" and (record["origin"], record["serial"]) == ("hq", 2)
    assert len(record["skipped"]) == 2


def test_another_origin_on_the_relay_is_refused_and_the_next_upstream_serves(
        work_dir, client_key, site):
    relay, origin = site("relay"), site("origin")
    origin.disk("ubuntu", 4)
    origin.declare()
    relay.disk("ubuntu", 5)
    relay.declare(origin="elsewhere")
    state = work_dir / "state"
    assert sync(_settings(work_dir, client_key[0], [origin])).returncode == 0

    result = sync(_settings(work_dir, client_key[0], [relay, origin]))

    assert result.returncode == 0, result.stderr
    assert "refusing another origin" in result.stderr
    assert _serial(state) == ("hq", 1)
    assert (published(state) / "ubuntu" / "ubuntu.vmdk").read_bytes() == random_bytes(MB, 4)


def test_a_changed_host_key_on_the_first_upstream_stops_the_run(work_dir, client_key, site):
    relay, origin = site("relay"), site("origin")
    origin.disk("ubuntu", 6)
    origin.declare()
    relay.copy_of(origin)
    config = _settings(work_dir, client_key[0], [relay, origin])
    state = work_dir / "state"
    assert sync(config).returncode == 0
    before = os.readlink(state / "published")
    # the relay now shows another key (reinstalled, or someone in between)
    other = work_dir / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    known = work_dir / "client-ssh" / "known_hosts"
    fake = " ".join(Path(f"{other}.pub").read_text().split()[:2])
    known.write_text(f"[127.0.0.1]:{relay.server.port} {fake}\n"
                     + origin.server.known_hosts_line + "\n")
    origin_log = origin.server.log()

    result = sync(config)

    assert result.returncode == 8, result.stderr
    assert f"127.0.0.1:{relay.server.port}: the server's host key has CHANGED" in result.stderr
    assert "trying" not in result.stderr  # never a silent move to the next upstream
    assert os.readlink(state / "published") == before
    assert last_run(state)["outcome"] == "host_key"
    assert origin.server.log().count("Accepted publickey") == origin_log.count(
        "Accepted publickey")  # the origin was not contacted


def test_trust_host_picks_the_upstream_and_bad_entries_are_one_line(work_dir, client_key, site):
    relay, origin = site("relay"), site("origin")
    config = _settings(work_dir, client_key[0], [relay, origin])
    known = work_dir / "client-ssh" / "known_hosts"
    known.unlink()

    unnamed = cli("trust-host", "--config", str(config), "--yes")
    assert unnamed.returncode == 3
    assert "sync.upstreams: found 2 upstreams, expected one named with --peer" in unnamed.stderr
    for upstream in (relay, origin):
        done = cli("trust-host", "--config", str(config), "--yes", "--peer", "127.0.0.1",
                   "--port", str(upstream.server.port))
        assert done.returncode == 0, done.stderr
    recorded = known.read_text()
    assert relay.server.host_key_pub.split()[1] in recorded
    assert origin.server.host_key_pub.split()[1] in recorded
    assert f"[127.0.0.1]:{relay.server.port} " in recorded
    assert f"[127.0.0.1]:{origin.server.port} " in recorded

    bad = work_dir / "bad.toml"
    bad.write_text('[sync]\nupstreams = [{peer = "relay-lyon", port = 2222}, '
                   '{peer = "hq.example.net", port = "x"}]\n')
    result = cli("config", "validate", "--config", str(bad))
    assert result.returncode == 3
    assert result.stderr.strip().splitlines() == [
        f'library-syncer: {bad}: sync.upstreams[2].port: found "x", expected an integer '
        "1-65535"]


def test_a_poll_started_sync_starts_at_the_upstream_that_answered_the_check(
        work_dir, client_key, site):
    """The change check already asked the dead relay and moved on: the sync it starts begins at
    the upstream that answered, the relay recorded as skipped, its retry share not spent again
    (its backoff would delay every new template by up to half the retry budget)."""
    relay, origin = site("relay"), site("origin")
    origin.disk("ubuntu", 1)
    assert origin.declare() == 1
    relay.copy_of(origin)
    config = _settings(work_dir, client_key[0], [relay, origin], retry_budget="60s",
                       poll_interval="15min")
    relay.server.stop()

    result = cli("sync", "--if-changed", "--config", str(config))

    assert result.returncode == 0, result.stderr
    assert "nothing is published yet: syncing" in result.stderr
    assert f"starting at {origin.where} (the upstreams before it did not answer the check)" \
        in result.stderr, result.stderr
    assert f"trying {origin.where}" not in result.stderr  # the run itself never asked the relay
    assert f"; from {origin.where}, revision 1 of hq (1 upstream skipped)" in result.stderr
    record = last_run(work_dir / "state")
    assert (record["upstream"], record["upstream_index"]) == (origin.where, 1)
    assert len(record["skipped"]) == 1 and record["skipped"][0].startswith(relay.where)
