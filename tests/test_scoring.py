"""Shared-frame scoring gives the full model's scores, whatever the block sizes and hop."""

import numpy as np
import pytest

pytest.importorskip("torch", reason="exports a model with the train extra")

from detector.model import load_model  # noqa: E402
from detector.scoring import FrameScorer, WindowScorer, make_scorer  # noqa: E402
from train import synth  # noqa: E402
from train.export import export_onnx, write_card  # noqa: E402
from train.net import UpcallDetector  # noqa: E402


@pytest.fixture(scope="module", params=["contrast", "pcen"])
def model(tmp_path_factory, request):
    """An untrained model of each front-end normalisation: the halves must agree for both."""
    import torch

    from train.frontend import FrontEndConfig

    torch.manual_seed(1)
    net = UpcallDetector(FrontEndConfig(normalisation=request.param)).eval()
    path = tmp_path_factory.mktemp("m") / "upcall.onnx"
    export_onnx(net, path)
    write_card(path, net, threshold=0.5)
    return load_model(path, provider="cpu", threads=1)


@pytest.fixture(scope="module")
def audio():
    rng = np.random.default_rng(0)
    x, _ = synth.synthetic_recording(rng, 40, 3, n_lookalikes=1, min_gap_s=4)
    return x


def run(scorer, audio, block):
    starts, scores = [], []
    for i in range(0, len(audio), block):
        s, p = scorer.push(audio[i : i + block])
        starts.append(s)
        scores.append(p)
    return np.concatenate(starts), np.concatenate(scores)


@pytest.mark.parametrize("block", [1, 7, 4000, 65536])
def test_frame_scorer_matches_window_scorer(model, audio, block):
    ref_starts, ref = run(WindowScorer(model, 1000), audio, 65536)
    x = audio if block > 1 else audio[:12000]  # one sample at a time: a shorter stream
    starts, scores = run(FrameScorer(model, 1000), x, block)
    n = len(starts)
    assert n > 0 and n == len(run(WindowScorer(model, 1000), x, 65536)[0])
    np.testing.assert_array_equal(starts, ref_starts[:n])
    np.testing.assert_allclose(scores, ref[:n], atol=1e-4)


@pytest.mark.parametrize("hop", [40, 520, 2000, 4000])
def test_frame_scorer_other_hops(model, audio, hop):
    ref_starts, ref = run(WindowScorer(model, hop), audio, 3000)
    starts, scores = run(FrameScorer(model, hop), audio, 3000)
    np.testing.assert_array_equal(starts, ref_starts)
    np.testing.assert_allclose(scores, ref, atol=1e-4)


def test_make_scorer_falls_back_when_hop_is_not_whole_frames(model):
    assert isinstance(make_scorer(model, 1000), FrameScorer)
    assert isinstance(make_scorer(model, 1001), WindowScorer)
