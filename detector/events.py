"""Turn per-window scores into up-call events and the event record other programs consume.

One up-call lasts about 1 s, so several overlapping 2-s windows score high for the same call:
consecutive windows at or above the threshold merge into one event. A window's own span is its
central half, where a call that fits the window has most of its energy, so an event's span is
close to the call itself rather than padded by half a window on each side.
"""

import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import PurePath

import numpy as np

from detector.constants import WINDOW_SAMPLES

EVENT_SCHEMA = 1
EVENT_TYPE = "upcall"


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
        hop: int,
        window: int = WINDOW_SAMPLES,
    ) -> None:
        if hop <= 0 or window <= 0:
            raise ValueError(f"hop and window must be positive, got hop={hop} window={window}")
        self.threshold = threshold
        self.hop = hop
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
            if self.open and (not above or start != self._last_start + self.hop):
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
    hop: int,
    window: int = WINDOW_SAMPLES,
) -> list[RawEvent]:
    """Whole-array merge, identical to streaming every window then flushing (for evaluation)."""
    merger = EventMerger(threshold, hop, window)
    return merger.push(starts, scores) + merger.flush()


_STAMP = re.compile(r"(?<!\d)(\d{8})_(\d{6})(?!\d)")


def parse_start_time(name: str) -> datetime | None:
    """The UTC start time stamped in a recording's file name as YYYYMMDD_HHMMSS, else None.

    Archive recordings (e.g. NOPP6_EST_20090328_001500.wav) carry their start time only in the
    name; without it events can only be placed relative to the file.
    """
    for match in _STAMP.finditer(PurePath(name).name):
        try:
            stamp = datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
        except ValueError:
            continue
        return stamp.replace(tzinfo=UTC)
    return None


def iso_utc(dt: datetime) -> str:
    """ISO-8601 UTC with milliseconds and Z (a naive datetime is taken to be UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    dt = dt.replace(microsecond=0) + timedelta(milliseconds=round(dt.microsecond / 1000))
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond // 1000:03d}Z"


def _at(stream_start: datetime, sample: int, sample_rate: int) -> str:
    """Wall time of a stream sample, from the sample count (immune to clock jumps and lag)."""
    return iso_utc(stream_start + timedelta(microseconds=round(sample * 1_000_000 / sample_rate)))


def build_event(
    raw: RawEvent,
    *,
    seq: int,
    stream_start: datetime,
    sample_rate: int,
    station: str,
    source: str,
    model: dict,
    threshold: float,
) -> dict:
    """The published event record (schema 1): a contract other programs parse, keep it stable."""
    return {
        "schema": EVENT_SCHEMA,
        "type": EVENT_TYPE,
        "seq": seq,
        "id": str(uuid.uuid4()),
        "station": station,
        "start": _at(stream_start, raw.start_sample, sample_rate),
        "end": _at(stream_start, raw.end_sample, sample_rate),
        "offset_start_s": round(raw.start_sample / sample_rate, 3),
        "offset_end_s": round(raw.end_sample / sample_rate, 3),
        "score": round(float(raw.peak_score), 4),
        "peak_offset_s": round(raw.peak_sample / sample_rate, 3),
        "windows": raw.windows,
        "source": source,
        "model": {"name": model["name"], "sha256": model["sha256"]},
        "threshold": threshold,
    }
