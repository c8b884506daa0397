"""Viewers on "another machine": a namespace of their own, behind a veth pair whose receive work runs in a kthread.

On loopback (or a veth pair as created) the kernel delivers a datagram to its receiver in the sender's own system
call: the receive path (IP, UDP, the receiver's socket queue, waking the receiver) runs as the sender's softirq and,
without ``CONFIG_IRQ_TIME_ACCOUNTING`` (not set on the test machine), is billed to the sender's system time. A
daemon's figure for its viewers then includes their kernel's work. Measured on the test machine (8 datagrams of
1,250 bytes per GSO ``sendmsg``): 17-18 us of the sender's kernel time per send on loopback, 4.6-5.1 us when a
driver drops them (what a NIC takes), 6.7-7.4 us into the namespace below.

Here the viewers' end of the pair has GRO on and threaded NAPI, so the veth driver hands each datagram to a NAPI
kernel thread (``napi/<dev>-<id>``) that does the receiving, as another host's NIC and CPU would. For the veth to
take that path for the daemon's locally made GSO datagrams the daemon's end must not offer TSO (it carries only the
signalling's TCP; the daemon's UDP segmentation offload is unaffected). Needs root and iproute2.
"""

from __future__ import annotations

import array
import ctypes
import fcntl
import os
import shutil
import socket
import struct
import subprocess
from pathlib import Path

from tests.test_live_networks import CLONE_NEWNET, entered

SIOCETHTOOL = 0x8946
ETHTOOL_GTSO, ETHTOOL_STSO = 0x1E, 0x1F
ETHTOOL_GGRO, ETHTOOL_SGRO = 0x2B, 0x2C

DAEMON_ADDRESS = "10.98.0.1"
VIEWERS_ADDRESS = "10.98.0.2"


def available() -> str | None:
    """None if a viewer network can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root"
    if shutil.which("ip") is None:
        return "needs iproute2"
    return None


def _ethtool(ifname: str, cmd: int, value: int = 0) -> int:
    """One ``struct ethtool_value`` ioctl (as ``ethtool -k/-K``), on this thread's network namespace."""
    buf = array.array("B", struct.pack("II", cmd, value))
    address, _ = buf.buffer_info()
    request = struct.pack("16sP", ifname.encode(), address)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, request)
    return int(struct.unpack("II", buf.tobytes())[1])


def enter(name: str) -> None:
    """Move this thread (and what it starts from now on) into network namespace ``name``, for good.

    For a load-generator process that lives there; :func:`tests.test_live_networks.entered` comes back.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    with open(f"/var/run/netns/{name}") as target:
        if libc.setns(target.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {name}")


def rcvbuf_errors(snmp: str) -> int:
    """UDP datagrams dropped for a full receive buffer, from the text of a namespace's /proc/net/snmp."""
    rows = [line.split() for line in snmp.splitlines() if line.startswith("Udp:")]
    return int(rows[1][rows[0].index("RcvbufErrors")])


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


class ViewerNetwork:
    """A namespace for the viewers, one veth pair to this one; :meth:`close` removes both."""

    def __init__(self) -> None:
        tag = os.getpid() % 100000
        self.name = f"nvrbench-viewers-{tag}"
        self.near, self.far = f"nvrbv{tag}a", f"nvrbv{tag}b"

    def open(self) -> ViewerNetwork:
        _ip("netns", "add", self.name)
        try:
            _ip("link", "add", self.near, "type", "veth", "peer", "name", self.far)
            _ip("link", "set", self.far, "netns", self.name)
            _ip("addr", "add", f"{DAEMON_ADDRESS}/24", "dev", self.near)
            _ip("link", "set", self.near, "up")
            _ip("-n", self.name, "addr", "add", f"{VIEWERS_ADDRESS}/24", "dev", self.far)
            _ip("-n", self.name, "link", "set", self.far, "up")
            _ip("-n", self.name, "link", "set", "lo", "up")
            # Another machine has a default route; Chromium needs one to offer any candidate (bench_live).
            _ip("-n", self.name, "route", "add", "default", "via", DAEMON_ADDRESS)
            _ethtool(self.near, ETHTOOL_STSO, 0)
            if _ethtool(self.near, ETHTOOL_GTSO) != 0:
                raise OSError("TSO stays on at the daemon's end of the pair")
            with entered(self.name):
                _ethtool(self.far, ETHTOOL_SGRO, 1)
                if not _ethtool(self.far, ETHTOOL_GGRO):
                    raise OSError("GRO stays off at the viewers' end of the pair")
            threaded = subprocess.run(["ip", "netns", "exec", self.name, "sh", "-c",
                                       f"echo 1 > /sys/class/net/{self.far}/threaded && "
                                       f"cat /sys/class/net/{self.far}/threaded"],
                                      capture_output=True, text=True)
            if threaded.returncode != 0 or threaded.stdout.strip() != "1":
                raise OSError(f"threaded NAPI refused: {threaded.stderr.strip()}")
        except BaseException:
            self.close()
            raise
        return self

    def udp_receive_errors(self) -> int:
        """Datagrams the viewers' kernel dropped for a full receive buffer (their namespace's /proc/net/snmp)."""
        return rcvbuf_errors(subprocess.run(["ip", "netns", "exec", self.name, "cat", "/proc/net/snmp"],
                                            check=True, capture_output=True, text=True).stdout)

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.near], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)
        if Path(f"/var/run/netns/{self.name}").exists():
            raise OSError(f"network namespace {self.name} was not removed")
