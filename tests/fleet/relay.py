"""A delaying TCP relay; in the fleet (since issue 24) a plain forwarder with no delay.

Each accepted connection is forwarded to an upstream address. Every chunk read from one side is
stamped with `now + delay` and put on that direction's queue; the writer sends it when due. Many
chunks are in flight at once, so throughput is limited by the link and not by one chunk per delay
(a bandwidth-delay buffer, as a long cable is), and order is kept because each direction has one
FIFO queue and one writer. Run with `python -m tests.fleet.relay LISTEN=UPSTREAM ... --delay-ms N`
inside a site's network namespace: each site's client talks to 127.0.0.1 there, and the relay
carries the bytes over the site's link to the server namespace.

The fleet runs it with `--delay-ms 0`: the link itself is packet-level now (tests/harness/wan.py:
rate, delay and loss below TCP), so the relay's TCP connection to the server sees the full round
trip and recovers every loss over it. With a delay, the relay adds latency above TCP: a TCP
connection crossing a lossy link would recover its losses on its own short round trip, which made
lossy profiles look far better than a real WAN (docs/fleet.md, docs/wan.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys
import time
from collections import deque

CHUNK = 64 * 1024
MAX_IN_FLIGHT = 8 * 1024 * 1024  # per direction: more than rate x delay for every profile we use


class _Pipe:
    """One direction: a timestamped FIFO between a reader and a writer task."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.queue: deque[tuple[float, bytes]] = deque()
        self.queued = 0
        self.readable = asyncio.Event()  # set when the queue has room again
        self.readable.set()
        self.available = asyncio.Event()  # set when the queue is non-empty

    def push(self, data: bytes) -> None:
        self.queue.append((time.monotonic() + self.delay, data))
        self.queued += len(data)
        self.available.set()
        if self.queued >= MAX_IN_FLIGHT:
            self.readable.clear()

    def pop(self) -> tuple[float, bytes]:
        item = self.queue.popleft()
        self.queued -= len(item[1])
        if not self.queue:
            self.available.clear()
        if self.queued < MAX_IN_FLIGHT:
            self.readable.set()
        return item


async def _read_side(reader: asyncio.StreamReader, pipe: _Pipe) -> None:
    try:
        while True:
            await pipe.readable.wait()
            data = await reader.read(CHUNK)
            pipe.push(data)  # b"" marks end of stream, delivered after the same delay
            if not data:
                return
    except (ConnectionError, OSError):
        pipe.push(b"")


async def _write_side(writer: asyncio.StreamWriter, pipe: _Pipe) -> None:
    while True:
        await pipe.available.wait()
        due, data = pipe.pop()
        wait = due - time.monotonic()
        if wait > 0:
            await asyncio.sleep(wait)
        if not data:
            with contextlib.suppress(OSError):
                if writer.can_write_eof():
                    writer.write_eof()
            return
        writer.write(data)
        await writer.drain()


async def _serve(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                 upstream: tuple[str, int], delay: float) -> None:
    try:
        up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*upstream), timeout=10)
    except (OSError, asyncio.TimeoutError):
        client_w.close()  # the client sees the link as down and retries
        return
    for w in (client_w, up_w):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    down, up = _Pipe(delay), _Pipe(delay)
    tasks = [asyncio.ensure_future(t) for t in (
        _read_side(client_r, up), _write_side(up_w, up),
        _read_side(up_r, down), _write_side(client_w, down))]
    try:
        # The writers end after delivering EOF; a reset on either side ends everything at once.
        done, pending = await asyncio.wait([tasks[1], tasks[3]],
                                           return_when=asyncio.FIRST_COMPLETED)
        if any(t.exception() for t in done):
            raise ConnectionError
        # One side said goodbye; a peer behind a dead link would never answer, so bound the
        # wait for the other direction (ssh closes both directions together anyway).
        await asyncio.wait_for(asyncio.gather(*pending), timeout=30 + 2 * delay)
    except (ConnectionError, OSError, asyncio.TimeoutError):
        pass
    finally:
        for task in tasks:
            task.cancel()
        for w in (client_w, up_w):
            w.transport.abort() if w.transport.get_write_buffer_size() else w.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


async def _main(forwards: list[tuple[tuple[str, int], tuple[str, int]]], delay: float) -> None:
    servers = []
    for listen, upstream in forwards:
        servers.append(await asyncio.start_server(
            lambda r, w, u=upstream: _serve(r, w, u, delay), *listen, reuse_address=True))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print("relay ready", flush=True)  # the harness waits for this line
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("forward", nargs="+", metavar="LISTEN=UPSTREAM",
                        help="e.g. 127.0.0.1:2222=198.18.0.1:2222")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per chunk")
    args = parser.parse_args(argv)
    forwards = []
    for spec in args.forward:
        listen, _, upstream = spec.partition("=")
        forwards.append((_address(listen), _address(upstream)))
    asyncio.run(_main(forwards, args.delay_ms / 1000.0))
    return 0


if __name__ == "__main__":
    sys.exit(main())
