"""A scan's resume state: which files are done, and how much of the output that covers.

The state is a JSON-lines file beside the output (`OUT.scan-state.jsonl`, or `--state`), each
line fsynced: a `scan` line first (the output and its format), `sequence` lines (the files of
the Raven file sequence, in order, with their lengths), then one `done` line per finished file:
its path, size and modification time, the scoring that produced it (`fingerprint`: the model's
sha256, threshold, hop, channel), its counts and error, and `output_end`, the output's size once
its rows were fsynced. A file's rows are written before its `done` line, so a crash between the
two leaves rows that no line covers: the next run cuts the output back to the last `output_end`
and scans that file again, and every event is in the output exactly once.

A file is skipped when a `done` line has the same path, size, modification time and fingerprint
(a different model, or a file that changed, is scanned again) unless that file failed without a
single event: then it is retried (an unreadable file may have been fixed, and retrying it cannot
duplicate anything).
"""

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from detector.errors import UsageError, WhaleError
from detector.records import encode
from detector.scan import FileKey
from detector.timestamps import iso_utc

STATE_SUFFIX = ".scan-state.jsonl"
VERSION = 1


def default_state_path(out: Path) -> Path:
    return out.with_name(out.name + STATE_SUFFIX)


@dataclass
class Resumed:
    """What an earlier run left: done files, the sequence, where the committed output ends."""

    done: dict[str, dict]  # path -> its last `done` line
    sequence: dict[str, float]  # path -> seconds into the file sequence where it begins
    sequence_end_s: float
    output_end: int
    last_seq: int


class ScanState:
    """Reads an earlier run's state (`resumed`) and appends this run's lines."""

    def __init__(self, path: Path, out: Path, fmt: str) -> None:
        self.path = path
        lines = _read_lines(path)
        if lines and (lines[0].get("type") != "scan" or lines[0].get("version") != VERSION):
            raise UsageError(f"{path} is not a whale-listen scan state (version {VERSION})")
        if lines and lines[0].get("format") != fmt:
            raise UsageError(
                f"{path}: this scan's output is {lines[0].get('format')}, not {fmt}: give the "
                f"same --format, or a new --out"
            )
        self.fresh = not lines
        self.resumed = _resume(lines)
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise WhaleError(f"cannot open scan state {path}: {e.strerror or e}") from None
        if self.fresh:
            _fsync_dir(path.parent)
        self._out, self._fmt = out, fmt

    def start(self, output_start: int) -> None:
        """A fresh state's first line, once the output has its header (`output_start` bytes)."""
        self._append({"type": "scan", "version": VERSION, "output": str(self._out),
                      "format": self._fmt, "output_start": output_start,
                      "created": iso_utc(datetime.now().astimezone())})  # fmt: skip
        self.resumed.output_end = output_start

    def extend_sequence(self, files: list[tuple[str, float]]) -> None:
        """Add files (path, seconds) to the end of the file sequence, those not yet in it."""
        new = [(p, s) for p, s in files if p not in self.resumed.sequence]
        if not new:
            return
        for path, seconds in new:
            self.resumed.sequence[path] = self.resumed.sequence_end_s
            self.resumed.sequence_end_s += seconds
        self._append({"type": "sequence", "files": [[p, round(s, 6)] for p, s in new]})

    def is_done(self, key: FileKey, fingerprint: dict) -> bool:
        line = self.resumed.done.get(key.path)
        return (
            line is not None
            and line.get("size") == key.size
            and line.get("mtime_ns") == key.mtime_ns
            and line.get("fingerprint") == fingerprint
            and (line.get("error") is None or line.get("events", 0) > 0)
        )

    def commit(self, key: FileKey, fingerprint: dict, counts: dict, output_end: int) -> None:
        """Record a finished file whose rows end the output at `output_end` bytes."""
        line = {"type": "done", "path": key.path, "size": key.size, "mtime_ns": key.mtime_ns,
                "fingerprint": fingerprint, **counts, "output_end": output_end}  # fmt: skip
        self._append(line)
        self.resumed.done[key.path] = line
        self.resumed.output_end = output_end
        self.resumed.last_seq = line.get("last_seq", self.resumed.last_seq)

    def _append(self, record: dict) -> None:
        data = memoryview(encode(record) + b"\n")
        try:
            while data:
                data = data[os.write(self._fd, data) :]
            os.fsync(self._fd)
        except OSError as e:
            raise WhaleError(f"cannot write scan state {self.path}: {e.strerror or e}") from None

    def close(self) -> None:
        os.close(self._fd)


def _read_lines(path: Path) -> list[dict]:
    """The state's lines; a last line left half-written by a crash is cut off."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise WhaleError(f"cannot read scan state {path}: {e.strerror or e}") from None
    lines = data.split(b"\n")
    if lines[-1]:  # no newline after it: its write never completed, so it never counted
        with open(path, "r+b") as f:
            f.truncate(len(data) - len(lines[-1]))
    records = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise WhaleError(f"{path}:{number}: not a scan state line")
        records.append(record)
    return records


def _resume(lines: list[dict]) -> Resumed:
    resumed = Resumed({}, {}, 0.0, 0, 0)
    for line in lines:
        kind = line.get("type")
        if kind == "scan":
            resumed.output_end = int(line.get("output_start", 0))
        elif kind == "sequence":
            for path, seconds in line.get("files", []):
                resumed.sequence[path] = resumed.sequence_end_s
                resumed.sequence_end_s += float(seconds)
        elif kind == "done":
            resumed.done[line["path"]] = line
            resumed.output_end = int(line["output_end"])
            resumed.last_seq = int(line.get("last_seq", resumed.last_seq))
    return resumed


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
