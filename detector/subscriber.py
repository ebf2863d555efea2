"""The subscriber client (`whale-listen subscribe`): what a running listener publishes.

An ordinary ZeroMQ SUB socket; each message is two frames, the topic and the JSON record.
`Follower` adds the daemon's catch-up endpoint, so that every event arrives once, in order.
"""

import json
import time
from collections.abc import Iterator

import zmq

from detector.curve import ClientKeys
from detector.errors import WhaleError


def subscribe(
    endpoint: str,
    topics: list[str] | None = None,
    timeout: float | None = None,
    curve: ClientKeys | None = None,
) -> Iterator[tuple[str, dict]]:
    """Yield (topic, event) from a publisher as they arrive.

    With a timeout, stops once that many seconds pass without a message. With `curve`, as an
    encrypted client of a daemon with access control (`detector.curve`).
    """
    context = zmq.Context()
    socket = context.socket(zmq.SUB)
    try:
        if curve is not None:
            curve.apply(socket)
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


ACK_EVERY_S = 1.0  # a following subscriber tells the catch-up endpoint where it is this often
REPLY_TIMEOUT_S = 3.0  # no catch-up answer this long: go on with the live events


class Follower:
    """Every event once, in seq order: live from the SUB socket, and what it missed (a late
    start, a gap, a tail dropped at the daemon's exit) from the daemon's catch-up endpoint
    (`detector.catchup`). Status messages pass through as they arrive, when asked for.

    It starts with the events after `since_seq` (None: the daemon's current run), asks again
    at every gap, and acknowledges the seq it holds every `ACK_EVERY_S`; an acknowledgement's
    reply names the last seq on disk, so a tail the publisher never delivered is fetched too.
    Missed events are fetched into memory at once, so a slow reader does not hold the daemon.
    """

    def __init__(
        self,
        endpoint: str,
        catchup: str,
        *,
        statuses: bool = False,
        since_seq: int | None = None,
        rcvhwm: int = 1000,
        discover: bool = False,
        curve: ClientKeys | None = None,
    ) -> None:
        self.statuses = statuses
        self.since_seq = since_seq
        self._context = zmq.Context()
        self._sub = self._context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.RCVHWM, rcvhwm)
        self._dealer = self._context.socket(zmq.DEALER)
        for socket in (self._sub, self._dealer):
            socket.setsockopt(zmq.LINGER, 0)  # unanswered requests must not hold the exit
            if curve is not None:
                curve.apply(socket)
        self.catchup = catchup
        self.discover = discover  # follow the catch-up endpoint that status messages name
        self.held: dict[int, dict] = {}  # events received or fetched, not yet yielded
        self.next_seq: int | None = None  # the next seq to yield (None: not known yet)
        self.fetched = 0  # events that came from catch-up (not from the SUB socket)
        self._asked: int | None = None  # id of the catch-up request in flight
        self._resent: set[int] = set()  # earlier copies of it: the first answer to any counts
        self._asked_at = 0.0
        self._acks: set[int] = set()  # ids of acknowledgements in flight
        self.lost = 0  # events skipped: catch-up could not give them
        self._ids = 0
        self._last_ack = 0.0
        self._statuses: list[dict] = []
        try:
            self._sub.connect(endpoint)
            self._dealer.connect(catchup)
        except zmq.ZMQError as exc:
            self.close()
            raise WhaleError(f"cannot connect to {endpoint}: {zmq.strerror(exc.errno)}") from exc
        self._sub.setsockopt(zmq.SUBSCRIBE, b"upcall")
        self._sub.setsockopt(zmq.SUBSCRIBE, b"status")
        self._ask(since_seq)

    # -- catch-up ---------------------------------------------------------------------------------
    def _ask(self, after_seq: int | None, ack: bool = False) -> None:
        self._ids += 1
        request: dict = {"after_seq": after_seq, "id": self._ids}
        if ack:
            request["max"] = 0
            self._acks.add(self._ids)
        else:
            self._asked, self._asked_at = self._ids, time.monotonic()
        try:  # never blocks: a connection refused (CURVE) leaves a DEALER nowhere to queue
            self._dealer.send_multipart([b"", json.dumps(request).encode()], flags=zmq.NOBLOCK)
        except zmq.Again:
            pass  # not sent: asked again after REPLY_TIMEOUT_S, like a request lost

    @property
    def holding(self) -> int | None:
        """The highest seq up to which every event is held or yielded."""
        if self.next_seq is None:
            return None
        seq = self.next_seq - 1
        while seq + 1 in self.held:
            seq += 1
        return seq

    def _on_reply(self, reply: dict) -> None:
        if "error" in reply:
            raise WhaleError(f"catch-up refused the request: {reply['error']}")
        answered = reply.get("id")
        if answered in self._acks:
            self._acks.discard(answered)
            self._check_gap(reply.get("last_seq"))
            return
        if answered != self._asked and answered not in self._resent:
            return  # a stale answer (to a request given up on)
        self._asked = None
        self._resent.clear()  # the other copies' answers, if they come, are stale
        events = reply.get("events", [])
        if self.next_seq is None:
            start = reply["run_after_seq"] if self.since_seq is None else self.since_seq
            self.next_seq = start + 1
            self.held = {s: e for s, e in self.held.items() if s >= self.next_seq}
        for event in events:
            if event["seq"] >= self.next_seq and event["seq"] not in self.held:
                self.fetched += 1
                self.held[event["seq"]] = event
        if reply.get("more") and events:
            self._ask(events[-1]["seq"])
        elif self._hole():
            self._skip_hole()  # the daemon has not got them on disk: not to be had (yet)
        self._check_gap(reply.get("last_seq"))

    def _hole(self) -> bool:
        return bool(self.held) and self.next_seq not in self.held

    def _skip_hole(self) -> None:
        first = min(self.held)
        self.lost += first - self.next_seq
        self.next_seq = first

    def _check_gap(self, last_known: int | None = None) -> None:
        """Ask for what is missing: below a held event, or below the daemon's last seq."""
        if self._asked is not None or self.next_seq is None:
            return
        holding = self.holding
        beyond = max(self.held, default=holding)
        if beyond > holding or (last_known is not None and last_known > holding):
            self._ask(holding)

    def _reconnect(self, endpoint: str) -> None:
        """The daemon bound its catch-up elsewhere (a `*` port): ask there, again."""
        try:
            self._dealer.connect(endpoint)
        except zmq.ZMQError:
            return
        try:
            self._dealer.disconnect(self.catchup)
        except zmq.ZMQError:
            pass
        self.catchup = endpoint
        if self._asked is not None:
            self._ask_again()

    def _ask_again(self) -> None:
        """Send the request in flight again. The first copy may still be answered: a daemon that
        binds after we asked gets every queued copy at once and may exit after answering one."""
        self._resent.add(self._asked)
        self._ask(self.holding if self.next_seq is not None else self.since_seq)

    def _give_up_waiting(self) -> None:
        """No answer for REPLY_TIMEOUT_S (no catch-up there): go on with the live events."""
        if self._asked is None or time.monotonic() - self._asked_at < REPLY_TIMEOUT_S:
            return
        if not self.held:  # nothing heard live yet: the request may be lost (a daemon that was
            # not up yet, or went away before answering): ask again rather than wait forever
            self._ask_again()
            return
        if self.next_seq is None:
            self.next_seq = min(self.held)  # the first one heard live
        elif self._hole():
            self._skip_hole()
        self._asked = None  # its answer, if it ever comes, is stale
        self._resent.clear()

    # -- the stream -------------------------------------------------------------------------------
    def _on_message(self, frames: list[bytes]) -> None:
        try:
            topic_bytes, payload = frames
            topic, record = topic_bytes.decode("utf-8"), json.loads(payload)
        except ValueError as exc:
            raise WhaleError("not a whale-listen event message") from exc
        if topic == "status":
            named = record.get("catchup")
            if self.discover and isinstance(named, str) and named != self.catchup:
                self._reconnect(named)
            if self.statuses:
                self._statuses.append(record)
            self._check_gap(record.get("last_seq"))
            return
        seq = record.get("seq")
        if not isinstance(seq, int) or (self.next_seq is not None and seq < self.next_seq):
            return  # already yielded (or before where this subscriber starts)
        self.held.setdefault(seq, record)
        self._check_gap()

    def _pump(self, timeout_ms: int) -> bool:
        """Handle what has arrived (waiting up to timeout_ms for something); False if nothing."""
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        poller.register(self._dealer, zmq.POLLIN)
        ready = dict(poller.poll(timeout_ms))
        if self._dealer in ready:
            while self._dealer.poll(0, zmq.POLLIN):
                self._on_reply(json.loads(self._dealer.recv_multipart()[-1]))
        if self._sub in ready:
            self._on_message(self._sub.recv_multipart())  # one: a slow reader reads slowly
        now = time.monotonic()
        if now - self._last_ack >= ACK_EVERY_S and self.next_seq is not None:
            self._last_ack = now
            self._ask(self.holding, ack=True)
        self._give_up_waiting()
        return bool(ready)

    def _ready(self) -> tuple[str, dict] | None:
        if self._statuses:
            return "status", self._statuses.pop(0)
        if self.next_seq is not None and self.next_seq in self.held:
            self.next_seq += 1
            return "upcall", self.held.pop(self.next_seq - 1)
        return None

    def __iter__(self) -> Iterator[tuple[str, dict]]:
        return self.follow()

    def follow(self, timeout: float | None = None) -> Iterator[tuple[str, dict]]:
        """Yield (topic, record); with a timeout, stop once that long passes with nothing new."""
        idle_since = time.monotonic()
        while True:
            self._pump(0)
            item = self._ready()
            if item is not None:
                idle_since = time.monotonic()
                yield item
                continue
            wait = 0.2 if timeout is None else timeout - (time.monotonic() - idle_since)
            if wait <= 0:
                return
            if self._pump(int(min(wait, 0.2) * 1000)):
                idle_since = time.monotonic() if self._ready_peek() else idle_since

    def _ready_peek(self) -> bool:
        return bool(self._statuses) or (self.next_seq is not None and self.next_seq in self.held)

    def close(self) -> None:
        self._sub.close(linger=0)
        self._dealer.close(linger=0)
        self._context.term()
