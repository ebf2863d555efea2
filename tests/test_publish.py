import json
import os
import threading
from pathlib import Path

import pytest
import zmq

from detector.errors import WhaleError
from detector.eventlog import EventLog, read_events
from detector.publish import Publisher
from detector.subscriber import subscribe


def _collect(endpoint: str, want: int, out: list, topics: list[str] | None = None) -> None:
    for message in subscribe(endpoint, topics, timeout=10):
        out.append(message)
        if len(out) == want:
            return


def _start_subscriber(endpoint, want, topics=None):
    received: list = []
    thread = threading.Thread(target=_collect, args=(endpoint, want, received, topics))
    thread.start()
    return thread, received


@pytest.fixture
def tcp_publisher():
    publisher = Publisher(["tcp://127.0.0.1:*"])
    yield publisher
    publisher.close(linger_ms=0)


def test_subscriber_started_first_receives_every_event_in_order(tcp_publisher):
    (endpoint,) = tcp_publisher.endpoints
    assert endpoint.startswith("tcp://127.0.0.1:") and not endpoint.endswith(":*")
    thread, received = _start_subscriber(endpoint, 500)
    assert tcp_publisher.wait_subscribers(1, timeout=10) == 1
    events = [{"seq": i, "score": i / 500, "station": "EST"} for i in range(500)]
    for event in events:
        tcp_publisher.send("upcall", event)
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert received == [("upcall", event) for event in events]


def test_ipc_endpoint_and_topic_filter(tmp_path):
    endpoint = f"ipc://{tmp_path}/events.sock"
    with Publisher([endpoint, "tcp://127.0.0.1:*"]) as publisher:
        assert publisher.endpoints[0] == endpoint
        thread, received = _start_subscriber(endpoint, 2, topics=["upcall"])
        assert publisher.wait_subscribers(1, timeout=10) == 1
        publisher.send("status", {"alive": True})
        publisher.send("upcall", {"seq": 0})
        publisher.send("upcall", {"seq": 1})
        thread.join(timeout=20)
    assert received == [("upcall", {"seq": 0}), ("upcall", {"seq": 1})]


def test_messages_are_two_frames_of_topic_and_compact_json(tcp_publisher):
    context = zmq.Context()
    sub = context.socket(zmq.SUB)
    try:
        sub.connect(tcp_publisher.endpoints[0])
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        assert tcp_publisher.wait_subscribers(1, timeout=10) == 1
        tcp_publisher.send("upcall", {"seq": 3, "station": "Ø"})
        assert sub.poll(10_000)
        frames = sub.recv_multipart()
    finally:
        sub.close(linger=0)
        context.term()
    assert frames[0] == b"upcall"
    assert frames[1] == '{"seq":3,"station":"Ø"}'.encode()


def test_wait_subscribers_counts_each_subscriber_and_times_out(tcp_publisher):
    assert tcp_publisher.wait_subscribers(1, timeout=0.05) == 0
    contexts, subs = [], []
    try:
        for _ in range(2):
            context = zmq.Context()
            sub = context.socket(zmq.SUB)
            sub.connect(tcp_publisher.endpoints[0])
            sub.setsockopt(zmq.SUBSCRIBE, b"")  # the same topic twice still counts twice
            contexts.append(context)
            subs.append(sub)
        assert tcp_publisher.wait_subscribers(2, timeout=10) == 2
    finally:
        for sub, context in zip(subs, contexts, strict=True):
            sub.close(linger=0)
            context.term()


def test_endpoint_in_use_is_a_one_line_whale_error(tcp_publisher):
    endpoint = tcp_publisher.endpoints[0]
    with pytest.raises(WhaleError) as caught:
        Publisher([endpoint])
    assert str(caught.value) == f"cannot bind {endpoint}: Address already in use"


@pytest.mark.parametrize(
    "endpoint", ["nonsense://x", "tcp://127.0.0.1:abc", "tcp://127.0.0.1:99999", "ipc:///no/dir/s"]
)
def test_invalid_endpoint_is_whale_error_naming_it(endpoint):
    with pytest.raises(WhaleError) as caught:
        Publisher([endpoint])
    assert str(caught.value).startswith(f"cannot bind {endpoint}: ")
    assert "\n" not in str(caught.value)


def test_subscribe_stops_after_timeout_without_messages(tcp_publisher):
    assert list(subscribe(tcp_publisher.endpoints[0], timeout=0.05)) == []


def test_event_log_writes_json_lines_with_fsync_per_event(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    path = tmp_path / "deep" / "dir" / "events.jsonl"
    log = EventLog(path)
    before = len(synced)
    log.append({"seq": 0, "station": "EST"})
    assert len(synced) == before + 1
    log.append({"seq": 1, "nested": {"a": [1, 2]}})
    assert len(synced) == before + 2
    log.close()
    lines = path.read_text().splitlines()
    assert [json.loads(line) for line in lines] == [
        {"seq": 0, "station": "EST"},
        {"seq": 1, "nested": {"a": [1, 2]}},
    ]


def test_event_log_survives_reopen_and_appends(tmp_path):
    path = tmp_path / "events.jsonl"
    with EventLog(path) as log:
        log.append({"seq": 0})
    with EventLog(path) as log:
        log.append({"seq": 1})
    assert read_events(path) == [{"seq": 0}, {"seq": 1}]


def test_event_log_reopen_cuts_a_line_torn_by_a_crash(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"seq":0}\n{"seq":1,"sta')
    assert read_events(path) == [{"seq": 0}]  # readers skip the torn tail too
    with EventLog(path) as log:
        log.append({"seq": 1})
    assert path.read_bytes() == b'{"seq":0}\n{"seq":1}\n'


def test_event_log_reopen_keeps_a_whole_event_missing_its_newline(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"seq":0}')
    with EventLog(path) as log:
        log.append({"seq": 1})
    assert read_events(path) == [{"seq": 0}, {"seq": 1}]


def test_read_events_rejects_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_bytes(b'{"seq":0}\nnot json\n{"seq":2}\n')
    with pytest.raises(WhaleError, match="events.jsonl:2"):
        read_events(path)


def test_event_log_unopenable_path_is_whale_error_naming_it(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WhaleError, match=f"cannot open event log {blocker}/events.jsonl"):
        EventLog(blocker / "events.jsonl")


class FullDisk:
    """os.write that fails with ENOSPC after `room` bytes, until `free()` (a disk filling up)."""

    def __init__(self, monkeypatch, room: int) -> None:
        self.room = room
        self.real = os.write
        monkeypatch.setattr(os, "write", self)

    def __call__(self, fd: int, data) -> int:
        if self.room is None:
            return self.real(fd, data)
        n = self.real(fd, bytes(data[: self.room]))  # part of a line reaches the disk
        self.room -= n
        if n < len(data):
            raise OSError(28, "No space left on device")
        return n

    def free(self) -> None:
        self.room = None


def test_event_log_on_a_full_disk_keeps_whole_lines_and_holds_events(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    assert log.append({"seq": 1})
    disk = FullDisk(monkeypatch, room=5)
    assert not log.append({"seq": 2, "pad": "x" * 50})
    assert not log.append({"seq": 3})
    assert log.error == "No space left on device" and len(log.pending) == 2
    assert path.read_bytes() == b'{"seq":1}\n'  # the torn part was cut off again
    disk.free()
    assert log.append({"seq": 4})
    assert log.pending == [] and log.error is None
    log.close()
    assert [e["seq"] for e in read_events(path)] == [1, 2, 3, 4]


def test_event_log_close_writes_what_it_still_holds(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    disk = FullDisk(monkeypatch, room=0)
    assert not log.append({"seq": 1})
    disk.free()
    log.close()
    assert log.pending == [] and read_events(path) == [{"seq": 1}]


def _until_received(publisher: Publisher, sub: zmq.Socket, seconds: float = 15.0) -> list[bytes]:
    """Publish until the subscriber has one message (it reconnects by itself after a reopen)."""
    import time

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        publisher.send("upcall", {"seq": 1})
        if sub.poll(50):
            return sub.recv_multipart()
    raise AssertionError("the subscriber got nothing")


@pytest.mark.parametrize("transport", ["tcp", "ipc"])
def test_a_flood_of_foreign_subscriptions_reopens_the_socket_and_subscribers_carry_on(
    tmp_path, transport
):
    """libzmq keeps every subscription (~11 KB each, the same with XPUB_MANUAL) until its
    client goes: past the cap of topics never published, the publisher process closes the socket
    and binds it again."""
    from detector.publish import MAX_FOREIGN_SUBSCRIPTIONS

    endpoint = "tcp://127.0.0.1:*" if transport == "tcp" else f"ipc://{tmp_path}/flood.sock"
    publisher = Publisher([endpoint])
    context = zmq.Context()
    good, hostile = context.socket(zmq.SUB), context.socket(zmq.SUB)
    try:
        bound = publisher.endpoints[0]
        good.connect(bound)
        good.setsockopt(zmq.SUBSCRIBE, b"upcall")
        _until_received(publisher, good)
        hostile.setsockopt(zmq.SNDHWM, 0)  # a SUB drops subscriptions past its queue's 1,000
        hostile.connect(bound)
        for k in range(MAX_FOREIGN_SUBSCRIPTIONS + 200):
            hostile.setsockopt(zmq.SUBSCRIBE, b"x%05d" % k + b"." * 200)
        import time

        deadline = time.monotonic() + 20
        while publisher.reopened == 0 and time.monotonic() < deadline:
            publisher.subscriptions  # noqa: B018 - reads what has arrived
            time.sleep(0.02)
        assert publisher.reopened >= 1 and publisher.foreign <= MAX_FOREIGN_SUBSCRIPTIONS
        assert publisher.endpoints == [bound]  # the same endpoint, bound again
        topic, _ = _until_received(publisher, good)  # reconnected and subscribed again
        assert topic == b"upcall"
    finally:
        good.close(linger=0)
        hostile.close(linger=0)
        context.term()
        publisher.close(linger_ms=0)


def _rss_mb(pid: int | str = "self") -> float:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE") / 1e6


def _peak_mb(pid: int) -> float:
    """The process's peak resident size (VmHWM), 0 when it has ended."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return int(status.split("VmHWM:")[1].split()[0]) / 1000


FLOOD = """
import sys, time, zmq
sub = zmq.Context().socket(zmq.SUB)
sub.setsockopt(zmq.SNDHWM, 0)
sub.connect(sys.argv[1])
for k in range(int(sys.argv[2])):
    sub.setsockopt(zmq.SUBSCRIBE, b"x%07d" % k + b"." * 200)
print("sent", flush=True)
time.sleep(30)
"""


def test_a_subscription_flood_grows_neither_the_daemon_nor_the_publisher_past_its_limit():
    """One client sending 150,000 distinct 200-byte subscriptions at once: libzmq files them
    faster than anyone can count them (in the daemon's own process this took it from 31 to over
    250 MB), so the socket lives in the publisher process, whose data is capped; the daemon's
    memory does not move and a good subscriber is served after the flood."""
    import subprocess
    import sys
    import time

    from detector.publish import RELAY_DATA_LIMIT

    publisher = Publisher(["tcp://127.0.0.1:*"])
    context = zmq.Context()
    good = context.socket(zmq.SUB)
    hostile = None
    try:
        (bound,) = publisher.endpoints
        good.connect(bound)
        good.setsockopt(zmq.SUBSCRIBE, b"upcall")
        _until_received(publisher, good)
        before, relay_peak, pids = _rss_mb(), 0.0, set()
        hostile = subprocess.Popen(
            [sys.executable, "-c", FLOOD, bound, "150000"], stdout=subprocess.PIPE, text=True
        )
        assert hostile.stdout is not None and hostile.stdout.readline() == "sent\n"
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            publisher.send("status", {"flood": True})
            if publisher.pid is not None:
                pids.add(publisher.pid)
                relay_peak = max(relay_peak, _peak_mb(publisher.pid))
            time.sleep(0.01)
        assert _rss_mb() - before < 20, "the flood reached the daemon's process"
        assert relay_peak * 1e6 < RELAY_DATA_LIMIT + 30e6, "the publisher passed its limit"
        assert publisher.reopened + publisher.restarts >= 1  # it did meet the flood
        hostile.kill()
        topic, _ = _until_received(publisher, good, seconds=20)
        assert topic == b"upcall"
    finally:
        if hostile is not None:
            hostile.kill()
            hostile.wait()
        good.close(linger=0)
        context.term()
        publisher.close(linger_ms=0)


def test_a_killed_publisher_process_is_started_again_on_the_same_endpoint(tmp_path, caplog):
    import logging
    import signal
    import time

    publisher = Publisher([f"ipc://{tmp_path}/pub.sock", "tcp://127.0.0.1:*"])
    context = zmq.Context()
    good = context.socket(zmq.SUB)
    try:
        bound = list(publisher.endpoints)
        good.connect(bound[1])
        good.setsockopt(zmq.SUBSCRIBE, b"upcall")
        _until_received(publisher, good)
        first = publisher.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with caplog.at_level(logging.INFO):
            deadline = time.monotonic() + 10
            while publisher.restarts == 0 and time.monotonic() < deadline:
                publisher.send("upcall", {"seq": 0})
                time.sleep(0.02)
        assert publisher.restarts == 1 and publisher.pid not in (None, first)
        assert publisher.endpoints == bound  # the same port and path, bound again
        assert publisher.dropped >= 1  # what it could not hand over is counted
        said = [
            r.getMessage() for r in caplog.records if "publisher process ended" in r.getMessage()
        ]
        assert said == [
            "zeromq: the publisher process ended (killed by signal 9); starting it again "
            "(subscribers fetch what they miss by catch-up)"
        ]
        topic, _ = _until_received(publisher, good)  # the subscriber reconnected by itself
        assert topic == b"upcall"
    finally:
        good.close(linger=0)
        context.term()
        publisher.close(linger_ms=0)


def test_the_publisher_process_ends_with_the_daemon(tmp_path):
    """A daemon killed outright (SIGKILL, the OOM killer) must not leave its publisher behind
    holding the port: the end of the pair ends it."""
    import subprocess
    import sys
    import time

    script = (
        "import sys, time\n"
        "from detector.publish import Publisher\n"
        "p = Publisher([sys.argv[1]])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    daemon = subprocess.Popen(
        [sys.executable, "-c", script, f"ipc://{tmp_path}/pub.sock"],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert daemon.stdout is not None
    relay = int(daemon.stdout.readline())
    assert Path(f"/proc/{relay}").exists()
    daemon.kill()
    daemon.wait()
    deadline = time.monotonic() + 10
    while Path(f"/proc/{relay}").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{relay}").exists()


def test_a_refused_bind_is_one_line_from_the_publisher_process():
    taken = Publisher(["tcp://127.0.0.1:*"])
    try:
        with pytest.raises(WhaleError) as error:
            Publisher(list(taken.endpoints))
        assert str(error.value) == f"cannot bind {taken.endpoints[0]}: Address already in use"
    finally:
        taken.close(linger_ms=0)
