"""Export logged events as a Raven Pro selection table, for review next to the recording.

Analysts check detections in Raven: a selection table (tab-separated text) opened with the
recording draws each event as a box on its spectrogram. Boxes span the up-call band (50-250 Hz)
over the event's offsets in the stream. When the log holds events from several sources (files
replayed one after another), a `Begin File` column names each event's file and its times are
offsets within that file: open each file with the rows of its own name.
"""

from pathlib import Path, PurePath

from detector.errors import WhaleError
from detector.eventlog import read_events
from detector.numbers import is_finite_number
from detector.records import EVENT_TYPE

VIEW = "Spectrogram 1"
CHANNEL = 1
LOW_FREQ_HZ = 50.0  # the up-call band
HIGH_FREQ_HZ = 250.0
COLUMNS = [
    "Selection",
    "View",
    "Channel",
    "Begin Time (s)",
    "End Time (s)",
    "Low Freq (Hz)",
    "High Freq (Hz)",
    "Score",
]
SUFFIX = ".selections.txt"


def _number(event: dict, key: str, where: str) -> float:
    value = event.get(key)
    if not is_finite_number(value):
        raise WhaleError(f"{where}: field {key!r} is {value!r}, not a number")
    return float(value)


def _file_name(source: str) -> str:
    """The bare file name Raven shows; a device name (hw:1) is kept as it is."""
    return PurePath(source).name or source


def events_to_raven(events: list[dict], where: str = "event") -> str:
    """The selection table text for up-call events, numbered 1.. in the given order.

    Records of another type are left out. `where` names the input in error messages.
    """
    upcalls = [event for event in events if event.get("type", EVENT_TYPE) == EVENT_TYPE]
    sources = {str(event.get("source", "")) for event in upcalls}
    several = len(sources) > 1
    lines = ["\t".join(COLUMNS + (["Begin File"] if several else []))]
    for number, event in enumerate(upcalls, start=1):
        label = f"{where} {number} (id {event.get('id', '?')})"
        begin = _number(event, "offset_start_s", label)
        end = _number(event, "offset_end_s", label)
        score = _number(event, "score", label)
        row = [
            str(number),
            VIEW,
            str(CHANNEL),
            f"{begin:.3f}",
            f"{end:.3f}",
            f"{LOW_FREQ_HZ:.1f}",
            f"{HIGH_FREQ_HZ:.1f}",
            f"{score:.4f}",
        ]
        if several:
            row.append(_file_name(str(event.get("source", ""))))
        lines.append("\t".join(row))
    return "\n".join(lines) + "\n"


def default_output(events_log: Path) -> Path:
    """events.jsonl -> events.selections.txt, beside the log."""
    events_log = Path(events_log)
    return events_log.with_name(events_log.stem + SUFFIX)


def export_raven(events_log: Path, out: Path | None = None) -> Path:
    """Write the selection table for an event log; return the table's path."""
    events_log = Path(events_log)
    events = read_events(events_log)  # WhaleError if missing, unreadable or corrupt
    for number, event in enumerate(events, start=1):
        if not isinstance(event, dict):
            raise WhaleError(f"{events_log}: record {number} is not a JSON object")
    text = events_to_raven(events, where=f"{events_log}: event")
    out = default_output(events_log) if out is None else Path(out)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise WhaleError(f"cannot write selection table {out}: {exc.strerror or exc}") from exc
    return out
