import json
import os
import threading

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
    client goes: past the cap of topics never published, the socket is closed and bound again."""
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
