"""Which of a process's internet sockets could reach beyond loopback, read from /proc.

A socket is on loopback when its local address is a loopback one (127.0.0.0/8, ::1,
::ffff:127.x) and its remote address is loopback or unset. A socket bound to the unspecified
address (0.0.0.0, ::) is not: it listens on every interface and may send out of any, as
python-can's multicast interface does. Unix sockets and socket pairs never leave the host and are
not listed. Used by the bench and its test (the rule of our machines: traffic between
processes stays on loopback)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

_TABLES = ("tcp", "tcp6", "udp", "udp6", "raw", "raw6")


@dataclass(frozen=True, slots=True)
class InetSocket:
    table: str
    local: str
    remote: str

    def on_loopback(self) -> bool:
        return _loopback(self.local) and (_loopback(self.remote) or _unset(self.remote))

    def __str__(self) -> str:
        return f"{self.table} {self.local} -> {self.remote}"


def _address(hex_address: str) -> str:
    """/proc/net's `0100007F:1F90` (host byte order per 32-bit word) as `127.0.0.1:8080`."""
    host, port = hex_address.split(":")
    raw = bytes.fromhex(host)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    return f"[{ip}]:{int(port, 16)}" if ip.version == 6 else f"{ip}:{int(port, 16)}"


def _ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    ip = ipaddress.ip_address(address.rsplit(":", 1)[0].strip("[]"))
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _loopback(address: str) -> bool:
    return _ip(address).is_loopback


def _unset(address: str) -> bool:
    return _ip(address).is_unspecified


def socket_inodes(pid: int | str) -> set[str]:
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / fd)
        except OSError:
            continue  # closed meanwhile
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def inet_sockets(pid: int | str = "self") -> list[InetSocket]:
    """Every TCP, UDP and raw socket the process holds (in its own network namespace)."""
    inodes = socket_inodes(pid)
    found = []
    for table in _TABLES:
        try:
            lines = Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 9 and fields[9] in inodes:
                found.append(InetSocket(table, _address(fields[1]), _address(fields[2])))
    return found


def off_loopback(pid: int | str = "self") -> list[str]:
    """The process's sockets that are not on loopback, one line each (empty: all are)."""
    return [str(s) for s in inet_sockets(pid) if not s.on_loopback()]
