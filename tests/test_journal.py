"""The journal logger: sd-daemon `<N>` priorities exactly when stderr is the journal stream."""

import os
import subprocess
from pathlib import Path

from tests.test_cli import DAEMON, replay_args, write_noise

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


def daemon_stderr(args: list[object], stderr_path: Path, journal: bool) -> tuple[int, list[str]]:
    """Run the daemon with stderr in a file; with `journal`, JOURNAL_STREAM names that file."""
    env = {k: v for k, v in ENV.items() if k != "JOURNAL_STREAM"}
    with open(stderr_path, "w") as stderr:
        if journal:
            st = os.fstat(stderr.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        code = subprocess.run(
            [*DAEMON, *map(str, args)],
            env=env,
            stderr=stderr,
            stdout=subprocess.DEVNULL,
            timeout=60,
        ).returncode
    return code, stderr_path.read_text().splitlines()


def test_priorities_when_stderr_is_the_journal_stream(tmp_path, tiny_model):
    recording = tmp_path / "noise_20090328_001500.wav"
    write_noise(recording, seconds=3)
    code, lines = daemon_stderr(
        replay_args(recording, tiny_model, tmp_path / "ev.jsonl"), tmp_path / "err", journal=True
    )
    assert code == 0 and lines
    assert all(line.startswith("<6>whale-listen: ") for line in lines), lines
    assert any(line.startswith("<6>whale-listen: done: ") for line in lines)
    code, lines = daemon_stderr(
        replay_args(tmp_path / "missing.wav", tiny_model, tmp_path / "ev.jsonl"),
        tmp_path / "err2",
        journal=True,
    )
    assert code == 2 and len(lines) == 1 and lines[0].startswith("<3>whale-listen: error: "), lines


def test_plain_lines_otherwise(tmp_path, tiny_model):
    recording = tmp_path / "noise_20090328_001500.wav"
    write_noise(recording, seconds=3)
    args = replay_args(recording, tiny_model, tmp_path / "ev.jsonl")
    code, lines = daemon_stderr(args, tmp_path / "err", journal=False)
    assert code == 0 and lines
    assert all(line.startswith("whale-listen: ") for line in lines), lines
    # a JOURNAL_STREAM that names another file (stderr redirected away from the journal)
    other = tmp_path / "not-stderr"
    other.write_text("")
    st = other.stat()
    env_stream = f"{st.st_dev}:{st.st_ino}"
    with open(tmp_path / "err3", "w") as stderr:
        code = subprocess.run(
            [*DAEMON, *map(str, args)], env={**ENV, "JOURNAL_STREAM": env_stream},
            stderr=stderr, stdout=subprocess.DEVNULL, timeout=60,
        ).returncode  # fmt: skip
    lines = (tmp_path / "err3").read_text().splitlines()
    assert code == 0 and lines and all(line.startswith("whale-listen: ") for line in lines), lines
