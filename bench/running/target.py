"""`--target HOST:PORT`: load for a server started elsewhere, to loopback unless allowed.

The guard exists so that a typo cannot turn this tool into a way to flood somebody else's
host: anything that does not resolve to 127.0.0.0/8 needs --allow-remote.
"""

from __future__ import annotations

import ipaddress
import socket

from bench.errors import UsageError


def parse_target(text: str, allow_remote: bool) -> str:
    """'localhost:8080' -> '127.0.0.1:8080', or a UsageError saying what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"--target takes HOST:PORT with a port from 1 to 65535, not {text!r}")
    try:
        infos = socket.getaddrinfo(host, int(port_text), socket.AF_INET, socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UsageError(f"--target host {host!r} does not resolve to an IPv4 address: {exc.strerror}") from None
    address = infos[0][4][0]
    if not ipaddress.ip_address(address).is_loopback and not allow_remote:
        raise UsageError(
            f"refusing to send load to {host} ({address}): not a loopback address; "
            "add --allow-remote if that server is yours to load"
        )
    return f"{address}:{port_text}"
