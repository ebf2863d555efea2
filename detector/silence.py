"""Spot digital silence: an unplugged hydrophone, a dead preamp or a muted card sends zeros.

The sea is never silent, so a stretch of exact zeros is a broken input, not a quiet ocean, and no
call in it can ever be detected. The listener says so once the stretch is long enough (and again
when the signal comes back), status carries its length, and a replay that is silent from start
to end is an error rather than a clean run with no events. Reports are the same whatever the
block sizes the audio arrives in.
"""

from dataclasses import dataclass

import numpy as np

from detector.constants import SAMPLE_RATE

SILENT_PEAK = 2.0**-16  # half of one 16-bit step: only digital zeros count, never a calm sea
WARN_AFTER_S = 10.0


@dataclass(frozen=True)
class Silence:
    """A run of silent samples: `ended` False when it has just become long enough to report,
    True when a reported run is over. `start` counts samples from the first one watched."""

    start: int
    length: int
    ended: bool


class SilenceWatch:
    """Follows runs of silent samples across blocks."""

    def __init__(self, warn_after_s: float = WARN_AFTER_S, sample_rate: int = SAMPLE_RATE) -> None:
        self.sample_rate = sample_rate
        self.warn_after = max(1, round(warn_after_s * sample_rate))
        self.seen = 0  # samples watched
        self.run = 0  # silent samples since the last sound
        self.heard = False  # any sound at all so far
        self.warned = False  # the current run has been reported

    @property
    def run_s(self) -> float:
        return self.run / self.sample_rate

    def push(self, block: np.ndarray) -> list[Silence]:
        """Feed the next block; return the reports it completes, in stream order."""
        base, reports = self.seen, []
        self.seen += len(block)
        loud = base + np.flatnonzero(np.abs(block) >= SILENT_PEAK)
        if len(loud):
            # every run of silence that a sound in this block ends
            starts = np.concatenate([[base - self.run], loud[:-1] + 1])
            lengths = loud - starts
            for k in np.flatnonzero(lengths >= self.warn_after):
                start, length = int(starts[k]), int(lengths[k])
                if not (k == 0 and self.warned):
                    reports.append(Silence(start, self.warn_after, ended=False))
                reports.append(Silence(start, length, ended=True))
            self.heard, self.warned = True, False
            self.run = self.seen - int(loud[-1]) - 1
        else:
            self.run += len(block)
        if not self.warned and self.run >= self.warn_after:
            self.warned = True
            reports.append(Silence(self.seen - self.run, self.warn_after, ended=False))
        return reports
