import csv
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from detector.errors import WhaleError
from detector.eventlog import EventLog
from detector.events import RawEvent
from detector.raven import COLUMNS, MULTI_FILE_COLUMNS, events_to_raven, export_raven
from detector.records import build_event

MODEL = {"name": "upcall-cnn", "sha256": "ab" * 32}


def _event(seq: int, start: int, end: int, score: float, source: str) -> dict:
    raw = RawEvent(start, end, score, (start + end) // 2, 3)
    return build_event(
        raw,
        seq=seq,
        run="run-1",
        stream_start=datetime(2009, 3, 28, 0, 15, tzinfo=UTC),
        sample_rate=2000,
        station="EST",
        source=source,
        model=MODEL,
        threshold=0.5,
    ).to_dict()


def _rows(path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def test_round_trip_from_an_event_log(tmp_path):
    log = tmp_path / "events.jsonl"
    events = [
        _event(1, 3000, 5000, 0.91234, "/data/NOPP6_EST_20090328_001500.wav"),
        _event(2, 21_000, 24_000, 0.6, "/data/NOPP6_EST_20090328_001500.wav"),
    ]
    with EventLog(log) as event_log:
        for event in events:
            event_log.append(event)
    out = export_raven(log)
    assert out == tmp_path / "events.selections.txt"
    with open(out, encoding="utf-8") as handle:
        assert handle.readline().rstrip("\n").split("\t") == COLUMNS
    rows = _rows(out)
    assert [row["Selection"] for row in rows] == ["1", "2"]
    assert {row["View"] for row in rows} == {"Spectrogram 1"}
    assert {row["Channel"] for row in rows} == {"1"}
    assert [float(row["Begin Time (s)"]) for row in rows] == [1.5, 10.5]
    assert [float(row["End Time (s)"]) for row in rows] == [2.5, 12.0]
    assert {(row["Low Freq (Hz)"], row["High Freq (Hz)"]) for row in rows} == {("50.0", "250.0")}
    assert [float(row["Score"]) for row in rows] == [0.9123, 0.6]


def _recording(path, seconds: float, rate: int = 2000):
    kind = "AIFF" if path.suffix == ".aif" else None  # soundfile only guesses .aiff
    sf.write(path, np.zeros(int(seconds * rate), dtype=np.float32), rate, format=kind)
    return path


def test_several_files_count_times_over_the_file_sequence(tmp_path):
    a = _recording(tmp_path / "a.wav", 10.0)
    b = _recording(tmp_path / "b.aif", 5.5, rate=4000)
    c = _recording(tmp_path / "c.flac", 7.0)
    events = [
        _event(1, 3000, 5000, 0.9, str(a)),  # 1.5-2.5 s into a
        _event(1, 2000, 4000, 0.8, str(b)),  # 1.0-2.0 s into b, which starts at 10 s
        _event(2, 9000, 10_000, 0.7, str(b)),
        _event(1, 0, 2000, 0.6, str(c)),  # c starts at 10 + 5.5 s
        _event(1, 19_000, 20_000, 0.95, str(a)),  # a again (a second replay): a's own times
    ]
    out = tmp_path / "multi.txt"
    out.write_text(events_to_raven(events))
    with open(out, encoding="utf-8") as handle:
        assert handle.readline().rstrip("\n").split("\t") == COLUMNS + MULTI_FILE_COLUMNS
    rows = _rows(out)
    assert [row["Begin Time (s)"] for row in rows] == [
        "1.500",
        "11.000",
        "14.500",
        "15.500",
        "9.500",
    ]
    assert [row["End Time (s)"] for row in rows] == [
        "2.500",
        "12.000",
        "15.000",
        "16.500",
        "10.000",
    ]
    assert [row["File Offset (s)"] for row in rows] == ["1.500", "1.000", "4.500", "0.000", "9.500"]
    assert [row["Begin File"] for row in rows] == ["a.wav", "b.aif", "b.aif", "c.flac", "a.wav"]
    assert [row["Begin Path"] for row in rows] == [str(p) for p in (a, b, b, c, a)]


def test_multi_file_log_names_relative_sources_from_its_folder(tmp_path, monkeypatch):
    _recording(tmp_path / "a.wav", 4.0)
    _recording(tmp_path / "b.wav", 3.0)
    log = tmp_path / "events.jsonl"
    with EventLog(log) as event_log:
        event_log.append(_event(1, 2000, 4000, 0.9, "a.wav"))
        event_log.append(_event(1, 2000, 4000, 0.9, "b.wav"))
    monkeypatch.chdir(tmp_path.parent)  # the daemon ran in the log's folder, we are elsewhere
    rows = _rows(export_raven(log))
    assert [row["Begin Time (s)"] for row in rows] == ["1.000", "5.000"]
    assert rows[1]["Begin Path"] == str(tmp_path / "b.wav")


def test_multi_file_log_without_its_recordings_is_one_line(tmp_path):
    log = tmp_path / "events.jsonl"
    with EventLog(log) as event_log:
        event_log.append(_event(1, 2000, 4000, 0.9, "/nowhere/a.wav"))
        event_log.append(_event(1, 2000, 4000, 0.9, "/nowhere/b.wav"))
    script = Path(sys.executable).with_name("whale-listen")
    if not script.exists():
        pytest.skip(f"{script} not installed")
    result = subprocess.run(
        [str(script), "export-raven", str(log)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = result.stderr.splitlines()
    assert "'/nowhere/a.wav'" in line and "several files" in line
    assert not (tmp_path / "events.selections.txt").exists()


def test_empty_log_gives_a_header_only_table(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_bytes(b"")
    out = export_raven(log, tmp_path / "out.txt")
    assert out.read_text().split("\n") == ["\t".join(COLUMNS), ""]


def test_missing_log_is_a_whale_error(tmp_path):
    with pytest.raises(WhaleError, match="missing.jsonl"):
        export_raven(tmp_path / "missing.jsonl")


def test_corrupt_log_is_a_whale_error(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text('{"seq": 1}\nnot json\n{"seq": 2}\n')
    with pytest.raises(WhaleError, match="events.jsonl:2"):
        export_raven(log)


def test_event_without_offsets_is_a_whale_error(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text('{"type": "upcall", "id": "x", "score": 0.9}\n')
    with pytest.raises(WhaleError, match="offset_start_s"):
        export_raven(log)
    assert not (tmp_path / "events.selections.txt").exists()


def test_non_object_record_is_a_whale_error(tmp_path):
    log = tmp_path / "events.jsonl"
    log.write_text("[1, 2]\n")
    with pytest.raises(WhaleError, match="not a JSON object"):
        export_raven(log)
