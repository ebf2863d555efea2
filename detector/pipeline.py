"""The scoring loop: ring -> (resample) -> 2-s windows -> ONNX model -> events -> log -> outputs.

One loop serves replay and live sources alike. Every event is fsync'ed to the log before any
output (ZeroMQ, MQTT, ...) sees it. Events carry the run's id (a uuid4 per Listener, its start
is the log's `run` line) and a sequence number that continues from the log's last one across
restarts, so a subscriber can see a gap and recover it (the ZeroMQ output's catch-up).
A stop request (SIGINT/SIGTERM) or the end of the source closes any open event and delivers it.

A live source given a `reopen` function survives its sound card: when the card errors, vanishes
or sends nothing for `stall_s`, the open event is closed at the gap, status says
`source_state: "down"`, and the card is reopened with exponential backoff (1 s doubling up to
`retry_max`). The lost wall-clock time is counted as dropped samples and skipped in the stream's
sample count, so later event times stay right; the next event says so in `gap_before_s`.
"""

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np

from detector.audio import StreamingResampler
from detector.clock import ClockWatch
from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from detector.errors import WhaleError
from detector.eventlog import EventLog
from detector.events import EventMerger, RawEvent
from detector.journal import log as journal
from detector.journal import say
from detector.model import Model
from detector.outputs import Output
from detector.records import Run, Status, build_event, new_run_id
from detector.scoring import make_scorer
from detector.silence import SilenceWatch
from detector.source import STOP_WAIT_S, Source
from detector.timestamps import iso_utc

READ_TIMEOUT_S = 0.2  # the loop wakes at least this often for heartbeats and stop requests
FIRST_RETRY_S = 1.0


@dataclass
class Counters:
    samples_in: int = 0  # at 2 kHz, scored
    windows: int = 0
    level_dbfs: float = -math.inf
    started: float = 0.0  # monotonic
    processing_s: float = 0.0
    gap_samples: int = 0  # stream time lost while the source was down (2 kHz samples)
    outages: int = 0


def dbfs(block: np.ndarray) -> float:
    """RMS level of a block relative to full scale."""
    if len(block) == 0:
        return -math.inf
    rms = float(np.sqrt(np.mean(np.square(block, dtype=np.float64))))
    return 20 * math.log10(rms) if rms > 0 else -math.inf


class Segment:
    """One unbroken stretch of a source: its own resampler and windower, at a stream offset."""

    def __init__(
        self,
        source: Source,
        model: Model,
        window_hop: int,
        batch: int,
        base: int,
        threshold: float | None = None,
    ) -> None:
        self.base = base  # stream sample of the segment's first sample
        self.scorer = make_scorer(model, window_hop, batch, threshold)
        self.seen = 0  # 2 kHz samples pushed
        self.resampler = (
            StreamingResampler(source.samplerate, SAMPLE_RATE)
            if source.samplerate != SAMPLE_RATE
            else None
        )

    @property
    def position(self) -> int:
        """Stream sample of the next 2 kHz sample."""
        return self.base + self.seen


class Listener:
    """Runs one source through the model until it ends or `stop()` is called."""

    def __init__(
        self,
        model: Model,
        threshold: float,
        window_hop: int,
        log: EventLog,
        outputs: list[Output],
        station: str,
        batch: int = 64,
        heartbeat_s: float = 10.0,
        stall_s: float = 10.0,
        retry_max: float = 30.0,
        clock: ClockWatch | None = None,
    ) -> None:
        self.model = model
        self.threshold = threshold
        self.window_hop = window_hop
        self.log = log
        self.outputs = outputs  # after the log, in order
        self.station = station
        self.batch = batch
        self.heartbeat_s = heartbeat_s
        self.stall_s = stall_s
        self.retry_max = retry_max
        self.clock = clock  # live cards: event times held to the wall clock
        self.counters = Counters()
        self.silence = SilenceWatch()
        self.run_id = new_run_id()
        self.first_seq = log.last_seq()  # this run's events are first_seq + 1, + 2, ...
        self.seq = self.first_seq  # the last event's
        self.run_logged = log.start_run(
            Run(
                run=self.run_id,
                station=station,
                time=iso_utc(datetime.now().astimezone()),
                after_seq=self.first_seq,
            ).to_dict()
        )
        self.source: Source | None = None
        self.source_state = "up"
        self._retired_dropped = 0  # ring drops of sources replaced after an outage
        self._pending_gap = 0  # samples lost since the last delivered event
        self._log_failing = False
        self._stop = threading.Event()
        self._next_beat = 0.0

    def stop(self) -> None:
        """Safe from a signal handler: the loop notices within READ_TIMEOUT_S."""
        self._stop.set()

    @property
    def stopped(self) -> bool:
        """A stop was requested (maybe before the loop even started)."""
        return self._stop.is_set()

    # -- delivery -------------------------------------------------------------------------------
    def _deliver(self, raws: list[RawEvent], stream_start: datetime) -> None:
        for raw in raws:
            self.seq += 1
            event = build_event(
                raw,
                seq=self.seq,
                run=self.run_id,
                stream_start=stream_start,
                sample_rate=SAMPLE_RATE,
                station=self.station,
                source=self.source.name,
                model=self.model.identity,
                threshold=self.threshold,
                gap_samples=self._pending_gap,
            )
            self._pending_gap = 0
            for fields in self._each("annotate", event, raw):
                event = event.annotated(**(fields or {}))  # declared optional fields only
            record = event.to_dict()
            self._log_state(self.log.append(record))  # durable first
            self._each("on_event", record)  # even when the log failed: it is held in memory

    def _each(self, method: str, *args: object) -> list[object]:
        """Call one method of every output in order, returning what each gave (None when it
        failed); a failing output is said, never fatal."""
        results: list[object] = []
        for output in self.outputs:
            try:
                results.append(getattr(output, method)(*args))
            except WhaleError:
                raise  # a broken contract (e.g. the model's), reported like any other
            except Exception as exc:  # noqa: BLE001 - the log has the event; carry on
                journal.warning("output %s failed in %s: %s", output.name, method, exc)
                results.append(None)
        return results

    def _log_state(self, logged: bool) -> None:
        """Say once when the log starts failing (disk full) and once when it recovers."""
        if not logged and not self._log_failing:
            say(
                f"cannot write event log {self.log.path}: {self.log.error}; events are still "
                f"published, and held in memory until the log can take them"
            )
        elif logged and self._log_failing:
            say(f"event log {self.log.path} is writable again: the held events are in it")
        self._log_failing = not logged

    @property
    def events(self) -> int:
        """Events of this run so far."""
        return self.seq - self.first_seq

    @property
    def dropped(self) -> int:
        """Samples lost so far: full rings plus the time the source was down."""
        return self._retired_dropped + int(self.source.ring.dropped) + self.counters.gap_samples

    def status(self) -> Status:
        """The heartbeat message: counters, the source's state and every output's own fields."""
        source, c = self.source, self.counters
        audio_s = c.samples_in / SAMPLE_RATE
        return Status(
            run=self.run_id,
            station=self.station,
            time=iso_utc(datetime.now().astimezone()),
            source=source.name,
            source_state=self.source_state,
            model={**self.model.identity, "provider": self.model.provider},
            uptime_s=round(time.monotonic() - c.started, 1),
            samples_in=c.samples_in,
            windows_scored=c.windows,
            events=self.events,
            last_seq=self.seq,
            unlogged_events=len(self.log.pending),
            dropped_samples=self.dropped,
            outages=c.outages,
            input_overflows=getattr(source, "input_overflows", 0),
            level_dbfs=round(c.level_dbfs, 1) if math.isfinite(c.level_dbfs) else None,
            silent_s=round(self.silence.run_s, 1),
            lag_s=round(source.ring.available / source.samplerate, 3),
            realtime_factor=round(audio_s / c.processing_s, 1) if c.processing_s else None,
            **(self.clock.status_fields() if self.clock is not None else {}),
            **{k: v for output in self.outputs for k, v in output.status_fields().items()},
        )

    def _tick(self, now: float) -> None:
        """Proof of life and the heartbeat: from the loop itself, whatever the source does."""
        self._each("on_tick")
        if now >= self._next_beat:
            self._each("on_status", self.status().to_dict())
            self._next_beat = now + self.heartbeat_s

    # -- the loop -------------------------------------------------------------------------------
    def run(
        self,
        source: Source,
        stream_start: datetime,
        reopen: Callable[[], Source] | None = None,
    ) -> Counters:
        """Score until the source ends or stop(); always flush and deliver the open event.

        `reopen` (live sources) opens and starts a fresh source; without it the end of the
        source, or its error, ends the run.
        """
        c = self.counters
        c.started = time.monotonic()
        self.source = source
        merger = EventMerger(self.threshold, self.window_hop, WINDOW_SAMPLES)
        # An unpaced replay is offline work: the stream scorer (same events, far less work;
        # its lookahead and whole-block calls would only add latency to a live card).
        offline = reopen is None and not getattr(source, "realtime", False)
        segment = Segment(
            source, self.model, self.window_hop, self.batch, 0, self.threshold if offline else None
        )
        self._next_beat = c.started + self.heartbeat_s
        last_audio = c.started
        read_max = max(self.batch * self.window_hop, SAMPLE_RATE)  # 2 kHz samples per read
        self._each("on_start")
        try:
            while not self._stop.is_set():
                ring = self.source.ring
                block = ring.read(read_max * self.source.samplerate // SAMPLE_RATE, READ_TIMEOUT_S)
                now = time.monotonic()
                if len(block):
                    last_audio = now
                    if segment.resampler is not None:
                        block = segment.resampler.process(block)
                    stream_start = self._check_clock(stream_start, segment.position + len(block))
                    self._score_block(block, segment, merger, stream_start)
                    c.processing_s += time.monotonic() - now
                elif ring.closed or (reopen is not None and now - last_audio > self.stall_s):
                    if reopen is None:
                        break
                    self._score_rest(segment, merger, stream_start)
                    self._deliver(merger.flush(), stream_start)  # closed at the gap
                    if not self._recover(reopen, last_audio):
                        break
                    now = time.monotonic()
                    gap = round((now - last_audio) * SAMPLE_RATE)
                    c.gap_samples += gap
                    self._pending_gap += gap
                    segment = Segment(
                        self.source, self.model, self.window_hop, self.batch, segment.position + gap
                    )
                    last_audio = now
                self._tick(now)
            self._score_rest(segment, merger, stream_start)
        finally:
            self._each("on_stop")
            self._deliver(merger.flush(), stream_start)
        # The last word: a shore station that keeps health from status must not show a stopped
        # daemon "up" forever, nor a last_seq short of its final event.
        self.source_state = "stopped"
        self._each("on_status", self.status().to_dict())
        return c

    def _score_block(
        self, block: np.ndarray, segment: Segment, merger: EventMerger, stream_start: datetime
    ) -> None:
        c = self.counters
        c.samples_in += len(block)
        c.level_dbfs = dbfs(block)
        self._watch_silence(block)
        self._each("on_audio", block, segment.position)  # before scoring: clips need its audio
        starts, scores = segment.scorer.push(block)
        segment.seen += len(block)
        c.windows += len(scores)
        self._deliver(merger.push(starts + segment.base, scores), stream_start)

    def _score_rest(self, segment: Segment, merger: EventMerger, stream_start: datetime) -> None:
        """The windows the scorer still holds (its lookahead) at the end of a segment."""
        t0 = time.monotonic()
        starts, scores = segment.scorer.flush()
        self.counters.windows += len(scores)
        self._deliver(merger.push(starts + segment.base, scores), stream_start)
        self.counters.processing_s += time.monotonic() - t0

    def _check_clock(self, stream_start: datetime, received: int) -> datetime:
        """The stream start, re-anchored when the card's sample count (`received` 2 kHz samples
        so far, plus what waits in the ring) leaves the wall clock; checked before scoring."""
        if self.clock is None:
            return stream_start
        ring = self.source.ring
        unread = (ring.available + int(ring.dropped)) * SAMPLE_RATE / self.source.samplerate
        return self.clock.check(stream_start, received + unread, datetime.now(UTC))

    def _watch_silence(self, block: np.ndarray) -> None:
        name = self.source.name
        for run in self.silence.push(block):
            start_s, length_s = run.start / SAMPLE_RATE, run.length / SAMPLE_RATE
            if run.ended:
                say(f"input {name!r}: signal back after {length_s:.1f} s of digital silence")
            else:
                say(
                    f"input {name!r}: digital silence (every sample 0) since {start_s:.1f} s "
                    f"into the stream; no call can be heard: check the hydrophone, its preamp "
                    f"and the card's gain"
                )

    # -- device recovery ------------------------------------------------------------------------
    def _recover(self, reopen: Callable[[], Source], last_audio: float) -> bool:
        """Reopen the source with backoff until it delivers audio again; False if stopped."""
        old = self.source
        error = getattr(old, "error", None)
        reason = str(error) if error is not None else f"no audio for {self.stall_s:g} s"
        self.source_state = "down"
        self.counters.outages += 1
        say(f"input {old.name!r} is down ({reason}); reopening, retries up to {self.retry_max:g} s")
        self._retire(old)
        delay = FIRST_RETRY_S
        while True:
            if self._wait(delay):
                return False
            delay = min(delay * 2, self.retry_max)
            try:
                fresh = reopen()
            except Exception:  # the card is still gone: try again later
                continue
            self.source = fresh
            if self._first_audio(fresh):
                break
            if self._stop.is_set():
                return False
            self._retire(fresh)  # opened but silent or failed: give it up and retry
        self.source_state = "up"
        gap_s = time.monotonic() - last_audio
        say(f"input {self.source.name!r} is back after {gap_s:.1f} s")
        return True

    def _retire(self, source: Source) -> None:
        """Stop a lost source without letting a stuck driver hang the loop."""
        self._retired_dropped += int(source.ring.dropped)
        try:
            source.stop(timeout=STOP_WAIT_S)
        except Exception:  # a lost card may fail to close too: it is given up either way
            pass

    def _wait(self, seconds: float) -> bool:
        """Sleep in slices, still ticking and sending status; True if a stop was requested."""
        deadline = time.monotonic() + seconds
        while not self._stop.is_set():
            now = time.monotonic()
            if now >= deadline:
                return False
            self._stop.wait(min(READ_TIMEOUT_S, deadline - now))
            self._tick(time.monotonic())
        return True

    def _first_audio(self, source: Source) -> bool:
        """Wait (ticking) until the reopened source has audio; False if it fails or stays quiet."""
        deadline = time.monotonic() + self.stall_s
        while not self._stop.is_set() and time.monotonic() < deadline:
            if source.ring.available:
                return True
            if source.ring.closed:
                return False
            self._stop.wait(min(READ_TIMEOUT_S / 4, deadline - time.monotonic()))
            self._tick(time.monotonic())
        return bool(source.ring.available)
