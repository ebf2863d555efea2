"""The ZeroMQ publisher: events and status to live subscribers, never blocking the loop.

It uses XPUB rather than PUB so the daemon can see subscriptions arrive (and wait for them before
replaying a file); subscribers use an ordinary SUB socket (`detector.subscriber`). Whatever it
drops is still in the event log (`detector.eventlog`), which every event reaches first.
"""

import time
from typing import TYPE_CHECKING

import zmq

from detector.curve import inbound_limit
from detector.errors import WhaleError
from detector.records import encode

if TYPE_CHECKING:
    from detector.curve import ServerKeys

SEND_HWM = 100_000  # queued messages per subscriber before ZeroMQ drops (never blocks) new ones
MAX_INBOUND_BYTES = 256  # a subscription ("\x01" + topic) longer than this drops its client


class Publisher:
    """A ZeroMQ XPUB socket bound to every endpoint (tcp://host:port or ipc://path); with
    `curve`, encrypted and only for the clients it allows (`detector.curve`)."""

    def __init__(self, endpoints: list[str], curve: "ServerKeys | None" = None) -> None:
        self._context = zmq.Context()
        self._authenticator = curve.authenticate(self._context) if curve is not None else None
        self._socket = self._context.socket(zmq.XPUB)
        if curve is not None:
            curve.apply(self._socket)
        self._socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscription, even repeats
        # a 10 MiB topic grew the daemon by 550 MB
        self._socket.setsockopt(zmq.MAXMSGSIZE, inbound_limit(MAX_INBOUND_BYTES, curve))
        self._subscriptions = 0
        self.allowed = len(curve.allowed) if curve is not None else 0  # CURVE client keys
        self.dropped = 0  # messages ZeroMQ refused to queue (the log still has them)
        self.endpoints: list[str] = []  # as bound, e.g. with the real port for tcp://host:*
        for endpoint in endpoints:
            port = endpoint.rpartition(":")[2]
            if endpoint.startswith("tcp://") and port.isdigit() and int(port) > 65535:
                self.close(linger_ms=0)  # libzmq would silently bind port % 65536
                raise WhaleError(f"cannot bind {endpoint}: port out of range")
            try:
                self._socket.bind(endpoint)
            except zmq.ZMQError as exc:
                self.close(linger_ms=0)
                raise WhaleError(f"cannot bind {endpoint}: {zmq.strerror(exc.errno)}") from exc
            self.endpoints.append(self._socket.getsockopt_string(zmq.LAST_ENDPOINT))

    @property
    def subscriptions(self) -> int:
        """Subscriptions seen so far, less unsubscriptions."""
        self._drain(0)
        return self._subscriptions

    def _drain(self, timeout_ms: int) -> bool:
        """Read pending subscription messages, waiting up to timeout_ms for the first one."""
        got = False
        while self._socket.poll(timeout_ms, zmq.POLLIN):
            message = self._socket.recv()
            if message[:1] == b"\x01":
                self._subscriptions += 1
            elif message[:1] == b"\x00":
                self._subscriptions -= 1
            got = True
            timeout_ms = 0
        return got

    def send(self, topic: str, obj: dict) -> None:
        """Publish [topic, compact JSON]; never blocks (a full queue drops and counts)."""
        self._drain(0)
        try:
            self._socket.send_multipart([topic.encode("utf-8"), encode(obj)], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def wait_subscribers(self, n: int, timeout: float | None) -> int:
        """Wait until n subscriptions have arrived (or timeout seconds); return the count."""
        deadline = None if timeout is None else time.monotonic() + timeout
        self._drain(0)
        while self._subscriptions < n:
            if deadline is None:
                self._drain(-1)
                continue
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._drain(max(1, int(remaining * 1000)))
        return self._subscriptions

    def close(self, linger_ms: int = 2000) -> None:
        """Close, giving queued events up to linger_ms to reach subscribers before exit."""
        if not self._socket.closed:
            self._socket.close(linger=linger_ms)
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if not self._context.closed:
            self._context.term()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
