"""Clock sanity for live cards: the stream's sample count held against the wall clock.

Event times are the stream start plus the samples counted since, which is right only while the
card delivers samples at its nominal rate. A card whose writer is gone can flood stale buffer
contents as fast as they are read (ALSA's `file` PCM after EOF does, and so do some drivers),
and a card running at the wrong rate drifts: either way the events would be stamped hours off.
When the count and the clock disagree by more than a tolerance, the daemon says so, counts it in
status (`clock_resets`, `clock_drift_s`) and re-anchors: later events are stamped from the wall
clock at that moment plus the samples counted after it. Offsets (`offset_*_s`) stay counted.
"""

import math
from datetime import datetime, timedelta

from detector.constants import SAMPLE_RATE
from detector.journal import say

CLOCK_TOLERANCE_S = 5.0  # a card's buffering is milliseconds; NTP steps are rarer than this
REPORT_EVERY_S = 60.0  # a flood re-anchors at every block: one line a minute says so


class ClockWatch:
    """Compares a live stream's sample count with the wall clock and re-anchors its start."""

    def __init__(self, name: str, tolerance_s: float = CLOCK_TOLERANCE_S) -> None:
        self.name = name
        self.tolerance_s = tolerance_s
        self.resets = 0
        self.drift_s = 0.0  # counted audio minus elapsed wall time, at the last check
        self._said_at = -math.inf
        self._said_resets = 0

    def check(self, stream_start: datetime, counted: float, now: datetime) -> datetime:
        """The stream start to stamp events with: `stream_start` while the `counted` samples
        (2 kHz, everything the card delivered) agree with the clock, else re-anchored at `now`."""
        counted_s = counted / SAMPLE_RATE
        drift = counted_s - (now - stream_start).total_seconds()
        self.drift_s = round(drift, 3)
        if abs(drift) <= self.tolerance_s:
            return stream_start
        self.resets += 1
        self._report(drift, now)
        return now - timedelta(seconds=counted_s)

    def _report(self, drift: float, now: datetime) -> None:
        """One line at the first re-anchor and at most one a minute after it."""
        wall = now.timestamp()
        if wall - self._said_at < REPORT_EVERY_S:
            return
        since = self.resets - self._said_resets
        self._said_at, self._said_resets = wall, self.resets
        direction = "ahead of" if drift > 0 else "behind"
        say(
            f"input {self.name!r}: its sample count is {abs(drift):.1f} s {direction} the wall "
            f"clock (stale data flooding in, or a card at the wrong rate): event times "
            f"re-anchored to the wall clock ({since} re-anchor(s) since the last line, "
            f"{self.resets} in all)"
        )

    def status_fields(self) -> dict:
        return {"clock_resets": self.resets, "clock_drift_s": self.drift_s}
