"""Export logged events as a Raven Pro selection table, for review next to the recording.

Analysts check detections in Raven: a selection table (tab-separated text) opened with the
recording draws each event as a box on its spectrogram. Boxes span the up-call band (50-250 Hz)
over the event's offsets in the stream. When the log holds events from several sources (files
replayed one after another), the table follows Raven's multi-file convention: the files, in the
order they first appear in the log, make one sequence, `Begin Time (s)` counts over that
sequence (each earlier file's full length before it), and `Begin Path`, `File Offset (s)` and
`Begin File` say which file and where in it. That needs each file's length, read from the file
itself, so the recordings must be where the log names them.
"""

from collections.abc import Mapping
from pathlib import Path, PurePath

import soundfile as sf

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
MULTI_FILE_COLUMNS = ["Begin Path", "File Offset (s)", "Begin File"]
SUFFIX = ".selections.txt"


def _number(event: dict, key: str, where: str) -> float:
    value = event.get(key)
    if not is_finite_number(value):
        raise WhaleError(f"{where}: field {key!r} is {value!r}, not a number")
    return float(value)


def _file_name(source: str) -> str:
    """The bare file name Raven shows; a device name (hw:1) is kept as it is."""
    return PurePath(source).name or source


def file_seconds(source: str, base: Path | None = None) -> tuple[Path, float]:
    """A logged source's absolute path and length in seconds (relative paths: from the working
    folder, then from `base`, the log's folder)."""
    candidates = [Path(source)]
    if base is not None and not Path(source).is_absolute():
        candidates.append(base / source)
    for path in candidates:
        try:
            info = sf.info(str(path))
        except (OSError, RuntimeError, ValueError):  # missing, unreadable or not audio
            continue
        return path.resolve(), info.frames / info.samplerate
    raise WhaleError(
        f"events come from several files, and Raven counts times over the file sequence, which "
        f"needs each file's length: cannot read {source!r} (run where the recordings are)"
    )


def events_to_raven(
    events: list[dict],
    where: str = "event",
    files: Mapping[str, tuple[Path, float]] | None = None,
    base: Path | None = None,
) -> str:
    """The selection table text for up-call events, numbered 1.. in the given order.

    Records of another type are left out. `where` names the input in error messages. With
    several sources, `files` maps each source to (path, seconds); sources it lacks are read.
    """
    upcalls = [event for event in events if event.get("type", EVENT_TYPE) == EVENT_TYPE]
    sources = list(dict.fromkeys(str(event.get("source", "")) for event in upcalls))
    several = len(sources) > 1
    begins: dict[str, tuple[Path, float]] = {}  # source -> (path, start in the file sequence)
    if several:
        total = 0.0
        for source in sources:
            path, seconds = (files or {}).get(source) or file_seconds(source, base)
            begins[source] = (path, total)
            total += seconds
    lines = [header_line(several)]
    for number, event in enumerate(upcalls, start=1):
        source = str(event.get("source", ""))
        path, before = begins.get(source, (None, 0.0))
        label = f"{where} {number} (id {event.get('id', '?')})"
        lines.append(selection_line(number, event, label, before, path if several else None))
    return "\n".join(lines) + "\n"


def header_line(several: bool) -> str:
    """The table's first line; `several`: with the multi-file columns."""
    return "\t".join(COLUMNS + (MULTI_FILE_COLUMNS if several else []))


def selection_line(
    number: int, event: dict, label: str, before: float = 0.0, path: Path | str | None = None
) -> str:
    """One selection: an event `before` seconds into the file sequence; with `path` (a table
    of several files), the multi-file columns saying which file and where in it."""
    begin = _number(event, "offset_start_s", label)
    end = _number(event, "offset_end_s", label)
    score = _number(event, "score", label)
    row = [
        str(number),
        VIEW,
        str(CHANNEL),
        f"{before + begin:.3f}",
        f"{before + end:.3f}",
        f"{LOW_FREQ_HZ:.1f}",
        f"{HIGH_FREQ_HZ:.1f}",
        f"{score:.4f}",
    ]
    if path is not None:
        row += [str(path), f"{begin:.3f}", _file_name(str(event.get("source", "")))]
    return "\t".join(row)


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
    text = events_to_raven(events, where=f"{events_log}: event", base=events_log.parent)
    out = default_output(events_log) if out is None else Path(out)
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise WhaleError(f"cannot write selection table {out}: {exc.strerror or exc}") from exc
    return out
