"""The durable event log: every event appended as one JSON line and fsync'ed before any output.

The log is the source of truth: a subscriber that missed a message (slow joiner, network drop,
full queue) can always recover it from disk. `read_events` reads a log back.

Each daemon start first appends a `{"type": "run", ...}` line (`records.Run`: its run id and
`after_seq`, the last seq before it), and its events' `seq` continue from the log's last one, so
a seq names one event in the whole log. `read_events` gives the events only; `read_log` every
record.
"""

import json
import os
from collections.abc import Iterator
from pathlib import Path

from detector.errors import WhaleError
from detector.records import EVENT_TYPE, RUN_TYPE, encode

TAIL_CHUNK = 65536


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not possible on every platform; the file's own fsync still holds its data
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EventLog:
    """Append-only JSON-lines event log; an event is on disk when `append` returns True.

    A write that fails (disk full, I/O error) must not cost the event nor the log: the file is cut
    back to its last whole line, the event is held in memory and written, in order, with the next
    one (or at close). The caller still publishes it and says that the log is failing.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.pending: list[bytes] = []  # encoded events not yet on disk, oldest first
        self.error: str | None = None  # why the last write failed, while the log is failing
        self._fd: int | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            created = not self.path.exists()
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            if created:
                _fsync_dir(self.path.parent)  # the new file's name must survive a crash too
            self._repair_torn_tail()
        except OSError as exc:
            if self._fd is not None:
                os.close(self._fd)
            raise WhaleError(f"cannot open event log {self.path}: {exc.strerror or exc}") from exc

    def _repair_torn_tail(self) -> None:
        """Cut a last line left half-written by a crash, so the next event starts a clean line.

        Such a line was never fsync'ed, so never published: nothing a subscriber saw is lost.
        """
        size = os.fstat(self._fd).st_size
        if size == 0:
            return
        with open(self.path, "rb") as existing:
            existing.seek(max(0, size - 65536))
            tail = existing.read()
        if tail.endswith(b"\n"):
            return
        cut = tail.rfind(b"\n") + 1
        try:
            json.loads(tail[cut:])
            complete = True
        except ValueError:
            complete = False
        if complete or (cut == 0 and len(tail) < size):
            _write_all(self._fd, b"\n")  # a whole event missing only its newline: keep it
        else:
            os.ftruncate(self._fd, size - len(tail) + cut)
        os.fsync(self._fd)

    def last_seq(self) -> int:
        """The seq the log ends at (`last_seq`)."""
        return last_seq(self.path)

    def start_run(self, run: dict) -> bool:
        """Write a run's first line (`records.Run`); False if the disk refused it. It is not held
        like an event: every event names its run too, so a lost run line loses nothing."""
        if self.pending:
            return False  # never ahead of events still held
        self.pending.append(encode(run) + b"\n")
        if self.flush():
            return True
        self.pending.pop()
        return False

    def append(self, event: dict) -> bool:
        """Write one line (after any held back) and fsync it; False if it is held in memory."""
        self.pending.append(encode(event) + b"\n")
        return self.flush()

    def flush(self) -> bool:
        """Write the held events; True when none is left in memory."""
        if not self.pending:
            return True
        size = None
        try:
            size = os.fstat(self._fd).st_size
            _write_all(self._fd, b"".join(self.pending))
            os.fsync(self._fd)
        except OSError as exc:
            self.error = exc.strerror or str(exc)
            if size is not None:
                try:
                    os.ftruncate(self._fd, size)  # no torn line for the next write to follow
                except OSError:
                    pass  # not a regular file (or the disk is gone): nothing more to do here
            return False
        self.pending.clear()
        self.error = None
        return True

    def close(self) -> None:
        """Last try for held events (see `pending` after), then close."""
        if self._fd is None:
            return
        self.flush()
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def last_seq(path: Path) -> int:
    """The seq a log ends at: its last event's, or its last run line's `after_seq` (a run with
    no event); 0 for an empty or absent log. Read backwards from the end, a chunk at a time."""
    for record in _records_backwards(path):
        kind = record.get("type", EVENT_TYPE)
        value = record.get("seq") if kind == EVENT_TYPE else record.get("after_seq")
        if kind in (EVENT_TYPE, RUN_TYPE) and isinstance(value, int):
            return value
    return 0


def _records_backwards(path: Path) -> Iterator[dict]:
    """The log's whole JSON lines, last first (a torn or bad line is passed over)."""
    try:
        with open(path, "rb") as file:
            end = file.seek(0, os.SEEK_END)
            rest = b""
            while end > 0:
                start = max(0, end - TAIL_CHUNK)
                file.seek(start)
                data = file.read(end - start) + rest
                end = start
                lines = data.split(b"\n")
                rest = lines.pop(0) if start > 0 else b""  # maybe cut: joined with the next chunk
                for line in reversed(lines):
                    record = _record(line)
                    if record is not None:
                        yield record
            record = _record(rest)
            if record is not None:
                yield record
    except FileNotFoundError:
        return


def _record(line: bytes) -> dict | None:
    if not line.strip():
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def read_events(path: Path) -> list[dict]:
    """The events in a log, without its run lines (`read_log`: every record)."""
    return [r for r in read_log(path) if not (isinstance(r, dict) and r.get("type") == RUN_TYPE)]


def read_log(path: Path) -> list[dict]:
    """All records in a log; a torn last line (crash mid-write) is skipped, other bad lines fail."""
    path = Path(path)
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise WhaleError(f"cannot read event log {path}: {exc.strerror or exc}") from exc
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            events.append(json.loads(line))
        except ValueError as exc:
            if number == len(lines):  # no newline after it: the write never completed
                continue
            raise WhaleError(f"{path}:{number}: not a JSON event line") from exc
    return events
