"""whale-train on bad data: one line naming the file, exit status 2, no traceback."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner

pytest.importorskip("torch", reason="whale-train needs the train extra")

from train.cli import main  # noqa: E402

SR = 2000


def clip(path: Path, seconds: float = 2.0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sf.write(path, (0.1 * rng.standard_normal(int(seconds * SR))).astype(np.float32), SR)
    return path


def run_train(*data: Path) -> tuple[int, str]:
    args = ["train", "--steps", "1"]
    for d in data:
        args += ["--data", str(d)]
    result = CliRunner().invoke(main, args)
    return result.exit_code, result.stderr


def assert_one_line(code: int, stderr: str, *names: str) -> None:
    assert code == 2
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("whale-train: error:"), stderr
    for name in names:
        assert name in lines[0]


def test_missing_kaggle_csv(tmp_path):
    clip(tmp_path / "kaggle" / "train" / "a.aiff")
    code, err = run_train(tmp_path / "kaggle" / "train.csv")
    assert_one_line(code, err, "train.csv")


def test_label_not_0_or_1(tmp_path):
    root = tmp_path / "kaggle"
    clip(root / "train" / "a.aiff")
    (root / "train.csv").write_text("clip_name,label\na.aiff,2\n")
    code, err = run_train(root)
    assert_one_line(code, err, "train.csv")


def test_unreadable_audio(tmp_path):
    root = tmp_path / "folders"
    (root / "right_whale").mkdir(parents=True)
    (root / "right_whale" / "bad.wav").write_bytes(b"not audio at all" * 100)
    clip(root / "no_right_whale" / "n.wav")
    code, err = run_train(root)
    assert_one_line(code, err, "bad.wav")


def test_truncated_audio(tmp_path):
    rec = clip(tmp_path / "bg" / "long.wav", seconds=20)
    rec.write_bytes(rec.read_bytes()[:-20000])
    code, err = run_train(tmp_path / "bg")
    assert_one_line(code, err, "long.wav", "truncated")


def test_empty_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    code, err = run_train(tmp_path / "empty")
    assert_one_line(code, err, "empty")


def test_annotation_past_end_of_file(tmp_path):
    clip(tmp_path / "rec.wav", seconds=10)
    (tmp_path / "calls.csv").write_text("filename,start,end,label\nrec.wav,9.5,11.0,upcall\n")
    code, err = run_train(tmp_path / "calls.csv")
    assert_one_line(code, err, "rec.wav")


def test_evaluate_only_a_recording_not_loaded(tmp_path):
    clip(tmp_path / "rec.wav", seconds=10)
    (tmp_path / "calls.csv").write_text("filename,start,end,label\nrec.wav,2.0,3.0,upcall\n")
    args = ["evaluate", "--data", str(tmp_path / "calls.csv"), "--only", "other.wav"]
    result = CliRunner().invoke(main, args + ["--out", str(tmp_path / "out")])
    assert_one_line(result.exit_code, result.stderr, "--only", "other.wav")


def test_demo_writes_a_recording_and_the_csv_of_its_calls(tmp_path):
    path = tmp_path / "demo.wav"
    result = CliRunner().invoke(
        main, ["demo", str(path), "--seconds", "30", "--calls", "2", "--lookalikes", "1"]
    )
    assert result.exit_code == 0, result.stderr
    audio, rate = sf.read(path)
    assert rate == SR and len(audio) == 30 * SR
    rows = path.with_suffix(".csv").read_text().splitlines()
    assert rows[0] == "filename,start,end,label" and len(rows) == 3
    for row in rows[1:]:
        name, start, end, label = row.split(",")
        assert name == "demo.wav" and 0 < float(start) < float(end) < 30 and label == "upcall"


@pytest.mark.parametrize(
    "name, args, words",
    [
        ("crowded.flac", ["--seconds", "10", "--calls", "8"], ["crowded.flac", "--seconds"]),
        ("demo.xyz", [], ["demo.xyz", ".flac"]),
        ("demo.csv", [], ["demo.csv", ".flac"]),  # would be overwritten by its own annotations
    ],
)
def test_demo_that_cannot_be_made_is_one_line(tmp_path, name, args, words):
    result = CliRunner().invoke(main, ["demo", str(tmp_path / name), *args])
    assert_one_line(result.exit_code, result.stderr, *words)
    assert not (tmp_path / name).exists()


def test_unwritable_out_or_bad_metrics_card_fail_before_training(tmp_path):
    """Both were found only after the training run, which takes 20 minutes."""
    data = clip(tmp_path / "bg" / "noise.wav", seconds=5)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    args = ["train", "--steps", "100000", "--data", str(data)]
    result = CliRunner().invoke(main, [*args, "--out", str(blocker / "sub")])
    assert_one_line(result.exit_code, result.stderr, "--out", "a-file")
    card = tmp_path / "card.json"
    card.write_text('{"metrics": 1}\n{"second": "object"}\n')
    result = CliRunner().invoke(main, [*args, "--out", str(tmp_path), "--metrics-from", str(card)])
    assert_one_line(result.exit_code, result.stderr, "--metrics-from", "card.json")
    result = CliRunner().invoke(
        main, ["evaluate", "--data", str(data.parent), "--out", str(blocker / "sub")]
    )
    assert_one_line(result.exit_code, result.stderr, "--out", "a-file")


@pytest.mark.parametrize(
    "option, values",
    [("--snr-db", ["10", "-5"]), ("--snr-db", ["nan", "0"]), ("--remix-scale", ["2", "1"])],
)
def test_a_recipe_range_out_of_order_fails_before_training(tmp_path, option, values):
    data = clip(tmp_path / "bg" / "noise.wav", seconds=5)
    args = ["train", "--steps", "100000", "--data", str(data), "--out", str(tmp_path / "m")]
    result = CliRunner().invoke(main, [*args, option, *values])
    assert_one_line(result.exit_code, result.stderr, option)


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--train-review", "exclude"], ["--train-review", "--review"]),
        (["--train-review", "positive", "--review", "r.csv"], ["--train-review", "positive"]),
    ],
)
def test_a_bad_use_of_the_review_lists_fails_before_training(tmp_path, extra, words):
    data = clip(tmp_path / "bg" / "noise.wav", seconds=5)
    args = ["train", "--steps", "100000", "--data", str(data), "--out", str(tmp_path / "m")]
    result = CliRunner().invoke(main, [*args, *extra])
    assert_one_line(result.exit_code, result.stderr, *words)


def test_a_distillation_weight_without_its_teachers_fails_before_training(tmp_path):
    data = clip(tmp_path / "bg" / "noise.wav", seconds=5)
    args = ["crossval", "--data", str(data), "--out", str(tmp_path / "cv"), "--steps", "100000"]
    result = CliRunner().invoke(main, [*args, "--distil-weight", "0.7"])
    assert_one_line(result.exit_code, result.stderr, "--distil-weight", "--distil-from")


def test_the_snr_range_reaches_the_sampler():
    from train.cli import recipe_mix

    assert recipe_mix((0.2, 1.5), (-20.0, 0.0)).snr_db == (-20.0, 0.0)


def synthetic_calls(root: Path) -> Path:
    """A 20-s recording with two planted up-calls and its annotation table."""
    from train import synth

    audio, calls = synth.synthetic_recording(np.random.default_rng(3), 20, 2, n_lookalikes=0)
    sf.write(root / "rec_20260101_000000.wav", audio, SR, subtype="PCM_16")
    rows = ["filename,start,end,label"]
    rows += [f"rec_20260101_000000.wav,{s:.3f},{e:.3f},upcall" for s, e in calls]
    (root / "calls.csv").write_text("\n".join(rows) + "\n")
    return root / "calls.csv"


def test_channels_reach_the_exported_network_and_the_daemon_screen(tmp_path):
    """A wider CNN than the default exports with its widths in the card, loads as a model, and
    the stream scorer's screen (parsed from the head graph) runs its convolutions."""
    from detector.model import load_card, load_model
    from detector.streaming import load_screen

    args = ["train", "--data", str(synthetic_calls(tmp_path)), "--out", str(tmp_path / "m")]
    args += ["--steps", "2", "--batch-size", "8", "--normalisation", "pcen"]
    result = CliRunner().invoke(main, [*args, "--conv-widths", "12,24,48,48", "--time-pool", "4"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "m" / "upcall.onnx"
    arch = load_card(path)["architecture"]
    assert arch["channels"] == [12, 24, 48, 48] and arch["time_pool"] == 4
    model = load_model(path, provider="cpu", threads=1)
    assert model.score(np.zeros((2, 4000), np.float32)).shape == (2,)
    screen = load_screen(model)
    assert screen is not None and screen.stride == 4 * 2 * 2  # time pools of blocks 1-3
    fmap = screen.session.run(None, {"image": np.zeros((1, 1, 32, 200), np.float32)})[0]
    assert fmap.shape[1] == 48


def test_channels_reach_the_exported_network_and_the_stream_half(tmp_path):
    """A wider pcen-stream CNN than the default exports with its widths in the card, loads as
    a model, and its stream half gives the per-window model's logits for every window."""
    from detector.model import load_card, load_model
    from detector.streaming import StreamScorer

    args = ["train", "--data", str(synthetic_calls(tmp_path)), "--out", str(tmp_path / "m")]
    args += ["--steps", "2", "--batch-size", "8", "--normalisation", "pcen-stream"]
    result = CliRunner().invoke(main, [*args, "--conv-widths", "12,24,48,48"])
    assert result.exit_code == 0, result.output
    path = tmp_path / "m" / "upcall.onnx"
    card = load_card(path)
    assert card["architecture"]["channels"] == [12, 24, 48, 48]
    assert card["frontend"]["hop_length"] == 50 and card["streaming"]["stream_window_hop"] == 1000
    model = load_model(path, provider="cpu", threads=1)
    audio = np.random.default_rng(0).standard_normal(4000 + 9 * 1000).astype(np.float32) / 10
    windows = np.stack([audio[k * 1000 : k * 1000 + 4000] for k in range(10)])
    p = model.score(windows).astype(np.float64)
    np.testing.assert_allclose(model.stream_logits(audio), np.log(p / (1 - p)), atol=1e-4)
    assert StreamScorer.supports(model, 1000)


def test_a_stream_model_needs_whole_cells_in_the_window_hop(tmp_path):
    args = ["train", "--data", str(synthetic_calls(tmp_path)), "--out", str(tmp_path / "m")]
    args += ["--steps", "2", "--normalisation", "pcen-stream", "--frame-hop", "30"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert "1000-sample window hop is not whole cells of 120 samples" in result.output


@pytest.mark.parametrize(
    "extra, words",
    [
        (["--conv-widths", "8,x,16"], ["--conv-widths", "whole numbers"]),
        (["--conv-widths", "8"], ["--conv-widths 8", "2 to 6 conv blocks, got 1"]),
        (["--conv-widths", "8,8,8,8,8,8,8"], ["2 to 6 conv blocks, got 7"]),
        (["--conv-widths", "8,0,16"], ["--conv-widths 8,0,16", "1 to 128"]),
        (["--conv-widths", "8,16,129"], ["1 to 128"]),
        (["--time-pool", "50"], ["--time-pool 50", "94 frames"]),
    ],
)
@pytest.mark.parametrize("command", ["train", "crossval"])
def test_a_network_that_cannot_be_built_fails_before_training(tmp_path, command, extra, words):
    data = clip(tmp_path / "bg" / "noise.wav", seconds=5)
    args = [command, "--steps", "100000", "--data", str(data), "--out", str(tmp_path / "m")]
    result = CliRunner().invoke(main, [*args, *extra])
    assert_one_line(result.exit_code, result.stderr, *words)


def test_more_blocks_than_the_mel_bands_take_is_one_line(tmp_path):
    data = clip(tmp_path / "bg" / "noise.wav", seconds=5)
    args = ["train", "--steps", "100000", "--data", str(data), "--out", str(tmp_path / "m")]
    result = CliRunner().invoke(main, [*args, "--n-mels", "8", "--conv-widths", "8,8,8,8,8"])
    assert_one_line(result.exit_code, result.stderr, "--conv-widths 8,8,8,8,8", "8 mel bands")
    card = tmp_path / "card.json"  # read after the network's check, so that it stops the run
    card.write_text("[]")
    args += ["--metrics-from", str(card), "--n-mels", "8"]
    result = CliRunner().invoke(main, [*args, "--conv-widths", "8,8,8,8"])  # 4 blocks take 8 bands
    assert_one_line(result.exit_code, result.stderr, "--metrics-from")
