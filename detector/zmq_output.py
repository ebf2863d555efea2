"""The ZeroMQ output: every event as `[b"upcall", json]`, every heartbeat as `[b"status", json]`."""

import os
import socket
import stat
from collections.abc import Callable

from detector.errors import WhaleError
from detector.journal import say
from detector.outputs import Output
from detector.publish import Publisher
from detector.settings import Settings

WAIT_SLICE_S = 0.2  # a wait for subscribers still notices SIGTERM/SIGINT this often


class ZmqOutput(Output):
    """A `Publisher` bound to the `--publish` endpoints; a full queue drops and counts."""

    name = "zeromq"

    def __init__(
        self, publisher: Publisher, linger_s: float = 2.0, wait_subscribers: int = 0
    ) -> None:
        self.publisher = publisher
        self.linger_s = linger_s
        self.wait_subscribers = wait_subscribers

    def prepare(self, stopped: Callable[[], bool]) -> None:
        if not self.wait_subscribers:
            return
        got = 0
        while got < self.wait_subscribers and not stopped():
            got = self.publisher.wait_subscribers(self.wait_subscribers, timeout=WAIT_SLICE_S)
        say(f"{got} subscriber(s) connected")

    def on_event(self, event: dict) -> None:
        self.publisher.send("upcall", event)

    def on_status(self, status: dict) -> None:
        self.publisher.send("status", status)

    def status_fields(self) -> dict:
        return {"zmq_dropped": self.publisher.dropped}

    def close(self) -> None:
        self.publisher.close(linger_ms=int(self.linger_s * 1000))

    def describe(self) -> str:
        return f"publishing on {', '.join(self.publisher.endpoints)}"


def refuse_live_ipc(endpoint: str) -> None:
    """libzmq binds an `ipc://` path by unlinking whatever socket is there, so a second daemon
    would silently steal a live one's subscribers; refuse a path a live process still listens
    on, as TCP refuses a port in use (a stale socket file, refusing connections, is reused)."""
    path = endpoint.removeprefix("ipc://")
    if not endpoint.startswith("ipc://") or path.startswith("@"):  # abstract: the kernel refuses
        return
    try:
        if not stat.S_ISSOCK(os.stat(path).st_mode):
            return  # absent, or not a socket: libzmq's own bind says why
    except OSError:
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return  # nobody listens: a stale file from a daemon that died
    raise WhaleError(f"cannot bind {endpoint}: Address already in use (a live process is on it)")


def open_output(settings: Settings) -> ZmqOutput:
    for endpoint in settings.publish:
        refuse_live_ipc(endpoint)
    return ZmqOutput(Publisher(list(settings.publish)), settings.linger, settings.wait_subscribers)
