"""The scoring loop: ring -> (resample) -> 2-s windows -> ONNX model -> events -> log + ZeroMQ.

One loop serves replay and live sources alike. Every event is fsync'ed to the log before it is
published and carries a per-run sequence number, so a subscriber can see a gap and recover it.
A stop request (SIGINT/SIGTERM) or the end of the source closes any open event and delivers it.
"""

import math
import threading
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from detector.audio import StreamingResampler
from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from detector.events import EventMerger, RawEvent, build_event, iso_utc
from detector.model import Model
from detector.publish import EventLog, Publisher
from detector.windows import Windower

READ_TIMEOUT_S = 0.2  # the loop wakes at least this often for heartbeats and stop requests


@dataclass
class Counters:
    samples_in: int = 0  # at 2 kHz
    windows: int = 0
    events: int = 0
    level_dbfs: float = -math.inf
    started: float = 0.0  # monotonic
    processing_s: float = 0.0


def dbfs(block: np.ndarray) -> float:
    """RMS level of a block relative to full scale."""
    if len(block) == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


class Listener:
    """Runs one source through the model until it ends or `stop()` is called."""

    def __init__(
        self,
        model: Model,
        threshold: float,
        hop: int,
        log: EventLog,
        publisher: Publisher,
        station: str,
        batch: int = 64,
        heartbeat_s: float = 10.0,
        hooks: "Hooks | None" = None,
    ) -> None:
        self.model = model
        self.threshold = threshold
        self.hop = hop
        self.log = log
        self.publisher = publisher
        self.station = station
        self.batch = batch
        self.heartbeat_s = heartbeat_s
        self.hooks = hooks or Hooks()
        self.counters = Counters()
        self.seq = 0
        self._stop = threading.Event()

    def stop(self) -> None:
        """Safe from a signal handler: the loop notices within READ_TIMEOUT_S."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """A stop was requested (maybe before the loop even started)."""
        return self._stop.is_set()

    # -- delivery -------------------------------------------------------------------------------
    def _deliver(self, raws: list[RawEvent], source: object, stream_start: datetime) -> None:
        for raw in raws:
            self.seq += 1
            event = build_event(
                raw,
                seq=self.seq,
                stream_start=stream_start,
                sample_rate=SAMPLE_RATE,
                station=self.station,
                source=source.name,
                model=self.model.identity,
                threshold=self.threshold,
            )
            self.hooks.on_event(event, raw)
            self.log.append(event)  # durable first
            self.publisher.send("upcall", event)
            self.counters.events += 1

    def status(self, source: object, state: str = "up") -> dict:
        c = self.counters
        uptime = time.monotonic() - c.started
        audio_s = c.samples_in / SAMPLE_RATE
        return {
            "schema": 1,
            "type": "status",
            "station": self.station,
            "time": iso_utc(datetime.now().astimezone()),
            "source": source.name,
            "source_state": state,
            "uptime_s": round(uptime, 1),
            "samples_in": c.samples_in,
            "windows_scored": c.windows,
            "events": c.events,
            "last_seq": self.seq,
            "dropped_samples": int(source.ring.dropped),
            "level_dbfs": round(c.level_dbfs, 1) if math.isfinite(c.level_dbfs) else None,
            "lag_s": round(source.ring.available / source.samplerate, 3),
            "realtime_factor": round(audio_s / c.processing_s, 1) if c.processing_s else None,
            **self.hooks.status_fields(),
        }

    # -- the loop -------------------------------------------------------------------------------
    def run(self, source: object, stream_start: datetime) -> Counters:
        """Score until the source ends or stop(); always flush and deliver the open event."""
        c = self.counters
        c.started = time.monotonic()
        windower = Windower(self.hop, WINDOW_SAMPLES)
        merger = EventMerger(self.threshold, self.hop, WINDOW_SAMPLES)
        resampler = (
            StreamingResampler(source.samplerate, SAMPLE_RATE)
            if source.samplerate != SAMPLE_RATE
            else None
        )
        next_beat = c.started + self.heartbeat_s
        read_max = max(self.batch * self.hop, SAMPLE_RATE) * source.samplerate // SAMPLE_RATE
        try:
            while not self._stop.is_set():
                block = source.ring.read(read_max, timeout=READ_TIMEOUT_S)
                now = time.monotonic()
                if len(block):
                    t0 = now
                    if resampler is not None:
                        block = resampler.process(block)
                    self._score_block(block, windower, merger, source, stream_start)
                    c.processing_s += time.monotonic() - t0
                elif source.ring.closed:
                    break
                self.hooks.on_tick()
                if now >= next_beat:
                    self.publisher.send("status", self.status(source))
                    next_beat = now + self.heartbeat_s
        finally:
            self._deliver(merger.flush(), source, stream_start)
        return c

    def _score_block(self, block, windower, merger, source, stream_start) -> None:
        c = self.counters
        c.samples_in += len(block)
        c.level_dbfs = dbfs(block)
        self.hooks.on_audio(block)
        starts, windows = windower.push(block)
        for i in range(0, len(starts), self.batch):
            scores = self.model.score(windows[i : i + self.batch])
            c.windows += len(scores)
            self._deliver(merger.push(starts[i : i + self.batch], scores), source, stream_start)


class Hooks:
    """Extension points for the deployment features (clips, systemd); all no-ops here."""

    def on_audio(self, block: np.ndarray) -> None:
        """Every 2 kHz block, in stream order."""

    def on_event(self, event: dict, raw: RawEvent) -> None:
        """Before the event is logged: may add fields (e.g. the clip's path)."""

    def on_tick(self) -> None:
        """Once per loop iteration: proof the loop is alive (the systemd watchdog)."""

    def status_fields(self) -> dict:
        return {}
