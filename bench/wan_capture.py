#!/usr/bin/env python3
"""Round trips before the first data byte, counted from a packet capture at the site (issue 24:
"count round trips before the first data byte from a packet capture, and report process
start-up separately").

`Capture(ns, iface, out)` records, inside the site's namespace, every TCP packet of its WAN
interface (an AF_PACKET socket: no tool to install), each with the wall-clock time, its direction
and its payload length. `count` then reads the data connection's packets from the client's start:

- **start-up**: from the client's start (the time its wrapper wrote, `started_argv`) to its
  first SYN — the site's own processes before they speak;
- **round trips**: on the connection that carried the most payload when the first data byte
  arrived (FIRST_BYTE of TCP payload over all connections, as bench/wan_baseline.py measures),
  each time the site sent data and then got data back after a pause of at least half a round
  trip (its SYN answered counts as the first). A pause the site did not cause (the server's
  processes starting, a loss recovered) is not a round trip: it is in the rest;
- **the rest**: the time to that first byte minus start-up and round trips × RTT (server-side
  start-up, the site's work between sessions, serialisation, losses).

Needs root (the namespace, the raw socket).
"""

from __future__ import annotations

import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
ENOUGH = 16 << 20  # received payload after which the sniffer stops (far past the first byte):
# on a 2-CPU machine it would otherwise compete with the transfer it watches


@dataclass(frozen=True)
class Packet:
    t: float  # wall clock, seconds
    out: bool  # sent by the site
    port: int  # the site's port: names the connection
    syn: bool
    payload: int


def _parse(raw: bytes, t: float, out: bool) -> Packet | None:
    """An IPv4 TCP packet (a TUN device: no link header); None for anything else."""
    if len(raw) < 20 or raw[0] >> 4 != 4 or raw[9] != socket.IPPROTO_TCP:
        return None
    ihl = (raw[0] & 0x0F) * 4
    total = struct.unpack("!H", raw[2:4])[0]
    if len(raw) < ihl + 20:
        return None
    sport, dport = struct.unpack("!HH", raw[ihl:ihl + 4])
    offset = (raw[ihl + 12] >> 4) * 4
    flags = raw[ihl + 13]
    return Packet(t, out, sport if out else dport, bool(flags & 0x02),
                  max(0, total - ihl - offset))


def _sniff(iface: str, out: Path) -> None:
    """Record until SIGTERM or ENOUGH bytes received: one line per TCP packet (time, direction,
    port, SYN, payload)."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
    sock.bind((iface, 0))
    sock.settimeout(0.2)
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    received = 0
    with open(out, "w") as log:
        print("ready", flush=True)
        while not stop and received < ENOUGH:
            try:
                raw, address = sock.recvfrom(65535)
            except (TimeoutError, InterruptedError):
                continue
            packet = _parse(raw, time.time(), address[2] == PACKET_OUTGOING)
            if packet is not None:
                received += 0 if packet.out else packet.payload
                log.write(f"{packet.t:.6f} {int(packet.out)} {packet.port} {int(packet.syn)} "
                          f"{packet.payload}\n")
    sock.close()
    while not stop:  # ENOUGH received: wait for the stop, recording nothing
        time.sleep(0.2)


def read(path: Path) -> list[Packet]:
    packets = []
    for line in path.read_text().splitlines():
        t, out, port, syn, payload = line.split()
        packets.append(Packet(float(t), out == "1", int(port), syn == "1", int(payload)))
    return packets


class Capture:
    """The site's packets while a run goes (a sniffer process in the namespace `ns`)."""

    def __init__(self, ns: str, iface: str, out: Path) -> None:
        self.out = out
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", ns, sys.executable, __file__, iface, str(out)],
            stdout=subprocess.PIPE, text=True)
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != "ready":
            raise SystemExit(f"the capture in {ns} did not start")

    def stop(self) -> list[Packet]:
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=10)
        return read(self.out)


def started_argv(stamp: Path, argv: list[str]) -> list[str]:
    """`argv` behind a shell that first writes the wall-clock time it starts at to `stamp`."""
    return ["sh", "-c", f'date +%s.%N > "{stamp}"; exec "$@"', "sh", *argv]


def count(packets: list[Packet], started: float, rtt_s: float, first_bytes: int
          ) -> dict[str, float | int] | None:
    """Start-up, round trips and the rest before the first data byte (see the module's
    docstring); None when no data arrived."""
    got, first, by_port = 0, None, {}
    for packet in packets:
        if not packet.out and packet.t >= started:
            got += packet.payload
            by_port[packet.port] = by_port.get(packet.port, 0) + packet.payload
            if got >= first_bytes:
                first = packet.t
                break
    syns = [p.t for p in packets if p.out and p.syn and p.t >= started]
    if first is None or not syns:
        return None
    port = max(by_port, key=by_port.__getitem__)
    trips, sent, last_in = 0, False, None
    for packet in packets:
        if packet.port != port or packet.t < started or packet.t > first:
            continue
        if packet.out:
            sent = sent or packet.payload > 0 or packet.syn
            continue
        if packet.payload == 0 and not packet.syn:
            continue
        if sent and (last_in is None or packet.t - last_in >= rtt_s / 2):
            trips += 1
            sent = False
        last_in = packet.t
    startup = syns[0] - started
    return {"round_trips": trips, "startup_s": startup,
            "rest_s": (first - started) - startup - trips * rtt_s}


if __name__ == "__main__":
    _sniff(sys.argv[1], Path(sys.argv[2]))
