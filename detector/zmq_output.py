"""The ZeroMQ output: every event as `[b"upcall", json]`, every heartbeat as `[b"status", json]`."""

import os
import socket
import stat
import time
from collections.abc import Callable

from detector.catchup import CatchupServer, resolve
from detector.curve import server_keys
from detector.errors import WhaleError
from detector.journal import say
from detector.outputs import Output
from detector.publish import Publisher
from detector.settings import Settings

WAIT_SLICE_S = 0.2  # a wait for subscribers still notices SIGTERM/SIGINT this often
# A client started before the daemon retries its refused connect every 0.1-0.2 s (libzmq's
# reconnect interval plus jitter): a daemon that exits sooner after binding (a fast replay)
# would leave it nothing, not even catch-up. So, within --linger, it stays this long.
CONNECT_GRACE_S = 1.0


class ZmqOutput(Output):
    """A `Publisher` bound to the `--publish` endpoints; a full queue drops and counts."""

    name = "zeromq"

    def __init__(
        self,
        publisher: Publisher,
        linger_s: float = 2.0,
        wait_subscribers: int = 0,
        catchup: CatchupServer | None = None,
    ) -> None:
        self.publisher = publisher
        self.linger_s = linger_s
        self.wait_subscribers = wait_subscribers
        self.catchup = catchup  # serves the log to subscribers that missed events
        self.last_seq = 0
        self.bound_at = time.monotonic()  # the publisher and catch-up are bound by now

    def prepare(self, stopped: Callable[[], bool]) -> None:
        if not self.wait_subscribers:
            return
        got = 0
        while got < self.wait_subscribers and not stopped():
            got = self.publisher.wait_subscribers(self.wait_subscribers, timeout=WAIT_SLICE_S)
        say(f"{got} subscriber(s) connected")

    def on_event(self, event: dict) -> None:
        self.last_seq = event["seq"]
        self.publisher.send("upcall", event)

    def on_status(self, status: dict) -> None:
        self.publisher.send("status", status)

    def status_fields(self) -> dict:
        fields: dict = {"zmq_dropped": self.publisher.dropped}
        if self.catchup is not None:
            fields["catchup"] = self.catchup.endpoint
        return fields

    def close(self) -> None:
        """Up to `linger_s`: stay reachable CONNECT_GRACE_S after binding, wait for the
        catch-up clients to hold the last event (they fetch what the publisher could not
        deliver), then give the queued messages what is left. The exit line says how many
        events the clients still behind may have to fetch."""
        deadline = time.monotonic() + self.linger_s
        grace_end = min(deadline, self.bound_at + CONNECT_GRACE_S)
        try:
            if self.catchup is not None:
                while time.monotonic() < deadline and (
                    time.monotonic() < grace_end or any(self.catchup.behind(self.last_seq))
                ):
                    time.sleep(0.05)
                behind = [n for n in self.catchup.behind(self.last_seq) if n]
                if behind:
                    say(
                        f"zeromq: {len(behind)} catch-up subscriber(s) still behind at exit: up "
                        f"to {max(behind)} event(s) (to seq {self.last_seq}) to fetch from the "
                        f"log {self.catchup.index.path}"
                    )
            left_ms = max(0, int((deadline - time.monotonic()) * 1000))
            self.publisher.close(linger_ms=left_ms)
        finally:
            if self.catchup is not None:
                self.catchup.close()

    def describe(self) -> str:
        catchup = f", catch-up on {self.catchup.endpoint}" if self.catchup is not None else ""
        curve = f" (CURVE, {self.publisher.allowed} allowed client key(s))"
        curve = curve if self.publisher.allowed else ""
        return f"publishing on {', '.join(self.publisher.endpoints)}{catchup}{curve}"


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
    endpoint = resolve(settings.catchup, list(settings.publish))
    if endpoint is not None:
        refuse_live_ipc(endpoint)
    curve = server_keys(settings.curve_secret, settings.curve_allow)
    publisher = Publisher(list(settings.publish), curve)
    try:
        catchup = (
            CatchupServer(endpoint, settings.events_log, curve) if endpoint is not None else None
        )
    except BaseException:
        publisher.close(linger_ms=0)
        raise
    return ZmqOutput(publisher, settings.linger, settings.wait_subscribers, catchup)
