"""Clock sanity for live cards (issue 14 item 5): a card flooding stale data must not stamp events
hours ahead. Unit checks of `ClockWatch`, then the daemon on an ALSA `file` PCM that floods."""

import signal
import subprocess
import time
from datetime import UTC, datetime, timedelta

import pytest
import soundfile as sf

from detector.clock import CLOCK_TOLERANCE_S, ClockWatch
from detector.eventlog import read_events
from tests.alsa import make_alsa_home, portaudio_problem, write_raw_int16
from tests.test_cli import DAEMON, Subscriber, write_call_train

SR = 2000
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def test_a_count_that_agrees_with_the_clock_keeps_the_start():
    watch = ClockWatch("card")
    now = T0 + timedelta(seconds=100)
    assert watch.check(T0, (100 - CLOCK_TOLERANCE_S + 0.1) * SR, now) == T0
    assert watch.status_fields() == {"clock_resets": 0, "clock_drift_s": -4.9}


@pytest.mark.parametrize("counted_s", [14 * 3600, 50.0], ids=["stale flood", "slow card"])
def test_a_count_off_the_clock_re_anchors_and_is_counted(counted_s, capsys):
    watch = ClockWatch("card")
    now = T0 + timedelta(seconds=100)
    start = watch.check(T0, counted_s * SR, now)
    assert start == now - timedelta(seconds=counted_s)  # the last sample counted is now
    assert watch.status_fields() == {"clock_resets": 1, "clock_drift_s": counted_s - 100}
    assert "re-anchored" in capsys.readouterr().err
    watch.check(start, (counted_s + 1) * SR, now + timedelta(seconds=0.5))  # agrees again
    assert watch.resets == 1


def test_a_flood_is_said_once_a_minute_not_once_a_block(capsys):
    watch = ClockWatch("card")
    start = T0
    for k in range(1, 200):
        start = watch.check(start, k * 3600 * SR, T0 + timedelta(seconds=k / 10))
    assert watch.resets == 199
    assert capsys.readouterr().err.count("re-anchored") == 1


def test_a_stale_flood_from_the_card_is_re_anchored_to_the_wall_clock(tmp_path, tiny_model):
    """An ALSA `file` PCM reads its file as fast as asked, then floods stale data forever (see
    tests/alsa.py): a card whose writer is gone. Before: events stamped hours ahead."""
    problem = portaudio_problem()
    if problem:
        pytest.skip(problem)
    wav = tmp_path / "calls.wav"
    write_call_train(wav, seconds=30)
    audio, _ = sf.read(wav, dtype="float32")
    env = make_alsa_home(tmp_path, write_raw_int16(tmp_path / "in.raw", audio))
    endpoint = f"ipc://{tmp_path}/flood.sock"
    subscriber = Subscriber(endpoint, ("",))
    subscriber.start()
    log = tmp_path / "events.jsonl"
    daemon = subprocess.Popen(
        [*DAEMON, "--device", "hydrophone", "--blocksize", "200", "--model", str(tiny_model),
         "--threshold", "0.5", "--events-log", str(log), "--publish", endpoint,
         "--heartbeat", "0.2", "--linger", "1", "--station", "test-station"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )  # fmt: skip
    try:
        status = subscriber.until(
            lambda m: m[0] == "status" and m[1].get("clock_resets", 0) > 0 and m[1]["events"] > 0
        )[-1][1]
        daemon.send_signal(signal.SIGTERM)
        _, stderr = daemon.communicate(timeout=30)
    finally:
        if daemon.poll() is None:
            daemon.kill()
        subscriber.stop()
    wall = time.time()
    assert daemon.returncode == 0, stderr
    assert "re-anchored to the wall clock" in stderr
    assert status["samples_in"] / SR > 60  # it did flood: more audio than wall time by far
    events = read_events(log)
    assert events
    for event in events:
        stamped = datetime.fromisoformat(event["start"].replace("Z", "+00:00")).timestamp()
        assert stamped <= wall + CLOCK_TOLERANCE_S, event  # before: hours in the future
