"""`whale-listen gather` (issue 17): many stations into one SQLite file, every event once, gaps
and outages filled from each daemon's catch-up endpoint. Real daemons, real sockets on
127.0.0.1, a real SQLite file."""

import csv
import json
import re
import signal
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from detector import shoredb
from detector.errors import EX_USAGE
from detector.eventlog import read_events
from detector.gather import Gather, parse_target
from detector.shorewriter import ShoreWriter
from train import synth

from .ports import free_port_pair
from .test_catchup import Daemon
from .test_cli import DAEMON

SR = 2000


def write_calls(path: Path, seconds: float, every_s: float, seed: int) -> None:
    """Noise with an up-call every `every_s` seconds: one event each (the tiny model merges
    calls closer than about 3 s)."""
    rng = np.random.default_rng(seed)
    audio = synth.noise(rng, int(seconds * SR))
    at = SR
    while at + 2 * SR < len(audio):
        call = synth.upcall(rng)
        audio[at : at + len(call)] += 4 * call
        at += int(every_s * SR)
    sf.write(path, 0.5 * audio / np.abs(audio).max(), SR, subtype="PCM_16")


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.1)


def _logged(path: Path) -> list[dict]:
    return read_events(path) if path.exists() else []


def _db_events(db: Path) -> list[dict]:
    """What the database holds now, read as the review page would (read-only, beside gather);
    nothing before gather has created it."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
        try:
            rows = conn.execute("SELECT record FROM events").fetchall()
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return []  # not there yet, or its tables not yet made
    return [json.loads(row[0]) for row in rows]


SUMMARY = re.compile(r"(\S+) (\d+) stored \((\d+) via catch-up, (\d+) duplicate\(s\) dropped\)")


def _stop(proc: subprocess.Popen) -> tuple[str, dict[str, tuple[int, int, int]]]:
    """SIGTERM a gather; its stderr and the per-station counts of its summary line."""
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    lines = [line for line in err.splitlines() if "gather: stopped by SIGTERM" in line]
    assert len(lines) == 1, err  # one summary line
    counts = {m[0]: tuple(int(n) for n in m[1:]) for m in SUMMARY.findall(lines[0])}
    return err, counts


def test_three_daemons_one_restarted_and_gather_restarted_every_event_once(tmp_path, tiny_model):
    stations = ["buoy-a", "buoy-b", "buoy-c"]
    ports = [free_port_pair() for _ in stations]
    logs = {s: tmp_path / f"{s}.jsonl" for s in stations}

    def start_daemon(k: int) -> subprocess.Popen:
        station = stations[k]
        recording = tmp_path / f"{station}.wav"
        if not recording.exists():
            write_calls(recording, seconds=16, every_s=3.5, seed=40 + k)
        command = [*DAEMON, "--replay", recording.name, "--model", tiny_model, "--station",
                   station, "--events-log", logs[station], "--publish",
                   f"tcp://127.0.0.1:{ports[k]}", "--realtime", "--heartbeat", "1",
                   "--linger", "2"]  # fmt: skip
        return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip

    db = tmp_path / "shore.db"
    endpoints = [f"tcp://127.0.0.1:{port}" for port in ports]
    # the third names its catch-up endpoint (ENDPOINT=CATCHUP); the others derive it (port + 1)
    endpoints[2] += f"=tcp://127.0.0.1:{ports[2] + 1}"
    gather_command = [*DAEMON, "gather", *endpoints, "--db", db]

    def start_gather() -> subprocess.Popen:
        return subprocess.Popen(gather_command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)  # fmt: skip

    daemons = [start_daemon(k) for k in range(3)]
    try:
        time.sleep(2)  # gather starts after the daemons (their first events may be missed live)
        first = start_gather()
        # daemon b dies (SIGKILL: no linger, no goodbye) after its first event and comes back
        # on the same endpoint and log: a new run, seq going on from the log's last
        _wait(lambda: len(_logged(logs["buoy-b"])) >= 1, 40, "buoy-b's first event")
        daemons[1].kill()
        daemons[1].communicate(timeout=30)
        time.sleep(1)
        daemons[1] = start_daemon(1)
        # then gather itself dies (SIGKILL: whatever it had not committed is lost) and starts
        # again while the daemons go on logging events
        _wait(lambda: len(_logged(logs["buoy-a"])) >= 2, 40, "buoy-a's second event")
        _wait(lambda: len(_db_events(db)) >= 2, 40, "gather storing")
        first.kill()
        first.communicate(timeout=30)
        before = len(_db_events(db))
        while_down = sum(len(_logged(path)) for path in logs.values())
        _wait(
            lambda: sum(len(_logged(path)) for path in logs.values()) >= while_down + 2,
            40,
            "two events logged while gather is down",
        )
        second = start_gather()
        for daemon in daemons:
            _, err = daemon.communicate(timeout=90)
            assert daemon.returncode == 0, err
        logged = {s: _logged(path) for s, path in logs.items()}
        wanted = {e["id"] for events in logged.values() for e in events}
        _wait(lambda: {e["id"] for e in _db_events(db)} >= wanted, 30, "every event stored")
        err, second_counts = _stop(second)
    finally:
        for proc in daemons:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    stored = _db_events(db)
    assert len(stored) == len(wanted) == sum(map(len, logged.values()))  # every event, once
    for station, events in logged.items():
        assert events, f"{station}'s daemon found no event"
        got = sorted((e for e in stored if e["station"] == station), key=lambda e: e["seq"])
        assert [(e["seq"], e["id"]) for e in got] == [(e["seq"], e["id"]) for e in events]
        assert got == events  # each record whole, as the daemon logged it
    runs_b = {e["run"] for e in logged["buoy-b"]}
    assert len(runs_b) == 2  # the restart: two runs, one seq sequence
    assert [e["seq"] for e in logged["buoy-b"]] == list(range(1, len(logged["buoy-b"]) + 1))

    # the second gather resumed from the database: it fetched what was logged while it was
    # down (at least two events, through catch-up) and did not fetch everything again
    assert sum(c[1] for c in second_counts.values()) >= 2, err
    assert sum(c[0] + c[2] for c in second_counts.values()) < len(stored), err
    assert sum(c[0] for c in second_counts.values()) == len(stored) - before

    conn = shoredb.connect(db)
    health = {row["station"]: row for row in conn.execute("SELECT * FROM stations")}
    conn.close()
    assert sorted(health) == stations
    for k, station in enumerate(stations):
        row = health[station]
        assert row["endpoint"] == f"tcp://127.0.0.1:{ports[k]}"
        assert row["last_seen"] and row["source_state"] in ("up", "stopped")
        assert row["lag_s"] is not None
        if row["source_state"] == "stopped":  # the run's last status: after its last event
            assert row["last_seq"] == logged[station][-1]["seq"]
        assert row["dropped_samples"] == 0 and row["silent_s"] is not None
        assert row["last_seq"] <= len(logged[station])

    # --export: CSV of everything, a Raven table of one station
    from .test_cli import invoke

    table = tmp_path / "events.csv"
    result = invoke("gather", "--db", db, "--export", table)
    assert result.exit_code == 0, result.stderr
    with open(table, newline="") as file:
        rows = list(csv.DictReader(file))
    assert sorted(r["id"] for r in rows) == sorted(wanted)
    assert {r["station"] for r in rows} == set(stations)
    raven = tmp_path / "a.txt"
    result = invoke("gather", "--db", db, "--export", raven, "--station", "buoy-a")
    assert result.exit_code == 0, result.stderr
    lines = raven.read_text().splitlines()
    assert lines[0].startswith("Selection\tView") and len(lines) == 1 + len(logged["buoy-a"])


class _Running:
    """Gather in a thread of this process (real sockets, real file), stopped on demand."""

    def __init__(self, db: Path, endpoint: str) -> None:
        publish = endpoint.partition("=")[0]
        conn = shoredb.connect(db)
        station = shoredb.station_at(conn, publish)
        positions = {publish: (station, shoredb.resume_seq(conn, station) if station else 0)}
        conn.close()
        self.writer = ShoreWriter(db)
        self.gather = Gather([parse_target(endpoint)], self.writer.put, positions)
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self.gather.run, args=(self._stop.is_set,), daemon=True
        )
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join(30)
        self.gather.close()
        self.writer.close()
        return self.writer.counts


def _emit(daemon: Daemon, n: int, unpublished: set[int] = frozenset()) -> None:
    """Events as the daemon writes them (`Daemon.emit` with what the database needs)."""
    for _ in range(n):
        daemon.seq += 1
        event = {"type": "upcall", "seq": daemon.seq, "run": daemon.run, "id": f"e{daemon.seq}",
                 "station": "buoy-x", "start": "2009-03-28T00:00:01.000Z",
                 "end": "2009-03-28T00:00:03.000Z", "score": 0.9}  # fmt: skip
        assert daemon.log.append(event)
        if daemon.seq not in unpublished:
            daemon.output.on_event(event)


def _stored_seqs(db: Path) -> list[int]:
    return sorted(e["seq"] for e in _db_events(db))


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_a_late_start_a_gap_and_a_restart_are_filled_from_catch_up(tmp_path, transport):
    endpoint = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmp_path}/w.sock"
    daemon = Daemon(tmp_path / "ev.jsonl", linger_s=0.5, endpoint=endpoint)  # linger: the
    db = tmp_path / "shore.db"  # first gather is gone, the daemon need not wait for it
    # tcp: catch-up named (ENDPOINT=CATCHUP, the daemon bound a * port); ipc: derived
    target = f"{daemon.endpoint}={daemon.catchup}" if transport == "tcp" else daemon.endpoint
    try:
        _emit(daemon, 40)  # before gather starts: only catch-up has them
        running = _Running(db, target)
        _wait(lambda: len(_stored_seqs(db)) == 40, 20, "the first 40 events")
        time.sleep(0.3)  # subscribed: what follows goes out live, but for the gaps
        _emit(daemon, 30, unpublished={45, 46, 70})  # 70: a lost last one, no later event
        _wait(lambda: _stored_seqs(db) == list(range(1, 71)), 20, "the gaps filled")
        counts = running.stop()["buoy-x"]
        assert counts.stored == 70 and counts.fetched >= 43
        _emit(daemon, 20)  # while gather is down
        conn = shoredb.connect(db)
        assert shoredb.resume_seq(conn, "buoy-x") == 70
        conn.close()
        running = _Running(db, target)
        _wait(lambda: len(_stored_seqs(db)) == 90, 20, "the events logged while down")
        counts = running.stop()["buoy-x"]
        # resumed after seq 70: it fetched the 20 it missed, nothing it already had
        assert (counts.stored, counts.fetched, counts.duplicates) == (20, 20, 0)
    finally:
        daemon.close()
    assert _stored_seqs(db) == list(range(1, 91))


class _StarCatchup(Daemon):
    """The harness daemon with its catch-up on a port of its own (`--catchup tcp://...:*`)."""

    def __init__(self, path: Path) -> None:
        from detector.catchup import CatchupServer
        from detector.eventlog import EventLog
        from detector.publish import Publisher
        from detector.zmq_output import ZmqOutput

        self.log = EventLog(path)
        self.run, self.seq = "run-x", 0
        self.log.start_run({"type": "run", "run": self.run, "after_seq": 0})
        publisher = Publisher(["tcp://127.0.0.1:*"])
        catchup = CatchupServer("tcp://127.0.0.1:*", path)
        self.output = ZmqOutput(publisher, 0.5, catchup=catchup)
        self.endpoint, self.catchup = publisher.endpoints[0], catchup.endpoint


def test_gather_moves_to_the_catch_up_endpoint_a_status_names(tmp_path):
    """A daemon with a `*` catch-up port: the derived one (port + 1) answers nothing, so gather
    follows the one its status messages name, on the host it was given."""
    daemon = _StarCatchup(tmp_path / "ev.jsonl")
    db = tmp_path / "shore.db"
    try:
        _emit(daemon, 10)  # before gather: to be fetched, once gather finds the catch-up
        running = _Running(db, daemon.endpoint)
        link = running.gather.links[0]
        assert link.catchup != daemon.catchup  # port + 1: nobody there
        bound = daemon.catchup.replace("127.0.0.1", "0.0.0.0")  # as a daemon on * names it

        def heard() -> bool:
            status = {"station": "buoy-x", "last_seq": daemon.seq, "catchup": bound}
            daemon.output.on_status(status)  # every heartbeat says where catch-up is
            return _stored_seqs(db) == list(range(1, 11))

        _wait(heard, 20, "the events fetched from the named catch-up")
        assert link.catchup == daemon.catchup  # its port, on the host gather was given
        assert running.stop()["buoy-x"].fetched == 10
    finally:
        daemon.close()


def test_malformed_messages_are_skipped_and_counted_never_stored_or_fatal(tmp_path):
    from detector.records import encode
    from detector.xpub import Xpub

    class Station(Xpub):
        """The publishing socket itself, in this process: raw frames can be sent."""

        def send(self, topic: str, obj: object) -> None:
            super().send(topic.encode(), encode(obj))

    db = tmp_path / "shore.db"
    station = Station(["tcp://127.0.0.1:*"])
    try:
        running = _Running(db, station.endpoints[0] + "=off")  # live only: nothing to fetch
        deadline = time.monotonic() + 20
        while station.subscriptions < 2 and time.monotonic() < deadline:  # upcall and status
            time.sleep(0.02)
        assert station.subscriptions == 2
        good = _event(1, station="buoy-h")
        station.socket.send_multipart([b"upcall", b"not json"])
        station.socket.send_multipart([b"upcall", b"x", b"three frames"])
        for bad in ({**good, "seq": 2**70}, {**good, "seq": True}, {**good, "score": "0.9"},
                    {**good, "id": None}, {**good, "clip": 5}, [1, 2]):  # fmt: skip
            station.send("upcall", bad)
        for bad in ({"station": "buoy-h", "lag_s": {"a": 1}}, {"station": 7},
                    {"station": "buoy-h", "last_seq": -1}):  # fmt: skip
            station.send("status", bad)
        station.send("status", {"station": "buoy-h", "lag_s": 0.5, "source_state": "up"})
        station.send("upcall", good)
        _wait(lambda: _stored_seqs(db) == [1], 20, "the one good event")
        time.sleep(0.3)
        malformed = running.gather.links[0].malformed
        counts = running.stop()["buoy-h"]
    finally:
        station.close(linger_ms=0)
    assert malformed == 11 and counts.stored == 1 and counts.statuses == 1
    conn = shoredb.connect(db)
    row = conn.execute("SELECT lag_s, source_state FROM stations").fetchone()
    conn.close()
    assert (row["lag_s"], row["source_state"]) == (0.5, "up")


def _answer(link) -> None:
    """Hand the link the reply to the request it has in flight (from a real catch-up)."""
    assert link.dealer.poll(10_000), "no answer from the catch-up server"
    link.on_reply(link.dealer.recv_multipart())


def test_a_reply_older_than_the_live_events_keeps_them_and_a_log_behind_is_fetched_again(
    tmp_path, caplog
):
    import zmq

    from detector.catchup import CatchupServer
    from detector.eventlog import EventLog
    from detector.gather import Link
    from detector.records import encode

    path = tmp_path / "ev.jsonl"
    server = CatchupServer("tcp://127.0.0.1:*", path)
    log = EventLog(path)
    log.start_run({"type": "run", "run": "r", "after_seq": 0})
    events = [{**_event(seq), "run": "r"} for seq in range(1, 9)]
    for event in events[:5]:
        log.append(event)
    context = zmq.Context()
    target = parse_target(f"tcp://127.0.0.1:1={server.endpoint}")
    items, links = [], []
    try:
        link = Link(context, target, items.append)
        links.append(link)
        _wait(lambda: (link.ask(), link._asked)[1] is not None, 10, "a request sent")
        assert link.dealer.poll(10_000)  # answered: seq 1-5, last_seq 5
        for event in events[5:]:
            log.append(event)
        for event in events:  # heard live before that answer is read: settled goes to 8
            link.on_message([b"upcall", encode(event)])
        assert link.settled == 8
        link.on_reply(link.dealer.recv_multipart())
        assert link.settled == 8 and not link.heard and "behind" not in caplog.text
        # a database ahead of the log (a log replaced): fetched again from its start
        link = Link(context, target, items.append, station="buoy-a", settled=20)
        links.append(link)
        _wait(lambda: (link.ask(), link._asked)[1] is not None, 10, "a request sent")
        _answer(link)
        assert "its log is behind seq 20: fetching again from seq 0" in caplog.text
        _answer(link)
        assert link.settled == 8
    finally:
        for each in links:
            each.close()
        log.close()
        server.close()
        context.term()
    fetched = [item.record["seq"] for item in items if item.via == "catch-up"]
    assert fetched == [1, 2, 3, 4, 5] + list(range(1, 9))


def test_resume_starts_at_the_first_hole_not_the_highest_seq(tmp_path):
    conn = shoredb.connect(tmp_path / "shore.db")
    assert shoredb.resume_seq(conn, "buoy-a") == 0
    for seq in (2, 3):
        shoredb.add_event(conn, _event(seq))
    assert shoredb.resume_seq(conn, "buoy-a") == 0  # seq 1 is missing
    for seq in (1, 4, 7, 8):
        shoredb.add_event(conn, _event(seq))
    assert shoredb.resume_seq(conn, "buoy-a") == 4  # 5 and 6 still to fetch
    assert shoredb.max_seq(conn, "buoy-a") == 8
    shoredb.note_station(conn, "buoy-a", "tcp://127.0.0.1:5556")
    assert shoredb.station_at(conn, "tcp://127.0.0.1:5556") == "buoy-a"
    assert shoredb.station_at(conn, "tcp://127.0.0.1:6000") is None
    shoredb.add_event(conn, _event(1, station="buoy-b"))
    assert [e["seq"] for e, _ in shoredb.stored(conn, ["buoy-b"])] == [1]
    assert len(shoredb.stored(conn)) == 7


def _event(seq: int, station: str = "buoy-a") -> dict:
    return {"id": f"{station}-{seq}", "station": station, "run": "r", "seq": seq,
            "start": "2009-03-28T00:00:01.000Z", "end": "2009-03-28T00:00:03.000Z",
            "score": 0.9}  # fmt: skip


@pytest.mark.parametrize(
    ("args", "status", "says"),
    [
        (["gather", "--db", "{db}"], EX_USAGE, "ENDPOINT"),
        (["gather", "tcp://127.0.0.1:*", "--db", "{db}"], EX_USAGE, "not *"),
        (["gather", "udp://x:1", "--db", "{db}"], EX_USAGE, "udp://x:1"),
        (["gather", "tcp://h:1=nowhere", "--db", "{db}"], EX_USAGE, "nowhere"),
        (["gather", "tcp://h:1", "tcp://h:1", "--db", "{db}"], EX_USAGE, "twice"),
        (["gather", "tcp://h:1", "--db", "{tmp}/not-a-db"], 2, "cannot open database"),
        (["gather", "tcp://h:1", "--db", "{tmp}/no/such/dir/x.db"], 2, "cannot open database"),
        (["gather", "--db", "{tmp}/absent.db", "--export", "{tmp}/o.csv"], 2, "no database"),
        (["gather", "--db", "{db}", "--export", "{tmp}/o.json"], EX_USAGE, ".csv"),
        (["gather", "tcp://h:1", "--db", "{db}", "--export", "{tmp}/o.csv"], EX_USAGE, "ENDPOINT"),
    ],
)
def test_bad_endpoints_and_databases_are_one_line_errors(tmp_path, args, status, says):
    from .test_cli import invoke

    db = tmp_path / "shore.db"
    shoredb.connect(db).close()
    (tmp_path / "not-a-db").write_bytes(b"not sqlite" * 100)
    result = invoke(*[a.format(db=db, tmp=tmp_path) for a in args])
    assert result.exit_code == status, result.output
    assert says in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
