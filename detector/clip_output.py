"""The review-clip output: each event's audio (+- 1 s, FLAC) and spectrogram, path in `clip`."""

from pathlib import Path

import numpy as np

from detector.clips import ClipWriter
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


def open_output(settings: Settings) -> ClipOutput:
    return ClipOutput(ClipWriter(settings.clips, settings.min_free_mb))
