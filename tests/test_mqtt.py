"""MQTT output against a real Mosquitto broker started here (Debian's /usr/sbin/mosquitto)."""

import json
import shutil
import socket
import subprocess
import threading
import time
from getpass import getuser
from pathlib import Path

import pytest

from detector.errors import EX_USAGE
from detector.eventlog import read_events
from detector.mqtt import MqttOutput, parse_url
from tests.test_cli import invoke, replay_args, write_call_train

paho = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt (the mqtt extra) not installed")
MOSQUITTO = shutil.which("mosquitto") or shutil.which("/usr/sbin/mosquitto")
pytestmark = pytest.mark.skipif(
    MOSQUITTO is None, reason="mosquitto not installed (apt-get install mosquitto)"
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto on 127.0.0.1:port with a temp config; start() and stop() may repeat."""

    def __init__(self, tmp_path: Path, port: int | None = None, passwords: Path | None = None):
        self.port = port or free_port()
        self.config = tmp_path / f"mosquitto-{self.port}.conf"
        # started as root, mosquitto would switch to user "mosquitto", who cannot read tmp_path
        lines = [f"listener {self.port} 127.0.0.1", "persistence false", f"user {getuser()}"]
        lines += (
            [f"password_file {passwords}", "allow_anonymous false"]
            if passwords
            else ["allow_anonymous true"]
        )
        self.config.write_text("\n".join(lines) + "\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> "Broker":
        self.process = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self
            except OSError:
                assert self.process.poll() is None, self.process.stderr.read().decode()
                assert time.monotonic() < deadline, "mosquitto did not start listening"
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path).start()
    yield b
    b.stop()


class Listen:
    """A real paho subscriber collecting (topic, payload, retained) from `topic/#`."""

    def __init__(self, port: int, topic: str, auth: tuple[str, str] | None = None) -> None:
        self.messages: list[tuple[str, bytes, bool]] = []
        self.subscribed = threading.Event()
        self.client = paho.Client(paho.CallbackAPIVersion.VERSION2)
        if auth:
            self.client.username_pw_set(*auth)
        self.client.on_connect = lambda c, u, f, r, p: c.subscribe(f"{topic}/#", qos=1)
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, m.payload, bool(m.retain))
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(10), "subscriber never subscribed"

    def wait_for(self, predicate, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.messages):
            assert time.monotonic() < deadline, f"timed out; got {self.messages}"
            time.sleep(0.05)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def upcalls(messages) -> list[dict]:
    return [json.loads(p) for t, p, _ in messages if t.endswith("/upcall")]


def states(messages) -> list[str]:
    return [p.decode() for t, p, _ in messages if t.endswith("/state")]


def test_replay_publishes_exactly_the_logged_events_and_says_online_then_offline(
    tmp_path, tiny_model, broker
):
    recording = tmp_path / "calls_20090328_001500.wav"
    write_call_train(recording, seconds=30)
    log = tmp_path / "ev.jsonl"
    sub = Listen(broker.port, "whales/buoy-7")
    try:
        result = invoke(
            *replay_args(recording, tiny_model, log),
            "--mqtt", f"mqtt://127.0.0.1:{broker.port}/whales/buoy-7", "--heartbeat", "0.1",
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        logged = read_events(log)
        assert logged, "the recording should hold calls"
        sub.wait_for(lambda m: len(upcalls(m)) == len(logged) and "offline" in states(m))
    finally:
        sub.close()
    assert upcalls(sub.messages) == logged  # same events, same order, same fields
    assert states(sub.messages)[0] == "online" and states(sub.messages)[-1] == "offline"
    # the state is retained: a subscriber arriving later learns the daemon is gone
    late = Listen(broker.port, "whales/buoy-7")
    try:
        late.wait_for(lambda m: states(m) == ["offline"])
        assert late.messages[0][2] is True
    finally:
        late.close()


def test_a_broker_that_is_down_blocks_nothing_and_gets_the_event_once_it_is_up(tmp_path):
    port = free_port()
    output = MqttOutput(f"mqtt://127.0.0.1:{port}/whales/down", "test-down")
    try:
        output.on_event({"seq": 1, "type": "upcall"})  # queued, never waits for the broker
        output.on_status({"type": "status"})  # a heartbeat is not worth keeping: dropped
        assert output.status_fields()["mqtt"] == {"connected": False, "sent": 1, "dropped": 1}
        broker = Broker(tmp_path, port).start()
        try:
            sub = Listen(port, "whales/down")
            try:
                sub.wait_for(lambda m: upcalls(m) == [{"seq": 1, "type": "upcall"}], timeout=40)
                assert output.connected
                output.on_status({"type": "status", "uptime_s": 1})
                sub.wait_for(lambda m: any(t == "whales/down/status" for t, _, _ in m))
            finally:
                sub.close()
        finally:
            output.close()
            broker.stop()
    finally:
        output.client.loop_stop()


def test_a_full_queue_drops_and_counts(tmp_path, monkeypatch):
    monkeypatch.setattr("detector.mqtt.QUEUE_MAX", 3)
    output = MqttOutput(f"mqtt://127.0.0.1:{free_port()}/whales/full", "test-full")
    try:
        for seq in range(5):
            output.on_event({"seq": seq})
        assert (output.sent, output.dropped) == (3, 2)
    finally:
        output.close()


def test_username_and_password_from_a_file(tmp_path, tiny_model):
    passwords = tmp_path / "passwd"
    passwords.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwords), "buoy", "s3cret"], check=True)
    broker = Broker(tmp_path, passwords=passwords).start()
    try:
        auth = tmp_path / "mqtt.auth"
        auth.write_text("buoy\ns3cret\n")
        recording = tmp_path / "calls_20090328_001500.wav"
        write_call_train(recording, seconds=30)
        sub = Listen(broker.port, "w", auth=("buoy", "s3cret"))
        try:
            result = invoke(
                *replay_args(recording, tiny_model, tmp_path / "ev.jsonl"),
                "--mqtt", f"mqtt://127.0.0.1:{broker.port}/w", "--mqtt-auth-file", auth,
            )  # fmt: skip
            assert result.exit_code == 0, result.stderr
            n = len(read_events(tmp_path / "ev.jsonl"))
            sub.wait_for(lambda m: len(upcalls(m)) == n and "offline" in states(m))
        finally:
            sub.close()
    finally:
        broker.stop()


@pytest.mark.parametrize(
    "url", ["http://h/t", "mqtt://h", "mqtt:///t", "mqtt://h/a/+", "mqtt://h:99999/t"]
)
def test_bad_url_is_one_line_and_ex_usage(tmp_path, tiny_model, url):
    with pytest.raises(ValueError):
        parse_url(url)
    recording = tmp_path / "calls_20090328_001500.wav"
    write_call_train(recording, seconds=5)
    result = invoke(*replay_args(recording, tiny_model, tmp_path / "ev.jsonl"), "--mqtt", url)
    assert result.exit_code == EX_USAGE
    assert result.stderr.count("\n") == 1 and "--mqtt" in result.stderr, result.stderr
