"""The map scorer gives a pcen-stream model's per-window events: its shared map gives the
per-window model's logits up to rounding, on every recording of ../shared/data and on long
synthetic streams, and its rescoring makes the windows over the threshold and the peaks exact.
The model is the tiny pcen-stream one trained by the tests (no such model ships)."""

import numpy as np
import pytest
import soundfile as sf

from detector.events import merge_events
from detector.model import load_model
from detector.scoring import FrameScorer, WindowScorer, make_scorer
from detector.stream_map import MARGIN_LOGIT, MapScorer
from tests.test_streaming import HOP, REPO_EXAMPLE, run, shared_recordings

LEVELS = (0.2, 0.5, 0.8, 0.9, 0.97)  # thresholds the events are compared at


@pytest.fixture(scope="module")
def model(tiny_stream_model):
    return load_model(tiny_stream_model, provider="cpu", threads=1)


def thresholds(model) -> list[float]:
    """A grid of thresholds from 0.01 to 0.999."""
    return sorted(set(np.round(np.linspace(0.01, 0.99, 99), 2)) | {0.995, 0.999})


def stream_logits(model, audio: np.ndarray, blocks=(64000,)) -> np.ndarray:
    """The stream half's logit of every window, as the scorer reads them."""
    return run(MapScorer(model, HOP, 0.5), audio, blocks)[2]


def disagreement(logits: np.ndarray, exact: np.ndarray) -> float:
    """How far (in logits) the per-window model's probabilities lie from the stream logits,
    allowing for the float32 rounding of a probability (near 1 a logit cannot be read back)."""
    p = exact.astype(np.float64)
    low = np.log(np.clip(p - 1e-7, 1e-12, None) / np.clip(1 - p + 1e-7, 1e-12, None))
    high = np.log(np.clip(p + 1e-7, 1e-12, None) / np.clip(1 - p - 1e-7, 1e-12, None))
    return float(np.max(np.maximum(low - logits, logits - high).clip(0), initial=0))


def events(starts: np.ndarray, scores: np.ndarray, threshold: float, hop: int = HOP) -> list:
    return merge_events(starts, scores, threshold, hop)


@pytest.fixture(scope="module")
def shared(model):
    """Per recording: the audio, the per-window model's scores and the stream half's logits."""
    return shared_recordings(model, stream_logits)


def test_replay_uses_the_stream_scorer_and_live_does_not(model):
    assert isinstance(make_scorer(model, HOP, 64, model.threshold), MapScorer)
    assert isinstance(make_scorer(model, HOP), FrameScorer)  # live: one window at a time
    assert isinstance(make_scorer(model, 550, 64, 0.5), FrameScorer)  # not the stream hop
    assert isinstance(make_scorer(model, 2000, 64, 0.5), FrameScorer)  # nor is this
    assert isinstance(make_scorer(model, HOP + 1, 64, 0.5), WindowScorer)  # not whole frames


def test_stream_logits_are_the_per_window_models_on_shared_data(model, shared):
    """The same network over a longer input: only rounding apart, far inside the margin that
    decides which windows the whole model scores again."""
    worst = {name: disagreement(logits, exact) for name, (_, exact, logits) in shared.items()}
    assert max(worst.values()) < MARGIN_LOGIT / 100, worst


def test_events_identical_to_the_per_window_model_on_shared_data(model, shared):
    rescored = windows = 0
    for name, (audio, exact, _) in shared.items():
        ref_starts = np.arange(len(exact)) * HOP
        for threshold in LEVELS:
            scorer = MapScorer(model, HOP, threshold)
            starts, scores, _ = run(scorer, audio, (64000,))
            np.testing.assert_array_equal(starts, ref_starts)
            assert events(starts, scores, threshold) == events(starts, exact, threshold), name
            over = exact >= threshold
            np.testing.assert_array_equal(scores >= threshold, over)
            rescored, windows = rescored + scorer.rescored, windows + len(exact)
    assert rescored < windows / 10  # the map does the work


class Rounded:
    """The real model, with its stream logits moved by up to `error` logits (as if rounding were
    that large): the scorer must still give the per-window model's events exactly."""

    def __init__(self, model, error: float, seed: int):
        self.model, self.error = model, error
        self.rng = np.random.default_rng(seed)
        self.streaming, self.stream_session, self.path = model.streaming, True, model.path

    def stream_logits(self, samples):
        logits = self.model.stream_logits(samples)
        return logits + self.rng.uniform(-self.error, self.error, logits.shape)

    def score(self, windows):
        return self.model.score(windows)


def test_rescoring_makes_events_exact_when_the_map_is_rounded(model, long_stream):
    """Peaks and threshold crossings that the rounding could move are scored again: with the
    stream logits off by up to half the margin, every threshold still gives the same events."""
    _, exact, _ = run(WindowScorer(model, HOP), long_stream, (64000,))
    for threshold in thresholds(model)[::7]:
        scorer = MapScorer(Rounded(model, MARGIN_LOGIT / 2, 0), HOP, threshold)
        starts, scores, _ = run(scorer, long_stream, (64000, 4001))
        assert events(starts, scores, threshold) == events(starts, exact, threshold), threshold
    off = MapScorer(Rounded(model, 0.5, 1), HOP, 0.5, margin=0.0)  # no room: it shows
    starts, scores, _ = run(off, long_stream, (64000,))
    assert events(starts, scores, 0.5) != events(starts, exact, 0.5)


def test_events_identical_on_a_long_synthetic_stream(model, long_stream):
    _, exact, _ = run(WindowScorer(model, HOP), long_stream, (64000,))
    logits = stream_logits(model, long_stream, (4001, 65537, 13, 20000))
    assert disagreement(logits, exact) < MARGIN_LOGIT / 100
    threshold = model.threshold
    ref = events(np.arange(len(exact)) * HOP, exact, threshold)
    assert len(ref) > 5, "the stream should hold events"
    for blocks in ((64000,), (4001, 65537, 13, 20000)):
        starts, scores, _ = run(MapScorer(model, HOP, threshold), long_stream, blocks)
        np.testing.assert_array_equal(starts, np.arange(len(exact)) * HOP)
        assert events(starts, scores, threshold) == ref, blocks


def test_block_sizes_and_the_end_of_stream(model, long_stream):
    """One sample at a time, odd blocks and one big block give the same windows and scores;
    every complete window is scored when its last sample arrives, so the flush gives none."""
    for seconds, patterns in ((30, ((1,), (7, 333, 4000))), (150, ((3999,), (600000,)))):
        audio = long_stream[: seconds * 2000 + 1234]
        whole = run(MapScorer(model, HOP, 0.5), audio, (64000,))
        assert len(whole[0]) == (len(audio) - 4000) // HOP + 1
        for blocks in patterns:
            starts, scores, logits = run(MapScorer(model, HOP, 0.5), audio, blocks)
            np.testing.assert_array_equal(starts, whole[0])
            np.testing.assert_allclose(scores, whole[1], atol=1e-6)
            np.testing.assert_allclose(logits, whole[2], atol=MARGIN_LOGIT / 100)
    scorer = MapScorer(model, HOP, 0.5)
    assert len(scorer.push(audio)[0]) == len(whole[0])
    assert len(scorer.flush()[0]) == 0


def test_short_streams(model):
    for n in (0, 255, 3999, 4000, 4001, 5000):
        audio = np.full(n, 0.01, np.float32)
        starts, scores, _ = run(MapScorer(model, HOP, 0.0), audio, (n or 1,))
        assert len(starts) == len(scores) == ((n - 4000) // HOP + 1 if n >= 4000 else 0)


@pytest.mark.parametrize("normalisation", ["contrast", "pcen"])
def test_a_model_without_a_stream_half_scores_as_before(tmp_path, normalisation):
    """Only a pcen-stream model has a map its windows share; the others do not use it."""
    torch = pytest.importorskip("torch", reason="exports a model with the train extra")
    from train.export import export_onnx, write_card
    from train.frontend import FrontEndConfig
    from train.net import UpcallDetector

    torch.manual_seed(0)
    net = UpcallDetector(FrontEndConfig(normalisation=normalisation)).eval()
    export_onnx(net, tmp_path / "m.onnx")
    write_card(tmp_path / "m.onnx", net, threshold=0.5)
    model = load_model(tmp_path / "m.onnx", provider="cpu", threads=1)
    assert model.stream_session is None
    assert not isinstance(make_scorer(model, HOP, 64, 0.5), MapScorer)


def test_events_identical_on_the_readme_example(model):
    """The recording the README's first command replays (in the repository: no shared data)."""
    audio = sf.read(REPO_EXAMPLE, dtype="float32", always_2d=True)[0][:, 0]
    _, exact, _ = run(WindowScorer(model, HOP), audio, (64000,))
    for threshold in LEVELS:
        starts, scores, _ = run(MapScorer(model, HOP, threshold), audio, (64000,))
        ref = events(np.arange(len(exact)) * HOP, exact, threshold)
        assert events(starts, scores, threshold) == ref, threshold
    assert events(starts, exact, 0.5), "the example should hold events"


@pytest.mark.parametrize("hop", [550, 2000, 6000])
def test_other_window_hops(model, long_stream, hop):
    """Other hops (one longer than a window: samples between windows belong to none) score
    through frames and head, with the per-window model's windows and events."""
    audio = long_stream[: 120 * 2000 + 99]
    ref_starts, exact, _ = run(WindowScorer(model, hop), audio, (64000,))
    starts, scores, _ = run(make_scorer(model, hop, 64, 0.5), audio, (7777,))
    np.testing.assert_array_equal(starts, ref_starts)
    assert events(starts, scores, 0.5, hop) == events(ref_starts, exact, 0.5, hop)
