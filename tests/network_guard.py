"""Network access inside a block, counted (tests/test_boundaries.py, tests/test_tuned_models.py): "fails fast
offline" means that nothing tries the network — no DNS look-up, no TCP connection — not a wall-clock bound."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator


@contextlib.contextmanager
def network_attempts() -> Iterator[list[tuple[str, object]]]:
    """Refuse (``OSError``) and record every DNS look-up and internet-socket connect inside the block; yields the
    list of attempts. Unix-domain sockets pass."""
    attempts: list[tuple[str, object]] = []
    real_connect, real_connect_ex, real_getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo

    def connect(self, address, *args, real=real_connect):
        if self.family not in (socket.AF_INET, socket.AF_INET6):
            return real(self, address, *args)
        attempts.append(("connect", address))
        raise OSError(f"network access refused by the test: connect {address}")

    def connect_ex(self, address, *args):
        if self.family not in (socket.AF_INET, socket.AF_INET6):
            return real_connect_ex(self, address, *args)
        attempts.append(("connect", address))
        raise OSError(f"network access refused by the test: connect {address}")

    def getaddrinfo(host, *args, **kwargs):
        attempts.append(("dns", host))
        raise OSError(f"network access refused by the test: DNS look-up of {host}")

    socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = connect, connect_ex, getaddrinfo
    try:
        yield attempts
    finally:
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = real_connect, real_connect_ex, real_getaddrinfo
