"""Free TCP ports for servers the tests and benchmarks start.

Asking the kernel for port 0 hands out a port from the ephemeral range, the same range it
draws outgoing connections' source ports from: between the probe and the server's own bind,
any client on the machine (kubectl, a watch, a pod's probe) may take it, and the server then
dies with "address already in use" (an OpenBao start in CI did). Ports are drawn here from
below that range and above the cluster's fixed ports (and below the NodePort range), so only
another listener can hold them, and the probe sees that.
"""

from __future__ import annotations

import random
import socket

LOW, HIGH = 20000, 29999


def _ephemeral_low() -> int:
    try:
        return int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that no socket holds now, outside the ephemeral range."""
    high = min(HIGH, _ephemeral_low() - 1)
    ports = random.sample(range(LOW, high + 1), 200)
    for port in ports:
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on {host} in {LOW}-{HIGH} after {len(ports)} tries")
