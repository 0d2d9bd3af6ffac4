"""How bench/wan_capture.py counts round trips before the first data byte (issue 24's figures):
on made-up packet sequences whose answer is known."""

from __future__ import annotations

import importlib.util
import socket
import struct
import sys
from pathlib import Path

import pytest

_SPEC = importlib.util.spec_from_file_location(
    "wan_capture", Path(__file__).resolve().parents[1] / "bench" / "wan_capture.py")
assert _SPEC is not None and _SPEC.loader is not None
wan_capture = importlib.util.module_from_spec(_SPEC)
sys.modules["wan_capture"] = wan_capture  # its dataclasses look their module up
_SPEC.loader.exec_module(wan_capture)
Packet = wan_capture.Packet

RTT = 0.6
KIB = 1024


def _exchange(port: int, start: float, trips: int, pause: float = 0.0) -> list[Packet]:
    """A SYN answered, then `trips - 1` requests each answered a round trip later; the server
    pauses `pause` s (its process starting) before the last answer, with nothing asked."""
    packets = [Packet(start, True, port, True, 0), Packet(start + RTT, False, port, True, 0)]
    t = start + RTT
    for _ in range(trips - 1):
        packets.append(Packet(t + 0.001, True, port, False, 100))
        t += RTT
        packets.append(Packet(t, False, port, False, 500))
        packets.append(Packet(t + 0.002, False, port, False, 500))  # the same flight
    if pause:
        t += pause
        packets.append(Packet(t, False, port, False, 700))
    return packets


def _data(port: int, t: float, kib: int) -> list[Packet]:
    return [Packet(t + i * 0.001, False, port, False, KIB) for i in range(kib)]


def test_each_request_answered_after_a_round_trip_counts_once():
    packets = _exchange(4000, 10.0, 12)
    packets += _data(4000, packets[-1].t + 0.001, 64)
    found = wan_capture.count(packets, started=9.5, rtt_s=RTT, first_bytes=64 * KIB)
    assert found is not None
    assert found["round_trips"] == 12
    assert found["startup_s"] == pytest.approx(0.5)
    assert 0 < found["rest_s"] < 0.07  # the data's own serialisation (milliseconds)


def test_a_pause_the_site_did_not_cause_is_not_a_round_trip():
    packets = _exchange(4000, 10.0, 5, pause=0.4)  # the dispatcher's start, say
    packets += _data(4000, packets[-1].t + 0.001, 64)
    found = wan_capture.count(packets, started=10.0, rtt_s=RTT, first_bytes=64 * KIB)
    assert found is not None and found["round_trips"] == 5
    assert found["rest_s"] == pytest.approx(0.4, abs=0.1)


def test_only_the_connection_that_carried_the_first_byte_counts():
    main = _exchange(4000, 10.0, 9)
    other = _exchange(4001, 10.3, 7)  # a stream's login beside it: its own flights
    packets = sorted(main + other + _data(4000, main[-1].t + 0.001, 60)
                     + _data(4001, other[-1].t + 0.001, 4), key=lambda p: p.t)
    found = wan_capture.count(packets, started=10.0, rtt_s=RTT, first_bytes=64 * KIB)
    assert found is not None and found["round_trips"] == 9


def test_no_data_is_no_figure():
    assert wan_capture.count(_exchange(4000, 1.0, 3), started=0.0, rtt_s=RTT,
                             first_bytes=64 * KIB) is None


def test_a_packet_is_read_from_its_ip_and_tcp_headers():
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + 32 + 100, 0, 0, 64, socket.IPPROTO_TCP, 0,
                     bytes(4), bytes(4))
    tcp = struct.pack("!HHIIBBHHH", 22, 40000, 0, 0, 8 << 4, 0x12, 0, 0, 0) + bytes(12)
    packet = wan_capture._parse(ip + tcp + bytes(100), 1.0, out=False)
    assert packet == Packet(1.0, False, 40000, True, 100)
    assert wan_capture._parse(b"\x60" + bytes(60), 1.0, out=False) is None  # IPv6: not ours
