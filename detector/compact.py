"""Compact events for a satellite link: an event in 29 bytes, up to ten of them (plus a status
summary) in one Iridium SBD message of at most 340 bytes.

A JSON event is ~500 bytes and Iridium bills per message, so the link carries fixed-size binary
records instead. Each layout below is declared once, as a tuple of `Field`s (the README's tables
are tested against them); every integer is unsigned big-endian unless marked signed. A message
starts with the magic byte `W` and a version byte: a reader refuses a version it does not know.
What is lost against JSON: the event's uuid (the buoy's log finds it by station and seq), the
station's name (a 2-byte id), the run and model hashes beyond their first 4 bytes, the offsets
from the stream's start, the peak's position, the gap's length, the clip's path, the source
and the model's name.
"""

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from detector.timestamps import iso_utc

MAGIC = b"W"
VERSION = 1
MAX_MESSAGE = 340  # bytes: Iridium SBD mobile-originated limit (9602/9603 modems)
EPOCH = datetime(1900, 1, 1, tzinfo=UTC)  # the settings' earliest start: every time fits 48 bits


@dataclass(frozen=True)
class Field:
    """One field of a binary layout: its name, size in bytes and meaning (the README's row)."""

    name: str
    size: int
    meaning: str
    signed: bool = False


HEADER = (
    Field("magic", 1, "`0x57` (ASCII `W`)"),
    Field("version", 1, "layout version, 1"),
    Field("station_id", 2, "station id (`--sbd-station-id`)"),
    Field("time_ms", 6, "when the message was packed: milliseconds since 1900-01-01T00:00Z"),
    Field("flags", 1, "bit 0: a status summary follows; bit 1: the source is down"),
    Field("events", 1, "event records after the summary (0-10)"),
)
STATUS = (
    Field("last_seq", 4, "seq of the last event detected"),
    Field("uptime_s", 4, "seconds since the daemon started"),
    Field("dropped_samples", 4, "samples lost (full ring, card down)"),
    Field("silent_s", 4, "seconds of digital silence up to now"),
    Field("lag_ds", 2, "audio waiting to be scored, tenths of a second"),
    Field("level_dbfs", 1, "level, dBFS rounded (signed; -128: none or silence)", signed=True),
    Field("outages", 2, "times the sound card was lost"),
    Field("clock_resets", 2, "re-anchors of event times to the wall clock"),
    Field("unlogged_events", 2, "events the event log has not taken yet"),
    Field("queued_events", 4, "events in the SBD queue, this message's included"),
    Field("evicted_events", 4, "events dropped from the full SBD queue (still in the event log)"),
    Field("failed_sessions", 2, "failed SBD sessions since the daemon started"),
)
EVENT = (
    Field("station_id", 2, "station id (`--sbd-station-id`)"),
    Field("run", 4, "the run's uuid, first 4 bytes (its first 8 hex digits)"),
    Field("seq", 4, "the event's seq"),
    Field("start_ms", 6, "start: milliseconds since 1900-01-01T00:00Z"),
    Field("duration_ms", 4, "end - start, milliseconds"),
    Field("windows", 2, "windows merged"),
    Field("score", 1, "peak score x 255, rounded"),
    Field("threshold", 1, "threshold x 255, rounded"),
    Field("model", 4, "the model's sha256, first 4 bytes"),
    Field("flags", 1, "bit 0: `gap_before_s` (after a card outage); bit 1: a clip was saved"),
)
HEADER_SIZE, STATUS_SIZE, EVENT_SIZE = (sum(f.size for f in t) for t in (HEADER, STATUS, EVENT))
MAX_EVENTS = (MAX_MESSAGE - HEADER_SIZE - STATUS_SIZE) // EVENT_SIZE  # 10
HAS_STATUS, SOURCE_DOWN = 1, 2  # header flags
GAP_BEFORE, CLIP = 1, 2  # event flags
SBD_COUNTERS = ("queued_events", "evicted_events", "failed_sessions")  # the summary's own


def station_id(name: str) -> int:
    """The default 2-byte id of a station: the first 2 bytes of the sha256 of its name."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:2], "big")


def prefix4(text: str) -> bytes:
    """The first 4 bytes of a hex id (a uuid, a sha256); of the sha256 of any other text."""
    head = text.replace("-", "")[:8]
    try:
        return bytes.fromhex(head) if len(head) == 8 else _digest4(text)
    except ValueError:
        return _digest4(text)


def _digest4(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:4]


def millis(iso: str) -> int:
    """An event time (ISO-8601, Z) as milliseconds since EPOCH."""
    moment = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (moment - EPOCH) // timedelta(milliseconds=1)


def iso(ms: int) -> str:
    return iso_utc(EPOCH + timedelta(milliseconds=ms))


def _pack(layout: tuple[Field, ...], values: dict) -> bytes:
    """Exact fields must fit (ValueError); counters are clamped to their field by the caller."""
    out = bytearray()
    for f in layout:
        value = values[f.name]
        if isinstance(value, bytes):
            if len(value) != f.size:
                raise ValueError(f"{f.name}: {len(value)} bytes, the field holds {f.size}")
            out += value
        else:
            out += int(value).to_bytes(f.size, "big", signed=f.signed)  # OverflowError: too big
    return bytes(out)


def _unpack(layout: tuple[Field, ...], data: bytes) -> dict:
    values, at = {}, 0
    for f in layout:
        chunk = data[at : at + f.size]
        at += f.size
        raw = f.name in ("magic", "run", "model")
        values[f.name] = chunk if raw else int.from_bytes(chunk, "big", signed=f.signed)
    return values


def _clamp(value: object, size: int) -> int:
    """A counter into an unsigned field: negative or missing is 0, too big is the field's max."""
    number = value if isinstance(value, int | float) and not isinstance(value, bool) else 0
    return min(max(int(number), 0), 256**size - 1)


def _fraction(value: float) -> int:
    return min(max(round(float(value) * 255), 0), 255)


def encode_event(event: dict, station: int) -> bytes:
    """The 29-byte record of an event (the JSON object the daemon logs)."""
    start = millis(event["start"])
    try:
        return _pack(
            EVENT,
            {
                "station_id": station,
                "run": prefix4(event["run"]),
                "seq": event["seq"],
                "start_ms": start,
                "duration_ms": millis(event["end"]) - start,
                "windows": _clamp(event["windows"], 2),
                "score": _fraction(event["score"]),
                "threshold": _fraction(event["threshold"]),
                "model": prefix4(event["model"]["sha256"]),
                "flags": (GAP_BEFORE if event.get("gap_before_s") else 0)
                | (CLIP if event.get("clip") else 0),
            },
        )
    except OverflowError as e:
        seq = event.get("seq")
        raise ValueError(f"event seq {seq} does not fit the compact record: {e}") from None


def decode_event(record: bytes) -> dict:
    """An event record back to a dict: times to the millisecond, fractions to 1/255."""
    v = _unpack(EVENT, record)
    return {
        "type": "upcall",
        "station_id": v["station_id"],
        "run_prefix": v["run"].hex(),
        "seq": v["seq"],
        "start": iso(v["start_ms"]),
        "end": iso(v["start_ms"] + v["duration_ms"]),
        "score": round(v["score"] / 255, 4),
        "windows": v["windows"],
        "threshold": round(v["threshold"] / 255, 4),
        "model_sha256_prefix": v["model"].hex(),
        "gap_before": bool(v["flags"] & GAP_BEFORE),
        "clip": bool(v["flags"] & CLIP),
    }


def encode_status(status: dict, sbd: dict) -> bytes:
    """The summary of a heartbeat `status` and the SBD output's own counters (`sbd`)."""
    level = status.get("level_dbfs")
    values = {f.name: _clamp(status.get(f.name), f.size) for f in STATUS}
    values.update(
        lag_ds=_clamp(round((status.get("lag_s") or 0) * 10), 2),
        level_dbfs=-128 if level is None else min(max(round(level), -127), 127),
        **{k: _clamp(sbd.get(k), 4 if k != "failed_sessions" else 2) for k in SBD_COUNTERS},
    )
    return _pack(STATUS, values)


def decode_status(data: bytes) -> dict:
    v = _unpack(STATUS, data)
    level = v.pop("level_dbfs")
    lag = v.pop("lag_ds")
    return {**v, "lag_s": lag / 10, "level_dbfs": None if level == -128 else level}


def pack_message(
    records: Iterable[bytes],
    station: int,
    packed_at: datetime,
    status: dict | None = None,
    sbd: dict | None = None,
) -> bytes:
    """One SBD message: header, the status summary (when a heartbeat is known), the records."""
    records = list(records)
    if len(records) > MAX_EVENTS:
        raise ValueError(f"{len(records)} events: a message holds at most {MAX_EVENTS}")
    flags = (HAS_STATUS if status is not None else 0) | (
        SOURCE_DOWN if status is not None and status.get("source_state") not in (None, "up") else 0
    )
    header = _pack(
        HEADER,
        {
            "magic": MAGIC,
            "version": VERSION,
            "station_id": station,
            "time_ms": (packed_at - EPOCH) // timedelta(milliseconds=1),
            "flags": flags,
            "events": len(records),
        },
    )
    summary = encode_status(status, sbd or {}) if status is not None else b""
    return header + summary + b"".join(records)


def message_length(data: bytes) -> int:
    """The length of the message `data` starts with, from its header (ValueError if none)."""
    if len(data) < HEADER_SIZE or data[:1] != MAGIC:
        raise ValueError("not a whale-listen SBD message (no W header)")
    header = _unpack(HEADER, data[:HEADER_SIZE])
    if header["version"] != VERSION:
        raise ValueError(f"message version {header['version']}: this reader knows {VERSION}")
    summary = STATUS_SIZE if header["flags"] & HAS_STATUS else 0
    length = HEADER_SIZE + summary + header["events"] * EVENT_SIZE
    if length > MAX_MESSAGE:
        raise ValueError(f"its header says {header['events']} events: more than a message holds")
    return length


def decode_message(data: bytes) -> list[dict]:
    """A message as JSON-ready dicts: a `sbd_status` (when it has a summary), then its events;
    ValueError for anything that is not a whole message of a known version."""
    expected = message_length(data)
    if len(data) != expected:
        raise ValueError(f"message of {len(data)} bytes, its header says {expected}")
    header = _unpack(HEADER, data[:HEADER_SIZE])
    has_status = bool(header["flags"] & HAS_STATUS)
    out = []
    at = HEADER_SIZE
    if has_status:
        out.append(
            {
                "type": "sbd_status",
                "station_id": header["station_id"],
                "time": iso(header["time_ms"]),
                "source_state": "down" if header["flags"] & SOURCE_DOWN else "up",
                **decode_status(data[at : at + STATUS_SIZE]),
            }
        )
        at += STATUS_SIZE
    for k in range(header["events"]):
        out.append(decode_event(data[at + k * EVENT_SIZE : at + (k + 1) * EVENT_SIZE]))
    return out
