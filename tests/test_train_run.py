"""whale-train train end to end on synthetic recordings: split by recording, an ensemble trained
in parallel processes, evaluated on the held-out files and exported with its card."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

pytest.importorskip("torch", reason="whale-train needs the train extra")

from detector.model import DEFAULT_MODEL as SHIPPED  # noqa: E402
from detector.model import load_model  # noqa: E402
from train import synth  # noqa: E402
from train.cli import main  # noqa: E402

SR = 2000


def write_split(tmp_path) -> None:
    """Two annotated recordings (4 calls each) in calls.csv, two call-free ones in bg/."""
    rng = np.random.default_rng(11)
    rows = ["filename,start,end,label"]
    for name in ("a.wav", "b.wav"):
        audio, calls = synth.synthetic_recording(rng, 60, 4, n_lookalikes=2)
        sf.write(tmp_path / name, audio, SR, subtype="PCM_16")
        rows += [f"{name},{s:.3f},{e:.3f},upcall" for s, e in calls]
    (tmp_path / "calls.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "bg").mkdir()
    for name in ("x.wav", "y.wav"):
        sf.write(tmp_path / "bg" / name, 0.05 * synth.noise(rng, 60 * SR), SR, subtype="PCM_16")


def test_train_evaluate_and_export_an_ensemble(tmp_path):
    write_split(tmp_path)
    out = tmp_path / "run"
    args = ["train", "--data", str(tmp_path / "calls.csv"), "--data", str(tmp_path / "bg")]
    args += ["--holdout", "b.wav", "--holdout", "y.wav", "--out", str(out)]
    args += ["--steps", "4", "--batch-size", "16", "--members", "2", "--seed", "5"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + result.stderr
    assert "trained 2 members (seeds 5..6)" in result.output

    card = json.loads((out / "upcall.json").read_text())
    assert card["architecture"]["members"] == 2
    assert card["held_out"] == ["b.wav", "y.wav"]
    assert [f["file"] for f in card["training_data"]] == ["calls.csv", "a.wav", "x.wav"]
    table = card["metrics"]["cnn"]["table"]
    assert {row["calls"] for row in table} == {4}
    assert card["threshold"] == card["metrics"]["chosen"]["threshold"]
    report = (out / "report.md").read_text()
    assert "Template-correlation baseline" in report
    for name in ("pr.png", "gallery_false_alarms.png", "gallery_misses.png"):
        assert (out / name).stat().st_size > 0
    # every mistake listed for a person to review, in the report and as Raven tables
    review = report.split("## Every CNN mistake")[1]
    for kind, name in (("false alarm", "false_alarms"), ("miss", "misses")):
        rows = (out / f"{name}.selections.txt").read_text().splitlines()
        assert rows[0].startswith("Selection\tView\tChannel\tBegin Time (s)")
        assert len(rows) - 1 == review.count(f"| {kind} |")
    chosen = card["metrics"]["chosen"]
    assert review.count("| miss |") == chosen["calls"] - chosen["found"]
    hits = round(chosen["precision"] * chosen["events"])
    assert review.count("| false alarm | b.wav |") == chosen["events"] - hits
    background_events = round(chosen["background_false_alarms_per_hour"] * 60 / 3600)
    assert review.count("| false alarm | y.wav |") == background_events
    model = load_model(out / "upcall.onnx", provider="cpu")
    assert model.score(np.zeros((3, 4000), np.float32)).shape == (3,)


def test_evaluate_only_the_named_recordings(tmp_path):
    """A validation split out of full tables: the shipped model scored on b.wav and y.wav only."""
    write_split(tmp_path)
    out = tmp_path / "eval"
    args = ["evaluate", "--data", str(tmp_path / "calls.csv"), "--data", str(tmp_path / "bg")]
    args += ["--only", "b.wav", "--only", "y.wav", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output + result.stderr
    report = (out / "report.md").read_text()
    assert "Held out: b.wav, y.wav (0.017 h annotated, 0.017 h background)" in report
    cnn = report.split("## CNN: ")[1].split("## Template")[0]
    ap = float(cnn.split("event AP ")[1].split(";")[0])
    assert 0.0 <= ap <= 1.0
    rows = [line for line in cnn.splitlines() if line.startswith("| 0.")]
    assert rows and all("/4) |" in row for row in rows)  # b.wav's 4 calls, not a.wav's


def test_evaluate_several_models_scores_their_mean_logit(tmp_path, monkeypatch):
    """Logits averaged, not probabilities: 0.9 and 0.5 give 0.75 (probabilities would give 0.7)."""
    import detector.model
    from train.evaluate import mean_logit_scorer

    class Fixed:
        def __init__(self, p: float) -> None:
            self.p = p

        def score(self, windows: np.ndarray) -> np.ndarray:
            return np.full(len(windows), self.p, dtype=np.float32)

    probs = {"a.onnx": 0.9, "b.onnx": 0.5, "c.onnx": 1.0}
    monkeypatch.setattr(
        detector.model, "load_model", lambda p, provider, threads: Fixed(probs[Path(p).name])
    )
    windows = np.zeros((3, 4000), np.float32)
    both = mean_logit_scorer([tmp_path / "a.onnx", tmp_path / "b.onnx"])(windows)
    np.testing.assert_allclose(both, 0.75, rtol=1e-6)
    # a saturated float32 1.0 is clipped to 1 - 1e-7 (logit 16.1), not an infinite logit
    sure = mean_logit_scorer([tmp_path / "c.onnx", tmp_path / "b.onnx"])(windows)
    assert np.all(np.isfinite(sure)) and np.all(sure < 1.0)


def test_evaluate_the_same_model_twice_equals_once(tmp_path):
    write_split(tmp_path)
    tables = []
    for models in (["--model", str(SHIPPED)], ["--model", str(SHIPPED), "--model", str(SHIPPED)]):
        out = tmp_path / f"eval{len(models)}"
        args = ["evaluate", "--data", str(tmp_path / "calls.csv"), "--out", str(out), *models]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output + result.stderr
        report = (out / "report.md").read_text()
        tables.append([line for line in report.splitlines() if line.startswith("| 0.")])
    assert tables[0] and tables[0] == tables[1]
    assert "(mean logit)" in report
