"""`gather`'s network side: one link per station (its PUB stream and its catch-up endpoint), all
polled from one thread, every event handed to the one writer (`detector.shorewriter`), which
keeps it once by id.

Order does not matter on shore (events are stored by id), so an event heard live is handed on at
once. What a link tracks is `settled`: every event in the station's log with seq <= settled has
been handed on (or is not in the log). It asks the catch-up endpoint (`detector.catchup`) for the
events after `settled`: at start (from the database, `shoredb.resume_seq`), at a gap in seq,
when a status says the daemon is further on, and every `ASK_EVERY_S` anyway (which also tells a
daemon at its exit that gather holds its last event). A reply to "after N" holds every logged
event after N up to its last one (the log is in seq order), so `settled` moves to that last one.
A request with no answer in `REPLY_TIMEOUT_S` (the daemon down, restarting) is sent again: a link
never gives an event up, it waits for the log that has it. A reply whose log is behind what the
link had settled (a log replaced; a run that died with events never logged) starts it again from
that run's or the log's start, the duplicates dropped by the writer.
"""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass

import zmq

from detector.catchup import derive_endpoint
from detector.curve import ClientKeys
from detector.errors import UsageError, WhaleError
from detector.journal import log
from detector.records import encode

ASK_EVERY_S = 1.0  # a link asks catch-up for what follows `settled` at least this often
REPLY_TIMEOUT_S = 3.0  # no answer this long: the request is sent again
SILENT_S = 10.0  # a catch-up endpoint that has not answered this long is named on stderr
POLL_MS = 200  # the loop notices a stop this often
DRAIN = 1000  # messages taken from one socket before the others get their turn
MAX_MESSAGE_BYTES = 1 << 20  # an event or a status is ~1 kB: a station sending more is cut off
MAX_REPLY_BYTES = 64 << 20  # a catch-up reply carries 100 events at most
LIVE, CATCHUP = "live", "catch-up"


@dataclass(frozen=True)
class Target:
    """One station as the command line names it: `ENDPOINT`, `ENDPOINT=CATCHUP` or
    `ENDPOINT=off`. `derived`: the catch-up endpoint came from ENDPOINT (auto), so gather may
    move to the one the daemon's status messages name (a daemon that bound a `*` port)."""

    endpoint: str
    catchup: str | None
    derived: bool


def parse_target(text: str) -> Target:
    """A command-line ENDPOINT[=CATCHUP|=off|=auto]; UsageError when it is not one."""
    from detector.settings import _check_endpoint

    head, sep, tail = text.rpartition("=")
    if sep and (tail in ("off", "auto") or tail.startswith(("tcp://", "ipc://"))):
        endpoint, setting = head, tail
    else:
        endpoint, setting = text, "auto"
    try:
        for each in (endpoint,) if setting in ("off", "auto") else (endpoint, setting):
            _check_endpoint(each)
            if each.endswith(":*"):
                raise ValueError(f"{ascii(each)}: gather connects, so it needs the port, not *")
        if setting == "off":
            return Target(endpoint, None, False)
        if setting == "auto":
            return Target(endpoint, derive_endpoint(endpoint), True)
    except (ValueError, WhaleError) as e:
        raise UsageError(str(e)) from None
    return Target(endpoint, setting, False)


def _integer(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e300


def valid_event(record: object) -> bool:
    """What the database needs of an event (`shoredb.add_event`): anything else from a station
    is skipped and counted, never a crash of the one writer."""
    if not isinstance(record, dict) or not _integer(record.get("seq")):
        return False
    strings = ("id", "station", "run", "start", "end")
    return (
        all(isinstance(record.get(key), str) for key in strings)
        and _number(record.get("score"))
        and isinstance(record.get("clip"), str | None)
    )


def valid_status(record: object) -> bool:
    """What `shoredb.update_station` keeps of a status, each of the right type (or absent)."""
    if not isinstance(record, dict) or not isinstance(record.get("station"), str):
        return False
    checks = {"run": lambda v: isinstance(v, str), "source_state": lambda v: isinstance(v, str),
              "last_seq": _integer, "dropped_samples": _integer, "lag_s": _number,
              "silent_s": _number}  # fmt: skip
    return all(record.get(key) is None or ok(record[key]) for key, ok in checks.items())


@dataclass(frozen=True)
class Item:
    """What a link hands the writer: an event (live or fetched), a status, or a station name
    first heard on an endpoint."""

    kind: str  # "event", "status" or "station"
    endpoint: str
    record: dict | str
    via: str = LIVE


class Link:
    """One station: its SUB socket, its DEALER socket to the catch-up endpoint, and `settled`."""

    def __init__(
        self,
        context: zmq.Context,
        target: Target,
        sink: Callable[[Item], None],
        station: str | None = None,
        settled: int = 0,
        curve: ClientKeys | None = None,
    ) -> None:
        self.target = target
        self.sink = sink
        self.station = station  # learned from its events and status messages
        self.settled = settled
        self.heard: set[int] = set()  # seqs above settled + 1 handed on (a gap below them)
        self.run: str | None = None  # the daemon run the last catch-up reply named
        self.catchup = target.catchup
        self.malformed = 0
        self._ids = 0
        self._asked: tuple[int, int, float] | None = None  # (id, after_seq, when) in flight
        self._last_ask = float("-inf")
        self._new_run: str | None = None  # a run heard live before catch-up has named it
        self._since = time.monotonic()
        self._answered = False  # catch-up has answered once: said when it never does
        self._warned: set[str] = set()
        self.sub = context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 100_000)  # a station's burst waits here, not dropped
        self.sub.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        if curve is not None:
            curve.apply(self.sub)
        self.dealer: zmq.Socket | None = None
        try:
            self.sub.connect(target.endpoint)
            self.sub.setsockopt(zmq.SUBSCRIBE, b"upcall")
            self.sub.setsockopt(zmq.SUBSCRIBE, b"status")
            if self.catchup is not None:
                self.dealer = context.socket(zmq.DEALER)
                self.dealer.setsockopt(zmq.LINGER, 0)
                self.dealer.setsockopt(zmq.MAXMSGSIZE, MAX_REPLY_BYTES)
                self.dealer.setsockopt(zmq.IMMEDIATE, 1)  # no requests queued for a daemon down
                if curve is not None:
                    curve.apply(self.dealer)
                self.dealer.connect(self.catchup)
        except zmq.ZMQError as exc:
            self.close()
            raise WhaleError(
                f"cannot connect to {target.endpoint}: {zmq.strerror(exc.errno)}"
            ) from None

    @property
    def name(self) -> str:
        return self.station or self.target.endpoint

    # -- catch-up ---------------------------------------------------------------------------------
    def ask(self, now: float | None = None) -> None:
        """Ask for the logged events after `settled`, unless a request is in flight."""
        if self.dealer is None or self._asked is not None:
            return
        now = time.monotonic() if now is None else now
        self._last_ask = now
        self._ids += 1
        request = {"after_seq": self.settled, "id": self._ids}
        try:
            self.dealer.send_multipart([b"", encode(request)], flags=zmq.NOBLOCK)
        except zmq.Again:
            return  # not connected (the daemon is down): asked again at the next tick
        self._asked = (self._ids, self.settled, now)

    def tick(self, now: float) -> None:
        """Send a request again when unanswered for too long; ask every ASK_EVERY_S."""
        if self._asked is not None and now - self._asked[2] >= REPLY_TIMEOUT_S:
            self._asked = None  # its answer, if it ever comes, is still stored, not counted on
        if now - self._last_ask >= ASK_EVERY_S:
            self.ask(now)
        if self.dealer is not None and not self._answered and now - self._since >= SILENT_S:
            self._warn_once("silent", f"no answer from catch-up {self.catchup} yet: what the "
                            "stream misses is fetched once it answers")  # fmt: skip

    def _warn_once(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            self._warned.add(kind)
            log.warning(f"gather: {self.name}: {message}")

    def on_reply(self, frames: list[bytes]) -> None:
        try:
            reply = json.loads(frames[-1])
        except ValueError:
            reply = None
        if not isinstance(reply, dict) or "error" in reply:
            self.malformed += 1
            self._warn_once("reply", f"catch-up {self.catchup} answered {frames[-1][:120]!r}")
            return
        first, self._answered = not self._answered, True
        events = reply.get("events")
        events = events if isinstance(events, list) else []
        for event in events:
            self._hand(event, CATCHUP)
        if self._asked is None or reply.get("id") != self._asked[0]:
            return  # a late answer to a request sent again since: its events are handed on
        after = self._asked[1]
        self._asked = None
        if self._restarted_behind(reply, after, first):
            self.ask()
            return
        seqs = [e["seq"] for e in events if valid_event(e)]
        if seqs and after <= self.settled < max(seqs):
            self.settled = max(seqs)  # the log had every one up to there
            self.heard = {seq for seq in self.heard if seq > self.settled}
            self._advance()
        if reply.get("more") and seqs:
            self.ask()

    def _restarted_behind(self, reply: dict, after: int, first: bool) -> bool:
        """The daemon's log is behind what this link had settled when it asked (a log replaced,
        or a run that died with events never logged, its seqs given again by the next run):
        start again from where its current run starts (or the log's start), the duplicates
        dropped. Events heard live since the request are newer than the reply: not compared."""
        run, run_after, last_seq = (reply.get(k) for k in ("run", "run_after_seq", "last_seq"))
        previous = self.run
        if run is not None:
            self.run = run
        new_run = previous is not None and run not in (None, previous)
        if new_run:
            log.info(f"gather: {self.name}: a new run {run} after seq {run_after}")
        if first and isinstance(last_seq, int) and last_seq < after:
            restart_at = 0  # the log ends before what the database holds
        elif new_run and isinstance(run_after, int) and run_after < after:
            restart_at = run_after
        else:
            return False
        log.warning(
            f"gather: {self.name}: its log is behind seq {after}: fetching again "
            f"from seq {restart_at}"
        )
        self.settled = restart_at
        self.heard.clear()
        return True

    # -- the stream -------------------------------------------------------------------------------
    def on_message(self, frames: list[bytes]) -> None:
        try:
            topic_bytes, payload = frames
            topic, record = topic_bytes.decode("utf-8"), json.loads(payload)
        except ValueError:
            self.malformed += 1
            return
        if topic == "status":
            self._on_status(record)
        elif topic == "upcall" and self._hand(record, LIVE):
            run = record["run"]
            if self.run is not None and run not in (self.run, self._new_run):
                self._new_run = run  # the daemon restarted: a request in flight went to the
                self._asked = None  # one that is gone, most likely lost
            if run != self.run:
                self.ask()  # its reply says where the new run begins
            if self.heard:
                self.ask()  # a gap below what was just heard

    def _on_status(self, status: object) -> None:
        if not valid_status(status):
            self.malformed += 1
            return
        assert isinstance(status, dict)
        self._learn(status["station"])
        self.sink(Item("status", self.target.endpoint, status))
        named = status.get("catchup")
        if self.target.derived and isinstance(named, str):
            self._move_catchup(named)
        last_seq = status.get("last_seq")
        if last_seq is not None and last_seq > self.settled:
            self.ask()  # events the stream has not brought (yet): the tail of a gap

    def _hand(self, event: object, via: str) -> bool:
        if not valid_event(event):
            self.malformed += 1
            return False
        assert isinstance(event, dict)
        self._learn(event["station"])
        self.sink(Item("event", self.target.endpoint, event, via))
        if self.dealer is None:  # no catch-up: a gap stays a gap, nothing to keep track of
            self.settled = max(self.settled, event["seq"])
        elif event["seq"] > self.settled:
            self.heard.add(event["seq"])
            self._advance()
        return True

    def _advance(self) -> None:
        while self.settled + 1 in self.heard:
            self.settled += 1
            self.heard.discard(self.settled)

    def _learn(self, station: str) -> None:
        if station != self.station:
            self.station = station
            self.sink(Item("station", self.target.endpoint, station))

    def _move_catchup(self, named: str) -> None:
        """The catch-up endpoint a status names, as reachable from here: its port on the host
        gather reaches the daemon at (the daemon names what it bound, maybe 0.0.0.0)."""
        if named.startswith("tcp://") and self.target.endpoint.startswith("tcp://"):
            host = self.target.endpoint.rpartition(":")[0]
            port = named.rpartition(":")[2]
            named = f"{host}:{port}"
        if named == self.catchup or self.dealer is None:
            return
        try:
            self.dealer.connect(named)
        except zmq.ZMQError:
            return
        if self.catchup is not None:
            try:
                self.dealer.disconnect(self.catchup)
            except zmq.ZMQError:
                pass
        self.catchup = named
        self._asked = None
        self.ask()

    def close(self) -> None:
        self.sub.close(linger=0)
        if self.dealer is not None:
            self.dealer.close(linger=0)


class Gather:
    """Every link polled from one thread until `stopped()` says so."""

    def __init__(
        self,
        targets: list[Target],
        sink: Callable[[Item], None],
        positions: dict[str, tuple[str | None, int]] | None = None,
        curve: ClientKeys | None = None,
    ) -> None:
        """`curve`: gather's certificate and the daemons' public key, for stations with access
        control (`detector.curve`; one daemon certificate for the fleet)."""
        self.context = zmq.Context()
        self.links: list[Link] = []
        try:
            for target in targets:
                station, settled = (positions or {}).get(target.endpoint, (None, 0))
                self.links.append(Link(self.context, target, sink, station, settled, curve))
        except BaseException:
            self.close()
            raise

    def run(self, stopped: Callable[[], bool]) -> None:
        poller = zmq.Poller()
        handlers: dict[zmq.Socket, Callable[[list[bytes]], None]] = {}
        for link in self.links:
            poller.register(link.sub, zmq.POLLIN)
            handlers[link.sub] = link.on_message
            if link.dealer is not None:
                poller.register(link.dealer, zmq.POLLIN)
                handlers[link.dealer] = link.on_reply
            link.ask()
        while not stopped():
            for socket, _ in poller.poll(POLL_MS):
                handle = handlers[socket]
                for _ in range(DRAIN):
                    try:
                        frames = socket.recv_multipart(flags=zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    handle(frames)
            now = time.monotonic()
            for link in self.links:
                link.tick(now)

    def close(self) -> None:
        for link in self.links:
            link.close()
        self.context.term()
