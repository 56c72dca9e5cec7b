"""Client source addresses spread over 127.0.0.0/8, so that connection counts beyond one
address's ephemeral port range (32768-60999 here) still work.

IP_BIND_ADDRESS_NO_PORT lets bind() fix only the address and leave the port to connect(),
which picks it per destination: a plain bind(ip, 0) would reserve a port for every
destination at once, is slow, and strands ports in TIME_WAIT.
"""

from __future__ import annotations

import socket

IP_BIND_ADDRESS_NO_PORT = 24
# Connections per source address: well inside the ~28,000 ports of the local range.
PER_ADDRESS = 16000


def addresses_needed(total_connections: int) -> int:
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
