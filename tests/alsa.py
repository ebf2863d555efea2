"""Fake sound cards for tests: an ALSA `file` PCM that PortAudio lists like a real capture device.

How the device behaves (alsa-lib 1.2.8, PortAudio 19.6, measured):
- The `file` PCM accepts any rate (2000 Hz included), format and channel count, and hands over
  the infile's bytes verbatim in the stream's format: open it as int16 for an int16 LE file
  (float32 would reinterpret the bytes). Frames are interleaved; capture starts at the file's
  first byte (no preroll, no zeros); PortAudio's default_samplerate says 44100.
- It reads as fast as the reader asks, not at the stream rate. When a read() returns short (end of
  file, or a FIFO holding less than one read), the missing bytes are stale buffer contents:
  after EOF the device floods repeats of old data forever.
- With `rate`, the file PCM is wrapped in a `plug` pinned at that rate: default_samplerate is
  then `rate`, opening at `rate` still passes the bytes through exactly, and 2000 Hz is refused
  (ALSA's plug cannot go below 4000 Hz): a card that makes the daemon resample.
- PortAudio reads the ALSA config once, when sounddevice is imported, and opens every PCM to
  probe it, so tests run sounddevice in a subprocess with the env from `make_alsa_home`.

FIFOs (the writer sets the pace): use `FifoFeeder`. It holds the FIFO open read-write, so
PortAudio's probe open neither blocks nor breaks the pipe, and the device never sees EOF (no stale
flood). Capture with a fixed blocksize that divides `chunk_frames` so no read() comes back short.
Stop the capture while the feeder still runs (it writes silence after the signal): a capture
blocked in read() on an empty FIFO cannot be stopped (PortAudio's stop and abort both wait).
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol

import numpy as np

from detector.errors import WhaleError
from detector.ring import RingBuffer

REPO_ROOT = Path(__file__).resolve().parents[1]
SAMPLE_RATE = 2000


def to_int16(signal: np.ndarray) -> np.ndarray:
    """Float samples in [-1, 1] -> int16 (x 32768, clipped), the values the device will deliver."""
    scaled = np.round(np.asarray(signal, dtype=np.float64) * 32768.0)
    return np.clip(scaled, -32768, 32767).astype("<i2")


def write_raw_int16(path: Path, signal: np.ndarray) -> Path:
    """Write a headerless int16 LE file; a 2-D (frames, channels) signal is written interleaved."""
    to_int16(signal).tofile(path)
    return path


def make_alsa_home(
    tmp_path: Path, infile: Path, name: str = "hydrophone", rate: int | None = None
) -> dict[str, str]:
    """Write tmp_path/.asoundrc defining capture device `name` that reads `infile`.

    Returns an environment for subprocesses: os.environ with HOME=tmp_path and this checkout
    first on PYTHONPATH (so `python -c "import detector"` and the CLI use the code under test).
    """
    file_pcm = (
        f'type file; slave.pcm "null"; file "/dev/null"; infile "{Path(infile).resolve()}"; '
        'format "raw"'
    )
    if rate is None:
        config = f"pcm.{name} {{ {file_pcm} }}\n"
    else:
        config = (
            f"pcm.{name} {{\n    type plug\n"
            f"    slave {{ pcm {{ {file_pcm} }}; rate {int(rate)}; format S16_LE; channels 1 }}\n"
            "}\n"
        )
    (tmp_path / ".asoundrc").write_text(config)
    env = dict(os.environ, HOME=str(tmp_path))
    env.pop("XDG_CONFIG_HOME", None)  # alsa-lib also reads $XDG_CONFIG_HOME/alsa/asoundrc
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def run_python(
    code: str, env: dict[str, str], *args: str, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """Run `python -c code args...` with the ALSA env (PortAudio starts inside that environment)."""
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO_ROOT,
    )


def portaudio_problem(env: dict[str, str] | None = None) -> str | None:
    """Why sounddevice cannot start PortAudio here (a skip reason), or None when it can."""
    result = run_python("import sounddevice", env or dict(os.environ), timeout=30)
    if result.returncode == 0:
        return None
    lines = (result.stderr or "").strip().splitlines() or ["unknown error"]
    return f"PortAudio cannot be loaded through sounddevice: {lines[-1]}"


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


class FifoFeeder:
    """Feed a float signal as int16 LE into a FIFO at `speed` x real time, then silence until stop.

    Use as a context manager, or start()/stop(). `finished` is set once the whole signal has been
    written (it may still sit in the pipe buffer, 64 KiB, until the device reads it).
    """

    def __init__(
        self,
        fifo: Path,
        signal: np.ndarray,
        rate: int = SAMPLE_RATE,
        speed: float = 1.0,
        chunk_frames: int = 200,
    ) -> None:
        data = to_int16(signal)
        self.frame_bytes = data.itemsize * (data.shape[1] if data.ndim == 2 else 1)
        self.data = data.tobytes()
        self.chunk_bytes = chunk_frames * self.frame_bytes
        self.chunk_seconds = chunk_frames / (rate * speed)
        self.finished = threading.Event()
        self._stop = threading.Event()
        # O_RDWR: opening does not wait for a reader and writes never hit a closed pipe
        self._fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
        self._thread = threading.Thread(target=self._run, name="fifo-feeder", daemon=True)

    def _write_all(self, chunk: bytes, required: bool) -> None:
        """Write a chunk; if the pipe is full, wait (signal) or skip it (silence padding)."""
        view = memoryview(chunk)
        while view and not self._stop.is_set():
            try:
                view = view[os.write(self._fd, view) :]
            except BlockingIOError:
                if not required and len(view) == len(chunk):
                    return  # skip whole silence chunks only: a partial one would shift frames
                time.sleep(0.01)
            except OSError as exc:  # pragma: no cover - reported, not expected
                if exc.errno != errno.EINTR:
                    raise

    def _run(self) -> None:
        next_time = time.monotonic()
        for start in range(0, len(self.data), self.chunk_bytes):
            if self._stop.is_set():
                return
            self._write_all(self.data[start : start + self.chunk_bytes], required=True)
            next_time += self.chunk_seconds
            self._stop.wait(max(0.0, next_time - time.monotonic()))
        self.finished.set()
        silence = bytes(self.chunk_bytes)
        while not self._stop.is_set():
            self._write_all(silence, required=False)
            next_time += self.chunk_seconds
            self._stop.wait(max(0.0, next_time - time.monotonic()))

    def start(self) -> FifoFeeder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> FifoFeeder:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


# -- the consumer side, for capture tests (the daemon's loop does this with recovery) ------------
class _Source(Protocol):
    ring: RingBuffer
    samplerate: int
    name: str
    error: BaseException | None


def read_blocks(
    source: _Source, timeout: float | None = 10.0, block_samples: int = 1000
) -> Iterator[np.ndarray]:
    """Yield 2 kHz float32 blocks from the source's ring until the ring is closed and drained.

    A device that delivers nothing for `timeout` seconds is a WhaleError (a silent hang is the
    worst failure for an unattended buoy); None waits forever. If the stream died, the cause is
    raised once everything it delivered has been yielded.
    """
    resampler = None
    if source.samplerate != SAMPLE_RATE:
        from detector.audio import StreamingResampler

        resampler = StreamingResampler(source.samplerate, SAMPLE_RATE)
    max_in = max(1, block_samples * source.samplerate // SAMPLE_RATE)
    ring = source.ring
    while True:
        x = ring.read(max_in, timeout)
        if len(x) == 0:
            if ring.closed:
                break
            raise WhaleError(f"input device {source.name!r} delivered no audio for {timeout} s")
        out = resampler.process(x) if resampler else x
        if len(out):
            yield out
    if resampler:
        tail = resampler.flush()
        if len(tail):
            yield tail
    if isinstance(source.error, WhaleError):
        raise source.error
    if source.error is not None:
        raise WhaleError(f"input device {source.name!r} failed: {source.error}") from source.error
