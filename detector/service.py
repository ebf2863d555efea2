"""The systemd output: READY, WATCHDOG and STATUS notifications, and the status line it shows.

The watchdog ping comes from `on_tick`, i.e. from the scoring loop itself, so a loop stuck in the
model or the driver stops the pings and systemd restarts the daemon.
"""

import math

from detector.constants import SAMPLE_RATE
from detector.notify import Notifier
from detector.outputs import Output
from detector.progress import Progress
from detector.silence import WARN_AFTER_S


def status_line(status: dict) -> str:
    """The figures `systemctl status` shows, from a heartbeat status message."""
    level = status.get("level_dbfs")
    parts = [
        f"{status['source_state']}: {status['samples_in'] / SAMPLE_RATE:.0f} s of audio",
        f"{status['events']} event(s)",
        f"level {level:.1f} dBFS" if isinstance(level, float) and math.isfinite(level) else None,
        f"{status['dropped_samples']} dropped sample(s)",
    ]
    if status.get("silent_s", 0) >= WARN_AFTER_S:
        parts.append(f"DIGITAL SILENCE for {status['silent_s']:.0f} s")
    if status.get("unlogged_events"):
        parts.append(f"EVENT LOG FAILING: {status['unlogged_events']} event(s) held in memory")
    clips = status.get("clips")
    if clips:
        parts.append(f"{clips['saved']} clip(s)")
        if clips["disk_low"]:
            parts.append(f"disk low: {clips['skipped_low_disk']} clip(s) skipped")
    return ", ".join(p for p in parts if p)


class SystemdOutput(Output):
    """READY once everything is open, WATCHDOG from the loop, STATUS each heartbeat (with the
    run's progress, when it follows one: a service has no terminal for the progress line)."""

    name = "systemd"

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier
        self.progress: Progress | None = None  # a replay's figures, for the STATUS line

    def follow(self, progress: "Progress") -> None:
        """Carry the run's progress (x real time, a replay's percentage and ETA) in STATUS."""
        self.progress = progress

    def on_start(self) -> None:
        self.notifier.ready()

    def on_tick(self) -> None:
        self.notifier.watchdog()

    def on_status(self, status: dict) -> None:
        line = status_line(status)
        figures = self.progress.status_figures() if self.progress is not None else None
        if figures:
            line += f"; replay {figures}"
        self.notifier.status(line)

    def on_stop(self) -> None:
        self.notifier.stopping()

    def close(self) -> None:
        self.notifier.close()
