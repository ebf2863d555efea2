"""How far a scan has got, on stderr: files done of all, audio hours done of all, speed, ETA.

On a terminal one line is redrawn over itself (through the journal's `TerminalLine`, so the
per-file error lines never land inside it) at most every `EVERY_S`; elsewhere (a log file, a
batch system) the same figures are one plain line every `PLAIN_EVERY_S`, so a long scan's log
still shows it moving. `--quiet` turns both off; the summary is said either way.
"""

import sys
import time

from detector.journal import TERMINAL_LINE, journal_connected, say
from detector.rates import clock, speed

EVERY_S = 0.5
PLAIN_EVERY_S = 60.0


class ScanProgress:
    def __init__(self, files_total: int, audio_total_s: float, quiet: bool) -> None:
        self.files_total = files_total
        self.audio_total_s = audio_total_s
        self.files_done = 0
        self.failed = 0
        self.audio_done_s = 0.0
        self.events = 0
        self.started = time.monotonic()
        self.terminal = not quiet and _tty() and not journal_connected()
        self.plain = not quiet and not self.terminal
        self._next = self.started + (EVERY_S if self.terminal else PLAIN_EVERY_S)

    def file_done(self, audio_s: float, events: int, failed: bool) -> None:
        self.files_done += 1
        self.failed += failed
        self.audio_done_s += audio_s
        self.events += events
        now = time.monotonic()
        if now < self._next:
            return
        if self.terminal:
            self._next = now + EVERY_S
            TERMINAL_LINE.show(f"whale-listen: scan {self.figures(now)}")
        elif self.plain:
            self._next = now + PLAIN_EVERY_S
            say(f"scan {self.figures(now)}")

    def figures(self, now: float | None = None) -> str:
        """`12/40 files, 3.20 of 10.00 h of audio (32.0%), 1400x real time, 5 event(s),
        1 failed, ETA 0:14`."""
        now = time.monotonic() if now is None else now
        wall = now - self.started
        hours, total_h = self.audio_done_s / 3600, self.audio_total_s / 3600
        share = 100 * self.audio_done_s / self.audio_total_s if self.audio_total_s else 100.0
        parts = [
            f"{self.files_done}/{self.files_total} files",
            f"{hours:.2f} of {total_h:.2f} h of audio ({min(share, 100):.1f}%)",
            f"{speed(self.audio_done_s, wall)} real time",
            f"{self.events} event(s)",
        ]
        if self.failed:
            parts.append(f"{self.failed} failed")
        if self.audio_done_s > 0 and wall > 0:
            left = max(self.audio_total_s - self.audio_done_s, 0) * wall / self.audio_done_s
            parts.append(f"ETA {clock(left)}")
        return ", ".join(parts)

    def close(self) -> None:
        TERMINAL_LINE.clear()


def _tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False
