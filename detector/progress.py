"""How far a run has got: the progress line a terminal shows, and a replay's figures in
systemd's STATUS.

On a terminal (stderr a TTY, not the journal, no --quiet) one line is redrawn over itself with
`\r`, at most every `EVERY_S`: audio done (of a replay's length), x real time by the wall clock
since the loop started, events, and a replay's ETA. It goes through the journal's
`TerminalLine`, which clears it before any log line and draws it again after, so no line ever
lands in the middle of it; it is cleared for good before the summary.
"""

import os
import sys
import time

import numpy as np

from detector.constants import SAMPLE_RATE
from detector.journal import TERMINAL_LINE, journal_connected
from detector.outputs import Output
from detector.rates import clock, speed

EVERY_S = 0.5  # the progress line is redrawn at most this often


class Progress(Output):
    """Counts the audio and events the loop delivers; draws the progress line on a terminal.

    `total_s` is a replay's length (for the percentage and the ETA), None for a live card.
    `terminal` False keeps it silent (under systemd, with --quiet, or when stderr is no TTY):
    it still counts, for systemd's STATUS.
    """

    name = "progress"

    def __init__(self, total_s: float | None, terminal: bool) -> None:
        self.total_s = total_s
        self.terminal = terminal
        self.samples = 0
        self.events = 0
        self.started: float | None = None
        self._next_draw = 0.0

    def on_start(self) -> None:
        self.started = time.monotonic()
        self._next_draw = self.started + EVERY_S

    def on_audio(self, block: np.ndarray, start_sample: int) -> None:
        self.samples += len(block)

    def on_event(self, event: dict) -> None:
        self.events += 1

    def on_tick(self) -> None:
        if not self.terminal:
            return
        now = time.monotonic()
        if now >= self._next_draw:
            self._next_draw = now + EVERY_S
            TERMINAL_LINE.show(f"whale-listen: {self.figures(now)}"[: _columns() - 1])

    def on_stop(self) -> None:
        TERMINAL_LINE.clear()  # the summary line follows

    def close(self) -> None:
        TERMINAL_LINE.clear()

    def status_figures(self, now: float | None = None) -> str | None:
        """What STATUS adds for a replay (`10.0% of 7:00:00, 140x real time, ETA 6:18`); a live
        card's STATUS already says the audio and events, and it runs at 1x."""
        if not self.total_s:
            return None
        audio_s, rate, eta = self._figures(now)
        return ", ".join(
            filter(None, [f"{self._percent(audio_s)} of {clock(self.total_s)}", rate, eta])
        )

    def figures(self, now: float | None = None) -> str:
        """`0:42:10 of 7:00:00 audio (10.0%), 140x real time, 3 event(s), ETA 6:18`."""
        audio_s, rate, eta = self._figures(now)
        done = f"{clock(audio_s)} of audio"
        if self.total_s:
            done = f"{clock(audio_s)} of {clock(self.total_s)} audio ({self._percent(audio_s)})"
        return ", ".join(filter(None, [done, rate, f"{self.events} event(s)", eta]))

    def _figures(self, now: float | None) -> tuple[float, str, str | None]:
        """Audio seconds done, the speed since the loop started, and a replay's ETA."""
        now = time.monotonic() if now is None else now
        audio_s = self.samples / SAMPLE_RATE
        wall_s = now - self.started if self.started is not None else 0.0
        eta = None
        if self.total_s and audio_s > 0 and wall_s > 0:
            eta = f"ETA {clock(max(self.total_s - audio_s, 0) * wall_s / audio_s)}"
        return audio_s, f"{speed(audio_s, wall_s)} real time", eta

    def _percent(self, audio_s: float) -> str:
        return f"{100 * min(audio_s / self.total_s, 1):.1f}%"


def _columns() -> int:
    """The terminal's width: a longer line would wrap, and `\r` only goes back to its last row."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80


def open_progress(total_s: float | None, quiet: bool) -> Progress:
    """The progress counter, drawing on stderr when it is a terminal (and not the journal)."""
    try:
        tty = sys.stderr.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stderr
        tty = False
    return Progress(total_s, tty and not quiet and not journal_connected())
