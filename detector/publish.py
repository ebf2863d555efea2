"""Deliver events: first to a durable JSON-lines log, then over ZeroMQ to live subscribers.

The log is the source of truth: an event is fsync'ed before it is published, so a subscriber
that missed a message (slow joiner, network drop, full queue) can always recover it from disk.
The publisher uses XPUB rather than PUB so the daemon can see subscriptions arrive (and wait
for them before replaying a file); subscribers use an ordinary SUB socket.
"""

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import zmq

from detector.errors import WhaleError

SEND_HWM = 100_000  # queued messages per subscriber before ZeroMQ drops (never blocks) new ones
MAX_INBOUND_BYTES = 256  # a subscription ("\x01" + topic) longer than this drops its client


def encode(obj: dict) -> bytes:
    """Compact UTF-8 JSON, the payload of every message and log line."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the file's own fsync still holds its data
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """Append-only JSON-lines event log; an event is on disk when `append` returns True.

    A write that fails (disk full, I/O error) must not cost the event nor the log: the file is cut
    back to its last whole line, the event is held in memory and written, in order, with the next
    one (or at close). The caller still publishes it and says that the log is failing.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.pending: list[bytes] = []  # encoded events not yet on disk, oldest first
        self.error: str | None = None  # why the last write failed, while the log is failing
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            if created:
                _fsync_dir(self.path.parent)  # the new file's name must survive a crash too
            self._repair_torn_tail()
        except OSError as exc:
            if self._fd is not None:
                os.close(self._fd)
            raise WhaleError(f"cannot open event log {self.path}: {exc.strerror or exc}") from exc

    def _repair_torn_tail(self) -> None:
        """Cut a last line left half-written by a crash, so the next event starts a clean line.

        Such a line was never fsync'ed, so never published: nothing a subscriber saw is lost.
        """
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as existing:
            existing.seek(max(0, size - 65536))
            tail = existing.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n") + 1
        try:
            json.loads(tail[cut:])
            complete = True
        except ValueError:
            complete = False
        if complete or (cut == 0 and len(tail) < size):
            _write_all(self._fd, b"\n")  # a whole event missing only its newline: keep it
        else:
            os.ftruncate(self._fd, size - len(tail) + cut)
        os.fsync(self._fd)

    def append(self, event: dict) -> bool:
        """Write one line (after any held back) and fsync it; False if it is held in memory."""
        self.pending.append(encode(event) + b"\n")
        return self.flush()

    def flush(self) -> bool:
        """Write the held events; True when none is left in memory."""
        if not self.pending:
            return True
        size = None
        try:
            size = os.fstat(self._fd).st_size
            _write_all(self._fd, b"".join(self.pending))
            os.fsync(self._fd)
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            if size is not None:
                try:
                    os.ftruncate(self._fd, size)  # no torn line for the next write to follow
                except OSError:
                    pass  # not a regular file (or the disk is gone): nothing more to do here
            return False
        self.pending.clear()
        self.error = None
        return True

    def close(self) -> None:
        """Last try for held events (see `pending` after), then close."""
        if self._fd is None:
            return
        self.flush()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def read_events(path: Path) -> list[dict]:
    """All events in a log; a torn last line (crash mid-write) is skipped, other bad lines fail."""
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise WhaleError(f"cannot read event log {path}: {exc.strerror or exc}") from exc
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError as exc:
            if number == len(lines):  # no newline after it: the write never completed
                continue
            raise WhaleError(f"{path}:{number}: not a JSON event line") from exc
    return events


class Publisher:
    """A ZeroMQ XPUB socket bound to every endpoint (tcp://host:port or ipc://path)."""

    def __init__(self, endpoints: list[str]) -> None:
        self._context = zmq.Context()
        self._socket = self._context.socket(zmq.XPUB)
        self._socket.setsockopt(zmq.SNDHWM, SEND_HWM)
        self._socket.setsockopt(zmq.XPUB_VERBOSE, 1)  # report every subscription, even repeats
        self._socket.setsockopt(zmq.MAXMSGSIZE, MAX_INBOUND_BYTES)  # a 10 MiB topic: 550 MB
        self._subscriptions = 0
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
        if not self._context.closed:
            self._context.term()

    def __enter__(self) -> "Publisher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def subscribe(
    endpoint: str, topics: list[str] | None = None, timeout: float | None = None
) -> Iterator[tuple[str, dict]]:
    """Yield (topic, event) from a publisher as they arrive.

    With a timeout, stops once that many seconds pass without a message.
    """
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    try:
        try:
            socket.connect(endpoint)
        except zmq.ZMQError as exc:
            raise WhaleError(f"cannot connect to {endpoint}: {zmq.strerror(exc.errno)}") from exc
        for topic in topics if topics is not None else [""]:
            socket.setsockopt(zmq.SUBSCRIBE, topic.encode("utf-8"))
        timeout_ms = -1 if timeout is None else max(0, int(timeout * 1000))
        while socket.poll(timeout_ms, zmq.POLLIN):
            frames = socket.recv_multipart()
            try:
                topic_bytes, payload = frames
                yield topic_bytes.decode("utf-8"), json.loads(payload)
            except ValueError as exc:
                raise WhaleError(f"{endpoint}: not a whale-listen event message") from exc
    finally:
        socket.close(linger=0)
        context.term()
