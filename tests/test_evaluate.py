"""Event AP (the one-number summary of the event precision-recall curve used to compare recipes)
and the intervals printed beside recall and precision."""

import math
from pathlib import Path

import numpy as np

from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from train.data import Recording
from train.evaluate import HOP, Scored, event_ap, event_row, interval_line, wilson_interval

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


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(16, 18)
    assert math.isclose(lo, 0.6720, abs_tol=1e-4) and math.isclose(hi, 0.9690, abs_tol=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and math.isclose(
        wilson_interval(0, 10)[1], 0.2775, abs_tol=1e-4
    )
    assert wilson_interval(10, 10)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_interval_line_counts_hits_and_calls_of_the_row():
    # threshold 0.85: events at windows 5 (a call) and 33 (a false alarm); the call at 20 missed
    sc = scored([5, 20], {5: 0.9, 20: 0.3, 33: 0.95})
    row = event_row([sc], [], 0.85)
    assert (row["found"], row["calls"], row["hits"], row["events"]) == (1, 2, 1, 2)
    line = interval_line(row)
    assert line.startswith("At 0.85: recall 1/2 = 0.500 (95 % interval 0.09-0.91)")
    assert "precision 1/2 = 0.500 (95 % interval 0.09-0.91)" in line
