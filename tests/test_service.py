"""Deployment features wired into the daemon: systemd notify, review clips, card recovery, Raven.

systemd is stood in for by a real AF_UNIX datagram socket bound by the test (NOTIFY_SOCKET).
Card recovery is driven here by in-process fake cards (rings the test fills and closes), so every
step is deterministic; tests/test_live.py drives the same loop through a real ALSA device.
"""

import json
import os
import socket
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

from detector import cli
from detector.errors import WhaleError
from detector.eventlog import EventLog, read_events
from detector.events import merge_events
from detector.notify import Notifier
from detector.outputs import Output
from detector.pipeline import Listener
from detector.publish import Publisher
from detector.ring import RingBuffer
from detector.service import SystemdOutput, status_line
from detector.windows import frame_windows
from detector.zmq_output import ZmqOutput
from train import synth

SR = 2000
DAEMON = [sys.executable, "-c", "from detector.cli import main; main(prog_name='whale-listen')"]
START = datetime(2009, 3, 28, tzinfo=UTC)


class NotifySocket:
    """systemd's side of sd_notify: a bound datagram socket read promptly, as systemd does
    (an unread socket fills after a few datagrams and the sender would have to wait)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.05)
        self.fields: list[str] = []
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            with self._lock:
                self.fields += data.decode().split("\n")

    def drain(self) -> list[str]:
        """Every field received since the last drain, one `KEY=value` per item."""
        time.sleep(0.1)  # what is in flight lands
        with self._lock:
            fields, self.fields = self.fields, []
        return fields

    def close(self) -> None:
        self._done.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path):
    sock = NotifySocket(tmp_path / "notify.sock")
    yield sock
    sock.close()


def write_calls(path: Path, seconds: float, at_s: list[float], seed: int = 5) -> None:
    """Ocean noise with loud synthetic up-calls starting at the given seconds."""
    rng = np.random.default_rng(seed)
    audio = synth.noise(rng, int(seconds * SR))
    for t in at_s:
        call = synth.upcall(rng)
        audio[int(t * SR) : int(t * SR) + len(call)] += 4 * call
    sf.write(path, 0.5 * audio / np.abs(audio).max(), SR, subtype="PCM_16")


# -- systemd ---------------------------------------------------------------------------------------
def test_replay_under_systemd_sends_ready_watchdog_status_and_stopping(
    tmp_path, tiny_model, notify_socket
):
    recording = tmp_path / "r.wav"
    write_calls(recording, 4, [1.0])
    env = dict(os.environ, NOTIFY_SOCKET=notify_socket.path, WATCHDOG_USEC="100000")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1])
    daemon = subprocess.run(
        [
            *DAEMON,
            "--replay",
            recording,
            "--realtime",
            "--model",
            tiny_model,
            "--events-log",
            tmp_path / "ev.jsonl",
            "--publish",
            f"ipc://{tmp_path}/p.sock",
            "--heartbeat",
            "0.3",
            "--linger",
            "0",
        ],  # fmt: skip
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert daemon.returncode == 0, daemon.stderr
    fields = notify_socket.drain()
    assert fields[0] == "READY=1"  # nothing before start-up is complete
    assert fields.count("READY=1") == 1
    assert fields.count("WATCHDOG=1") >= 2
    statuses = [f for f in fields if f.startswith("STATUS=")]
    assert statuses and "s of audio" in statuses[-1] and "event(s)" in statuses[-1]
    assert statuses[-1].startswith("STATUS=stopped:")  # the run's last status, after its events
    assert fields.index("STOPPING=1") > fields.index(statuses[-2])


class BlockingModel:
    """A model whose score() waits for the test: a scoring loop stuck on purpose."""

    identity = {"name": "blocking", "sha256": "0" * 64}
    provider = "cpu"

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def score(self, windows: np.ndarray) -> np.ndarray:
        self.entered.set()
        assert self.release.wait(30), "the test never released the model"
        return np.zeros(len(windows), dtype=np.float32)


def test_a_stalled_scoring_loop_stops_the_watchdog_pings(tmp_path, notify_socket):
    notifier = Notifier({"NOTIFY_SOCKET": notify_socket.path, "WATCHDOG_USEC": "100000"})
    model = BlockingModel()
    ring = RingBuffer(SR * 60)
    source = FakeCard("card", ring)
    log = EventLog(tmp_path / "ev.jsonl")
    publisher = Publisher([f"ipc://{tmp_path}/p.sock"])
    listener = Listener(
        model, 0.5, 1000, log, [SystemdOutput(notifier), ZmqOutput(publisher)], "test",
        heartbeat_s=60, stall_s=60,
    )  # fmt: skip
    thread = threading.Thread(target=listener.run, args=(source, START), daemon=True)
    thread.start()
    try:
        deadline, pings = time.monotonic() + 10, 0
        while pings < 2:  # a healthy idle loop pings
            assert time.monotonic() < deadline, "no watchdog pings from a running loop"
            pings += notify_socket.drain().count("WATCHDOG=1")
        ring.write(np.zeros(3 * SR, dtype=np.float32))  # one window: the model call blocks
        assert model.entered.wait(10)
        notify_socket.drain()
        time.sleep(1.0)  # ten watchdog intervals
        assert "WATCHDOG=1" not in notify_socket.drain()
        model.release.set()
        deadline = time.monotonic() + 10
        while "WATCHDOG=1" not in notify_socket.drain():
            assert time.monotonic() < deadline, "pings did not resume after the stall"
    finally:
        model.release.set()
        listener.stop()
        thread.join(10)
        publisher.close(linger_ms=0)
        log.close()
    assert "STOPPING=1" in notify_socket.drain()


def test_status_line_reports_disk_low():
    status = {
        "source_state": "up", "samples_in": 20000, "events": 2, "level_dbfs": -30.04,
        "dropped_samples": 0,
        "clips": {"saved": 1, "skipped_low_disk": 3, "disk_low": True},
    }  # fmt: skip
    line = status_line(status)
    assert line.startswith("up: 10 s of audio, 2 event(s), level -30.0 dBFS")
    assert "1 clip(s)" in line and "disk low: 3 clip(s) skipped" in line
    assert "SILENCE" not in line and "LOG" not in line


def test_status_line_shouts_silence_and_a_failing_event_log():
    status = {
        "source_state": "up", "samples_in": 20000, "events": 2, "level_dbfs": None,
        "dropped_samples": 0, "silent_s": 12.4, "unlogged_events": 2,
    }  # fmt: skip
    line = status_line(status)
    assert "DIGITAL SILENCE for 12 s" in line
    assert "EVENT LOG FAILING: 2 event(s) held in memory" in line
    assert "SILENCE" not in status_line({**status, "silent_s": 9.9})


# -- clips -----------------------------------------------------------------------------------------
def invoke(*args: object):
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def common(model: Path, log: Path, *extra: object) -> list[object]:
    return ["--model", model, "--events-log", log, "--publish", "tcp://127.0.0.1:*",
            "--linger", "0", *extra]  # fmt: skip


def test_each_event_gets_a_flac_clip_and_a_png_named_by_its_id(tmp_path, tiny_model):
    recording = tmp_path / "calls.wav"
    write_calls(recording, 30, [5.0, 15.0, 25.0])
    clips, log = tmp_path / "clips", tmp_path / "ev.jsonl"
    result = invoke("--replay", recording, *common(tiny_model, log, "--clips", clips))
    assert result.exit_code == 0, result.stderr
    events = read_events(log)
    assert events
    original, _ = sf.read(recording, dtype="float32")
    for event in events:
        flac = Path(event["clip"])
        assert flac == (clips / f"{event['id']}.flac").resolve()
        audio, rate = sf.read(flac, dtype="float32")
        assert rate == SR
        first = max(0, round((event["offset_start_s"] - 1) * SR))  # event +- 1 s
        last = min(len(original), round((event["offset_end_s"] + 1) * SR))
        assert len(audio) == last - first
        np.testing.assert_allclose(audio, original[first:last], atol=1 / 32768)
        png = flac.with_suffix(".png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
        assert int.from_bytes(png[16:20], "big") > 10  # width: spectrogram frames
    assert sorted(p.name for p in clips.iterdir()) == sorted(
        f"{e['id']}{ext}" for e in events for ext in (".flac", ".png")
    )


def test_low_disk_skips_clips_but_keeps_events_and_says_so_in_status(tmp_path, tiny_model):
    recording = tmp_path / "calls.wav"
    write_calls(recording, 6, [1.0])
    clips, log = tmp_path / "clips", tmp_path / "ev.jsonl"
    endpoint = f"ipc://{tmp_path}/s.sock"
    from tests.test_cli import Subscriber

    subscriber = Subscriber(endpoint, ("status",))
    subscriber.start()
    try:
        result = invoke(
            "--replay", recording, "--realtime", "--heartbeat", "0.2", "--wait-subscribers", "1",
            *common(tiny_model, log, "--clips", clips, "--min-free-mb", 1e12),
            "--publish", endpoint,
        )  # fmt: skip
        assert result.exit_code == 0, result.stderr
        events = read_events(log)
        assert events and all("clip" not in e for e in events)
        _, status = subscriber.until(lambda m: m[1].get("clips", {}).get("disk_low"))[-1]
    finally:
        subscriber.stop()
    assert status["clips"]["skipped_low_disk"] >= 1 and status["clips"]["saved"] == 0
    assert list(clips.iterdir()) == []


def test_clips_directory_that_cannot_be_made_is_one_line(tmp_path, tiny_model):
    recording = tmp_path / "calls.wav"
    write_calls(recording, 3, [])
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = invoke("--replay", recording, *common(tiny_model, tmp_path / "e.jsonl"),
                    "--clips", blocker / "clips")  # fmt: skip
    assert result.exit_code == 2
    assert result.stderr.startswith("whale-listen: error: cannot create clips directory")
    assert "Traceback" not in result.stderr


# -- Raven export ----------------------------------------------------------------------------------
def test_export_raven_writes_the_table_and_prints_its_path(tmp_path):
    log = tmp_path / "ev.jsonl"
    event = {"type": "upcall", "id": "a", "offset_start_s": 1.5, "offset_end_s": 2.5,
             "score": 0.9, "source": "x.wav"}  # fmt: skip
    log.write_text(json.dumps(event) + "\n")
    result = invoke("export-raven", log)
    assert result.exit_code == 0, result.stderr
    table = tmp_path / "ev.selections.txt"
    assert result.stdout.strip() == str(table)
    rows = [line.split("\t") for line in table.read_text().splitlines()]
    assert rows[0][:5] == ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)"]
    assert rows[1][3:5] == ["1.500", "2.500"]
    out = tmp_path / "other.txt"
    result = invoke("export-raven", log, "-o", out)
    assert result.exit_code == 0 and result.stdout.strip() == str(out) and out.exists()
    result = invoke("export-raven", tmp_path / "missing.jsonl")
    assert result.exit_code == 2 and "missing.jsonl" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


# -- card recovery ---------------------------------------------------------------------------------
class FakeCard:
    """What the loop needs of a DeviceSource: a ring the test fills, closes or leaves silent."""

    samplerate = SR

    def __init__(self, name: str, ring: RingBuffer, error: BaseException | None = None) -> None:
        self.name, self.ring, self.error = name, ring, error
        self.stopped = False

    def stop(self, timeout: float | None = None) -> bool:
        self.stopped = True
        self.ring.close()
        return True


class LoudModel:
    """1.0 for a window holding a loud burst, else 0: events exactly where the test puts them."""

    identity = {"name": "loud", "sha256": "1" * 64}
    provider = "cpu"

    def score(self, windows: np.ndarray) -> np.ndarray:
        return (np.abs(windows).max(axis=1) > 0.5).astype(np.float32)


def bursts(seconds: float, at_s: list[float]) -> np.ndarray:
    audio = np.full(int(seconds * SR), 0.01, dtype=np.float32)
    for t in at_s:
        audio[int(t * SR) : int((t + 0.5) * SR)] = 0.9
    return audio


def listen(tmp_path, source, reopen, **kwargs):
    """Run a Listener in a thread; returns (listener, thread, log, publisher, statuses)."""
    log = EventLog(tmp_path / "ev.jsonl")
    publisher = Publisher([f"ipc://{tmp_path}/p.sock"])
    statuses: list[dict] = []

    class Record(Output):
        def on_status(self, status: dict) -> None:
            statuses.append(status)

    listener = Listener(LoudModel(), 0.5, 1000, log, [ZmqOutput(publisher), Record()], "test",
                        heartbeat_s=0.05, **kwargs)  # fmt: skip
    thread = threading.Thread(target=listener.run, args=(source, START, reopen), daemon=True)
    thread.start()
    return listener, thread, log, publisher, statuses


def wait_for(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


@pytest.mark.parametrize("failure", ["error", "stall"])
def test_a_lost_card_is_reopened_and_event_times_skip_the_gap(tmp_path, capfd, failure):
    before, after = bursts(10, [4.0, 9.6]), bursts(10, [3.0])  # 9.6 s: open when the card dies
    first = FakeCard("card", RingBuffer(SR * 60))
    first.ring.write(before)
    second = FakeCard("card", RingBuffer(SR * 60))
    attempts = []

    def reopen():
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise WhaleError("unknown input device 'card'")  # still unplugged
        second.ring.write(after)
        return second

    listener, thread, log, publisher, statuses = listen(
        tmp_path, first, reopen, stall_s=0.5, retry_max=1.0
    )
    try:
        wait_for(lambda: listener.counters.samples_in == len(before))
        if failure == "error":
            first.error = WhaleError("input device 'card' stopped delivering audio")
            first.ring.close()
        wait_for(lambda: listener.counters.samples_in == len(before) + len(after))
        wait_for(lambda: any(s["source_state"] == "up" and s["samples_in"] > len(before)
                             for s in statuses))  # fmt: skip
    finally:
        listener.stop()
        thread.join(10)
        publisher.close(linger_ms=0)
        log.close()
    assert len(attempts) == 2 and first.stopped
    events = read_events(tmp_path / "ev.jsonl")
    assert len(events) == 3
    assert "gap_before_s" not in events[0] and "gap_before_s" not in events[1]
    assert events[1]["offset_end_s"] <= 10.0  # the open event was closed at the gap
    gap_s = events[2]["gap_before_s"]
    assert gap_s >= 1.0  # the first retry waits 1 s
    gap = listener.counters.gap_samples
    assert abs(gap / SR - gap_s) <= 0.0005 + 1e-9  # gap_before_s is rounded to milliseconds
    # the event after the gap sits where it would without the gap, shifted by the gap
    starts, windows = frame_windows(np.concatenate([before, after]), 1000)
    gapless = merge_events(starts, LoudModel().score(windows), 0.5, 1000)
    assert len(gapless) == 3  # the same three events without the outage
    assert events[2]["offset_start_s"] == pytest.approx(
        gapless[2].start_sample / SR + gap_s, abs=0.002
    )
    states = [s["source_state"] for s in statuses]
    assert "down" in states and states[-2:] == ["up", "stopped"]
    down = [s for s in statuses if s["source_state"] == "down"]
    assert down[0]["outages"] == 1 and statuses[-1]["dropped_samples"] == gap
    err = capfd.readouterr().err.splitlines()
    lost = [line for line in err if "is down" in line]
    reason = "stopped delivering audio" if failure == "error" else "no audio for 0.5 s"
    assert len(lost) == 1 and reason in lost[0] and lost[0].startswith("whale-listen: input")
    assert sum("is back after" in line for line in err) == 1


def test_a_replay_that_fails_is_not_retried(tmp_path):
    card = FakeCard("file.wav", RingBuffer(SR * 60), error=WhaleError("file.wav: truncated"))
    card.ring.write(bursts(5, [1.0]))
    card.ring.close()
    listener, thread, log, publisher, _ = listen(tmp_path, card, None)
    thread.join(10)
    publisher.close(linger_ms=0)
    log.close()
    assert not thread.is_alive() and listener.counters.outages == 0
    assert len(read_events(tmp_path / "ev.jsonl")) == 1


def test_device_list_is_refreshed_only_when_no_stream_is_open(monkeypatch):
    """A replugged card needs a PortAudio restart, which would hang on a stream stuck open."""
    from types import SimpleNamespace

    from detector import device

    calls = []
    fake = SimpleNamespace(
        _terminate=lambda: calls.append("terminate"), _initialize=lambda: calls.append("init")
    )
    monkeypatch.setattr(device, "_sounddevice", lambda: fake)
    monkeypatch.setattr(device.DeviceSource, "open_streams", 1)
    assert device.refresh_devices() is False and calls == []
    monkeypatch.setattr(device.DeviceSource, "open_streams", 0)
    assert device.refresh_devices() is True and calls == ["terminate", "init"]
