"""The files `whale-listen scan` writes: one table of events, appended durably file by file.

Every format is a header written once plus rows appended per scanned file, each append
fsynced before the resume state records the file (`detector.scan_state`), so after a crash
the output is cut back to the end of the last recorded file and nothing appears twice.

- `csv`: one row per event, the event record's fields flattened (`model`, `model_sha256`).
- `jsonl`: the daemon's event records (README, Events), one a line: `export-raven` and
  `read_events` read it like a daemon's log. `seq` counts over the whole scan; `run` is
  the scan's run (a new one per invocation, as per daemon start).
- `raven`: a Raven Pro selection table in Raven's multi-file convention: the scan's files in
  sorted order are one file sequence, `Begin Time (s)` counts over it, `Begin Path`, `File
  Offset (s)` and `Begin File` say which file and where (detector.raven's rows).
- `parquet` (pyarrow): rows are kept durably as JSON lines in `OUT.rows.jsonl`, and the
  Parquet file is rewritten from them (temporary file + rename) at the end of each run:
  a Parquet file is only readable once its footer is written.
"""

import csv
import io
import json
import os
from pathlib import Path

from detector.errors import UsageError, WhaleError
from detector.raven import header_line, selection_line
from detector.records import encode

FORMATS = ("csv", "jsonl", "raven", "parquet")
BY_SUFFIX = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".txt": "raven"}
BY_SUFFIX[".parquet"] = "parquet"
CSV_COLUMNS = [
    "seq", "source", "start", "end", "offset_start_s", "offset_end_s", "peak_offset_s", "score",
    "windows", "threshold", "model", "model_sha256", "station", "id", "run",
]  # fmt: skip


def choose_format(out: Path, given: str | None) -> str:
    """--format, else the output's suffix; a suffix it does not know is a usage error."""
    if given is not None:
        return given
    fmt = BY_SUFFIX.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(
            f"--out {out}: cannot tell the format from {out.suffix or 'no suffix'!r}; name it "
            f".csv, .jsonl, .txt (Raven) or .parquet, or give --format"
        )
    return fmt


def require_pyarrow() -> None:
    """Parquet is optional: say so in one line before any work when pyarrow is missing."""
    try:
        import pyarrow  # noqa: F401
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise UsageError(
            "--format parquet needs pyarrow, which is not installed (pip install pyarrow); "
            "or write .csv, .jsonl or a Raven .txt table"
        ) from None


def rows_path(out: Path, fmt: str) -> Path:
    """The file rows are appended to: the output itself, or Parquet's JSON-lines rows."""
    return out.with_name(out.name + ".rows.jsonl") if fmt == "parquet" else out


def header(fmt: str) -> bytes:
    if fmt == "csv":
        return _csv_line(CSV_COLUMNS)
    if fmt == "raven":
        return (header_line(several=True) + "\n").encode("utf-8")
    return b""


def rows(fmt: str, events: list[dict], sequence_start_s: float) -> bytes:
    """One file's events in the format; `sequence_start_s`: where the file begins in the
    Raven file sequence."""
    if fmt == "csv":
        return b"".join(_csv_line([_csv_value(e, c) for c in CSV_COLUMNS]) for e in events)
    if fmt == "raven":
        lines = [
            selection_line(e["seq"], e, f"event {e['seq']}", sequence_start_s, e["source"])
            for e in events
        ]
        return "".join(line + "\n" for line in lines).encode("utf-8")
    return b"".join(encode(e) + b"\n" for e in events)


def _csv_value(event: dict, column: str) -> object:
    if column == "model":
        return event["model"]["name"]
    if column == "model_sha256":
        return event["model"]["sha256"]
    value = event.get(column)
    return "" if value is None else value


def _csv_line(values: list[object]) -> bytes:
    text = io.StringIO()
    csv.writer(text, lineterminator="\n").writerow(values)
    return text.getvalue().encode("utf-8")


class RowsFile:
    """The append-only rows file: every append fsynced; cut back to a committed size."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as e:
            raise WhaleError(f"cannot open {path}: {e.strerror or e}") from None

    @property
    def size(self) -> int:
        return os.fstat(self._fd).st_size

    def append(self, data: bytes) -> int:
        """Write and fsync `data`; the file's size after it."""
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as e:
            raise WhaleError(f"cannot write {self.path}: {e.strerror or e}") from None
        return self.size

    def cut(self, size: int) -> None:
        """Drop rows after `size`: a file written but not recorded before a crash."""
        os.ftruncate(self._fd, size)
        os.fsync(self._fd)

    def close(self) -> None:
        os.close(self._fd)


def write_parquet(out: Path, rows_file: Path) -> None:
    """The Parquet table of every row so far, replacing `out` whole (pyarrow only here)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = []
    with open(rows_file, encoding="utf-8") as lines:
        for line in lines:
            event = json.loads(line)
            values = {c: _csv_value(event, c) for c in CSV_COLUMNS}
            records.append({c: None if v == "" else v for c, v in values.items()})
    table = pa.Table.from_pylist(records) if records else pa.table({c: [] for c in CSV_COLUMNS})
    partial = out.with_name(out.name + ".part")
    pq.write_table(table, partial)
    os.replace(partial, out)
