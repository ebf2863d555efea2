import json
import uuid
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest

from detector.events import EventMerger, RawEvent, merge_events
from detector.records import EVENT_FIELDS, build_event
from detector.timestamps import iso_utc, parse_start_time

HOP = 1000
WIN = 4000


def _starts(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * HOP


def test_single_window_event_spans_its_central_half():
    scores = [0.1, 0.9, 0.2]
    events = merge_events(_starts(3), scores, threshold=0.5, window_hop=HOP, window=WIN)
    assert events == [
        RawEvent(start_sample=2000, end_sample=4000, peak_score=0.9, peak_sample=3000, windows=1)
    ]


def test_run_of_windows_merges_into_one_event_with_its_peak():
    scores = [0.0, 0.6, 0.8, 0.95, 0.7, 0.1]
    (event,) = merge_events(_starts(6), scores, threshold=0.5, window_hop=HOP, window=WIN)
    assert event.start_sample == 1000 + 1000
    assert event.end_sample == 4000 + 3000
    assert event.peak_score == 0.95
    assert event.peak_sample == 3000 + 2000
    assert event.windows == 4


def test_two_separate_events():
    scores = [0.9, 0.9, 0.1, 0.1, 0.7, 0.0]
    events = merge_events(_starts(6), scores, threshold=0.5, window_hop=HOP, window=WIN)
    assert [(e.start_sample, e.end_sample, e.windows) for e in events] == [
        (1000, 4000, 2),
        (5000, 7000, 1),
    ]


def test_event_open_at_end_is_closed_by_flush():
    merger = EventMerger(0.5, HOP, WIN)
    assert merger.push(_starts(3), [0.1, 0.6, 0.7]) == []
    assert merger.open
    (event,) = merger.flush()
    assert (event.start_sample, event.end_sample, event.windows) == (2000, 5000, 2)
    assert not merger.open
    assert merger.flush() == []


def test_score_equal_to_threshold_counts_as_above():
    events = merge_events(_starts(3), [0.2, 0.5, 0.2], threshold=0.5, window_hop=HOP, window=WIN)
    assert len(events) == 1 and events[0].peak_score == 0.5


def test_nothing_above_threshold_and_nan_never_fire():
    assert merge_events(_starts(4), [0.1, np.nan, 0.4, 0.0], 0.5, HOP, WIN) == []


def test_gap_in_window_starts_splits_event():
    starts = np.array([0, 1000, 5000, 6000])
    events = merge_events(starts, [0.9, 0.9, 0.9, 0.9], 0.5, HOP, WIN)
    assert [(e.start_sample, e.windows) for e in events] == [(1000, 2), (6000, 2)]


def test_peak_tie_keeps_first_window():
    (event,) = merge_events(_starts(3), [0.8, 0.8, 0.8], 0.5, HOP, WIN)
    assert event.peak_sample == 0 + WIN // 2


@pytest.mark.parametrize("block", [1, 2, 3, 7, 100])
def test_blockwise_push_equals_merge_events(block):
    rng = np.random.default_rng(3)
    scores = rng.uniform(0, 1, 500) ** 3  # mostly low, with runs above
    starts = _starts(500)
    expected = merge_events(starts, scores, 0.3, HOP, WIN)
    assert len(expected) > 5
    merger = EventMerger(0.3, HOP, WIN)
    got = []
    for i in range(0, 500, block):
        got += merger.push(starts[i : i + block], scores[i : i + block])
    got += merger.flush()
    assert got == expected


def test_push_rejects_mismatched_lengths():
    with pytest.raises(ValueError):
        EventMerger(0.5, HOP).push(_starts(3), [0.1, 0.2])


@pytest.mark.parametrize(
    "name,expected",
    [
        ("NOPP6_EST_20090328_001500.wav", datetime(2009, 3, 28, 0, 15, tzinfo=UTC)),
        ("/data/2009/20090328_235959_station.flac", datetime(2009, 3, 28, 23, 59, 59, tzinfo=UTC)),
        ("x_20091301_000000.wav", None),  # month 13
        ("x_20090328_246000.wav", None),  # hour 24
        ("recording.wav", None),
        ("x_120090328_001500.wav", None),  # more digits: not a stamp
        ("20090328_001500/recording.wav", None),  # only the file name counts
    ],
)
def test_parse_start_time(name, expected):
    parsed = parse_start_time(name)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is not None and parsed.utcoffset() == timedelta(0)


def test_iso_utc_formats_milliseconds_and_z():
    assert iso_utc(datetime(2009, 3, 28, 0, 15, tzinfo=UTC)) == "2009-03-28T00:15:00.000Z"
    assert iso_utc(datetime(2009, 3, 28, 0, 15, 1, 250_400, tzinfo=UTC)) == (
        "2009-03-28T00:15:01.250Z"
    )
    assert iso_utc(datetime(2009, 3, 28, 23, 59, 59, 999_700, tzinfo=UTC)) == (
        "2009-03-29T00:00:00.000Z"
    )
    est = timezone(timedelta(hours=-5))
    assert iso_utc(datetime(2009, 3, 27, 19, 15, tzinfo=est)) == "2009-03-28T00:15:00.000Z"


def test_build_event_fields_and_timing():
    raw = RawEvent(
        start_sample=3001, end_sample=9000, peak_score=0.987654, peak_sample=6000, windows=4
    )
    start = datetime(2009, 3, 28, 0, 15, tzinfo=UTC)
    model = {"name": "upcall-cnn", "sha256": "ab" * 32, "other": "not published"}
    event = build_event(
        raw,
        seq=7,
        run="run-1",
        stream_start=start,
        sample_rate=2000,
        station="EST",
        source="NOPP6_EST_20090328_001500.wav",
        model=model,
        threshold=0.5,
    ).to_dict()
    assert list(event) == list(EVENT_FIELDS)  # no optional field unless set
    assert event["schema"] == 1 and event["type"] == "upcall" and event["seq"] == 7
    assert uuid.UUID(event["id"]).version == 4
    assert event["station"] == "EST"
    assert event["start"] == "2009-03-28T00:15:01.500Z"  # 3001 / 2000 = 1.5005 s
    assert event["end"] == "2009-03-28T00:15:04.500Z"
    assert event["offset_start_s"] == 1.5 and event["offset_end_s"] == 4.5
    assert event["score"] == 0.9877
    assert event["peak_offset_s"] == 3.0
    assert event["windows"] == 4
    assert event["source"] == "NOPP6_EST_20090328_001500.wav"
    assert event["model"] == {"name": "upcall-cnn", "sha256": "ab" * 32}
    assert event["threshold"] == 0.5
    assert json.loads(json.dumps(event)) == event
    other = build_event(
        raw,
        seq=8,
        run="run-1",
        stream_start=start,
        sample_rate=2000,
        station="EST",
        source="s",
        model=model,
        threshold=0.5,
    ).to_dict()
    assert other["id"] != event["id"]


def test_build_event_timing_uses_sample_counts_far_into_a_stream():
    day = 2000 * 86_400
    raw = RawEvent(
        start_sample=day + 4,
        end_sample=day + 2006,
        peak_score=0.5,
        peak_sample=day + 1000,
        windows=1,
    )
    event = build_event(
        raw,
        seq=0,
        run="run-1",
        stream_start=datetime(2020, 1, 1, tzinfo=UTC),
        sample_rate=2000,
        station="s",
        source="live",
        model={"name": "m", "sha256": "0"},
        threshold=0.5,
    ).to_dict()
    assert event["start"] == "2020-01-02T00:00:00.002Z"
    assert event["end"] == "2020-01-02T00:00:01.003Z"
    assert event["offset_start_s"] == 86400.002
    assert event["offset_end_s"] == 86401.003
