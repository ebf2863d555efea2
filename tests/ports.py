"""Free TCP ports for the daemons the tests (and bench/review_roundtrip.py) start on 127.0.0.1."""

import socket


def free_port_pair() -> int:
    """A TCP port p with p + 1 free too (the daemon's derived catch-up port)."""
    for _ in range(50):
        with socket.socket() as a, socket.socket() as b:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            try:
                b.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise RuntimeError("no two consecutive free ports")
