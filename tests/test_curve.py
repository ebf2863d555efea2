"""CURVE access control (issue 14): the daemon publishes and serves catch-up, encrypted, only to
the client keys it allows; a refused key and a plaintext client get nothing, live or catch-up.
All over real sockets on 127.0.0.1, with keys made by `whale-listen keygen`."""

import json
import stat
import subprocess
import threading
import time

import pytest
import zmq

from detector.catchup import CatchupServer, fetch, resolve
from detector.curve import client_keys, server_keys
from detector.errors import ConfigError, UsageError, WhaleError
from detector.eventlog import EventLog, read_events
from detector.publish import Publisher
from detector.subscriber import Follower
from detector.zmq_output import ZmqOutput

from .test_cli import DAEMON, free_tcp_endpoint, write_synthetic


def keygen(folder, name):
    proc = subprocess.run(
        [*DAEMON, "keygen", str(folder), "--name", name], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    return folder / f"{name}.key", folder / f"{name}.key_secret"


@pytest.fixture
def keys(tmp_path):
    """The daemon's pair, an allowed client's (its public key in the allow folder) and a
    refused client's (a valid key the daemon was never given)."""
    allow = tmp_path / "allowed"
    server_public, server_secret = keygen(tmp_path / "server", "buoy")
    shore_public, shore_secret = keygen(tmp_path / "shore", "shore")
    keygen(tmp_path / "stranger", "stranger")
    allow.mkdir()
    (allow / "shore.key").write_bytes(shore_public.read_bytes())
    return {
        "server": server_keys(server_secret, allow),
        "server_files": (server_secret, allow, server_public),
        "shore": client_keys(shore_secret, server_public),
        "stranger": client_keys(tmp_path / "stranger" / "stranger.key_secret", server_public),
        "tmp": tmp_path,
    }


def test_keygen_writes_a_public_key_and_a_0600_secret_and_never_overwrites(tmp_path):
    public, secret = keygen(tmp_path / "k", "buoy")
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    assert stat.S_IMODE(public.stat().st_mode) == 0o644
    assert b"secret-key" in secret.read_bytes() and b"secret-key" not in public.read_bytes()
    before = secret.read_bytes()
    again = subprocess.run(
        [*DAEMON, "keygen", str(tmp_path / "k"), "--name", "buoy"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert again.returncode == 64 and "not overwriting" in again.stderr
    assert len(again.stderr.splitlines()) == 1 and secret.read_bytes() == before


class CurveDaemon:
    """The daemon's delivery end with access control: log, then publisher and catch-up."""

    def __init__(self, path, curve):
        self.log = EventLog(path)
        self.log.start_run({"type": "run", "run": "run-c", "after_seq": 0})
        self.publisher = Publisher(["tcp://127.0.0.1:*"], curve)
        catchup = CatchupServer(resolve("auto", self.publisher.endpoints), path, curve)
        self.output = ZmqOutput(self.publisher, 2.0, catchup=catchup)
        self.endpoint, self.catchup, self.seq = self.publisher.endpoints[0], catchup.endpoint, 0

    def emit(self, n):
        for _ in range(n):
            self.seq += 1
            event = {"type": "upcall", "seq": self.seq, "run": "run-c"}
            assert self.log.append(event)
            self.output.on_event(event)

    def close(self):
        self.output.close()
        self.log.close()


def _socket(context, kind, endpoint, curve):
    socket = context.socket(kind)
    socket.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        curve.apply(socket)
    if kind == zmq.SUB:
        socket.setsockopt(zmq.SUBSCRIBE, b"")
    socket.connect(endpoint)
    return socket


def test_an_allowed_key_gets_events_and_catch_up_a_refused_or_plaintext_client_nothing(keys):
    daemon = CurveDaemon(keys["tmp"] / "ev.jsonl", keys["server"])
    context = zmq.Context()
    try:
        clients = {name: keys.get(name) for name in ("shore", "stranger", "plaintext")}
        subs = {n: _socket(context, zmq.SUB, daemon.endpoint, c) for n, c in clients.items()}
        dealers = {n: _socket(context, zmq.DEALER, daemon.catchup, c) for n, c in clients.items()}
        # the allowed SUB's subscription arrives; the others' never do (their handshake fails)
        assert daemon.publisher.wait_subscribers(1, timeout=30) == 1
        daemon.emit(5)
        got = []
        while len(got) < 5 and subs["shore"].poll(10_000):
            got.append(json.loads(subs["shore"].recv_multipart()[1])["seq"])
        assert got == [1, 2, 3, 4, 5]  # live, decrypted
        reply = fetch(dealers["shore"], 0, timeout_s=10)
        assert [e["seq"] for e in reply["events"]] == [1, 2, 3, 4, 5]  # and catch-up
        for name in ("stranger", "plaintext"):
            with pytest.raises(WhaleError, match="no answer"):
                fetch(dealers[name], 0, timeout_s=1.0)
            assert not subs[name].poll(0), name  # what the allowed SUB got by now: nothing
        assert daemon.output.catchup.requests == 1  # theirs never reached the server
        assert daemon.publisher.subscriptions == 1
    finally:
        for socket in [*subs.values(), *dealers.values()]:
            socket.close(linger=0)
        context.term()
        daemon.close()


def test_a_follower_with_an_allowed_key_gets_every_event_once_in_order(keys):
    daemon = CurveDaemon(keys["tmp"] / "ev.jsonl", keys["server"])
    daemon.emit(30)  # before it starts: from catch-up
    follower = Follower(daemon.endpoint, daemon.catchup, curve=keys["shore"])
    got = []
    try:
        for _topic, event in follower.follow(timeout=3.0):
            got.append(event["seq"])
            if event["seq"] == 30:
                daemon.emit(10)  # and live ones after it
    finally:
        follower.close()
        daemon.close()
    assert got == list(range(1, 41)) and follower.lost == 0


def test_whale_listen_with_access_control_end_to_end(keys, tiny_model):
    """The daemon with --curve-secret/--curve-allow; `subscribe` with the allowed key prints every
    event, with the refused key or none it prints nothing."""
    server_secret, allow, server_public = keys["server_files"]
    tmp = keys["tmp"]
    endpoint = free_tcp_endpoint()
    recording = tmp / "calls.wav"
    write_synthetic(recording, seed=21, seconds=60, calls=3, lookalikes=0)
    log = tmp / "events.jsonl"
    base = [*DAEMON, "subscribe", endpoint, "--topic", "upcall", "--timeout", "15"]
    client = {
        "shore": ["--curve-secret", tmp / "shore/shore.key_secret", "--server-key", server_public],
        "stranger": [
            "--curve-secret", tmp / "stranger/stranger.key_secret", "--server-key", server_public
        ],
        "plaintext": [],
    }  # fmt: skip
    subscribers = {
        name: subprocess.Popen([*base, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for name, args in client.items()
    }
    time.sleep(2)  # up before the daemon: it connects when the daemon binds
    daemon = subprocess.run(
        [*DAEMON, "--replay", recording, "--model", tiny_model, "--events-log", log,
         "--publish", endpoint, "--linger", "5", "--heartbeat", "3600",
         "--curve-secret", server_secret, "--curve-allow", allow],
        capture_output=True, text=True, timeout=120, cwd=tmp,
    )  # fmt: skip
    outputs = {name: proc.communicate(timeout=120) for name, proc in subscribers.items()}
    assert daemon.returncode == 0, daemon.stderr
    assert "(CURVE, 1 allowed client key(s))" in daemon.stderr
    logged = read_events(log)
    assert logged, "the tiny model found nothing in the synthetic recording"
    printed = [json.loads(line) for line in outputs["shore"][0].splitlines()]
    assert printed == logged, outputs["shore"][1]
    for name in ("stranger", "plaintext"):
        assert outputs[name][0] == b"", name
        assert subscribers[name].returncode == 0, outputs[name][1]


def test_bad_or_missing_key_settings_are_one_line_config_errors(keys, tmp_path, tiny_model):
    server_secret, allow, server_public = keys["server_files"]
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk.key"
    junk.write_text("public-key = 'short'\n")
    cases = [
        ((server_secret, None), "--curve-secret needs --curve-allow"),
        ((None, allow), "--curve-allow needs --curve-secret"),
        ((tmp_path / "nope", allow), "no such file"),
        ((server_public, allow), "holds no secret key"),
        ((server_secret, empty), "no client public key"),
        ((server_secret, server_secret), "not a folder"),
        ((junk, allow), "not a valid CURVE key"),
    ]
    for (secret, folder), message in cases:
        with pytest.raises(ConfigError, match=message):
            server_keys(secret, folder)
    (empty / "bad.key").write_text("nothing here\n")
    with pytest.raises(ConfigError, match="bad.key: not a ZeroMQ certificate"):
        server_keys(server_secret, empty)
    with pytest.raises(UsageError, match="go together"):
        client_keys(server_secret, None)
    write_synthetic(tmp_path / "x.wav", seed=3, seconds=30, calls=1, lookalikes=0)
    bad = empty / "bad.key"
    proc = subprocess.run(
        [*DAEMON, "--replay", tmp_path / "x.wav", "--model", tiny_model, "--events-log",
         tmp_path / "ev.jsonl", "--publish", "tcp://127.0.0.1:*", "--curve-secret", bad,
         "--curve-allow", allow],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 78, proc.stderr
    assert proc.stderr.splitlines()[-1].endswith(
        "bad.key: not a ZeroMQ certificate (whale-listen keygen)"
    )
    assert "Traceback" not in proc.stderr


def test_gather_with_an_allowed_key_stores_every_event_and_without_one_nothing(keys):
    from detector import shoredb
    from detector.gather import Gather, parse_target
    from detector.shorewriter import ShoreWriter

    daemon = CurveDaemon(keys["tmp"] / "ev.jsonl", keys["server"])
    target = parse_target(f"{daemon.endpoint}={daemon.catchup}")
    stored = {}
    try:
        for name in ("shore", "stranger", "plaintext"):
            db = keys["tmp"] / f"{name}.db"
            writer = ShoreWriter(db)
            gather = Gather([target], writer.put, curve=keys.get(name))
            for _ in range(3):  # events as the shore database needs them
                daemon.seq += 1
                event = {"type": "upcall", "seq": daemon.seq, "run": "run-c", "station": "buoy",
                         "id": f"e{daemon.seq}", "start": "2009-03-28T00:00:01.000Z",
                         "end": "2009-03-28T00:00:03.000Z", "score": 0.9}  # fmt: skip
                assert daemon.log.append(event)
                daemon.output.on_event(event)
            stop = threading.Event()
            thread = threading.Thread(target=gather.run, args=(stop.is_set,), daemon=True)
            thread.start()
            deadline = time.monotonic() + (15 if name == "shore" else 3)
            while time.monotonic() < deadline:
                time.sleep(0.2)
                conn = shoredb.connect(db)
                stored[name] = [e["seq"] for e in shoredb.events(conn)]
                conn.close()
                if name == "shore" and len(stored[name]) == 3:
                    break
            stop.set()
            thread.join(10)
            gather.close()
            writer.close()
    finally:
        daemon.close()
    assert stored["shore"] == [1, 2, 3]  # logged before gather started: fetched, decrypted
    assert stored["stranger"] == [] and stored["plaintext"] == []
