"""The publishing socket itself: a ZeroMQ XPUB, run inside the publisher process.

XPUB rather than PUB so that subscriptions can be seen arriving (the daemon can wait for them
before replaying a file); subscribers use an ordinary SUB socket (`detector.subscriber`). It runs
in its own process (`detector.publish_relay`, started by `detector.publish.Publisher`) because
libzmq files every subscription a client sends before anyone can count it: that memory must not
be the daemon's.
"""

import os
import time
from typing import TYPE_CHECKING

import zmq

from detector.curve import inbound_limit
from detector.errors import WhaleError

if TYPE_CHECKING:
    from detector.curve import ServerKeys

SEND_HWM = 100_000  # queued messages per subscriber before ZeroMQ drops (never blocks) new ones
MAX_INBOUND_BYTES = 256  # a subscription ("\x01" + topic) longer than this drops its client
TOPICS = (b"upcall", b"status")  # what is published: a subscription is a prefix of one of them
MAX_FOREIGN_SUBSCRIPTIONS = 1000  # subscriptions to anything else, before the socket reopens
REBIND_S = 2.0  # reopening: how long to retry binding while the old listener closes


def _bind(socket: zmq.Socket, endpoint: str, retry_s: float) -> None:
    """Bind; when reopening, retry while the closed socket's listener is still going (libzmq
    closes it in its I/O thread), and bind an ipc path again if that close removed its file."""
    deadline = time.monotonic() + retry_s
    while True:
        try:
            socket.bind(endpoint)
        except zmq.ZMQError as exc:
            if exc.errno != zmq.EADDRINUSE or time.monotonic() > deadline:
                raise
            time.sleep(0.02)
            continue
        if retry_s and endpoint.startswith("ipc://"):
            time.sleep(0.05)  # the old listener's close unlinks the path it had
            if not os.path.exists(endpoint[len("ipc://") :]) and time.monotonic() < deadline:
                socket.unbind(socket.getsockopt_string(zmq.LAST_ENDPOINT))
                continue
        return


class Xpub:
    """A ZeroMQ XPUB socket bound to every endpoint (tcp://host:port or ipc://path); with
    `curve`, encrypted and only for the clients it allows (`detector.curve`)."""

    def __init__(
        self, endpoints: list[str], curve: "ServerKeys | None" = None, retry_s: float = 0.0
    ) -> None:
        self._context = zmq.Context()
        self._curve = curve
        self._authenticator = curve.authenticate(self._context) if curve is not None else None
        self._subscriptions = 0
        self.foreign = 0  # subscriptions to topics never published, since the socket was opened
        self.reopened = 0  # times too many of them had the socket closed and bound again
        self.allowed = len(curve.allowed) if curve is not None else 0  # CURVE client keys
        self.dropped = 0  # messages ZeroMQ refused to queue (the log still has them)
        self.endpoints: list[str] = []  # as bound, e.g. with the real port for tcp://host:*
        self._socket = self._open(endpoints, retry_s)

    def _open(self, endpoints: list[str], retry_s: float = 0.0) -> zmq.Socket:
        socket = self._context.socket(zmq.XPUB)
        if self._curve is not None:
            self._curve.apply(socket)
        socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscription, even repeats
        # a 10 MiB topic grew the daemon by 550 MB
        socket.setsockopt(zmq.MAXMSGSIZE, inbound_limit(MAX_INBOUND_BYTES, self._curve))
        bound = []
        for endpoint in endpoints:
            port = endpoint.rpartition(":")[2]
            if endpoint.startswith("tcp://") and port.isdigit() and int(port) > 65535:
                self._socket = socket
                self.close(linger_ms=0)  # libzmq would silently bind port % 65536
                raise WhaleError(f"cannot bind {endpoint}: port out of range")
            try:
                _bind(socket, endpoint, retry_s)
            except zmq.ZMQError as exc:
                self._socket = socket
                self.close(linger_ms=0)
                raise WhaleError(f"cannot bind {endpoint}: {zmq.strerror(exc.errno)}") from exc
            bound.append(socket.getsockopt_string(zmq.LAST_ENDPOINT))
        self.endpoints = bound
        return socket

    def _reopen(self) -> None:
        """Too many subscriptions to topics this daemon never publishes: libzmq keeps each one
        (~11 KB) until its client goes, so close the socket, which frees them all, and bind the
        same endpoints again. Every client reconnects by itself; what a subscriber missed
        meanwhile is in the log and its catch-up (`Follower` fetches it)."""
        self._socket.close(linger=0)
        self._socket = self._open(self.endpoints, retry_s=REBIND_S)
        self._subscriptions = 0
        self.foreign = 0
        self.reopened += 1

    @property
    def subscriptions(self) -> int:
        """Subscriptions seen so far, less unsubscriptions."""
        self.drain(0)
        return self._subscriptions

    def drain(self, timeout_ms: int) -> bool:
        """Read pending subscription messages, waiting up to timeout_ms for the first one."""
        got = False
        while self._socket.poll(timeout_ms, zmq.POLLIN):
            message = self._socket.recv()
            if message[:1] == b"\x01":
                self._subscriptions += 1
                if not any(topic.startswith(message[1:]) for topic in TOPICS):
                    self.foreign += 1
            elif message[:1] == b"\x00":
                self._subscriptions -= 1
            got = True
            timeout_ms = 0
            if self.foreign > MAX_FOREIGN_SUBSCRIPTIONS:
                self._reopen()
        return got

    @property
    def socket(self) -> zmq.Socket:
        """The socket now open (a reopen replaces it)."""
        return self._socket

    def send(self, topic: bytes, payload: bytes) -> None:
        """Publish [topic, payload]; never blocks (a full queue drops and counts)."""
        self.drain(0)
        try:
            self._socket.send_multipart([topic, payload], flags=zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1

    def close(self, linger_ms: int = 2000) -> None:
        """Close, giving queued events up to linger_ms to reach subscribers before exit."""
        if not self._socket.closed:
            self._socket.close(linger=linger_ms)
        if self._authenticator is not None:
            self._authenticator.stop()
            self._authenticator = None
        if not self._context.closed:
            self._context.term()
