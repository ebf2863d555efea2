"""The two records whale-listen writes and publishes, declared once: `Event` and `Status`.

Other programs parse these (subscribers, MQTT consumers, the Raven export, the README's tables),
so each is one frozen dataclass with a schema version: its fields are the contract, in order.
An event is built in one place (`build_event`); outputs may add only its declared optional
fields (`Event.annotated`), and an optional field left unset is absent from the JSON.
"""

import json
import uuid
from dataclasses import asdict, dataclass, fields, replace
from datetime import datetime

from detector.events import RawEvent
from detector.timestamps import sample_time

SCHEMA = 1  # a change that breaks readers bumps it (adding a field, as `run` was, does not)
EVENT_TYPE = "upcall"
STATUS_TYPE = "status"
RUN_TYPE = "run"  # the log's record of where a daemon run starts (never published)


def new_run_id() -> str:
    """The identity of one daemon start: a uuid4, in every event and status of that run."""
    return str(uuid.uuid4())


def encode(obj: dict) -> bytes:
    """Compact UTF-8 JSON, the payload of every message and log line."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class _Record:
    """What Event and Status share: the JSON object, optional fields left out when unset."""

    OPTIONAL: tuple[str, ...] = ()

    def to_dict(self) -> dict:
        record = asdict(self)  # type: ignore[call-overload]  # subclasses are dataclasses
        return {k: v for k, v in record.items() if k not in self.OPTIONAL or v is not None}

    def to_json(self) -> bytes:
        return encode(self.to_dict())


@dataclass(frozen=True, kw_only=True)
class Event(_Record):
    """One up-call (README, Events): times from the stream's sample count, never the clock."""

    OPTIONAL = ("gap_before_s", "clip")

    schema: int = SCHEMA
    type: str = EVENT_TYPE
    seq: int  # continues across runs from the log's last one: a gap is a missed message
    run: str  # uuid4 of the daemon start that detected it
    id: str  # uuid4
    station: str
    start: str  # ISO-8601 UTC, milliseconds, Z
    end: str
    offset_start_s: float  # seconds from the stream's first sample
    offset_end_s: float
    score: float  # peak window probability
    peak_offset_s: float  # centre of the peak window
    windows: int  # windows merged
    source: str  # file or device
    model: dict  # {name, sha256} of the ONNX file
    threshold: float
    gap_before_s: float | None = None  # only after a sound-card outage: audio lost since the last
    clip: str | None = None  # with --clips: the event's FLAC clip

    def annotated(self, **optional: object) -> "Event":
        """This event with optional fields set (an output's part, e.g. the clip's path)."""
        undeclared = set(optional) - set(self.OPTIONAL)
        if undeclared:
            raise ValueError(f"not optional event fields: {', '.join(sorted(undeclared))}")
        return replace(self, **optional)


@dataclass(frozen=True, kw_only=True)
class Status(_Record):
    """The heartbeat: the loop's counters, the source's state, and the outputs' own fields."""

    OPTIONAL = ("clock_resets", "clock_drift_s", "zmq_dropped", "catchup", "clips", "mqtt", "sbd")

    schema: int = SCHEMA
    type: str = STATUS_TYPE
    run: str  # the daemon start's uuid4, as in its events
    station: str
    time: str  # ISO-8601 UTC, from the clock
    source: str
    source_state: str  # "up", "down" (card lost), or "stopped" (the run's last status)
    model: dict  # {name, sha256, provider}
    uptime_s: float
    samples_in: int  # 2 kHz samples scored
    windows_scored: int
    events: int
    last_seq: int
    unlogged_events: int  # events the log has not taken yet (held in memory)
    dropped_samples: int  # full rings plus the time the source was down
    outages: int
    input_overflows: int
    level_dbfs: float | None  # None: digital silence (or no audio yet)
    silent_s: float
    lag_s: float  # audio waiting to be scored
    realtime_factor: float | None  # None before any audio was processed
    clock_resets: int | None = None  # live cards: re-anchors to the wall clock (detector.clock)
    clock_drift_s: float | None = None  # live cards: sample count minus wall time, last check
    zmq_dropped: int | None = None  # the ZeroMQ output's
    catchup: str | None = None  # the ZeroMQ output's catch-up endpoint, as bound
    clips: dict | None = None  # the clip output's
    mqtt: dict | None = None  # the MQTT output's
    sbd: dict | None = None  # the Iridium SBD output's


@dataclass(frozen=True, kw_only=True)
class Run(_Record):
    """The log's line at each daemon start: readers of events skip it (`read_events`)."""

    schema: int = SCHEMA
    type: str = RUN_TYPE
    run: str
    station: str
    time: str  # ISO-8601 UTC, from the clock
    after_seq: int  # the last seq before this run: its first event is after_seq + 1


def _required(record: type) -> dict[str, object]:
    return {f.name: f.type for f in fields(record) if f.name not in record.OPTIONAL}


EVENT_FIELDS = _required(Event)  # name -> type, in JSON order; tests and the README follow it
STATUS_FIELDS = _required(Status)


def build_event(
    raw: RawEvent,
    *,
    seq: int,
    run: str,
    stream_start: datetime,
    sample_rate: int,
    station: str,
    source: str,
    model: dict,
    threshold: float,
    gap_samples: int = 0,
) -> Event:
    """The event record of a merged detection; `gap_samples`: audio lost since the last one."""
    return Event(
        seq=seq,
        run=run,
        id=str(uuid.uuid4()),
        station=station,
        start=sample_time(stream_start, raw.start_sample, sample_rate),
        end=sample_time(stream_start, raw.end_sample, sample_rate),
        offset_start_s=round(raw.start_sample / sample_rate, 3),
        offset_end_s=round(raw.end_sample / sample_rate, 3),
        score=round(float(raw.peak_score), 4),
        peak_offset_s=round(raw.peak_sample / sample_rate, 3),
        windows=raw.windows,
        source=source,
        model={"name": model["name"], "sha256": model["sha256"]},
        threshold=threshold,
        gap_before_s=round(gap_samples / sample_rate, 3) if gap_samples else None,
    )
