"""Leave-one-day-out cross-validation, operating points in the card, and site adaptation, on a
tiny synthetic set with three "days" (no ../shared needed)."""

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

pytest.importorskip("torch", reason="whale-train needs the train extra")

from detector.errors import WhaleError  # noqa: E402
from detector.model import load_card, load_model  # noqa: E402
from train import synth  # noqa: E402
from train.cli import main  # noqa: E402
from train.crossval import (  # noqa: E402
    GRID,
    choose_presets,
    load_review,
    make_folds,
    pooled_row,
)
from train.data import Recording  # noqa: E402
from train.evaluate import HOP, Scored  # noqa: E402

SR = 2000
DAYS = ("site_20260101_000000.wav", "site_20260102_000000.wav", "site_20260103_000000.wav")
TINY = ["--steps", "2", "--batch-size", "8"]


def write_days(root: Path) -> Path:
    """Three annotated recordings on three days, two call-free files, a review list."""
    rng = np.random.default_rng(5)
    rows = ["filename,start,end,label"]
    for name in DAYS:
        audio, calls = synth.synthetic_recording(rng, 40, 3, n_lookalikes=1)
        sf.write(root / name, audio, SR, subtype="PCM_16")
        rows += [f"{name},{s:.3f},{e:.3f},upcall" for s, e in calls]
    (root / "calls.csv").write_text("\n".join(rows) + "\n")
    (root / "bg").mkdir()
    for name in ("x.wav", "y.wav"):
        sf.write(root / "bg" / name, 0.05 * synth.noise(rng, 40 * SR), SR, subtype="PCM_16")
    (root / "review.csv").write_text(f"filename,start,end,judgement\n{DAYS[0]},1,3,probable\n")
    (root / "review2.csv").write_text(f"filename,start,end\n{DAYS[1]},5,7\n")  # lists add
    return root


@pytest.fixture(scope="module")
def crossval_run(tmp_path_factory) -> Path:
    root = write_days(tmp_path_factory.mktemp("days"))
    args = ["crossval", "--data", str(root / "calls.csv"), "--data", str(root / "bg")]
    args += ["--review", str(root / "review.csv"), "--review", str(root / "review2.csv")]
    args += ["--out", str(root / "cv"), *TINY]
    args += ["--conv-widths", "6,12,12", "--time-pool", "4"]  # a smaller net than the default
    args += ["--train-review", "exclude"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    # both lists' spans lie in recordings the folds train on (each in two of the three folds)
    assert "--train-review exclude: 2 probable calls in the training recordings" in result.output
    return root


def test_crossval_writes_per_fold_and_pooled_figures(crossval_run: Path) -> None:
    out = crossval_run / "cv"
    summary = json.loads((out / "crossval.json").read_text())
    days = ["2026-01-01", "2026-01-02", "2026-01-03"]
    assert [f["day"] for f in summary["folds"]] == days
    # each fold holds out its day and one background file, taken in turn
    assert summary["folds"][0]["held_out"] == [DAYS[0], "x.wav"]
    assert summary["folds"][1]["held_out"] == [DAYS[1], "y.wav"]
    assert summary["folds"][2]["held_out"] == [DAYS[2], "x.wav"]
    jobs = {(j["day"], j["seed"]) for j in summary["per_job"]}
    assert jobs == {(d, s) for d in days for s in (0, 1)}
    for job in summary["per_job"]:
        assert [r["calls"] for r in job["table"]] == [3] * len(GRID)
        assert 0 <= job["clip_auc"] <= 1
    assert [s["seed"] for s in summary["per_seed"]] == [0, 1]
    pooled = summary["pooled"]["table"]
    assert [r["calls"] for r in pooled] == [18] * len(GRID)  # 3 calls x 3 days x 2 seeds
    assert set(summary["pooled"]["presets"]) == {"high", "balanced", "strict"}
    for name in ("fold_2026-01-01_s0", "fold_2026-01-03_s1"):
        assert (out / name / "upcall.onnx").is_file() and (out / name / "scores.npz").is_file()
    for day in days:  # every mistake drawn and listed for a person to look at
        assert (out / f"gallery_misses_{day}.png").stat().st_size > 0
        rows = (out / f"false_alarms_{day}.selections.txt").read_text().splitlines()
        assert rows[0].startswith("Selection\t")
    report = (out / "report.md").read_text()
    assert "## Per fold and seed" in report and "## Do the thresholds carry over?" in report
    assert report.count("| 2026-01-02 |") >= 2


def test_crossval_records_and_trains_the_network_it_was_given(crossval_run: Path) -> None:
    import onnx

    out = crossval_run / "cv"
    summary = json.loads((out / "crossval.json").read_text())
    assert summary["train_options"]["net"] == {"channels": [6, 12, 12], "time_pool": 4}
    assert summary["train_options"]["mix"]["review"] == "exclude"
    # a fold trains with its training days' probable calls, never its held-out day's
    near = {j["day"]: j["probable_calls_in_training"] for j in summary["per_job"]}
    assert near == {"2026-01-01": 1, "2026-01-02": 1, "2026-01-03": 2}
    assert (
        "CNN: conv blocks of 6, 12, 12 channels, first time pooling 4"
        in (out / "report.md").read_text()
    )
    graph = onnx.load(str(out / "fold_2026-01-02_s1" / "upcall.onnx")).graph
    weights = {i.name: i.dims for i in graph.initializer}
    convs = [n.input[1] for n in graph.node if n.op_type == "Conv"]
    widths = [weights[w][0] for w in convs if not w.startswith("detector.frontend")]
    assert widths == [6, 12, 12]
    strides = [
        list(a.ints)
        for n in graph.node
        if n.op_type == "MaxPool"
        for a in n.attribute
        if a.name == "strides"
    ]
    assert strides == [[2, 4], [2, 2]]  # the first pooling's time step, then 2 x 2


def test_crossval_refuses_one_day_and_unstamped_names(tmp_path: Path) -> None:
    one = Recording(Path("a_20260101_000000.wav"), np.zeros(SR * 10, np.float32), [(1, 2)])
    two = Recording(Path("b_20260101_120000.wav"), np.zeros(SR * 10, np.float32), [(1, 2)])
    with pytest.raises(WhaleError, match="at least 2 days, got 1"):
        make_folds([one, two], [])
    bare = Recording(Path("clip.wav"), np.zeros(SR * 10, np.float32), [(1, 2)])
    with pytest.raises(WhaleError, match="clip.wav: no YYYYMMDD_HHMMSS"):
        make_folds([one, bare], [])
    (tmp_path / "r.csv").write_text("filename,start,end\na.wav,3,1\n")
    with pytest.raises(WhaleError, match="r.csv:2: need 0 <= start < end"):
        load_review(tmp_path / "r.csv")


def scored(name: str, calls: list, peaks: dict[float, float], seconds: int = 60) -> Scored:
    """Window scores 0 except the windows starting at the given seconds."""
    starts = np.arange(0, seconds * SR - 4000 + 1, HOP)
    scores = np.zeros(len(starts))
    for at, value in peaks.items():
        scores[int(at * SR) // HOP] = value
    return Scored(Recording(Path(name), np.zeros(seconds * SR, np.float32), calls), starts, scores)


def test_pooled_row_counts_lenient_precision_and_intervals() -> None:
    ann = scored("a.wav", [(10.5, 11.5)], {10.0: 0.99, 30.0: 0.95, 45.0: 0.9})
    bg = scored("bg.wav", [], {20.0: 0.97})
    review = {"a.wav": [(30.5, 31.5)]}  # the 30-s event is a probable unannotated call
    row = pooled_row([ann], [bg], 0.9, review)
    assert (row["found"], row["calls"], row["hits"], row["events"]) == (1, 1, 1, 3)
    assert row["precision"] == pytest.approx(1 / 3, abs=1e-4)
    assert row["lenient_precision"] == 0.5  # 45 s still a false alarm, 30 s left out
    assert row["background_false_alarms_per_hour"] == 60.0  # 1 event in a minute
    lo, hi = row["precision_interval"]
    assert lo < 1 / 3 < hi


def test_presets_follow_their_rules() -> None:
    def row(t: float, recall: float, f1: float, fa: float) -> dict:
        return {
            "threshold": t,
            "recall": recall,
            "precision": 0.9,
            "f1": f1,
            "lenient_precision": 0.95,
            "background_false_alarms_per_hour": fa,
        }

    table = [
        row(0.5, 0.95, 0.70, 8.0),
        row(0.8, 0.92, 0.80, 3.0),
        row(0.9, 0.88, 0.86, 1.5),
        row(0.95, 0.80, 0.84, 0.4),
        row(0.99, 0.60, 0.72, 0.0),
    ]
    presets = choose_presets(table)
    assert presets["high"]["threshold"] == 0.8  # highest threshold with recall >= 0.9
    assert presets["balanced"]["threshold"] == 0.9  # best F1 under 2 false alarms/h
    assert presets["strict"]["threshold"] == 0.95  # best F1 under 0.5 false alarms/h
    assert presets["strict"]["recall"] == 0.80 and "0.5" in presets["strict"]["rule"]


@pytest.fixture(scope="module")
def shipped_like(crossval_run: Path) -> Path:
    """A model trained with --operating-points, as the shipped one is."""
    root, out = crossval_run, crossval_run / "model"
    args = ["train", "--data", str(root / "calls.csv"), "--data", str(root / "bg"), *TINY]
    args += ["--operating-points", str(root / "cv" / "crossval.json"), "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return out / "upcall.onnx"


def test_card_carries_the_operating_points_and_presets(crossval_run: Path, shipped_like) -> None:
    summary = json.loads((crossval_run / "cv" / "crossval.json").read_text())
    card = load_card(shipped_like)
    assert card["presets"] == summary["pooled"]["presets"]
    assert card["threshold"] == card["presets"]["balanced"]["threshold"]
    table = card["operating_points"]["table"]
    assert [r["threshold"] for r in table] == list(GRID)
    assert table[3]["recall"] == summary["pooled"]["table"][3]["recall"]
    assert "leave-one-day-out" in card["operating_points"]["source"]
    bad = crossval_run / "bad.json"
    bad.write_text('{"pooled": {}}')
    args = ["train", "--data", str(crossval_run / "calls.csv"), "--operating-points", str(bad)]
    result = CliRunner().invoke(main, [*args, "--out", str(crossval_run / "x"), *TINY])
    assert result.exit_code == 2 and "not a crossval.json" in result.output


def test_adapt_fine_tunes_and_keeps_the_model_contract(crossval_run: Path, shipped_like) -> None:
    root, out = crossval_run, crossval_run / "adapted"
    args = ["adapt", "--model", str(shipped_like), "--background", str(root / "bg")]
    args += ["--data", str(root / "calls.csv"), "--holdout", "y.wav", "--holdout", DAYS[2]]
    args += ["--steps", "3", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "| balanced |" in result.output
    model = load_model(out / "upcall.onnx", provider="cpu")  # contract and sha256 checks
    assert model.frames_session is not None and model.head_session is not None
    assert model.score(np.zeros((3, 4000), np.float32)).shape == (3,)
    card = load_card(out / "upcall.onnx")
    assert card["site"]["adapted_on"] == ["x.wav"]
    assert card["adapted_from"]["sha256"] == load_card(shipped_like)["sha256"]
    original = load_card(shipped_like)["presets"]
    for name, preset in card["presets"].items():
        assert preset["threshold"] >= original[name]["threshold"]  # raised only where needed
        assert "site_false_alarms_per_hour" in preset
    assert card["threshold"] == card["presets"]["balanced"]["threshold"]
    assert {r["preset"] for r in card["adaptation"]} == {"high", "balanced", "strict"}


def test_adapt_refuses_what_it_cannot_use(crossval_run: Path, shipped_like, tmp_path) -> None:
    bg = str(crossval_run / "bg")
    result = CliRunner().invoke(
        main,
        [
            "adapt",
            "--model",
            str(shipped_like),
            "--background",
            bg,
            "--holdout",
            "x.wav",
            "--holdout",
            "y.wav",
            "--out",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 2 and "none left to adapt on" in result.output
    bare = tmp_path / "bare"
    bare.mkdir()
    for suffix in (".onnx", ".frames.onnx", ".head.onnx"):
        (bare / f"m{suffix}").write_bytes(shipped_like.with_suffix(suffix).read_bytes())
    result = CliRunner().invoke(
        main, ["adapt", "--model", str(bare / "m.onnx"), "--background", bg, "--out", str(tmp_path)]
    )
    assert result.exit_code == 2 and "no presets" in result.output


def test_crossval_distils_each_fold_from_the_same_fold_of_an_earlier_run(
    crossval_run: Path, tmp_path: Path
) -> None:
    root = crossval_run
    args = ["crossval", "--data", str(root / "calls.csv"), "--data", str(root / "bg")]
    args += ["--out", str(tmp_path / "student"), *TINY, "--seeds", "1"]
    args += ["--distil-from", str(root / "cv"), "--distil-weight", "0.7"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "student" / "crossval.json").read_text())
    assert summary["train_options"]["distil"] == {"from": str(root / "cv"), "weight": 0.7}
    assert [j["seed"] for j in summary["per_job"]] == [0, 0, 0]


def test_crossval_without_the_teachers_of_a_fold_says_so_in_one_line(
    crossval_run: Path, tmp_path: Path
) -> None:
    teachers = tmp_path / "teachers"
    (teachers / "fold_2026-01-01_s0").mkdir(parents=True)  # the other two days' are missing
    root = crossval_run
    args = ["crossval", "--data", str(root / "calls.csv"), "--data", str(root / "bg")]
    args += ["--out", str(tmp_path / "student"), *TINY, "--distil-from", str(teachers)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "fold_2026-01-01_s*/upcall.onnx" in lines[0], result.stderr
    assert not (tmp_path / "student" / "fold_2026-01-02_s0").exists()  # before any training
