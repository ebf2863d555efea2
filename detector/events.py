"""Turn per-window scores into up-call events (the record other programs read: `records`).

One up-call lasts about 1 s, so several overlapping 2-s windows score high for the same call:
consecutive windows at or above the threshold merge into one event. A window's own span is its
central half, where a call that fits the window has most of its energy, so an event's span is
close to the call itself rather than padded by half a window on each side.
"""

from dataclasses import dataclass

import numpy as np

from detector.constants import WINDOW_SAMPLES


@dataclass
class RawEvent:
    """An event in stream samples (sample 0 = the stream's first sample)."""

    start_sample: int
    end_sample: int
    peak_score: float
    peak_sample: int
    windows: int


class EventMerger:
    """Streaming merge of in-order window scores into events."""

    def __init__(
        self,
        threshold: float,
        window_hop: int,
        window: int = WINDOW_SAMPLES,
    ) -> None:
        if window_hop <= 0 or window <= 0:
            raise ValueError(
                f"window hop and window must be positive, got {window_hop} and {window} samples"
            )
        self.threshold = threshold
        self.window_hop = window_hop
        self.window = window
        self._first_start = 0
        self._last_start = 0
        self._peak_score = 0.0
        self._peak_start = 0
        self._count = 0  # windows in the open event; 0 = no event open

    @property
    def open(self) -> bool:
        """True while an event has started and not yet been closed by a quiet window."""
        return self._count > 0

    def _close(self) -> RawEvent:
        event = RawEvent(
            start_sample=self._first_start + self.window // 4,
            end_sample=self._last_start + 3 * self.window // 4,
            peak_score=self._peak_score,
            peak_sample=self._peak_start + self.window // 2,
            windows=self._count,
        )
        self._count = 0
        return event

    def push(self, starts: np.ndarray, scores: np.ndarray) -> list[RawEvent]:
        """Feed windows in stream order; return the events they close.

        A window below the threshold (or NaN) closes the open event; so does a gap in the
        window starts (samples lost upstream), since the call cannot be known to continue.
        """
        starts = np.asarray(starts, dtype=np.int64).reshape(-1)
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(starts) != len(scores):
            raise ValueError(f"{len(starts)} window starts but {len(scores)} scores")
        closed: list[RawEvent] = []
        if not self.open and not np.any(scores >= self.threshold):
            return closed  # the common case: silence
        for start, score in zip(starts.tolist(), scores.tolist(), strict=True):
            above = score >= self.threshold
            if self.open and (not above or start != self._last_start + self.window_hop):
                closed.append(self._close())
            if not above:
                continue
            if not self.open:
                self._first_start = start
                self._peak_score = score
                self._peak_start = start
            elif score > self._peak_score:
                self._peak_score = score
                self._peak_start = start
            self._last_start = start
            self._count += 1
        return closed

    def flush(self) -> list[RawEvent]:
        """Close the open event, if any: end of stream or shutdown."""
        return [self._close()] if self.open else []


def merge_events(
    starts: np.ndarray,
    scores: np.ndarray,
    threshold: float,
    window_hop: int,
    window: int = WINDOW_SAMPLES,
) -> list[RawEvent]:
    """Whole-array merge, identical to streaming every window then flushing (for evaluation)."""
    merger = EventMerger(threshold, window_hop, window)
    return merger.push(starts, scores) + merger.flush()
