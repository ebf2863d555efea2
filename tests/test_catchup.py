"""Run identity, seq across restarts and catch-up (issue 14): no event is silently lost to a
subscriber that joined late, read slowly, or saw a gap; all over real sockets on 127.0.0.1."""

import json
import subprocess
import threading
import time

import pytest
import zmq

from detector.catchup import BATCH, CatchupServer, derive_endpoint, fetch, resolve
from detector.errors import WhaleError
from detector.eventlog import EventLog, read_events, read_log
from detector.publish import Publisher
from detector.raven import export_raven
from detector.subscriber import Follower
from detector.zmq_output import ZmqOutput

from .test_cli import DAEMON, replay, write_synthetic


def test_seq_continues_across_runs_and_the_log_says_where_each_run_starts(tmp_path, tiny_model):
    recording = tmp_path / "calls.wav"
    write_synthetic(recording, seed=11, seconds=40, calls=2, lookalikes=0)
    log = tmp_path / "events.jsonl"
    first = replay(recording, tiny_model, log)
    both = replay(recording, tiny_model, log)
    assert first, "the replay found no event: nothing to number"
    n = len(first)
    assert [e["seq"] for e in both] == list(range(1, 2 * n + 1))  # never restarts at 1
    runs = [e["run"] for e in both]
    assert len(set(runs[:n])) == 1 and len(set(runs[n:])) == 1 and runs[0] != runs[n]
    records = read_log(log)
    starts = [r for r in records if r["type"] == "run"]
    assert [r["after_seq"] for r in starts] == [0, n] and [r["run"] for r in starts] == [
        runs[0],
        runs[n],
    ]
    assert records[0]["type"] == "run" and records[n + 1]["type"] == "run"  # each run's first
    # readers of events skip run lines: the Raven table has one row per event
    table = export_raven(log, tmp_path / "t.txt").read_text().splitlines()
    assert len(table) == 1 + 2 * n


def test_last_seq_reads_the_tail_backwards_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr("detector.eventlog.TAIL_CHUNK", 7)  # every line cut across chunks
    path = tmp_path / "ev.jsonl"
    with EventLog(path) as log:
        assert log.last_seq() == 0
        log.start_run({"type": "run", "run": "a", "after_seq": 0})
        for seq in (1, 2, 3):
            log.append({"type": "upcall", "seq": seq, "pad": "x" * 20})
        assert log.last_seq() == 3
        log.start_run({"type": "run", "run": "b", "after_seq": 3})  # a run with no event yet
        assert log.last_seq() == 3
    path.write_bytes(path.read_bytes() + b'{"type": "upcall", "se')  # a torn line after a crash
    assert EventLog(path).last_seq() == 3
    assert [e["seq"] for e in read_events(path)] == [1, 2, 3]


def test_a_listener_continues_from_the_log_and_writes_its_run_line(tmp_path):
    from detector.pipeline import Listener

    log = EventLog(tmp_path / "ev.jsonl")
    log.append({"type": "upcall", "seq": 41})
    listener = Listener(None, 0.5, 1000, log, [], "s")
    assert listener.seq == listener.first_seq == 41 and listener.events == 0
    line = json.loads(log.path.read_text().splitlines()[-1])
    assert line["type"] == "run" and line["after_seq"] == 41 and line["run"] == listener.run_id
    log.close()


# -- the catch-up endpoint -------------------------------------------------------------------------
def _log_of_two_runs(path, first: int, second: int) -> list[dict]:
    """A log as two daemon starts write it: run line, events, run line, events."""
    events = []
    with EventLog(path) as log:
        seq = 0
        for run, count in (("run-a", first), ("run-b", second)):
            log.start_run({"type": "run", "run": run, "after_seq": seq})
            for _ in range(count):
                seq += 1
                events.append({"type": "upcall", "seq": seq, "run": run, "pad": "x" * 300})
                log.append(events[-1])
    return events


@pytest.fixture
def dealer():
    context = zmq.Context()
    sockets = []

    def connect(endpoint):
        socket = context.socket(zmq.DEALER)
        socket.connect(endpoint)
        sockets.append(socket)
        return socket

    yield connect
    for socket in sockets:
        socket.close(linger=0)
    context.term()


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_catchup_serves_the_logged_events_after_a_seq_in_bounded_batches(
    tmp_path, dealer, transport
):
    path = tmp_path / "ev.jsonl"
    endpoint = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmp_path}/c.sock"
    server = CatchupServer(endpoint, path)  # opened first, as the daemon does: run-b is current
    events = _log_of_two_runs(path, 150, 120)
    try:
        socket = dealer(server.endpoint)
        reply = fetch(socket, 0, timeout_s=5)
        assert reply["run"] == "run-b" and reply["run_after_seq"] == 150
        assert reply["last_seq"] == 270 and reply["more"] is True
        assert reply["events"] == events[:BATCH]
        got, after = [], 0
        while True:  # the client asks again, after the last one it got, until done
            reply = fetch(socket, after, timeout_s=5)
            got += reply["events"]
            after = got[-1]["seq"] if got else after
            if not reply["more"]:
                break
        assert got == events  # every event, in order, once
        current = fetch(socket, None, timeout_s=5)  # null: the current run's events
        assert current["events"] == events[150 : 150 + BATCH]
        assert fetch(socket, 265, timeout_s=5)["events"] == events[265:]
        assert fetch(socket, 270, timeout_s=5) == {**reply, "events": [], "more": False}
        # an event appended while serving is there at the next request
        with EventLog(path) as log:
            log.append({"type": "upcall", "seq": 271, "run": "run-b"})
        assert [e["seq"] for e in fetch(socket, 270, timeout_s=5)["events"]] == [271]
        assert server.behind(271) == [1]  # a client's position: its last request's after_seq
        fetch(socket, 271, timeout_s=5, limit=0)  # an ack: "I have everything up to 271"
        assert server.behind(271) == [0]
    finally:
        server.close()


def test_catchup_refuses_a_bad_request_and_a_taken_endpoint(tmp_path, dealer):
    path = tmp_path / "ev.jsonl"
    _log_of_two_runs(path, 1, 0)
    server = CatchupServer("tcp://127.0.0.1:*", path)
    try:
        socket = dealer(server.endpoint)
        for bad in (b"not json", b'{"after_seq": -1}', b'{"after_seq": "1"}', b"[1]"):
            socket.send_multipart([b"", bad])
            assert socket.poll(5000)
            assert "error" in json.loads(socket.recv_multipart()[-1])
        with pytest.raises(WhaleError, match="catch-up"):
            CatchupServer(server.endpoint, path)
    finally:
        server.close()


def test_catchup_endpoint_derives_from_the_publish_endpoint():
    assert derive_endpoint("tcp://127.0.0.1:5556") == "tcp://127.0.0.1:5557"
    assert derive_endpoint("tcp://127.0.0.1:*") == "tcp://127.0.0.1:*"
    assert derive_endpoint("ipc:///run/w.sock") == "ipc:///run/w.sock.catchup"
    assert resolve("off", ["tcp://h:1"]) is None and resolve("tcp://h:9", []) == "tcp://h:9"
    with pytest.raises(WhaleError, match="--catchup"):
        derive_endpoint("tcp://h:65535")


# -- a following subscriber ------------------------------------------------------------------------
class Daemon:
    """The daemon's delivery end over real sockets: the log first, then the ZeroMQ output with
    its catch-up endpoint, as the Listener drives them (`_deliver`)."""

    def __init__(self, path, linger_s=10.0, endpoint="tcp://127.0.0.1:*"):
        self.log = EventLog(path)
        self.run, self.seq = "run-x", self.log.last_seq()
        self.log.start_run({"type": "run", "run": self.run, "after_seq": self.seq})
        publisher = Publisher([endpoint])
        catchup_at = resolve("auto", publisher.endpoints)
        self.output = ZmqOutput(publisher, linger_s, catchup=CatchupServer(catchup_at, path))
        self.endpoint, self.catchup = publisher.endpoints[0], self.output.catchup.endpoint

    def emit(self, n, pad=300, unpublished=()):
        for _ in range(n):
            self.seq += 1
            event = {"type": "upcall", "seq": self.seq, "run": self.run, "pad": "x" * pad}
            assert self.log.append(event)
            if self.seq not in unpublished:  # as if the network lost it
                self.output.on_event(event)

    def close(self):
        started = time.monotonic()
        self.output.close()
        self.log.close()
        return time.monotonic() - started


def _follow_in_thread(follower, got, per_message_s=0.0, timeout=3.0):
    def read():
        for _topic, event in follower.follow(timeout=timeout):
            got.append(event["seq"])
            time.sleep(per_message_s)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    return thread


def test_a_subscriber_started_after_the_events_gets_every_one_once_in_order(tmp_path):
    path = tmp_path / "ev.jsonl"
    _log_of_two_runs(path, 5, 0)  # an earlier run's events: not this run's, not wanted
    daemon = Daemon(path)
    daemon.emit(250)  # the "replay" is over before the subscriber starts
    follower = Follower(daemon.endpoint, daemon.catchup)
    got: list[int] = []
    thread = _follow_in_thread(follower, got)
    time.sleep(0.5)
    daemon.emit(40)  # and live events after it joined: merged, no duplicates
    thread.join(30)
    took = daemon.close()
    follower.close()
    assert got == list(range(6, 6 + 290))
    assert follower.fetched >= 250 and follower.lost == 0
    assert took < 5  # it was caught up: the daemon did not wait for it


def test_a_subscriber_reading_10_messages_a_second_gets_every_event(tmp_path, capsys):
    path = tmp_path / "ev.jsonl"
    daemon = Daemon(path, linger_s=4.0)  # under the 10 s it takes to read 100: a tail to lose
    follower = Follower(daemon.endpoint, daemon.catchup, rcvhwm=10)
    got: list[int] = []
    thread = _follow_in_thread(follower, got, per_message_s=0.1, timeout=3.0)
    time.sleep(0.5)  # connected (a slow joiner would lose the first ones: catch-up has them)
    # 10 MB at once: more than the socket buffers hold, so at exit the publisher still queues a
    # tail that --linger drops (a plain SUB reading like this got 88 of 100 here)
    daemon.emit(100, pad=100_000)
    daemon.close()  # waits (up to linger) until the subscriber holds the last event
    assert "still behind" not in capsys.readouterr().err
    thread.join(60)
    follower.close()
    assert got == list(range(1, 101))  # every event, in order, exactly once


def test_the_exit_line_says_what_a_subscriber_behind_still_has_to_fetch(tmp_path, capsys):
    path = tmp_path / "ev.jsonl"
    daemon = Daemon(path, linger_s=0.5)
    context = zmq.Context()
    stuck = context.socket(zmq.DEALER)  # a client that asked once, then stopped reading
    stuck.connect(daemon.catchup)
    daemon.emit(30)
    fetch(stuck, 10, timeout_s=5, limit=0)
    daemon.close()
    stuck.close(linger=0)
    context.term()
    err = capsys.readouterr().err
    assert "1 catch-up subscriber(s) still behind at exit: up to 20 event(s) (to seq 30)" in err


def test_whale_listen_subscribe_started_late_prints_every_event_once_in_order(tmp_path):
    path = tmp_path / "ev.jsonl"
    _log_of_two_runs(path, 3, 0)
    daemon = Daemon(path, linger_s=0.0, endpoint=f"ipc://{tmp_path}/w.sock")
    try:
        daemon.emit(120)  # all before the subscriber starts
        assert daemon.catchup == f"ipc://{tmp_path}/w.sock.catchup"  # derived on both sides
        command = [*DAEMON, "subscribe", daemon.endpoint, "--topic", "upcall", "--timeout", "3"]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert [json.loads(line)["seq"] for line in proc.stdout.splitlines()] == list(
            range(4, 124)
        )  # this run's: from the daemon's run line on
        whole = subprocess.run(
            [*command, "--since-seq", "0"], capture_output=True, text=True, timeout=60
        )
        assert [json.loads(line)["seq"] for line in whole.stdout.splitlines()] == list(
            range(1, 124)
        )
    finally:
        daemon.close()


def test_subscribe_refuses_a_bad_catchup_endpoint_in_one_line():
    proc = subprocess.run(
        [*DAEMON, "subscribe", "tcp://127.0.0.1:5556", "--catchup", "nowhere"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 64 and "nowhere" in proc.stderr and "Traceback" not in proc.stderr


def test_the_index_reads_the_log_in_chunks_and_waits_for_a_line_being_written(
    tmp_path, monkeypatch
):
    from detector.catchup import LogIndex

    monkeypatch.setattr("detector.catchup.READ_CHUNK", 500)  # ~ one event line
    path = tmp_path / "ev.jsonl"
    events = _log_of_two_runs(path, 4, 3)
    with open(path, "ab") as file:
        file.write(b'{"type": "upcall", "seq": 8')  # not whole yet
    index = LogIndex(path)
    index.refresh()
    assert index.seqs == [1, 2, 3, 4, 5, 6, 7] and index.run == "run-b"
    assert index.after(5, 10) == (events[5:], False)
    with open(path, "ab") as file:
        file.write(b"}\n")
    index.refresh()
    assert index.seqs[-1] == 8 and index.after(7, 10) == ([{"type": "upcall", "seq": 8}], False)


def test_the_current_run_is_the_one_after_the_server_opened_even_before_its_run_line(
    tmp_path, dealer
):
    path = tmp_path / "ev.jsonl"
    earlier = _log_of_two_runs(path, 3, 2)  # run-b is the previous daemon's now
    server = CatchupServer("tcp://127.0.0.1:*", path)
    try:
        socket = dealer(server.endpoint)
        early = fetch(socket, None, timeout_s=5)  # before this daemon wrote its run line
        assert (early["run"], early["run_after_seq"], early["events"]) == (None, 5, [])
        with EventLog(path) as log:
            log.start_run({"type": "run", "run": "run-c", "after_seq": 5})
            log.append({"type": "upcall", "seq": 6, "run": "run-c"})
        reply = fetch(socket, None, timeout_s=5)
        assert (reply["run"], reply["run_after_seq"]) == ("run-c", 5)
        assert [e["seq"] for e in reply["events"]] == [6]
        assert fetch(socket, 0, timeout_s=5)["events"][:5] == earlier
    finally:
        server.close()


def test_a_gap_in_the_stream_is_filled_from_the_log_before_the_next_event(tmp_path):
    daemon = Daemon(tmp_path / "ev.jsonl")
    follower = Follower(daemon.endpoint, daemon.catchup)
    got: list[int] = []
    thread = _follow_in_thread(follower, got)
    time.sleep(0.5)
    daemon.emit(60, unpublished={5, 6, 7, 30, 60})  # 60: a lost last one (no later gap)
    thread.join(30)
    daemon.close()
    follower.close()
    assert got == list(range(1, 61)) and follower.lost == 0


def test_whale_listen_subscribe_started_before_a_fast_replay_gets_every_event(tmp_path, tiny_model):
    """The slow joiner: no --wait-subscribers, so the first events go out before the SUB
    socket's subscription arrives; catch-up has them."""
    from .test_cli import free_tcp_endpoint

    endpoint = free_tcp_endpoint()
    recording = tmp_path / "calls.wav"
    write_synthetic(recording, seed=21, seconds=60, calls=3, lookalikes=0)
    log = tmp_path / "events.jsonl"
    subscriber = subprocess.Popen(
        [*DAEMON, "subscribe", endpoint, "--topic", "upcall", "--timeout", "20"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # the subscriber is up seconds before the daemon binds (its first catch-up request then finds
    # nobody): it must ask again and still get every event
    time.sleep(4)
    daemon = subprocess.run(
        [*DAEMON, "--replay", recording, "--model", tiny_model, "--events-log", log,
         "--publish", endpoint, "--linger", "5", "--heartbeat", "3600"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    out, err = subscriber.communicate(timeout=120)
    assert daemon.returncode == 0, daemon.stderr
    logged = read_events(log)
    assert logged, "the tiny model found nothing in the synthetic recording"
    printed = [json.loads(line) for line in out.splitlines()]
    assert printed == logged, err  # every event, in order, exactly once
    assert "catch-up on tcp://127.0.0.1:" in daemon.stderr


def test_a_request_sent_twice_before_the_daemon_bound_takes_the_first_answer(tmp_path, monkeypatch):
    """A subscriber up before the daemon asks again every REPLY_TIMEOUT_S; the daemon gets every
    queued copy at once when it binds, and a fast replay may exit after answering only the first:
    that answer is the one (it was taken for stale, and the subscriber printed nothing)."""
    from .test_cli import free_tcp_endpoint

    monkeypatch.setattr("detector.subscriber.REPLY_TIMEOUT_S", 0.2)
    endpoint = free_tcp_endpoint()
    catchup = derive_endpoint(endpoint)
    follower = Follower(endpoint, catchup)
    for _ in range(3):  # nothing there: it asks again
        follower._pump(300)
    context = zmq.Context()
    router = context.socket(zmq.ROUTER)
    try:
        router.bind(catchup)
        copies = []
        while router.poll(1000):
            copies.append(router.recv_multipart())
        assert len(copies) >= 2, "the subscriber did not ask again"
        client, first = copies[0][0], json.loads(copies[0][-1])
        events = [{"type": "upcall", "seq": seq, "run": "r"} for seq in (1, 2)]
        answer = {"id": first["id"], "run": "r", "run_after_seq": 0, "last_seq": 2}
        answer.update(events=events, more=False)
        router.send_multipart([client, b"", json.dumps(answer).encode()])
        got = [event for _topic, event in follower.follow(timeout=1.0)]
    finally:
        router.close(linger=0)
        context.term()
        follower.close()
    assert got == events


def test_a_daemon_that_ends_just_after_binding_still_serves_a_subscriber_connecting(
    tmp_path, monkeypatch
):
    """A fast replay is over milliseconds after the daemon binds; a subscriber started before it
    connects only at its next reconnect (0.1-0.2 s later). The daemon stays reachable for
    CONNECT_GRACE_S (within --linger), so the subscriber still gets every event."""
    monkeypatch.setattr("detector.zmq_output.CONNECT_GRACE_S", 5.0)  # ample on a loaded machine
    daemon = Daemon(tmp_path / "ev.jsonl", linger_s=10.0)
    daemon.emit(3)
    closing = threading.Thread(target=daemon.close)
    closing.start()  # the daemon is on its way out before the subscriber connects
    follower = Follower(daemon.endpoint, daemon.catchup)
    try:
        got = [event["seq"] for _topic, event in follower.follow(timeout=3.0)]
    finally:
        closing.join(30)
        follower.close()
    assert got == [1, 2, 3] and follower.fetched == 3
