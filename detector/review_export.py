"""Verdicts out as annotation tables of event clips, which `whale-train train --data` reads.

Each reviewed event is one row naming its clip (the FLAC in the clips folder) and the event's
span inside it: a confirmed detection is a call (a positive), a rejected one a span known not to
be a call (a hard negative), an unsure one is written but left out of training. A CSV
(`filename,start,end,label,event_id,...`, file names relative to the CSV so the two can move
together) or, for a name ending in .txt, a Raven selection table over the clips as one file
sequence (Begin Path, Begin File, File Offset (s), Verdict). Events whose clip is not in the
folder are counted and left out: there is no audio to learn from.
"""

import csv
import os
import sqlite3
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import soundfile as sf

from detector.errors import UsageError, WhaleError
from detector.review_media import clip_path, clip_span
from detector.reviewdb import duration_s

LABELS = {"upcall": "upcall", "not": "not-upcall", "unsure": "unsure"}
CSV_HEADER = ["filename", "start", "end", "label", "event_id", "station", "event_start",
              "score", "reviewer", "reviewed_at"]  # fmt: skip
RAVEN_HEADER = ["Selection", "View", "Channel", "Begin Time (s)", "End Time (s)",
                "Low Freq (Hz)", "High Freq (Hz)", "Begin Path", "Begin File",
                "File Offset (s)", "Verdict", "Event ID", "Station", "Score", "Reviewer",
                "Reviewed At"]  # fmt: skip
LOW_HZ, HIGH_HZ = 50, 250  # the up-call band, for Raven's selection boxes


@dataclass
class ExportSummary:
    path: Path
    verdicts: Counter = field(default_factory=Counter)
    no_clip: int = 0

    def describe(self) -> str:
        parts = ", ".join(f"{self.verdicts[v]} {LABELS[v]}" for v in LABELS)
        text = f"wrote {sum(self.verdicts.values())} verdicts ({parts}) to {self.path}"
        if self.no_clip:
            text += f"; {self.no_clip} reviewed events left out: their clip is not in the folder"
        return text


@dataclass
class _Row:
    clip: Path
    seconds: float  # the clip's length
    span: tuple[float, float]
    verdict: str
    event: sqlite3.Row


def _rows(reviewed: list[sqlite3.Row], clips: Path, summary: ExportSummary) -> list[_Row]:
    rows = []
    for event in reviewed:
        path = clip_path(clips, event["clip"])
        if path is None:
            summary.no_clip += 1
            continue
        try:
            info = sf.info(str(path))
        except (RuntimeError, OSError) as e:
            raise WhaleError(f"cannot read clip {path}: {e}") from None
        seconds = info.frames / info.samplerate
        duration = duration_s(event)
        rows.append(_Row(path, seconds, clip_span(seconds, duration), event["verdict"], event))
        summary.verdicts[event["verdict"]] += 1
    return rows


def export(reviewed: list[sqlite3.Row], out: Path, clips: Path | None) -> ExportSummary:
    """Write the table (CSV, or Raven for .txt); what it holds."""
    out = Path(out)
    if clips is None:
        raise UsageError("--export needs --clips DIR: the table names the clips it labels")
    if out.suffix.lower() not in (".csv", ".txt"):
        raise UsageError(f"--export {out}: name a .csv table or a Raven .txt selection table")
    summary = ExportSummary(out)
    rows = _rows(reviewed, clips, summary)
    tmp = out.with_name(out.name + ".part")
    try:
        with tmp.open("w", newline="", encoding="utf-8") as handle:
            if out.suffix.lower() == ".csv":
                _write_csv(handle, rows, out.resolve().parent)
            else:
                _write_raven(handle, rows)
        tmp.replace(out)
    except OSError as e:
        raise WhaleError(f"cannot write {out}: {e.strerror or e}") from None
    finally:
        tmp.unlink(missing_ok=True)
    return summary


def _common(row: _Row) -> list[str]:
    e = row.event
    return [e["id"], e["station"], e["start"], f"{e['score']:.4f}", e["reviewer"], e["at"]]


def _write_csv(handle, rows: list[_Row], folder: Path) -> None:
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for row in rows:
        try:
            name = os.path.relpath(row.clip, folder)
        except ValueError:  # another drive
            name = str(row.clip)
        start, end = row.span
        writer.writerow([name, f"{start:.3f}", f"{end:.3f}", LABELS[row.verdict], *_common(row)])


def _write_raven(handle, rows: list[_Row]) -> None:
    writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
    writer.writerow(RAVEN_HEADER)
    elapsed = 0.0  # Raven's times run over the file sequence
    for n, row in enumerate(rows, start=1):
        start, end = row.span
        e = row.event
        writer.writerow(
            [n, "Spectrogram 1", 1, f"{elapsed + start:.3f}", f"{elapsed + end:.3f}", LOW_HZ,
             HIGH_HZ, str(row.clip), row.clip.name, f"{start:.3f}", LABELS[row.verdict], e["id"],
             e["station"], f"{e['score']:.4f}", e["reviewer"], e["at"]]
        )  # fmt: skip
        elapsed += row.seconds
