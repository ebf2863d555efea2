"""How far a run has got: the summary's speeds, the progress line on a TTY, systemd's STATUS."""

import re
from types import SimpleNamespace

import pytest

from detector.daemon import summary
from detector.pipeline import Counters
from detector.rates import clock, speed

from .test_cli import invoke, replay_args, write_noise

SR = 2000


def finished(audio_s: float, processing_s: float, events: int = 3) -> SimpleNamespace:
    """What summary() reads of a listener at the end of a run."""
    counters = Counters(samples_in=int(audio_s * SR), processing_s=processing_s)
    return SimpleNamespace(counters=counters, seq=events, source=object(), dropped=0)


def test_speeds_and_clocks():
    assert speed(25200, 180) == "140x" and speed(10, 10.2) == "1.0x" and speed(3, 2) == "1.5x"
    assert speed(1, 8) == "0.12x" and speed(5, 0) == "-"
    assert clock(7 * 3600) == "7:00:00" and clock(185) == "3:05" and clock(-1) == "0:00"


def test_summary_gives_the_wall_clock_speed_with_the_loop_beside_it():
    """The issue's 7-hour replay at 44.1 kHz: 140x by the wall clock, 1154x for the loop alone."""
    line = summary(finished(25200, 25200 / 1154), wall_s=180)
    assert line == (
        "done: 25200.0 s of audio in 180.0 s, 140x real time (scoring loop 1154x), "
        "3 event(s), 0 dropped sample(s)"
    )


def test_summary_of_a_paced_run_says_1x():
    line = summary(finished(3600, 3600 / 236), wall_s=3601, paced_by="--realtime")
    assert "1.0x real time (paced at 1x by --realtime; scoring loop 236x)" in line
    assert "236x real time" not in line


def done_line(stderr: str) -> str:
    (line,) = [x for x in stderr.splitlines() if x.startswith("whale-listen: done: ")]
    return line


def factors(line: str) -> tuple[float, float]:
    match = re.search(r"([\d.]+)x real time \(.*scoring loop ([\d.]+)x\)", line)
    assert match, line
    return float(match.group(1)), float(match.group(2))


def test_a_realtime_replay_measures_about_1x(tmp_path, tiny_model):
    recording = tmp_path / "noise.wav"
    write_noise(recording, seconds=4)
    result = invoke(*replay_args(recording, tiny_model, tmp_path / "ev.jsonl"), "--realtime")
    assert result.exit_code == 0, result.stderr
    line = done_line(result.stderr)
    wall, loop = factors(line)
    assert "paced at 1x by --realtime" in line
    assert 0.5 <= wall <= 1.05, line  # start-up counts: a little under 1x on a short file
    assert loop > 2 * wall


@pytest.mark.parametrize("rate", [2000, 44100])
def test_a_fast_replay_counts_start_up_and_resampling_in_the_wall_clock(tmp_path, tiny_model, rate):
    import numpy as np
    import soundfile as sf

    recording = tmp_path / "noise.wav"
    audio = 0.1 * np.random.default_rng(1).standard_normal(120 * rate)
    sf.write(recording, audio, rate, subtype="PCM_16")
    result = invoke(*replay_args(recording, tiny_model, tmp_path / "ev.jsonl"))
    assert result.exit_code == 0, result.stderr
    line = done_line(result.stderr)
    wall, loop = factors(line)
    assert "paced" not in line
    seconds = float(re.search(r"of audio in ([\d.]+) s", line).group(1))
    assert wall == pytest.approx(120 / seconds, rel=0.1)  # the figures are rounded
    assert wall < loop  # the loop's own figure leaves out model loading and decoding
