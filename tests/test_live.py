"""The live path end to end: `whale-listen --device hydrophone` on an ALSA `file` PCM fed by a FIFO.

The daemon runs as a subprocess whose HOME holds the .asoundrc (PortAudio reads ALSA's
configuration when it starts). The feeder runs at several times real time so the tests are quick;
the daemon is stopped (SIGTERM) before the feeder, as tests/alsa.py explains.
"""

import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from detector.eventlog import read_events
from tests.alsa import FifoFeeder, make_alsa_home, make_fifo, portaudio_problem
from tests.test_cli import DAEMON, Subscriber, replay
from train import synth

SR = 2000
CHUNK = 400  # feeder frames per write
BLOCKSIZE = 200  # divides CHUNK: no short read, no inserted samples
SPEED = 10.0


@pytest.fixture
def alsa_env(tmp_path):
    problem = portaudio_problem()  # without the FIFO: opening it would wait for a writer
    if problem:
        pytest.skip(problem)
    fifo = make_fifo(tmp_path / "hydrophone.fifo")
    return fifo, make_alsa_home(tmp_path, fifo)


def recording(seed: int, seconds: float, calls: int) -> np.ndarray:
    audio, _ = synth.synthetic_recording(
        np.random.default_rng(seed), seconds, calls, n_lookalikes=1
    )
    return audio.astype(np.float32)


def start_daemon(tmp_path: Path, env: dict, model: Path, endpoint: str, *extra: str):
    return subprocess.Popen(
        [
            *DAEMON,
            "--device",
            "hydrophone",
            "--blocksize",
            str(BLOCKSIZE),
            "--model",
            str(model),
            "--events-log",
            str(tmp_path / "live.jsonl"),
            "--publish",
            endpoint,
            "--heartbeat",
            "0.2",
            "--linger",
            "1",
            *extra,
        ],  # fmt: skip
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


def stop_daemon(daemon: subprocess.Popen) -> str:
    daemon.send_signal(signal.SIGTERM)
    try:
        _, stderr = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
    return stderr


@contextmanager
def live_daemon(
    tmp_path: Path, env: dict, model: Path, feeder: FifoFeeder, *extra: str,
    topics: tuple[str, ...] = ("",),
) -> Iterator[tuple[subprocess.Popen, Subscriber]]:  # fmt: skip
    """The daemon on the FIFO card with a subscriber; the feeder starts once the loop runs.

    Whatever the test body does, the daemon is gone before the feeder stops (tests/alsa.py: a
    closed FIFO floods the card with stale data).
    """
    endpoint = f"ipc://{tmp_path}/live.sock"
    subscriber = Subscriber(endpoint, topics)
    subscriber.start()
    daemon = start_daemon(tmp_path, env, model, endpoint, *extra)
    try:
        subscriber.until(lambda m: m[0] == "status")  # the loop runs: the card is open
        feeder.start()
        yield daemon, subscriber
    finally:
        if daemon.poll() is None:
            daemon.kill()
        feeder.stop()
        subscriber.stop()


def test_device_publishes_the_events_of_a_replay_of_the_same_audio(
    tmp_path, alsa_env, shipped_model
):
    fifo, env = alsa_env
    audio = recording(seed=11, seconds=60, calls=4)
    wav = tmp_path / "same.wav"
    sf.write(wav, audio, SR, subtype="PCM_16")
    expected = replay(wav, shipped_model, tmp_path / "replay.jsonl")
    assert expected, "the model finds nothing in the recording: the comparison would be empty"

    feeder = FifoFeeder(fifo, audio, speed=SPEED, chunk_frames=CHUNK)  # holds the FIFO open
    with live_daemon(tmp_path, env, shipped_model, feeder) as (daemon, subscriber):
        # all the audio and 3 s of the feeder's silence after it: the last event is closed
        subscriber.until(lambda m: m[0] == "status" and m[1]["samples_in"] >= len(audio) + 3 * SR)
        stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr
    live = read_events(tmp_path / "live.jsonl")
    assert len(live) == len(expected), (live, expected)
    for got, want in zip(live, expected, strict=True):
        assert abs(got["offset_start_s"] - want["offset_start_s"]) <= 0.5
        assert abs(got["offset_end_s"] - want["offset_end_s"]) <= 0.5
        assert got["source"] == "hydrophone" and "gap_before_s" not in got


class PausingFeeder(FifoFeeder):
    """Feeds `first`, then nothing (the card hangs) until `resume` is set, then `second`."""

    def __init__(self, fifo: Path, first: np.ndarray, second: np.ndarray, **kwargs) -> None:
        super().__init__(fifo, np.concatenate([first, second]), **kwargs)
        self.pause_at = len(first) * self.frame_bytes
        self.paused = threading.Event()
        self.resume = threading.Event()

    def _write_all(self, chunk: bytes, required: bool) -> None:
        if required and self.written == self.pause_at:
            self.paused.set()
            while not self.resume.wait(0.05):
                if self._stop.is_set():
                    return
        super()._write_all(chunk, required)
        if required:
            self.written += len(chunk)

    written = 0


def test_a_hung_card_is_reopened_and_detection_resumes(tmp_path, alsa_env, shipped_model):
    fifo, env = alsa_env
    first, second = recording(21, 30, 2), recording(22, 30, 2)
    wav = tmp_path / "second.wav"
    sf.write(wav, second, SR, subtype="PCM_16")
    expected = replay(wav, shipped_model, tmp_path / "replay.jsonl")
    assert expected, "the model finds nothing after the outage: nothing would be checked"

    feeder = PausingFeeder(fifo, first, second, speed=SPEED, chunk_frames=CHUNK)
    options = ("--stall-timeout", "1", "--retry-max", "1")
    with live_daemon(tmp_path, env, shipped_model, feeder, *options) as (daemon, subscriber):
        down = subscriber.until(lambda m: m[0] == "status" and m[1]["source_state"] == "down")
        before = down[-1][1]["samples_in"]
        feeder.resume.set()
        subscriber.until(lambda m: m[0] == "status" and m[1]["source_state"] == "up"
                         and m[1]["samples_in"] >= before + len(second) + 3 * SR)  # fmt: skip
        stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr
    assert before == len(first)  # everything before the hang was scored
    lines = stderr.splitlines()
    assert sum("is down (no audio for 1 s)" in line for line in lines) == 1, stderr
    assert any("'hydrophone' is back" in line for line in lines), stderr
    live = read_events(tmp_path / "live.jsonl")
    after = [e for e in live if e["offset_start_s"] > len(first) / SR]
    assert len(after) == len(expected), (live, expected)
    gap_s = after[0]["gap_before_s"]
    assert gap_s > 1.0
    # the stream counter skipped the gap: minus the gap, the events sit where the replay puts
    # them (up to a hop, plus the few 0.1-s reads the abandoned stream took on resumption)
    for got, want in zip(after, expected, strict=True):
        shifted = got["offset_start_s"] - gap_s - len(first) / SR
        assert abs(shifted - want["offset_start_s"]) <= 1.0, (got, want)


def test_a_card_sending_zeros_is_reported_and_its_return_too(tmp_path, alsa_env, tiny_model):
    fifo, env = alsa_env
    rng = np.random.default_rng(4)
    noise = [0.1 * synth.noise(rng, 4 * SR).astype(np.float32) for _ in range(2)]
    audio = np.concatenate([noise[0], np.zeros(12 * SR, dtype=np.float32), noise[1]])

    feeder = FifoFeeder(fifo, audio, speed=SPEED, chunk_frames=CHUNK)
    with live_daemon(tmp_path, env, tiny_model, feeder, topics=("status",)) as (daemon, sub):
        silent = sub.until(lambda m: m[1]["silent_s"] >= 10)[-1][1]
        back = sub.until(lambda m: m[1]["samples_in"] >= len(audio) + SR)[-1][1]
        stderr = stop_daemon(daemon)
    assert daemon.returncode == 0, stderr
    assert silent["source_state"] == "up"  # the card delivers samples: it is not down
    assert back["silent_s"] < 10  # the feeder's own zeros after the audio: under a second or two
    lines = stderr.splitlines()
    assert (
        sum("'hydrophone': digital silence (every sample 0) since 4.0 s" in x for x in lines) == 1
    )
    assert sum("'hydrophone': signal back after 12.0 s of digital silence" in x for x in lines) == 1
