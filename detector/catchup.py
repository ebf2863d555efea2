"""Catch-up: the events a subscriber missed (slow joiner, gap, queue dropped at exit), from the log.

The daemon serves a ZeroMQ ROUTER socket (`--catchup`, by default beside the first `--publish`
endpoint) from its own thread, reading the event log (`detector.eventlog`) and never touching the
scoring loop or the log's writer. A request is one JSON frame:

    {"after_seq": N}            the logged events with seq > N (N = 0: the whole log)
    {"after_seq": null}         the events of the daemon's current run (after its run line)
    {"after_seq": N, "max": 0}  no events: only says "I have everything up to N" (an ack)

and the reply is `{"run", "run_after_seq", "last_seq", "events": [...], "more"}`: at most
`BATCH` events, in seq order; `more` says ask again (after the last one returned). `run` and
`run_after_seq` are the log's last run line, `last_seq` the last event on disk. The `after_seq`
of each client's latest request is its position: at exit the daemon waits (up to `--linger`) for
clients that have asked to reach the last seq, and says how many events the others may still have
to fetch (`ZmqOutput.close`).

Seq is unique across the log from the first run line on (`records.Run`); a log written before
that restarts seq at 1 at each start, and only its part after the last restart is served.
"""

import json
import threading
import time
from bisect import bisect_right
from pathlib import Path
from typing import TYPE_CHECKING

import zmq

from detector.curve import inbound_limit
from detector.errors import WhaleError
from detector.eventlog import last_seq
from detector.records import EVENT_TYPE, RUN_TYPE, encode

if TYPE_CHECKING:
    from detector.curve import ServerKeys

BATCH = 100  # events a reply carries at most
READ_CHUNK = 1 << 22  # the log is indexed this many bytes at a time
MAX_REQUEST_BYTES = 256
POLL_MS = 100
CLIENT_TTL_S = 30.0  # a client silent this long no longer counts as waiting at exit


def derive_endpoint(publish: str) -> str:
    """The default catch-up endpoint beside a publish endpoint: TCP port + 1 (`*` stays `*`),
    ipc://PATH -> ipc://PATH.catchup. Daemon and `subscribe` derive it the same way."""
    if publish.startswith("ipc://"):
        return publish + ".catchup"
    host, _, port = publish.rpartition(":")
    if port == "*":
        return publish
    if not port.isdigit() or int(port) >= 65535:
        raise WhaleError(f"no catch-up port after {publish}: set --catchup ENDPOINT (or off)")
    return f"{host}:{int(port) + 1}"


def resolve(setting: str, publish: list[str]) -> str | None:
    """The `--catchup` setting ("auto", "off" or an endpoint) as an endpoint, or None."""
    if setting == "off":
        return None
    if setting == "auto":
        return derive_endpoint(publish[0]) if publish else None
    return setting


class LogIndex:
    """Where each event's line is in the log, read incrementally (only whole lines)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.offset = 0  # bytes indexed so far
        self.seqs: list[int] = []  # ascending
        self.spans: list[tuple[int, int]] = []  # (offset, length) of each event's line
        self.run: str | None = None
        self.run_after_seq = 0
        self.run_offset: int | None = None  # where the last run line starts

    def refresh(self) -> None:
        """Index what was appended since the last call, READ_CHUNK bytes at a time."""
        try:
            with open(self.path, "rb") as file:
                while True:
                    file.seek(self.offset)
                    data = file.read(READ_CHUNK)
                    end = data.rfind(b"\n") + 1  # a line being written waits for its newline
                    if end == 0:
                        if len(data) == READ_CHUNK:  # one line longer than a chunk: not ours
                            self.offset += len(data)
                            continue
                        return
                    position = self.offset
                    for line in data[:end].split(b"\n")[:-1]:
                        self._add(line, position)
                        position += len(line) + 1
                    self.offset += end
        except OSError:
            return

    def _add(self, line: bytes, position: int) -> None:
        try:
            record = json.loads(line)
        except ValueError:
            return
        if not isinstance(record, dict):
            return
        kind = record.get("type", EVENT_TYPE)
        if kind == RUN_TYPE:
            self.run, self.run_after_seq = record.get("run"), int(record.get("after_seq", 0))
            self.run_offset = position
        elif kind == EVENT_TYPE and isinstance(record.get("seq"), int):
            seq = record["seq"]
            if self.seqs and seq <= self.seqs[-1]:  # an old log restarting seq: serve only after
                self.seqs.clear()
                self.spans.clear()
            self.seqs.append(seq)
            self.spans.append((position, len(line)))

    def after(self, after_seq: int, limit: int) -> tuple[list[dict], bool]:
        """Up to `limit` events with seq > after_seq, and whether more follow."""
        first = bisect_right(self.seqs, after_seq)
        chosen = self.spans[first : first + limit]
        events = []
        if chosen:
            with open(self.path, "rb") as file:
                for offset, length in chosen:
                    file.seek(offset)
                    events.append(json.loads(file.read(length)))
        return events, first + len(chosen) < len(self.seqs)

    @property
    def last_seq(self) -> int:
        return self.seqs[-1] if self.seqs else self.run_after_seq


class CatchupServer:
    """The ROUTER socket, bound and served in its own thread (zmq sockets stay in one thread)."""

    def __init__(self, endpoint: str, log_path: Path, curve: "ServerKeys | None" = None) -> None:
        self.curve = curve  # CURVE: encrypted, and only for the allowed clients
        self.index = LogIndex(log_path)
        try:  # the daemon's run line comes after this: an earlier one is an earlier run's
            self.base = Path(log_path).stat().st_size
        except OSError:
            self.base = 0
        self.start_seq = last_seq(log_path)  # where this run's events will start
        self.requests = 0
        self.positions: dict[bytes, tuple[int, float]] = {}  # client -> (after_seq, when)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._bound = threading.Event()
        self._error: str | None = None
        self.endpoint = endpoint
        self._thread = threading.Thread(
            target=self._serve, args=(endpoint,), name="catchup", daemon=True
        )
        self._thread.start()
        self._bound.wait()
        if self._error is not None:
            self._thread.join()
            raise WhaleError(f"cannot bind catch-up {endpoint}: {self._error}")

    def _serve(self, endpoint: str) -> None:
        context = zmq.Context()
        authenticator = self.curve.authenticate(context) if self.curve is not None else None
        socket = context.socket(zmq.ROUTER)
        if self.curve is not None:
            self.curve.apply(socket)
        socket.setsockopt(zmq.MAXMSGSIZE, inbound_limit(MAX_REQUEST_BYTES, self.curve))
        socket.setsockopt(zmq.SNDHWM, 1000)
        try:
            try:
                socket.bind(endpoint)
                self.endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
            except zmq.ZMQError as exc:
                self._error = zmq.strerror(exc.errno)
                return
            finally:
                self._bound.set()
            while not self._stop.is_set():
                if not socket.poll(POLL_MS, zmq.POLLIN):
                    continue
                frames = socket.recv_multipart()
                reply = self._answer(frames[0], frames[-1])
                try:
                    socket.send_multipart([frames[0], b"", encode(reply)], flags=zmq.NOBLOCK)
                except zmq.ZMQError:
                    pass  # the client is gone or not reading: it asks again
        finally:
            socket.close(linger=0)
            if authenticator is not None:
                authenticator.stop()
            context.term()

    def _answer(self, client: bytes, payload: bytes) -> dict:
        try:
            request = json.loads(payload)
            after = request.get("after_seq")
            limit = request.get("max", BATCH)
            tag = request.get("id")
            if after is not None and (not isinstance(after, int) or after < 0):
                raise ValueError
            if not isinstance(limit, int) or limit < 0:
                raise ValueError
        except (ValueError, AttributeError):
            return {"error": 'expected {"after_seq": N or null, "max": M}'}
        index = self.index
        index.refresh()
        current = index.run_offset is not None and index.run_offset >= self.base
        run, run_after = (index.run, index.run_after_seq) if current else (None, self.start_seq)
        start = run_after if after is None else after
        events, more = index.after(start, min(limit, BATCH))
        with self._lock:
            self.requests += 1
            self.positions[client] = (start, time.monotonic())
        reply = {} if tag is None else {"id": tag}
        return {
            **reply,
            "run": run,  # None until this run's line is in the log
            "run_after_seq": run_after,
            "last_seq": index.last_seq,
            "events": events,
            "more": more,
        }

    def behind(self, last_seq: int) -> list[int]:
        """How far behind `last_seq` each client heard from lately is (0: caught up)."""
        now = time.monotonic()
        with self._lock:
            for client in [
                c for c, (_, when) in self.positions.items() if now - when >= CLIENT_TTL_S
            ]:
                del self.positions[client]  # gone quiet: forgotten (a client per connection)
            return [max(0, last_seq - seq) for seq, _ in self.positions.values()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def fetch(socket: zmq.Socket, after_seq: int | None, timeout_s: float, limit: int = BATCH) -> dict:
    """One request on a DEALER socket connected to a catch-up endpoint; WhaleError on no reply."""
    try:  # a DEALER whose only connection failed its handshake (refused) would block here
        socket.send_multipart([b"", encode({"after_seq": after_seq, "max": limit})], zmq.NOBLOCK)
    except zmq.Again:
        raise WhaleError("no answer from the catch-up endpoint (not connected)") from None
    if not socket.poll(int(timeout_s * 1000), zmq.POLLIN):
        raise WhaleError("no answer from the catch-up endpoint")
    reply = json.loads(socket.recv_multipart()[-1])
    if "error" in reply:
        raise WhaleError(f"catch-up refused the request: {reply['error']}")
    return reply
