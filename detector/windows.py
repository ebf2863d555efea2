"""Cut a 2 kHz sample stream into the model's 2-s windows, one every `window_hop` samples.

The window hop (samples between windows; `--hop` gives it in seconds) is not the STFT's frame hop
inside a window.

Window i starts at sample i*window_hop of the stream. The streaming `Windower` and the whole-array
`frame_windows` give identical windows, so evaluation on files scores exactly what the daemon
scores live, whatever block sizes the audio source delivers.
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detector.constants import WINDOW_SAMPLES


def _check(window_hop: int, window: int) -> None:
    if window_hop <= 0 or window <= 0:
        raise ValueError(
            f"window hop and window must be positive, got {window_hop} and {window} samples"
        )


def window_starts(n_samples: int, window_hop: int, window: int = WINDOW_SAMPLES) -> np.ndarray:
    """Start samples of every complete window in a stream of n_samples (int64)."""
    _check(window_hop, window)
    if n_samples < window:
        return np.zeros(0, dtype=np.int64)
    return np.arange(0, n_samples - window + 1, window_hop, dtype=np.int64)


def frame_windows(
    audio: np.ndarray, window_hop: int, window: int = WINDOW_SAMPLES
) -> tuple[np.ndarray, np.ndarray]:
    """All complete windows of a whole array: (starts int64 [k], windows float32 [k, window]).

    The windows are a read-only strided view (no copy), so an hour of audio costs no memory.
    """
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    starts = window_starts(len(audio), window_hop, window)
    if len(starts) == 0:
        return starts, np.zeros((0, window), dtype=np.float32)
    return starts, sliding_window_view(audio, window)[::window_hop]


class Windower:
    """Streaming window extraction from blocks of any size; keeps under one window of samples."""

    def __init__(self, window_hop: int, window: int = WINDOW_SAMPLES) -> None:
        _check(window_hop, window)
        self.window_hop = window_hop
        self.window = window
        self._seen = 0
        self._next_start = 0  # stream position of the next window to emit
        # Samples [next_start, seen) when seen > next_start: the start of the next window.
        self._tail = np.zeros(window, dtype=np.float32)
        self._tail_len = 0

    @property
    def samples_seen(self) -> int:
        return self._seen

    def push(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add samples; return (starts int64 [k], windows float32 [k, window]) completed by them."""
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        seen_before = self._seen
        self._seen += len(block)
        # With a window hop > window, samples between windows belong to none: skip them.
        block = block[max(0, self._next_start - seen_before) :]
        if self._seen < self._next_start + self.window:
            self._tail[self._tail_len : self._tail_len + len(block)] = block
            self._tail_len += len(block)
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.window), dtype=np.float32)

        pending = np.concatenate([self._tail[: self._tail_len], block])  # starts at next_start
        k = (self._seen - self.window - self._next_start) // self.window_hop + 1
        starts = self._next_start + self.window_hop * np.arange(k, dtype=np.int64)
        windows = sliding_window_view(pending, self.window)[:: self.window_hop][:k].copy()
        self._next_start += k * self.window_hop
        rest = pending[k * self.window_hop :]
        self._tail[: len(rest)] = rest
        self._tail_len = len(rest)
        return starts, windows
