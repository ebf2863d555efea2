"""--sensitivity: the threshold comes from the model card's presets unless --threshold is given."""

import json
import shutil
from pathlib import Path

import pytest

from detector.errors import EX_CONFIG
from detector.eventlog import read_events
from detector.model import DEFAULT_MODEL, card_path, load_card
from detector.presets import choose_threshold
from tests.test_cli import assert_one_error, invoke, replay_args, write_call_train

PRESETS = {
    "high": {"threshold": 0.5, "recall": 0.93, "precision": 0.8,
             "background_false_alarms_per_hour": 4.0},
    "balanced": {"threshold": 0.91, "recall": 0.88, "precision": 0.93,
                 "background_false_alarms_per_hour": 1.3},
    "strict": {"threshold": 0.99, "recall": 0.7, "precision": 0.97,
               "background_false_alarms_per_hour": 0},
}  # fmt: skip


@pytest.fixture
def model_with(tmp_path):
    """A copy of the shipped model's three files with an edited card (their sha256 still hold)."""
    if not DEFAULT_MODEL.exists():
        pytest.skip(f"no shipped model ({DEFAULT_MODEL})")

    def make(edit) -> Path:
        folder = tmp_path / "model"
        folder.mkdir(exist_ok=True)
        card = load_card(DEFAULT_MODEL)
        for name in (DEFAULT_MODEL.name, card["streaming"]["frames"], card["streaming"]["head"]):
            shutil.copy(DEFAULT_MODEL.parent / name, folder / name)
        edit(card)
        model = folder / DEFAULT_MODEL.name
        card_path(model).write_text(json.dumps(card))
        return model

    return make


def with_presets(card: dict, presets: dict = PRESETS) -> None:
    card["presets"] = presets
    card["operating_points"] = {"source": "leave-one-day-out cross-validation", "table": []}
    card["threshold"] = presets.get("balanced", {}).get("threshold", 0.9)


def start_line(tmp_path: Path, model: Path, *extra: object) -> tuple[list[str], list[dict]]:
    recording = tmp_path / "calls_20090328_001500.wav"
    write_call_train(recording, seconds=8)
    log = tmp_path / "ev.jsonl"
    result = invoke(*replay_args(recording, model, log), *extra)
    assert result.exit_code == 0, result.stderr
    events = read_events(log)  # the log also has its run line
    return result.stderr.splitlines(), events


def test_card_with_presets_round_trips_through_the_loader(model_with):
    model = model_with(with_presets)
    card = load_card(model)
    assert card["presets"] == PRESETS
    for name, preset in PRESETS.items():
        assert choose_threshold(card, card_path(model), name, None)[0] == preset["threshold"]


@pytest.mark.parametrize("sensitivity", ["high", "balanced", "strict"])
def test_sensitivity_picks_its_preset_and_says_its_figures(tmp_path, model_with, sensitivity):
    model = model_with(with_presets)
    lines, events = start_line(tmp_path, model, "--sensitivity", sensitivity)
    expected = PRESETS[sensitivity]["threshold"]
    said = [line for line in lines if line.startswith(f"whale-listen: sensitivity {sensitivity}:")]
    assert len(said) == 1, lines
    assert f"threshold {expected:g} (cross-validated on unseen days: recall" in said[0]
    assert "false alarms/h on unseen background" in said[0]
    assert any(f"threshold {expected}" in line for line in lines if "model upcall" in line)
    assert all(event["threshold"] == expected for event in events)


def test_balanced_is_the_default_and_the_config_key_sets_it(tmp_path, model_with):
    model = model_with(with_presets)
    lines, _ = start_line(tmp_path, model)
    assert any("sensitivity balanced: threshold 0.91 " in line for line in lines), lines
    config = tmp_path / "c.toml"
    config.write_text('sensitivity = "strict"\n')
    lines, _ = start_line(tmp_path, model, "--config", config)
    assert any("sensitivity strict: threshold 0.99 " in line for line in lines), lines


def test_threshold_overrides_the_preset(tmp_path, model_with):
    model = model_with(with_presets)
    lines, events = start_line(tmp_path, model, "--sensitivity", "high", "--threshold", "0.7")
    assert any("--threshold 0.7 overrides the 'high' preset" in line for line in lines), lines
    assert all(event["threshold"] == 0.7 for event in events)


def test_a_card_without_presets_falls_back_to_its_threshold(tmp_path, model_with):
    model = model_with(lambda card: card.pop("presets", None))
    threshold = load_card(model)["threshold"]
    lines, events = start_line(tmp_path, model, "--sensitivity", "strict")
    assert any("has no presets" in line and f"{threshold:g}" in line for line in lines), lines
    assert all(event["threshold"] == threshold for event in events)


BAD = {
    "not an object": 0.9,
    "threshold above 1": {"threshold": 1.5},
    "threshold missing": {"recall": 0.9},
    "threshold nan": {"threshold": float("nan")},
    "recall above 1": {"threshold": 0.9, "recall": 2},
    "precision a string": {"threshold": 0.9, "precision": "high"},
    "negative false alarms": {"threshold": 0.9, "background_false_alarms_per_hour": -1},
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_preset_is_one_line_naming_the_card_and_ex_config(tmp_path, model_with, case):
    model = model_with(lambda card: with_presets(card, {**PRESETS, "strict": BAD[case]}))
    recording = tmp_path / "calls_20090328_001500.wav"
    write_call_train(recording, seconds=8)
    result = invoke(*replay_args(recording, model, tmp_path / "ev.jsonl"))
    assert result.exit_code == EX_CONFIG
    assert_one_error(result.stderr, str(card_path(model)), "'strict'")


def test_a_card_with_neither_presets_nor_threshold_needs_threshold(tmp_path, model_with):
    def bare(card: dict) -> None:
        card.pop("presets", None)
        card.pop("threshold")

    model = model_with(bare)
    recording = tmp_path / "calls_20090328_001500.wav"
    write_call_train(recording, seconds=8)
    result = invoke(*replay_args(recording, model, tmp_path / "ev.jsonl"))
    assert result.exit_code == EX_CONFIG
    assert_one_error(result.stderr, "no threshold", "--threshold")
