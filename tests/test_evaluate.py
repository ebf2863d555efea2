"""Event AP: the one-number summary of the event precision-recall curve used to compare recipes."""

import math
from pathlib import Path

import numpy as np

from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from train.data import Recording
from train.evaluate import HOP, Scored, event_ap

N_WINDOWS = 40


def scored(calls_at: list[int], high: dict[int, float]) -> Scored:
    """Windows every 0.5 s scoring 0.01, except those in `high`; a 0.5-s call sits in the middle
    of each window index in calls_at, so only that window's event can match it."""
    starts = np.arange(N_WINDOWS) * HOP
    audio = np.zeros(starts[-1] + WINDOW_SAMPLES, dtype=np.float32)
    calls = [((starts[i] + 1750) / SAMPLE_RATE, (starts[i] + 2250) / SAMPLE_RATE) for i in calls_at]
    scores = np.full(N_WINDOWS, 0.01)
    for i, v in high.items():
        scores[i] = v
    return Scored(Recording(Path("r.wav"), audio, calls), starts, scores)


def test_calls_above_every_false_alarm_give_ap_one():
    sc = scored([5, 20], {5: 0.9, 20: 0.8, 33: 0.5})
    assert event_ap([sc], []) == 1.0


def test_a_false_alarm_above_both_calls():
    # thresholds 0.95: 1 event, 0 found; 0.9: 2 events, 1 found (1/2); 0.8: 3 events, 2 found (2/3)
    sc = scored([5, 20], {33: 0.95, 5: 0.9, 20: 0.8})
    assert math.isclose(event_ap([sc], []), (2 / 3 + 2 / 3) / 2, abs_tol=1e-4)


def test_a_call_never_found_counts_zero():
    # the second call scores as low as the background: it would be "found" only when every window
    # fires and the whole file is one event, a threshold the sweep leaves out
    sc = scored([5, 20], {5: 0.9, 33: 0.8})
    assert math.isclose(event_ap([sc], []), (1.0 + 0.0) / 2, abs_tol=1e-4)


def test_background_events_stay_out_of_precision():
    # precision is the annotated files' own, as in the table (the background is reported as
    # false alarms per hour); the background's scores only add thresholds to the sweep
    sc = scored([5], {5: 0.8})
    bg = scored([], {10: 0.9})
    assert event_ap([sc], [bg]) == event_ap([sc], []) == 1.0


def test_no_calls_gives_nan():
    assert math.isnan(event_ap([scored([], {3: 0.9})], []))
