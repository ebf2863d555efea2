"""Labelled audio from the layouts people actually have, all brought to 2 kHz mono float32.

Layouts: the Kaggle 2013 challenge (train.csv + train/*.aiff), two folders of clips
(right_whale/, no_right_whale/), continuous recordings with call annotations (CSV or Raven
selection tables), and call-free background recordings. The review station's export
(`whale-listen review --export`) is an annotation table of event clips: a confirmed detection is
a call, a rejected one a span that is known not to be one (a hard negative), an unsure one is
left out; its event id column marks the rows that came from review. Every problem is a
WhaleError naming the file (and line) at fault, because a training run should fail at load
time, not hours later.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.audio import read_audio
from detector.constants import SAMPLE_RATE
from detector.errors import WhaleError
from detector.numbers import is_finite_number

AUDIO_EXTENSIONS = (".aiff", ".aif", ".wav", ".flac")
KAGGLE_HEADER = ["clip_name", "label"]
ANNOTATION_COLUMNS = ["filename", "start", "end"]
CALL_LABELS = {"1", "upcall", "up-call", "up_call", "call", "yes", "true"}
NOT_CALL_LABELS = {"0", "-1", "no", "false", "none", "noise", "negative", "not", "not-upcall"}
UNSURE_LABELS = {"unsure", "?"}  # a reviewer could not tell: neither a call nor a negative
REVIEW_COLUMN = "event_id"  # the review export's column: its rows came from review
RAVEN_LABEL, RAVEN_EVENT, RAVEN_PATH = "Verdict", "Event ID", "Begin Path"
RAVEN_SUFFIX = ".selections.txt"
RAVEN_BEGIN, RAVEN_END = "Begin Time (s)", "End Time (s)"
RAVEN_FILE, RAVEN_OFFSET = "Begin File", "File Offset (s)"

Span = tuple[float, float]


@dataclass
class Clip:
    audio: np.ndarray
    label: int  # 1 = up-call, 0 = no up-call
    source: str  # file the clip came from, for error messages and per-recording splits


@dataclass
class Recording:
    path: Path
    audio: np.ndarray
    calls: list[Span]  # (start_s, end_s) of every up-call; empty for call-free recordings
    rejected: list[Span] = field(default_factory=list)  # spans labelled not a call
    reviewed: bool = False  # labelled by the review station (a verdict on an event clip)
    # spans a person judged probable calls the annotators missed (a --review list): never
    # scored as calls, but with --train-review the sampler keeps them out of the negatives
    probable: list[Span] = field(default_factory=list)


@dataclass
class Labels:
    """What an annotation table says about one recording."""

    calls: list[Span] = field(default_factory=list)
    rejected: list[Span] = field(default_factory=list)
    reviewed: bool = False

    def add(self, other: Labels) -> None:
        self.calls += other.calls
        self.rejected += other.rejected
        self.reviewed |= other.reviewed


def _is_audio(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in AUDIO_EXTENSIONS


def _audio_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_audio(p))


def _read_rows(path: Path, delimiter: str = ",") -> tuple[list[str], list[tuple[int, list[str]]]]:
    """Header and (line number, cells) of a delimited text file, whitespace stripped."""
    if not path.is_file():
        raise WhaleError(f"{path}: no such file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = [
                [cell.strip() for cell in row] for row in csv.reader(handle, delimiter=delimiter)
            ]
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise WhaleError(f"{path}: cannot read ({error})") from None
    numbered = [(line, row) for line, row in enumerate(rows, start=1) if any(row)]
    if not numbered:
        raise WhaleError(f"{path}: empty file, expected a header line")
    (_, header), body = numbered[0], numbered[1:]
    return header, body


def _number(text: str, path: Path, line: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise WhaleError(f"{path} line {line}: {what} {text!r} is not a number") from None
    if not is_finite_number(value) or value < 0:
        raise WhaleError(f"{path} line {line}: {what} {text!r} must be a finite time >= 0")
    return value


def _span(start: str, end: str, path: Path, line: int) -> Span:
    span = (_number(start, path, line, "start"), _number(end, path, line, "end"))
    if span[1] <= span[0]:
        raise WhaleError(f"{path} line {line}: end {end} is not after start {start}")
    return span


def load_kaggle_csv(root: Path, channel: int = 0) -> list[Clip]:
    """Kaggle 2013 layout: root/train.csv (clip_name,label) and the clips in root/train/."""
    root = Path(root)
    table = root / "train.csv" if root.is_dir() else root
    clip_dir = table.parent / "train"
    header, body = _read_rows(table)
    if [name.lower() for name in header] != KAGGLE_HEADER:
        raise WhaleError(f"{table}: header must be 'clip_name,label', found {','.join(header)!r}")
    clips = []
    for line, row in body:
        if len(row) != 2:
            raise WhaleError(f"{table} line {line}: expected 2 columns, found {len(row)}")
        name, label = row
        if label not in ("0", "1"):
            raise WhaleError(f"{table} line {line}: label {label!r} must be 0 or 1")
        clip_path = clip_dir / name
        if not clip_path.is_file():
            raise WhaleError(f"{table} line {line}: clip {clip_path} is missing")
        clips.append(Clip(read_audio(clip_path, channel), int(label), str(clip_path)))
    if not clips:
        raise WhaleError(f"{table}: lists no clips")
    return clips


def load_folders(root: Path, channel: int = 0) -> list[Clip]:
    """Two folders of clips: root/right_whale/ (label 1) and root/no_right_whale/ (label 0)."""
    root = Path(root)
    clips = []
    for folder_name, label in (("right_whale", 1), ("no_right_whale", 0)):
        folder = root / folder_name
        if not folder.is_dir():
            raise WhaleError(f"{folder}: missing; expected right_whale/ and no_right_whale/")
        files = _audio_files(folder)
        if not files:
            raise WhaleError(f"{folder}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        clips += [Clip(read_audio(path, channel), label, str(path)) for path in files]
    return clips


def _label_kind(label: str, path: Path, line: int) -> str:
    """'call', 'not' or 'unsure'."""
    lowered = label.lower()
    if lowered in CALL_LABELS:
        return "call"
    if lowered in NOT_CALL_LABELS:
        return "not"
    if lowered in UNSURE_LABELS:
        return "unsure"
    raise WhaleError(
        f"{path} line {line}: unknown label {label!r}; use 1/upcall for calls, 0 for none"
    )


def _add_span(labels: dict[str, Labels], name: str, span: Span, kind: str, reviewed: bool) -> None:
    if kind == "unsure":
        return  # not evidence either way: the file is not even loaded for it
    entry = labels.setdefault(name, Labels())  # a file with only 0-labelled rows is call-free
    entry.reviewed |= reviewed
    spans = entry.calls if kind == "call" else entry.rejected
    if span not in spans:  # Raven lists each selection once per view
        spans.append(span)


def _load_annotation_csv(path: Path) -> dict[str, Labels]:
    header, body = _read_rows(path)
    columns = [name.lower() for name in header]
    if columns[:3] != ANNOTATION_COLUMNS or (len(columns) > 4 and columns[3] != "label"):
        raise WhaleError(
            f"{path}: header must be 'filename,start,end[,label[,...]]', found {header}"
        )
    reviewed = REVIEW_COLUMN in columns
    labels: dict[str, Labels] = {}
    for line, row in body:
        if len(row) != len(columns):
            raise WhaleError(
                f"{path} line {line}: expected {len(columns)} columns, found {len(row)}"
            )
        span = _span(row[1], row[2], path, line)
        kind = "call" if len(row) == 3 else _label_kind(row[3], path, line)
        _add_span(labels, row[0], span, kind, reviewed)
    return labels


def _raven_sound_file(table: Path) -> str:
    """The recording a Raven table belongs to: its name minus .Table.N.selections.txt."""
    stem = table.name[: -len(RAVEN_SUFFIX)] if table.name.endswith(RAVEN_SUFFIX) else table.stem
    head, _, tail = stem.rpartition(".Table.")
    if head and tail.isdigit():
        stem = head
    for extension in AUDIO_EXTENSIONS:
        for candidate in (stem + extension, stem + extension.upper()):
            if (table.parent / candidate).is_file():
                return candidate
    raise WhaleError(f"{table}: no 'Begin File' column and no audio file {stem}.* beside it")


def _load_raven(path: Path) -> dict[str, Labels]:
    """A Raven selection table: every selection a call, unless a Verdict column says otherwise;
    a Begin Path column (the review export's) names the file where Raven itself looks."""
    header, body = _read_rows(path, delimiter="\t")
    missing = [name for name in (RAVEN_BEGIN, RAVEN_END) if name not in header]
    if missing:
        raise WhaleError(f"{path}: not a Raven selection table, no column {missing[0]!r}")
    col = {name: header.index(name) for name in header}
    default_file = None if RAVEN_FILE in col else _raven_sound_file(path)
    labels: dict[str, Labels] = {default_file: Labels()} if default_file else {}
    reviewed = RAVEN_EVENT in col
    for line, row in body:
        if len(row) < len(header):
            raise WhaleError(
                f"{path} line {line}: expected {len(header)} columns, found {len(row)}"
            )
        begin, end = _span(row[col[RAVEN_BEGIN]], row[col[RAVEN_END]], path, line)
        if default_file is None and RAVEN_OFFSET in col:  # times relative to the Begin File
            offset = _number(row[col[RAVEN_OFFSET]], path, line, "file offset")
            begin, end = offset, offset + end - begin
        name = default_file or row[col[RAVEN_PATH if RAVEN_PATH in col else RAVEN_FILE]]
        kind = _label_kind(row[col[RAVEN_LABEL]], path, line) if RAVEN_LABEL in col else "call"
        _add_span(labels, name, (begin, end), kind, reviewed)
    return labels


def _annotation_tables(folder: Path) -> list[Path]:
    """Raven tables and annotation CSVs in a folder."""
    tables = sorted(folder.glob("*" + RAVEN_SUFFIX))
    for path in sorted(folder.glob("*.csv")):
        try:
            header, _ = _read_rows(path)
        except WhaleError:
            continue  # some other CSV; only annotation tables matter here
        if [name.lower() for name in header[:3]] == ANNOTATION_COLUMNS:
            tables.append(path)
    return tables


def load_annotations(path: Path) -> dict[str, list[Span]]:
    """Up-call times per recording file, from a CSV, a Raven table or a folder of them."""
    return {name: entry.calls for name, entry in load_labels(path).items()}


def load_labels(path: Path) -> dict[str, Labels]:
    """Calls and rejected spans per recording file, from a CSV, a Raven table or a folder."""
    path = Path(path)
    if path.is_dir():
        tables = _annotation_tables(path)
        if not tables:
            raise WhaleError(f"{path}: no annotation CSV or Raven *{RAVEN_SUFFIX} table in it")
    elif not path.is_file():
        raise WhaleError(f"{path}: no such annotation file")
    else:
        tables = [path]
    labels: dict[str, Labels] = {}
    for table in tables:
        is_raven = table.suffix.lower() == ".txt"
        loaded = _load_raven(table) if is_raven else _load_annotation_csv(table)
        for name, entry in loaded.items():
            labels.setdefault(name, Labels()).add(entry)
    for entry in labels.values():
        entry.calls.sort()
        entry.rejected.sort()
    return labels


def load_recordings(
    annotations: Path, audio_dir: Path | None = None, channel: int = 0
) -> list[Recording]:
    """Annotated continuous recordings, checked so every call lies inside its file."""
    annotations = Path(annotations)
    folder = annotations if annotations.is_dir() else annotations.parent
    base = Path(audio_dir) if audio_dir is not None else folder
    recordings = []
    for name, entry in sorted(load_labels(annotations).items()):
        calls = entry.calls
        path = base / name
        if not path.is_file():
            raise WhaleError(f"{annotations}: annotated recording {path} is missing")
        audio = read_audio(path, channel)
        duration = len(audio) / SAMPLE_RATE
        for start, end in calls:
            if end > duration + 1 / SAMPLE_RATE:
                raise WhaleError(
                    f"{annotations}: call {start:.3f}-{end:.3f} s runs past the end of "
                    f"{path} ({duration:.3f} s long)"
                )
        recordings.append(Recording(path, audio, calls, entry.rejected, entry.reviewed))
    return recordings


def load_background(folder_or_files: Path | Iterable[Path], channel: int = 0) -> list[Recording]:
    """Call-free recordings (every detection in them is a false alarm)."""
    if isinstance(folder_or_files, str | Path):
        source = Path(folder_or_files)
        if source.is_dir():
            files = _audio_files(source)
            if not files:
                raise WhaleError(f"{source}: no audio files ({', '.join(AUDIO_EXTENSIONS)})")
        else:
            files = [source]
    else:
        files = [Path(p) for p in folder_or_files]
        if not files:
            raise WhaleError("no background recordings given")
    return [Recording(path, read_audio(path, channel), []) for path in files]


def detect_layout(path: Path) -> str:
    """Which loader fits a path: 'kaggle', 'folders', 'annotations' or 'background'."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() == ".txt":  # a Raven selection table, by any name
            return "annotations"
        if path.suffix.lower() == ".csv":
            header = [name.lower() for name in _read_rows(path)[0]]
            if header == KAGGLE_HEADER:
                return "kaggle"
            if header[:3] == ANNOTATION_COLUMNS:
                return "annotations"
            raise WhaleError(f"{path}: CSV header {header} is neither Kaggle nor annotations")
        if _is_audio(path):
            return "background"
        raise WhaleError(f"{path}: not an audio file, annotation table or Kaggle train.csv")
    if not path.is_dir():
        raise WhaleError(f"{path}: no such file or folder")
    if (path / "train.csv").is_file() and (path / "train").is_dir():
        return "kaggle"
    if (path / "right_whale").is_dir() or (path / "no_right_whale").is_dir():
        return "folders"
    if _annotation_tables(path):
        return "annotations"
    if _audio_files(path):
        return "background"
    raise WhaleError(
        f"{path}: no recognised data (train.csv + train/, right_whale/ + no_right_whale/, "
        f"annotations, or audio files)"
    )
