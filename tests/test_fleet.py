"""The fleet simulation, small version: 3 remote sites on bad links, each in its own network
namespace, pulling a ~15 MB library with the real `library-syncer sync` from the real server
role. The full version with figures is `bench/fleet.py`.

Each scenario asserts that every site ends with exactly the server's library (by digest, and
manifests that list exactly those files) and that no site ever published a torn snapshot (a
watcher walks every published tree while the syncs run). The tests run in file order and share
one fleet: each scenario starts from the state the previous one left.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet import library, scenarios
from tests.fleet.netns import LOSS_TOLERANT, Fleet, LinkProfile, list_namespaces
from tests.fleet.sites import ROOT, FleetRun
from tests.harness import sshd as sshd_harness
from tests.harness.net import free_port

pytestmark = pytest.mark.fleet

MB = 1 << 20
# The profiles, with rates raised so the whole file runs in a couple of minutes on
# 2 cores; latency and loss as in the full benchmark.
PROFILES = [
    LinkProfile("office", 10_000, 80, 0.5),
    LinkProfile("dsl", 8_000, 300, 2.0),
    LinkProfile("satellite", 12_000, 600, 1.0),
]
ITEMS, DISK = 3, 5 * MB


@pytest.fixture(scope="module")
def fleet_run(fixtures_dir: Path) -> Iterator[FleetRun]:
    work = sshd_harness.make_work_dir("fleet")
    lib = work / "library"
    library.make_library(lib, items=ITEMS, disk_size=DISK, fixtures_dir=fixtures_dir)
    try:
        with Fleet(len(PROFILES), tag="t", **LOSS_TOLERANT) as fleet:
            run = FleetRun(fleet, work, lib)
            for profile in PROFILES:
                run.add_site(profile, io_timeout=5, retry_budget=300)
            run.start_server()
            run.trust_server()
            yield run
        assert not [ns for ns in list_namespaces() if ns.startswith(fleet.base)], \
            "the fleet left namespaces behind"
    finally:
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def relay_pair() -> Iterator[tuple[int, socket.socket]]:
    """A listening socket on loopback and the relay in front of it (150 ms each way)."""
    upstream, front = free_port(), free_port()
    server = socket.create_server(("127.0.0.1", upstream))
    relay = subprocess.Popen([sys.executable, "-m", "tests.fleet.relay",
                              f"127.0.0.1:{front}=127.0.0.1:{upstream}", "--delay-ms", "150"],
                             cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        # its readiness line, not a probe connection (which the relay would carry upstream)
        assert relay.stdout is not None and relay.stdout.readline().strip() == "relay ready"
        yield front, server
    finally:
        relay.terminate()
        relay.wait(timeout=10)
        server.close()


def test_relay_delays_each_chunk_keeps_order_and_throughput(relay_pair) -> None:
    """The latency relay adds its delay per direction, keeps byte order, and carries many
    chunks per delay (a bandwidth-delay buffer, not one chunk per round trip)."""
    front, server = relay_pair
    payload = b"".join(i.to_bytes(4, "big") for i in range(2_000_000))  # 8 MB, ordered
    received = hashlib.sha256()

    def sink() -> None:
        conn, _ = server.accept()
        conn.sendall(b"!")  # a one-byte reply for the round-trip measurement
        while data := conn.recv(1 << 16):
            received.update(data)
        conn.close()

    thread = threading.Thread(target=sink)
    thread.start()
    with socket.create_connection(("127.0.0.1", front)) as client:
        started = time.monotonic()
        assert client.recv(1) == b"!"
        first_byte = time.monotonic() - started
        started = time.monotonic()
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        client.recv(1)  # EOF from the far side, after the delayed data arrived
        carried = time.monotonic() - started
    thread.join()
    assert received.hexdigest() == hashlib.sha256(payload).hexdigest()  # every byte, in order
    assert first_byte >= 0.14  # the server's first byte waited one one-way delay
    # 8 MB is 128+ chunks of 64 KiB: one chunk per delay would take 19 s or more
    assert carried < 128 * 0.15 / 4


def _assert_clean(outcome: scenarios.Outcome) -> None:
    assert outcome.problems == [], "\n".join(outcome.problems[:20])
    assert outcome.extra["watcher_passes"] > 0  # the torn-snapshot watcher really ran


def test_first_sync_reaches_every_site_untorn(fleet_run: FleetRun) -> None:
    outcome = scenarios.first_sync(fleet_run, random_delay=3)
    _assert_clean(outcome)
    for result in outcome.results:  # the whole library crossed each link, once
        assert result.rx_bytes >= outcome.library_bytes


def test_new_version_propagates_as_a_delta(fleet_run: FleetRun, fixtures_dir: Path) -> None:
    outcome = scenarios.new_version(fleet_run, fraction=0.03, fixtures_dir=fixtures_dir,
                                    random_delay=3)
    _assert_clean(outcome)
    change: library.Change = outcome.extra["change"]
    assert not (fleet_run.sites[0].published / change.deleted_item).exists()
    for result in outcome.results:
        # the new blocks and the new item, plus framing and retransmissions: far below a full
        # re-download of the changed item and the new one
        assert result.rx_bytes < 1.3 * change.new_bytes, result


def test_bandwidth_limit_is_honoured(fleet_run: FleetRun, fixtures_dir: Path) -> None:
    site = fleet_run.sites[0]
    outcome = scenarios.bandwidth_limit(
        fleet_run, site, limit="1M", item_bytes=8 * MB, fixtures_dir=fixtures_dir,
        profile=LinkProfile("unshaped", 0, 80, 0.0))
    _assert_clean(outcome)
    limit, measured = outcome.extra["limit_bps"], outcome.extra["measured_bps"]
    assert abs(measured - limit) <= 0.10 * limit, f"{measured:.0f} B/s against a limit of {limit}"
    fleet_run.set_bandwidth_limit(site, "0")
    fleet_run.fleet.shape(site.index, PROFILES[0])


def test_flaps_and_server_restart_converge(fleet_run: FleetRun, fixtures_dir: Path) -> None:
    """sshd is killed (with every session) and restarted while the new item is on the wire,
    then site 1's link goes down for longer than the I/O timeout and site 2's briefly: the
    clients retry, resume their partial files, and all converge."""
    outcome = scenarios.flaps_and_restart(
        fleet_run, fraction=0.03, fixtures_dir=fixtures_dir, added_size=10 * MB,
        kill_after=1 * MB, down_for=3.0, flaps=[(1, MB // 2, 8.0), (2, MB // 2, 3.0)])
    _assert_clean(outcome)
    events = outcome.extra["events"]
    assert any("sshd killed" in e for e in events), events
    assert any("sshd restarted" in e for e in events), events
    assert any("site 1 link down" in e for e in events), events
    change: library.Change = outcome.extra["change"]
    for result in outcome.results:
        # resumed, not restarted: what had arrived before the cuts is not sent again in full
        assert result.rx_bytes < 1.5 * change.new_bytes, result
