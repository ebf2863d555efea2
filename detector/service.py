"""The daemon's deployment hooks: systemd notifications and review clips, off the scoring loop.

Each is a `pipeline.Hooks`; `AllHooks` calls several in turn. The watchdog ping comes from
`on_tick`, i.e. from the scoring loop itself, so a loop stuck in the model or the driver stops
the pings and systemd restarts the daemon.
"""

import math
from pathlib import Path

import numpy as np

from detector.clips import ClipWriter
from detector.constants import SAMPLE_RATE
from detector.events import RawEvent
from detector.notify import Notifier
from detector.pipeline import Hooks
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


class SystemdHooks(Hooks):
    """READY once everything is open, WATCHDOG from the loop, STATUS each heartbeat."""

    def __init__(self, notifier: Notifier) -> None:
        self.notifier = notifier

    def on_start(self) -> None:
        self.notifier.ready()

    def on_tick(self) -> None:
        self.notifier.watchdog()

    def on_status(self, status: dict) -> None:
        self.notifier.status(status_line(status))

    def on_stop(self) -> None:
        self.notifier.stopping()


class ClipHooks(Hooks):
    """Saves each event's audio (+- 1 s) and spectrogram; the event carries the clip's path."""

    def __init__(self, writer: ClipWriter) -> None:
        self.writer = writer

    def on_audio(self, block: np.ndarray, start_sample: int) -> None:
        self.writer.feed(block, start_sample)

    def on_event(self, event: dict, raw: RawEvent) -> None:
        path = self.writer.save(event, raw.start_sample, raw.end_sample)
        if path is not None:
            event["clip"] = str(Path(path).resolve())

    def status_fields(self) -> dict:
        return {"clips": self.writer.stats()}


class AllHooks(Hooks):
    """Several hooks, called in the order given."""

    def __init__(self, *hooks: Hooks) -> None:
        self.hooks = hooks

    def on_start(self) -> None:
        for hook in self.hooks:
            hook.on_start()

    def on_audio(self, block: np.ndarray, start_sample: int) -> None:
        for hook in self.hooks:
            hook.on_audio(block, start_sample)

    def on_event(self, event: dict, raw: RawEvent) -> None:
        for hook in self.hooks:
            hook.on_event(event, raw)

    def on_tick(self) -> None:
        for hook in self.hooks:
            hook.on_tick()

    def on_status(self, status: dict) -> None:
        for hook in self.hooks:
            hook.on_status(status)

    def on_stop(self) -> None:
        for hook in self.hooks:
            hook.on_stop()

    def status_fields(self) -> dict:
        fields: dict = {}
        for hook in self.hooks:
            fields.update(hook.status_fields())
        return fields
