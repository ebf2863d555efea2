"""How far a run has got: the summary's speeds, the progress line on a TTY, systemd's STATUS."""

import os
import re
import select
import subprocess
import time
import tty
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf

from detector.daemon import summary
from detector.pipeline import Counters
from detector.rates import clock, speed
from train import synth

from .test_cli import DAEMON, invoke, replay_args, write_noise

SR = 2000


def finished(audio_s: float, processing_s: float, events: int = 3) -> SimpleNamespace:
    """What summary() reads of a listener at the end of a run."""
    counters = Counters(samples_in=int(audio_s * SR), processing_s=processing_s)
    return SimpleNamespace(counters=counters, seq=events, events=events, source=object(), dropped=0)


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


# -- the progress line on a terminal ---------------------------------------------------------------
PROGRESS = re.compile(
    r"whale-listen: (\d+):(\d\d) of 0:(\d\d) audio \((\d+\.\d)%\), ([\d.]+)x real time, "
    r"(\d+) event\(s\), ETA (\d+):(\d\d)"
)


def write_gap(path: Path, noise_s: float, zeros_s: float) -> None:
    """Noise, digital silence long enough to be said (10 s), noise again: two log lines mid-run."""
    rng = np.random.default_rng(4)
    noise = 0.1 * synth.noise(rng, int(noise_s * SR))
    audio = np.concatenate([noise, np.zeros(int(zeros_s * SR)), noise])
    sf.write(path, audio, SR, subtype="PCM_16")


def on_a_pty(args: list[object], cwd: Path, timeout: float = 60) -> tuple[int, str]:
    """The daemon with stderr on a real pseudo-terminal (raw: no newline translation); returns
    its exit status and every character it wrote there."""
    master, slave = os.openpty()
    tty.setraw(slave)  # the bytes exactly as written: "\n" is not turned into "\r\n"
    daemon = subprocess.Popen(
        [*DAEMON, *map(str, args)], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=slave, cwd=cwd,
    )  # fmt: skip
    os.close(slave)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # EIO: the slave side has closed (the daemon exited)
                    break
                if not chunk:
                    break
                out += chunk
            elif daemon.poll() is not None:
                break
        status = daemon.wait(timeout=max(1, deadline - time.monotonic()))
    finally:
        if daemon.poll() is None:
            daemon.kill()
        os.close(master)
    return status, out.decode()


def screen(chars: str) -> tuple[list[str], str]:
    """What a terminal shows: the finished lines and the line the cursor is on, applying
    `\\r` (back to the start), `\\x1b[K` (erase to the end) and `\\n`."""
    lines, line, cursor, i = [], [], 0, 0
    while i < len(chars):
        if chars.startswith("\x1b[K", i):
            del line[cursor:]
            i += 3
            continue
        char = chars[i]
        if char == "\r":
            cursor = 0
        elif char == "\n":
            lines.append("".join(line))
            line, cursor = [], 0
        else:
            line[cursor : cursor + 1] = [char]
            cursor += 1
        i += 1
    return lines, "".join(line)


def test_a_replay_on_a_terminal_shows_a_progress_line_that_never_collides(tmp_path, tiny_model):
    recording = tmp_path / "gap.wav"
    write_gap(recording, noise_s=1.0, zeros_s=10.5)  # 12.5 s, paced: silence said at ~11 s
    args = replay_args(recording, tiny_model, tmp_path / "ev.jsonl", "--realtime")
    status, chars = on_a_pty(args, tmp_path)
    assert status == 0, chars
    lines, current = screen(chars)
    assert current == "", "the progress line was left on the screen"
    frames = [
        PROGRESS.fullmatch(f) for f in re.findall(r"\r(whale-listen: [^\r\n\x1b]*)\x1b\[K", chars)
    ]
    assert frames and all(frames), chars  # each frame drawn whole, in the one format
    # time-based: about two a second over a 12.5-s run, never one per loop turn
    assert 15 <= len(frames) <= 12.5 / 0.5 + 3, len(frames)
    done = [int(m[1]) * 60 + int(m[2]) for m in frames]
    assert done == sorted(done) and done[-1] >= 10
    assert {m[3] for m in frames} == {"12"}  # the replay's length (12.5 s shows as 0:12 or 0:13)
    late = frames[len(frames) // 2 :]
    assert all(0.8 <= float(m[5]) <= 1.2 for m in late), [m[0] for m in late]  # --realtime: 1x
    eta = int(late[0][7]) * 60 + int(late[0][8])
    assert abs(eta - (12.5 - done[len(frames) // 2])) <= 2
    # every log line is whole on the screen: cleared before, never mixed with a frame
    assert all(
        line.startswith("whale-listen: ") and line.count("whale-listen: ") == 1 for line in lines
    ), lines
    assert not any(PROGRESS.search(line) or "ETA" in line for line in lines), lines
    said = [line for line in lines if "digital silence" in line or "signal back" in line]
    assert len(said) == 2, lines
    where = chars.index("digital silence (every sample 0)")
    assert PROGRESS.search(chars[:where]) and PROGRESS.search(chars[where:])  # mid-run
    assert lines[-1].startswith("whale-listen: done: 12.5 s of audio")


def test_quiet_and_a_pipe_show_no_progress_line(tmp_path, tiny_model):
    recording = tmp_path / "noise.wav"
    write_noise(recording, seconds=3)
    args = replay_args(recording, tiny_model, tmp_path / "ev.jsonl", "--realtime")
    status, chars = on_a_pty([*args, "--quiet"], tmp_path)
    assert status == 0, chars
    assert "\r" not in chars and "ETA" not in chars and "whale-listen: done: 3.0 s" in chars
    piped = subprocess.run(
        [*DAEMON, *map(str, args)], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert piped.returncode == 0, piped.stderr
    assert "\r" not in piped.stderr and "ETA" not in piped.stderr


def test_under_systemd_status_carries_the_replay_figures(tmp_path, tiny_model):
    from .test_service import NotifySocket

    sock = NotifySocket(tmp_path / "notify.sock")
    recording = tmp_path / "noise.wav"
    write_noise(recording, seconds=4)
    args = replay_args(recording, tiny_model, tmp_path / "ev.jsonl", "--realtime")
    env = dict(os.environ, NOTIFY_SOCKET=sock.path)
    try:
        daemon = subprocess.run(
            [*DAEMON, *map(str, args), "--heartbeat", "0.5"], capture_output=True, text=True,
            cwd=tmp_path, env=env, timeout=60,
        )  # fmt: skip
        fields = sock.drain()
    finally:
        sock.close()
    assert daemon.returncode == 0, daemon.stderr
    statuses = [f for f in fields if f.startswith("STATUS=") and "ETA" in f]
    assert len(statuses) >= 3, fields
    figures = re.compile(r"; replay (\d+\.\d)% of 0:04, ([\d.]+)x real time, ETA 0:0(\d)$")
    matches = [figures.search(s) for s in statuses]
    assert all(matches), statuses
    assert [float(m[1]) for m in matches] == sorted(float(m[1]) for m in matches)
    assert 0.7 <= float(matches[-1][2]) <= 1.3, statuses[-1]
