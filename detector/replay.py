"""Replay a recording into the ring as if it were a sound card, with back-pressure.

A reader thread decodes and resamples the file block by block (constant memory, whatever its
length) and waits for room in the ring: nothing is dropped. `--realtime` paces it at 1x.
A truncated file (a recorder that lost power mid-write) is replayed up to where its data ends and
only then reported, so the calls it does hold still reach the event log.
"""

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import soundfile as sf

from detector.audio import AudioInfo, StreamingResampler, audio_info, iter_file_blocks
from detector.constants import SAMPLE_RATE
from detector.errors import WhaleError
from detector.ring import RingBuffer, RingClosed

BLOCK_FRAMES = 16384


def _readable_part(path: Path) -> AudioInfo | None:
    """What libsndfile can still read of a file `audio_info` refused (None: nothing usable)."""
    try:
        with sf.SoundFile(str(path)) as handle:
            if handle.frames <= 0:
                return None
            return AudioInfo(
                path=path,
                samplerate=handle.samplerate,
                channels=handle.channels,
                frames=handle.frames,
                duration_s=handle.frames / handle.samplerate,
            )
    except (sf.LibsndfileError, RuntimeError, OSError):
        return None


def _present_blocks(path: Path, channel: int, block_frames: int) -> Iterator[np.ndarray]:
    """The frames a truncated file holds, as 2 kHz float32 blocks (as `iter_file_blocks`)."""
    resampler = StreamingResampler(sf.info(str(path)).samplerate, SAMPLE_RATE)
    frames_read = 0
    for data in sf.blocks(str(path), blocksize=block_frames, dtype="float32", always_2d=True):
        samples = data[:, channel]
        if not np.all(np.isfinite(samples)):
            bad = frames_read + int(np.argmin(np.isfinite(samples)))
            raise WhaleError(f"{path}: NaN or infinite sample at frame {bad}")
        frames_read += len(data)
        out = resampler.process(samples)
        if len(out):
            yield out
    tail = resampler.flush()
    if len(tail):
        yield tail


class ReplaySource:
    """Feeds 2 kHz float32 blocks of a file into `ring`; `error` holds what ended it early."""

    live = False
    samplerate = SAMPLE_RATE  # blocks are resampled before they enter the ring

    def __init__(self, path: Path, ring: RingBuffer, channel: int = 0, realtime: bool = False):
        self.path = Path(path)
        self.name = str(path)
        self.truncation: WhaleError | None = None  # reported once the present part is replayed
        try:
            self.info = audio_info(self.path)  # fails now, with a clear message, if unreadable
        except WhaleError as error:
            present = _readable_part(self.path)
            if present is None:
                raise
            self.info, self.truncation = present, error
        if channel >= self.info.channels:
            raise WhaleError(
                f"{path}: channel {channel} requested but the file has {self.info.channels} "
                f"channel(s) (0-based)"
            )
        self.ring = ring
        self.channel = channel
        self.realtime = realtime
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _blocks(self, block_frames: int) -> Iterator[np.ndarray]:
        if self.truncation is None:
            yield from iter_file_blocks(self.path, self.channel, block_frames)
            return
        yield from _present_blocks(self.path, self.channel, block_frames)
        raise self.truncation

    def _run(self) -> None:
        started, sent = time.monotonic(), 0
        # live-like 50 ms blocks when paced, big blocks when racing
        block = max(16, self.info.samplerate // 20) if self.realtime else BLOCK_FRAMES
        try:
            for chunk in self._blocks(block):
                if self._stop.is_set():
                    break
                if self.realtime:
                    # pace on the sample count, so sleeps never accumulate drift
                    due = (sent + len(chunk)) / SAMPLE_RATE  # when a card would deliver it
                    ahead = due - (time.monotonic() - started)
                    if ahead > 0 and self._stop.wait(ahead):
                        break
                self.ring.write_blocking(chunk)
                sent += len(chunk)
        except RingClosed:
            pass
        except BaseException as e:  # reported by the consumer, after what was detected is saved
            self.error = e
        finally:
            self.ring.close()

    def stop(self) -> None:
        self._stop.set()
        self.ring.close()
        if self._thread.ident is not None:  # never started when start-up was interrupted
            self._thread.join(timeout=5)
