"""The congestion control of this host's TCP sockets, as the kernel reports it (what `ss -tni`
prints), read over NETLINK_SOCK_DIAG: no iproute2 needed, no privilege (any user may read it).

`check` uses it to say which algorithm the dedicated sshd's listening socket hands to the
connections it accepts, and which the sites' connections really use. Only the caller's network
namespace is seen.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Iterator
from dataclasses import dataclass

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
INET_DIAG_CONG = 4  # the attribute carrying the algorithm's name
TCP_ESTABLISHED, TCP_LISTEN = 1, 10

_HEADER = struct.Struct("=IHHII")  # nlmsghdr
_REQUEST = struct.Struct("=BBBBI48x")  # inet_diag_req_v2, any socket id
_MESSAGE = struct.Struct("=BBBB2s2s16s16s12xIIIII")  # inet_diag_msg
_ATTRIBUTE = struct.Struct("=HH")  # rtattr


@dataclass(frozen=True)
class TcpSocket:
    family: int  # socket.AF_INET or AF_INET6
    state: int  # TCP_LISTEN, TCP_ESTABLISHED, …
    local: str  # address as text ("0.0.0.0", "::", "127.0.0.1")
    local_port: int
    remote: str
    remote_port: int
    congestion: str  # "bbr", "cubic", … ("" when the kernel did not say)

    @property
    def listening(self) -> bool:
        return self.state == TCP_LISTEN


def _address(family: int, raw: bytes) -> str:
    return str(ipaddress.ip_address(raw[:4] if family == socket.AF_INET else raw))


def _congestion(attributes: bytes) -> str:
    offset = 0
    while offset + _ATTRIBUTE.size <= len(attributes):
        length, kind = _ATTRIBUTE.unpack_from(attributes, offset)
        if length < _ATTRIBUTE.size:
            break
        if kind == INET_DIAG_CONG:
            value = attributes[offset + _ATTRIBUTE.size:offset + length]
            return value.split(b"\0", 1)[0].decode("ascii", "replace")
        offset += (length + 3) & ~3
    return ""


def _dump(family: int, states: int) -> Iterator[TcpSocket]:
    request = _REQUEST.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_CONG - 1), 0, states)
    header = _HEADER.pack(_HEADER.size + len(request), SOCK_DIAG_BY_FAMILY,
                          NLM_F_REQUEST | NLM_F_DUMP, 1, 0)
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as link:
        link.sendto(header + request, (0, 0))
        while True:
            data = link.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, kind, _flags, _seq, _pid = _HEADER.unpack_from(data, offset)
                if kind == NLMSG_DONE:
                    return
                if kind == NLMSG_ERROR:
                    (errno,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                    raise OSError(-errno, "the kernel refused the sock_diag request")
                body = data[offset + _HEADER.size:offset + length]
                (got_family, state, _timer, _retrans, sport, dport, src, dst,
                 *_rest) = _MESSAGE.unpack_from(body)
                yield TcpSocket(got_family, state, _address(got_family, src),
                                int.from_bytes(sport, "big"), _address(got_family, dst),
                                int.from_bytes(dport, "big"), _congestion(body[_MESSAGE.size:]))
                offset += (length + 3) & ~3


def tcp_sockets(port: int | None, states: tuple[int, ...] = (TCP_LISTEN, TCP_ESTABLISHED)
                ) -> list[TcpSocket]:
    """This namespace's TCP sockets whose local port is `port` (None: all), IPv4 and IPv6."""
    mask = sum(1 << state for state in states)
    return [found for family in (socket.AF_INET, socket.AF_INET6)
            for found in _dump(family, mask) if port is None or found.local_port == port]
