"""The Event and Status records: one declaration that the README, the outputs and tests follow."""

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detector.events import RawEvent
from detector.metrics import METRICS, NESTED
from detector.records import EVENT_FIELDS, STATUS_FIELDS, Event, Status, build_event

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_event_table() -> list[str]:
    """Field names of the README's event table, in its order (`start`, `end` is two)."""
    text = README.read_text()
    table = text[text.index("| field | meaning |") :].split("\n\n")[0]
    names = []
    for row in table.splitlines()[2:]:
        names += re.findall(r"`(\w+)`", row.split("|")[1])
    return names


def an_event(**overrides: object) -> Event:
    raw = RawEvent(start_sample=3000, end_sample=9000, peak_score=0.9, peak_sample=6000, windows=4)
    arguments = dict(
        seq=1, run="run-1", stream_start=datetime(2009, 3, 28, tzinfo=UTC), sample_rate=2000,
        station="s",
        source="f.wav", model={"name": "m", "sha256": "0"}, threshold=0.5,
    )  # fmt: skip
    return build_event(raw, **{**arguments, **overrides})


def test_the_readme_event_table_is_the_event_declaration_in_order():
    assert readme_event_table() == list(EVENT_FIELDS) + list(Event.OPTIONAL)


def test_optional_fields_are_absent_until_set_and_only_they_can_be_annotated():
    event = an_event()
    assert list(event.to_dict()) == list(EVENT_FIELDS)
    with_clip = event.annotated(clip="/clips/x.flac")
    assert with_clip.to_dict()["clip"] == "/clips/x.flac" and "clip" not in event.to_dict()
    with pytest.raises(ValueError, match="score"):
        event.annotated(score=1.0)
    with pytest.raises(ValueError, match="extra"):
        event.annotated(extra=1)


def test_a_gap_before_the_event_is_built_into_it_in_seconds():
    assert an_event(gap_samples=5002).to_dict()["gap_before_s"] == 2.501
    assert "gap_before_s" not in an_event(gap_samples=0).to_dict()


def test_status_keeps_null_required_fields_and_drops_unset_optional_ones():
    required = {name: 0 for name in STATUS_FIELDS if name not in ("schema", "type")}
    status = Status(**{**required, "level_dbfs": None}).to_dict()
    assert list(status) == list(STATUS_FIELDS) and status["level_dbfs"] is None
    assert status["schema"] == 1 and status["type"] == "status"
    with pytest.raises(TypeError):
        Status(**required, undeclared=1)  # an output's field must be declared in Status


def test_every_metric_reads_a_declared_status_field():
    declared = set(STATUS_FIELDS) | set(Status.OPTIONAL)
    assert set(METRICS) | set(NESTED) <= declared


def test_an_event_names_its_run_right_after_its_seq():
    event = an_event(run="0c8f2b7e").to_dict()
    assert list(event)[2:5] == ["seq", "run", "id"] and event["run"] == "0c8f2b7e"
