import csv
from datetime import UTC, datetime

import pytest

from detector.errors import WhaleError
from detector.eventlog import EventLog
from detector.events import RawEvent
from detector.raven import COLUMNS, events_to_raven, export_raven
from detector.records import build_event

MODEL = {"name": "upcall-cnn", "sha256": "ab" * 32}


def _event(seq: int, start: int, end: int, score: float, source: str) -> dict:
    raw = RawEvent(start, end, score, (start + end) // 2, 3)
    return build_event(
        raw,
        seq=seq,
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


def test_several_sources_get_a_begin_file_column(tmp_path):
    events = [
        _event(1, 3000, 5000, 0.9, "/data/a.wav"),
        _event(1, 2000, 4000, 0.8, "/data/b.aif"),
    ]
    out = tmp_path / "both.txt"
    out.write_text(events_to_raven(events))
    rows = _rows(out)
    assert [row["Begin File"] for row in rows] == ["a.wav", "b.aif"]
    assert [row["Begin Time (s)"] for row in rows] == ["1.500", "1.000"]


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
