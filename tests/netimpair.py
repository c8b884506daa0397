"""A userspace netem for kernels without ``sch_netem``: a router namespace forwards through a TUN device.

Run in the router namespace (``ip netns exec ROUTER python3 tests/netimpair.py --via IFACE ...``) it
creates the TUN device ``--dev``, sends every packet that arrives on a ``--via`` interface into it (a
policy rule: ``iif IFACE lookup 100``, and table 100's default route is the TUN device), and writes each
packet back ``--delay-ms`` later, or drops it with probability ``--loss``.  A packet written back arrives
on the TUN device, where no rule applies, so the kernel's main table routes it on to its destination:
real kernel routing on either side, with the delay and loss of ``tc qdisc ... netem delay 100ms loss 2%``
on each of the router's interfaces (both directions, so a round trip costs twice the delay).  Packets
for the router itself are delivered by the ``local`` table first and are not impaired.

It prints ``ready`` once the device and the rules are in place, and on SIGTERM one line of counters
(``forwarded N dropped M``).  SIGUSR1 cuts the link (every packet dropped) and the next one restores it.  :func:`probe_path` measures a path's round trip and loss with UDP echoes, to
check that the impairment really is on the path.  Needs root (CAP_NET_ADMIN) and ``/dev/net/tun``.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import os
import random
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
TABLE = "100"


def open_tun(name: str) -> int:
    """A TUN device (layer 3, no packet-info header) named ``name``; it lives as long as the descriptor."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
    return fd


def route_through(dev: str, via: list[str]) -> None:
    """Everything arriving on the ``via`` interfaces goes into ``dev``; what ``dev`` gives back is routed on."""

    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True)

    run("ip", "link", "set", dev, "up")
    run("ip", "route", "add", "default", "dev", dev, "table", TABLE)
    for iface in via:
        run("ip", "rule", "add", "iif", iface, "lookup", TABLE, "priority", "100")
    # A packet written back arrives on the TUN device from an address the main table routes elsewhere:
    # strict reverse-path filtering would drop it.  (/proc/sys/net is this namespace's.)
    for conf in ("all", "default", dev):
        Path(f"/proc/sys/net/ipv4/conf/{conf}/rp_filter").write_text("0\n")


@dataclass(slots=True)
class Impairment:
    delay: float  # seconds, each way
    jitter: float  # seconds, uniform +-; order is kept (a packet never overtakes the one before it)
    loss: float  # probability that a packet is dropped
    forwarded: int = 0
    dropped: int = 0
    cut: bool = False  # SIGUSR1 toggles: while set, every packet is dropped (the link is down)

    def run(self, fd: int, rng: random.Random, stop: list[bool]) -> None:
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        last_due = 0.0
        while not stop[0]:
            now = time.monotonic()
            while queue and queue[0][0] <= now:
                _, packet = queue.popleft()
                try:
                    os.write(fd, packet)
                    self.forwarded += 1
                except OSError:  # the kernel refused it (no route any more): as a lossy link would
                    self.dropped += 1
            timeout = max(0.0, queue[0][0] - now) if queue else 0.5
            try:
                readable, _, _ = select.select([fd], [], [], timeout)
            except InterruptedError:
                continue
            if not readable:
                continue
            while True:
                try:
                    packet = os.read(fd, 65536)
                except BlockingIOError:
                    break
                if self.cut or rng.random() < self.loss:
                    self.dropped += 1
                    continue
                due = time.monotonic() + self.delay + rng.uniform(-self.jitter, self.jitter)
                last_due = max(due, last_due)
                queue.append((last_due, packet))


@dataclass(frozen=True, slots=True)
class PathProbe:
    sent: int
    received: int
    rtt_median: float  # seconds

    @property
    def lost(self) -> int:
        return self.sent - self.received


def probe_path(client: socket.socket, echo: socket.socket, count: int = 200, interval: float = 0.01,
               settle: float = 1.0) -> PathProbe:
    """Round trip and loss from ``client`` (connected to ``echo``'s address) to the UDP socket ``echo``.

    The two sockets may live in different namespaces (a socket keeps the namespace it was made in), so
    one thread measures a path through the router with no helper process.
    """
    sent_at: dict[int, float] = {}
    rtts: list[float] = []
    next_send = time.monotonic()
    while len(sent_at) < count or time.monotonic() < next_send:
        now = time.monotonic()
        if len(sent_at) < count and now >= next_send:
            seq = len(sent_at)
            sent_at[seq] = now
            client.send(struct.pack("!I", seq))
            # After the last probe, ``next_send`` is when to stop waiting for the late ones.
            next_send = now + (interval if len(sent_at) < count else settle)
        readable, _, _ = select.select([client, echo], [], [], max(0.0, next_send - time.monotonic()))
        for sock in readable:
            data, peer = sock.recvfrom(64)
            if sock is echo:
                echo.sendto(data, peer)
            elif len(data) == 4:
                rtts.append(time.monotonic() - sent_at[struct.unpack("!I", data)[0]])
    return PathProbe(count, len(rtts), statistics.median(rtts) if rtts else float("inf"))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dev", default="impair0")
    parser.add_argument("--via", action="append", required=True, help="an interface whose packets are impaired")
    parser.add_argument("--delay-ms", type=float, default=100.0)
    parser.add_argument("--jitter-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.02, help="drop probability, 0..1")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    fd = open_tun(args.dev)
    route_through(args.dev, args.via)
    impairment = Impairment(args.delay_ms / 1000, args.jitter_ms / 1000, args.loss)
    stop = [False]
    signal.signal(signal.SIGTERM, lambda *_: stop.__setitem__(0, True))
    signal.signal(signal.SIGUSR1, lambda *_: setattr(impairment, "cut", not impairment.cut))
    print(f"ready: {args.dev} delays {args.delay_ms:g} ms (+-{args.jitter_ms:g}) and drops {args.loss:.1%} "
          f"of packets from {', '.join(args.via)}", flush=True)
    impairment.run(fd, random.Random(args.seed), stop)
    print(f"forwarded {impairment.forwarded} dropped {impairment.dropped}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
