"""Replay a recording into the ring as if it were a sound card, with back-pressure.

A reader thread decodes and resamples the file block by block (constant memory, whatever its
length) and waits for room in the ring: nothing is dropped. `--realtime` paces it at 1x.
A truncated file (a recorder that lost power mid-write) is replayed up to where its data ends and
only then reported, so the calls it does hold still reach the event log.
"""

import threading
import time
from pathlib import Path

from detector.audio import audio_info, iter_file_blocks
from detector.constants import SAMPLE_RATE
from detector.errors import WhaleError
from detector.ring import RingBuffer, RingClosed

BLOCK_FRAMES = 16384


class ReplaySource:
    """Feeds 2 kHz float32 blocks of a file into `ring`; `error` holds what ended it early."""

    samplerate = SAMPLE_RATE  # blocks are resampled before they enter the ring

    def __init__(self, path: Path, ring: RingBuffer, channel: int = 0, realtime: bool = False):
        self.path = Path(path)
        self.name = str(path)
        # fails now, with a clear message, if unreadable; a truncated file is replayed as far
        # as it goes, then reported
        self.info = audio_info(self.path, keep_truncated=True)
        if channel >= self.info.channels:
            raise WhaleError(
                f"{path}: channel {channel} requested but the file has {self.info.channels} "
                f"channel(s) (0-based)"
            )
        self.ring = ring
        self.channel = channel
        self.realtime = realtime
        self.error: BaseException | None = None
        self.input_overflows = 0  # a file never overflows; kept so status reads every source alike
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="replay", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        started, sent = time.monotonic(), 0
        # live-like 50 ms blocks when paced, big blocks when racing
        block = max(16, self.info.samplerate // 20) if self.realtime else BLOCK_FRAMES
        try:
            for chunk in iter_file_blocks(self.path, self.channel, block, keep_truncated=True):
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

    def stop(self, timeout: float | None = 5.0) -> bool:
        """Stop reading and close the ring; True once the reader thread has ended."""
        self._stop.set()
        self.ring.close()
        if self._thread.ident is not None:  # never started when start-up was interrupted
            self._thread.join(timeout=timeout)
        return not self._thread.is_alive()

    def describe(self) -> str:
        return f"replay {self.name} ({self.info.duration_s:.1f} s at {self.info.samplerate} Hz)"
