"""Call shapes measured from audio come back as planted, drawn calls stay near the measured ones,
and a crossval fold measures its training days only (no ../shared needed)."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.signal import windows

from detector.errors import WhaleError
from train import synth
from train.data import Recording
from train.shapes import JITTER, LIMITS, CallShape, ShapeStats, measure_shapes, recipe_shapes
from train.snr import call_snr_db
from train.synth import UpcallParams, upcall, upcall_from

SR = 2000
PLANTED = [  # (duration s, start Hz, end Hz, curve, harmonics): the ranges' corners and middle
    (0.6, 55.0, 160.0, 0.75, (0.3,)),
    (1.0, 75.0, 200.0, 1.0, (0.2, 0.35)),
    (1.4, 95.0, 240.0, 1.35, (0.1,)),
    (0.8, 110.0, 230.0, 2.0, (0.25,)),  # a late riser, as many real calls are
    (1.2, 60.0, 170.0, 0.9, (0.4, 0.3)),  # a strong 3rd harmonic over quieter noise
]


def planted_recording(seed: int, snr_db: float) -> tuple[Recording, list[UpcallParams]]:
    """Noise with the PLANTED calls 6 s apart, annotated exactly where they are."""
    rng = np.random.default_rng(seed)
    background = synth.noise(rng, (6 * len(PLANTED) + 4) * SR)
    audio = background.copy()
    params, spans = [], []
    for k, (duration, start, end, curve, harmonics) in enumerate(PLANTED):
        p = UpcallParams(duration, start, end, curve, harmonics, 0.3)
        call = upcall_from(p)
        offset = (3 + 6 * k) * SR
        audio += synth.mix_at_snr(call, background, snr_db, offset) - background  # SNR over noise
        params.append(p)
        spans.append((offset / SR, (offset + len(call)) / SR))
    return Recording(Path("planted.wav"), audio, spans), params


@pytest.mark.parametrize("seed", range(3))
def test_planted_calls_are_measured_back(seed: int) -> None:
    rec, params = planted_recording(seed, snr_db=3.0)
    stats = measure_shapes([rec])
    assert stats.skipped == 0 and len(stats.calls) == len(PLANTED)
    assert [c.snr_db for c in stats.calls] == call_snr_db(rec)  # train/snr.py's measure
    for got, want in zip(stats.calls, params, strict=True):
        assert got.duration_s == pytest.approx(want.duration_s, abs=0.2)
        assert got.start_hz == pytest.approx(want.start_hz, abs=15)
        assert got.end_hz == pytest.approx(want.end_hz, abs=15)
        assert got.curve == pytest.approx(want.curve, rel=0.5)
        assert got.harmonic == pytest.approx(want.harmonics[0], abs=0.1)


def test_a_span_without_a_call_is_skipped_and_counted() -> None:
    rng = np.random.default_rng(1)
    rec, _ = planted_recording(1, snr_db=3.0)
    empty = Recording(Path("noise.wav"), synth.noise(rng, 20 * SR), [(5.0, 6.0), (12.0, 13.2)])
    stats = measure_shapes([rec, empty])
    assert (len(stats.calls), stats.skipped) == (len(PLANTED), 2)
    assert stats.describe().startswith("synthetic call shapes: measured from 5 calls (2 skipped)")
    with pytest.raises(WhaleError, match="none of the 2 annotated calls"):
        recipe_shapes("measured", [empty])
    with pytest.raises(WhaleError, match="--synth-shapes 'curvy': choose fixed or measured"):
        recipe_shapes("curvy", [rec])
    assert recipe_shapes("fixed", [rec]) is None


def test_drawn_calls_stay_within_the_measured_ranges_and_the_jitter() -> None:
    stats = ShapeStats(
        [CallShape(0.7, 90.0, 180.0, 1.5, 0.1, -8.0), CallShape(1.1, 120.0, 260.0, 2.5, 0.2, None)]
    )
    rng = np.random.default_rng(0)
    for _ in range(300):
        p = stats.draw(rng)
        for name, value in (
            ("duration_s", p.duration_s),
            ("start_hz", p.start_hz),
            ("end_hz", p.end_hz),
            ("curve", p.curve),
            ("harmonic", p.harmonics[0]),
        ):
            measured = stats.values(name)
            lo, hi = LIMITS[name]
            assert max(lo, measured.min() * (1 - JITTER)) <= value
            assert value <= min(hi, measured.max() * (1 + JITTER))
        call = upcall_from(p)
        assert len(call) == int(p.duration_s * SR) and np.max(np.abs(call)) == pytest.approx(1)


def frozen_upcall(rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """synth.upcall as it was before its drawing and synthesis were split (main, 0231300)."""
    n = int(rng.uniform(0.5, 1.5) * sr)
    start, end = rng.uniform(50, 100), rng.uniform(150, 250)
    curve = rng.uniform(0.7, 1.4)
    freq = start + (end - start) * np.linspace(0, 1, n) ** curve
    harmonics = tuple(rng.uniform(0.1, 0.4, size=rng.integers(1, 3)))
    phase = 2 * np.pi * np.cumsum(freq) / sr
    out = np.sin(phase)
    for order, gain in enumerate(harmonics, start=2):
        out += gain * np.sin(order * phase)
    out *= windows.tukey(n, alpha=rng.uniform(0.2, 0.5))
    return (out / np.max(np.abs(out))).astype(np.float32)


def test_fixed_upcalls_are_unchanged_for_a_seed() -> None:
    for seed in range(10):
        a, b = np.random.default_rng(seed), np.random.default_rng(seed)
        assert np.array_equal(upcall(a), frozen_upcall(b))
        assert a.random() == b.random()  # and the generator is left where it was


def test_the_sampler_measures_its_own_recordings() -> None:
    from train.sampler import Mix, WindowSampler

    rec, _ = planted_recording(2, snr_db=3.0)
    sampler = WindowSampler([rec], mix=Mix(synth_shapes="measured"), seed=0)
    assert sampler.shapes is not None and len(sampler.shapes.calls) == len(PLANTED)
    assert sampler.synthetic_positive().shape == (4000,)
    assert WindowSampler([rec], seed=0).shapes is None  # the default: fixed ranges


pytest.importorskip("torch", reason="whale-train needs the train extra")

from tests.test_crossval import DAYS, TINY, write_days  # noqa: E402
from tests.test_train_cli import assert_one_line  # noqa: E402
from train.cli import main  # noqa: E402

MEASURED = re.compile(r"measured from (\d+) calls \((\d+) skipped\)")


def test_crossval_folds_measure_their_training_days_only(tmp_path: Path) -> None:
    root = write_days(tmp_path)  # 3 calls on each of 3 days
    args = ["crossval", "--data", str(root / "calls.csv"), "--data", str(root / "bg")]
    args += ["--out", str(root / "cv"), "--seeds", "1", "--synth-shapes", "measured", *TINY]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((root / "cv" / "crossval.json").read_text())
    assert summary["train_options"]["mix"]["synth_shapes"] == "measured"
    assert len(summary["per_job"]) == 3
    for job in summary["per_job"]:
        measured, skipped = map(int, MEASURED.search(job["synthetic_shapes"]).groups())
        assert measured + skipped == 6  # the two training days' calls, not the held-out day's
        assert measured >= 4
    report = (root / "cv" / "report.md").read_text()
    assert report.count("trained with synthetic call shapes: measured from") == 3


def test_train_logs_the_measured_shapes_and_refuses_a_bad_value(tmp_path: Path) -> None:
    root = write_days(tmp_path)
    args = ["train", "--data", str(root / "calls.csv"), "--holdout", DAYS[2], *TINY]
    args += ["--out", str(tmp_path / "m")]
    result = CliRunner().invoke(main, [*args, "--synth-shapes", "measured"])
    assert result.exit_code == 0, result.output
    measured, skipped = map(int, MEASURED.search(result.output).groups())
    assert measured + skipped == 6  # the held-out day's 3 calls are not measured
    result = CliRunner().invoke(main, [*args, "--synth-shapes", "curvy"])
    assert_one_line(result.exit_code, result.stderr, "--synth-shapes", "curvy")
