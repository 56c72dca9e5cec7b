"""Client source addresses spread over 127.0.0.0/8, so that connection counts beyond one
address's ephemeral port range (32768-60999 here) still work.

IP_BIND_ADDRESS_NO_PORT lets bind() fix only the address and leave the port to connect(),
which picks it per destination: a plain bind(ip, 0) would reserve a port for every
destination at once, is slow, and strands ports in TIME_WAIT.
"""

from __future__ import annotations

import socket

IP_BIND_ADDRESS_NO_PORT = 24
# Share of one port parity a source address may fill. connect() searches the ports of one
# parity first, then the other (__inet_hash_connect, net/ipv4/inet_hashtables.c): once an
# address holds more than half the range, every further connect() checks each port of the
# first parity (~300 ns each) before it finds one. With 16,000 connections per address of a
# 28,232-port range, 250,000 connections took 112 s to connect, 99% of it in the kernel;
# with 10,000, 7 s (measured here, 2026-11-30).
PARITY_SHARE = 0.7
PER_ADDRESS_CAP = 10_000


def local_port_count(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """Ports in net.ipv4.ip_local_port_range (28,232 for the default 32768-60999)."""
    try:
        with open(path) as fh:
            lo, hi = (int(v) for v in fh.read().split())
        return hi - lo + 1
    except (OSError, ValueError):
        return 28_232


def per_address(ports: int) -> int:
    """Connections one source address takes: well inside half of `ports`, at most 10,000."""
    return max(1, min(PER_ADDRESS_CAP, int(ports // 2 * PARITY_SHARE)))


PER_ADDRESS = per_address(local_port_count())
# Source addresses churn rotates through: ports of closed connections sit in TIME_WAIT for a
# minute, so a few thousand cycles per second need several addresses' worth of ports.
CHURN_ADDRESSES = 32


def addresses_needed(total_connections: int) -> int:
    """Source addresses for `total_connections` to one destination, PER_ADDRESS each."""
    return -(-total_connections // PER_ADDRESS)


def source_address(index: int, spread: int) -> str | None:
    """The source address of the index-th connection when `spread` addresses are in use;
    None (the kernel's choice, 127.0.0.1) when one address is enough."""
    if spread <= 1:
        return None
    slot = index % spread
    # 127.1.x.y: away from 127.0.0.1, where servers and other tools live.
    return f"127.1.{slot // 250}.{slot % 250 + 1}"


def bind_source(sock: socket.socket, address: str | None) -> None:
    if address is None:
        return
    sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
    sock.bind((address, 0))
