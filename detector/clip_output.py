"""The review-clip output: each event's audio (+- 1 s, FLAC) and spectrogram, path in `clip`."""

from pathlib import Path

import numpy as np

from detector.clips import HISTORY_SECONDS, ClipWriter
from detector.events import RawEvent
from detector.outputs import Output
from detector.records import Event
from detector.settings import Settings


class ClipOutput(Output):
    """Keeps recent audio and cuts each event's clip before the event is logged."""

    name = "clips"

    def __init__(self, writer: ClipWriter) -> None:
        self.writer = writer

    def on_audio(self, block: np.ndarray, start_sample: int) -> None:
        self.writer.feed(block, start_sample)  # before scoring: the event needs its audio

    def annotate(self, event: Event, raw: RawEvent) -> dict[str, object] | None:
        path = self.writer.save(event.to_dict(), raw.start_sample, raw.end_sample)
        return None if path is None else {"clip": str(Path(path).resolve())}

    def status_fields(self) -> dict:
        return {"clips": self.writer.stats()}

    def describe(self) -> str:
        return f"clips in {self.writer.directory}"


def history_seconds(settings: Settings) -> float:
    """Audio to keep: the loop feeds a whole read (up to batch x hop) before scoring it, and an
    event that ends as one read ends closes only in the next, so the history must hold a read
    on top of what the event, its margins and the closing delay need."""
    return HISTORY_SECONDS + max(settings.batch * settings.hop, 1.0)


def open_output(settings: Settings) -> ClipOutput:
    writer = ClipWriter(settings.clips, settings.min_free_mb, history_seconds(settings))
    return ClipOutput(writer)
