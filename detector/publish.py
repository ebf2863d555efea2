"""The ZeroMQ publisher: events and status to live subscribers, never blocking the loop.

The XPUB socket (`detector.xpub`) runs in a process of its own (`detector.publish_relay`) with a
data-size limit, because libzmq files a client's subscriptions before anyone can count them: a
flood of them can end that process, never the daemon. This side keeps the same face as a socket
(send, subscriptions, close): it hands each message to the process without waiting, and starts
a new one when the old one is gone. Whatever is dropped on the way is still in the event log
(`detector.eventlog`), which every event reaches first, and subscribers fetch it by catch-up.
"""

import json
import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from detector.errors import WhaleError
from detector.journal import escape, say
from detector.publish_relay import MAX_FRAME, config_frame
from detector.records import encode
from detector.xpub import MAX_FOREIGN_SUBSCRIPTIONS, REBIND_S

if TYPE_CHECKING:
    from detector.curve import ServerKeys

__all__ = ["MAX_FOREIGN_SUBSCRIPTIONS", "Publisher"]

RELAY_DATA_LIMIT = 128 << 20  # bytes of data the publisher process may hold (it starts at ~35)
START_TIMEOUT_S = 20.0  # for the publisher process to bind (Python start-up, zmq import)
RESTART_INTERVAL_S = 1.0  # a process that keeps dying is started again at most this often
PAIR_BUFFER = 1 << 20  # bytes queued towards the process while it is busy
PACKAGE_ROOT = Path(__file__).resolve().parents[1]
NO_COUNTS = {"subscriptions": 0, "foreign": 0, "reopened": 0, "dropped": 0}  # a new process's


class Publisher:
    """Publishes on every endpoint (tcp://host:port or ipc://path) through the publisher
    process; with `curve`, encrypted and only for the clients it allows (`detector.curve`)."""

    def __init__(self, endpoints: list[str], curve: "ServerKeys | None" = None) -> None:
        self._curve = curve
        self.allowed = len(curve.allowed) if curve is not None else 0  # CURVE client keys
        self.endpoints: list[str] = list(endpoints)  # as bound (the real port of tcp://host:*)
        self.restarts = 0  # publisher processes started again after one ended
        self._counts = dict(NO_COUNTS)
        self._lost = 0  # messages dropped on this side (process busy or gone)
        self._earlier = {"reopened": 0, "dropped": 0}  # counts of processes that ended
        self._down_since: float | None = None
        self._process: subprocess.Popen | None = None
        self._pair: socket.socket | None = None
        self._start(retry_s=0.0)

    # -- the process --------------------------------------------------------------------------

    def _start(self, retry_s: float) -> None:
        """Start the publisher process and wait for it to bind (WhaleError if it cannot)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PAIR_BUFFER)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")])
        )
        try:
            process = subprocess.Popen(
                [sys.executable, "-P", "-m", "detector.publish_relay", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                env=env,
            )
        except OSError as exc:
            ours.close()
            raise WhaleError(f"cannot start the publisher process: {exc.strerror}") from exc
        finally:
            theirs.close()
        self._process, self._pair = process, ours
        ours.send(config_frame(self.endpoints, self._curve, RELAY_DATA_LIMIT, retry_s))
        reply = self._reply(START_TIMEOUT_S)
        if reply[:1] == b"B":
            self.endpoints = json.loads(reply[1:])["endpoints"]
            self._down_since = None
            return
        why = reply[1:].decode("utf-8", "replace") if reply[:1] == b"E" else self._ended()
        self._stop()
        raise WhaleError(why)

    def _reply(self, timeout_s: float) -> bytes:
        """The process's first message (bound, or why not); b"" when it ends or times out."""
        assert self._pair is not None
        ready, _, _ = select.select([self._pair], [], [], timeout_s)
        try:
            return self._pair.recv(MAX_FRAME) if ready else b""
        except OSError:
            return b""

    def _ended(self) -> str:
        """Why the process ended, in one line: its exit and the last line it wrote."""
        assert self._process is not None
        try:
            code = self._process.wait(timeout=2.0)
        except subprocess.TimeoutExpired:
            return "the publisher process did not answer"
        tail = (
            self._process.stderr.read().decode("utf-8", "replace") if self._process.stderr else ""
        )
        lines = [line for line in tail.splitlines() if line.strip()]
        how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
        last = f": {escape(lines[-1][:200])}" if lines else ""
        return f"the publisher process ended ({how}){last}"

    def _stop(self) -> None:
        """Close the pair and reap the process (killed if it is still there)."""
        if self._pair is not None:
            self._pair.close()
            self._pair = None
        if self._process is not None:
            if self._process.poll() is None:
                self._process.kill()
            self._process.wait()
            if self._process.stderr:
                self._process.stderr.close()
            self._process = None

    def _gone(self) -> None:
        """The process ended (a flood, or killed): say why once; `_revive` starts another."""
        why = self._ended()
        self._earlier["reopened"] += self._counts["reopened"]
        self._earlier["dropped"] += self._counts["dropped"]
        self._counts = dict(NO_COUNTS)
        self._stop()
        self._down_since = time.monotonic()
        say(f"zeromq: {why}; starting it again (subscribers fetch what they miss by catch-up)")

    def _revive(self) -> bool:
        """Start a process again once RESTART_INTERVAL_S has passed; True when one is up."""
        if self._pair is not None:
            return True
        if self._down_since is None or time.monotonic() - self._down_since < RESTART_INTERVAL_S:
            return False
        try:
            self._start(retry_s=REBIND_S)
        except WhaleError as exc:
            self._down_since = time.monotonic()
            say(f"zeromq: cannot start the publisher again: {exc}")
            return False
        self.restarts += 1
        return True

    def _read(self, timeout_s: float = 0.0) -> None:
        """Take in the counts the process has sent, waiting up to timeout_s for the first."""
        while self._pair is not None:
            ready, _, _ = select.select([self._pair], [], [], timeout_s)
            if not ready:
                return
            timeout_s = 0.0
            try:
                frame = self._pair.recv(MAX_FRAME)
            except OSError:
                frame = b""
            if not frame:
                self._gone()
                return
            if frame[:1] == b"S":
                self._counts = json.loads(frame[1:])

    # -- the face -----------------------------------------------------------------------------

    @property
    def subscriptions(self) -> int:
        """Subscriptions seen so far, less unsubscriptions."""
        self._read()
        return self._counts["subscriptions"]

    @property
    def foreign(self) -> int:
        """Subscriptions to topics never published, since the socket was last opened."""
        self._read()
        return self._counts["foreign"]

    @property
    def reopened(self) -> int:
        """Times too many foreign subscriptions had the socket closed and bound again."""
        self._read()
        return self._earlier["reopened"] + self._counts["reopened"]

    @property
    def dropped(self) -> int:
        """Messages not delivered to the socket's queues (the log still has them)."""
        self._read()
        return self._lost + self._earlier["dropped"] + self._counts["dropped"]

    @property
    def pid(self) -> int | None:
        """The publisher process now running (tests)."""
        return self._process.pid if self._process is not None else None

    def send(self, topic: str, obj: dict) -> None:
        """Publish [topic, compact JSON]; never blocks (a busy or absent process drops and
        counts)."""
        self._read()
        frame = b"M" + topic.encode("utf-8") + b"\n" + encode(obj)
        if not self._revive() or len(frame) > MAX_FRAME:
            self._lost += 1
            return
        assert self._pair is not None
        try:
            self._pair.send(frame, socket.MSG_DONTWAIT)
        except BlockingIOError:
            self._lost += 1
        except OSError:
            self._lost += 1
            self._gone()

    def wait_subscribers(self, n: int, timeout: float | None) -> int:
        """Wait until n subscriptions have arrived (or timeout seconds); return the count."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.subscriptions < n:
            remaining = 1.0 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self._revive():
                time.sleep(min(0.05, remaining))
                continue
            self._read(remaining)
        return self._counts["subscriptions"]

    def close(self, linger_ms: int = 2000) -> None:
        """Close, giving queued events up to linger_ms to reach subscribers before exit."""
        if self._pair is None:
            return
        try:
            self._pair.settimeout(1.0)
            self._pair.send(b"Q" + json.dumps({"linger_ms": linger_ms}).encode())
            while True:  # its last counts (what it dropped), then the end of the pair
                frame = self._pair.recv(MAX_FRAME)
                if not frame:
                    break
                if frame[:1] == b"S":
                    self._counts = json.loads(frame[1:])
        except OSError:
            pass
        if self._process is not None:
            try:
                self._process.wait(timeout=linger_ms / 1000 + 5.0)
            except subprocess.TimeoutExpired:
                pass
        self._stop()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
