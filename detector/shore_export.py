"""`whale-listen gather --export FILE`: what the shore database holds, as CSV or a Raven table.

CSV is one row per event with its main fields (the whole record stays in the database); `.txt`
is a Raven Pro selection table built by `detector.raven` exactly as `export-raven` builds one from
an event log, so one station's table opens beside its recording the same way.
"""

import csv
import io
from pathlib import Path

from detector import shoredb
from detector.errors import UsageError, WhaleError
from detector.raven import events_to_raven

CSV_COLUMNS = [
    "station",
    "seq",
    "run",
    "id",
    "start",
    "end",
    "score",
    "offset_start_s",
    "offset_end_s",
    "peak_offset_s",
    "windows",
    "source",
    "threshold",
    "clip",
    "received",
]
FORMATS = (".csv", ".txt")


def check_format(out: Path) -> None:
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"--export {ascii(str(out))}: name a .csv file or a .txt Raven table")


def export(db: Path, out: Path, stations: list[str] | None = None) -> int:
    """Write the database's events (or some stations') to `out`; the number written."""
    check_format(out)
    if not Path(db).is_file():
        raise WhaleError(f"no database {db}")
    conn = shoredb.connect(db)
    try:
        rows = shoredb.stored(conn, stations)
    finally:
        conn.close()
    if out.suffix.lower() == ".csv":
        text = _csv_text(rows)
    else:
        try:
            text = events_to_raven([event for event, _ in rows], where=f"{db}: event")
        except WhaleError as e:
            raise WhaleError(f"{e}; or export one --station, or a .csv") from None
    try:
        out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise WhaleError(f"cannot write {out}: {exc.strerror or exc}") from None
    return len(rows)


def _csv_text(rows: list[tuple[dict, str]]) -> str:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for event, received in rows:
        writer.writerow({**event, "received": received})
    return buffer.getvalue()
