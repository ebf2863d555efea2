"""The stream scorer gives the per-window model's events: its screen never drops a window at or
above the threshold, on every recording of ../shared/data and on long synthetic streams."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from detector.events import merge_events
from detector.model import load_model
from detector.scoring import FrameScorer, WindowScorer, make_scorer
from detector.streaming import MARGIN_LOGIT, StreamScorer, smooth, threshold_logit
from tests.conftest import SHARED_DATA

HOP = 1000  # the daemon's 0.5-s window hop
REPO_EXAMPLE = Path(__file__).parents[1] / "examples" / "synthetic_upcalls_20261126_120000.flac"
AUDIO = (".wav", ".aif", ".aiff")


@pytest.fixture(scope="module")
def model(real_model):
    return load_model(real_model, provider="cpu", threads=1)


def thresholds(model) -> list[float]:
    """Every threshold the card offers (presets, operating points) and a grid between them."""
    card = model.card
    found = {card["threshold"], *(p["threshold"] for p in card.get("presets", {}).values())}
    found |= {p["threshold"] for p in card.get("operating_points", {}).get("table", [])}
    return sorted(found | set(np.round(np.linspace(0.01, 0.99, 99), 2)) | {0.995, 0.999})


def run(scorer, audio: np.ndarray, blocks) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, scores, screen logits) of a stream pushed in the given block sizes, flushed."""
    starts, scores, logits, i, k = [], [], [], 0, 0
    while i < len(audio):
        n = blocks[k % len(blocks)]
        s, p = scorer.push(audio[i : i + n])
        starts.append(s)
        scores.append(p)
        logits.append(getattr(scorer, "last_logits", np.zeros(len(p)))[: len(p)])
        i, k = i + n, k + 1
    s, p = scorer.flush()
    starts.append(s)
    scores.append(p)
    logits.append(getattr(scorer, "last_logits", np.zeros(len(p)))[: len(p)])
    return np.concatenate(starts), np.concatenate(scores), np.concatenate(logits)


def screen_logits(model, audio: np.ndarray, blocks=(64000,)) -> np.ndarray:
    """The screen's logit of every window (margin -inf: nothing rescored, nothing reported)."""
    return run(StreamScorer(model, HOP, 0.5, margin=-np.inf), audio, blocks)[2]


def worst_shortfall(exact: np.ndarray, logits: np.ndarray, levels: list[float]) -> float:
    """The most any window at or above a threshold falls short of that threshold's logit."""
    worst = -np.inf
    for t in levels:
        above = exact >= t
        if above.any():
            worst = max(worst, float(np.max(threshold_logit(t) - logits[above])))
    return worst


def recordings() -> list[Path]:
    if not SHARED_DATA.is_dir():
        return []
    return sorted(p for p in SHARED_DATA.rglob("*") if p.suffix.lower() in AUDIO)


def shared_recordings(model, logits_of) -> dict:
    """Per recording of ../shared/data: the audio, the per-window model's scores and
    `logits_of(model, audio)` (a scorer's own logits); skips when the data set is absent."""
    files = recordings()
    if not files:
        pytest.skip(f"no recordings under {SHARED_DATA} (the shared data set is absent)")
    out = {}
    for path in files:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
        assert rate == 2000, path
        audio = audio[:, 0]
        _, exact, _ = run(WindowScorer(model, HOP), audio, (64000,))
        out[path.name] = (audio, exact, logits_of(model, audio))
    return out


@pytest.fixture(scope="module")
def shared(model):
    """Per recording: the audio, the per-window model's scores and the screen's logits."""
    return shared_recordings(model, screen_logits)


def test_smooth_is_the_recurrence():
    rng = np.random.default_rng(0)
    for n in (1, 31, 32, 33, 1000):
        x = rng.exponential(1e6, (3, n)).astype(np.float32)
        state = rng.exponential(1e6, 3).astype(np.float32)
        ref, level = np.empty((3, n)), state.astype(np.float64)
        for t in range(n):
            level = 0.96 * level + 0.04 * x[:, t]
            ref[:, t] = level
        np.testing.assert_allclose(smooth(x, state, 0.04), ref, rtol=1e-5)


def test_replay_uses_the_stream_scorer_and_live_does_not(model):
    assert isinstance(make_scorer(model, HOP, 64, model.threshold), StreamScorer)
    assert isinstance(make_scorer(model, HOP), FrameScorer)  # live: no lookahead
    assert isinstance(make_scorer(model, HOP + 1, 64, 0.5), WindowScorer)  # not whole frames


def test_screen_never_drops_a_window_above_threshold_on_shared_data(model, shared):
    levels = thresholds(model)
    worst = {
        name: worst_shortfall(exact, logits, levels) for name, (_, exact, logits) in shared.items()
    }
    assert max(worst.values()) < MARGIN_LOGIT, worst  # measured: 3.4 logits at most


def screened_events(exact: np.ndarray, logits: np.ndarray, threshold: float) -> list:
    """The events StreamScorer gives when its rescoring returns the per-window model's scores
    (the tests below check that it does, with the real scorer at the card's threshold)."""
    near = logits >= threshold_logit(threshold) - MARGIN_LOGIT
    return merge_events(np.arange(len(exact)) * HOP, np.where(near, exact, 0), threshold, HOP)


def test_events_identical_to_the_per_window_model_on_shared_data(model, shared):
    threshold = model.threshold
    for name, (audio, exact, logits) in shared.items():
        starts, scores, _ = run(StreamScorer(model, HOP, threshold), audio, (64000,))
        ref = merge_events(np.arange(len(exact)) * HOP, exact, threshold, HOP)
        assert len(starts) == len(exact), name
        assert merge_events(starts, scores, threshold, HOP) == ref, name
        above = exact >= threshold
        np.testing.assert_array_equal(scores[above], exact[above])  # the same model, rescored
        assert np.all(scores[~above] < threshold)
        for level in thresholds(model):  # the presets, the card's table and a grid
            ref = merge_events(np.arange(len(exact)) * HOP, exact, level, HOP)
            assert screened_events(exact, logits, level) == ref, (name, level)


def test_events_identical_on_a_long_synthetic_stream(model, long_stream):
    _, exact, _ = run(WindowScorer(model, HOP), long_stream, (64000,))
    logits = screen_logits(model, long_stream, (4001, 65537, 13, 20000))
    assert worst_shortfall(exact, logits, thresholds(model)) < MARGIN_LOGIT
    threshold = model.threshold
    ref = merge_events(np.arange(len(exact)) * HOP, exact, threshold, HOP)
    assert len(ref) > 20, "the stream should hold events"
    for blocks in ((64000,), (4001, 65537, 13, 20000)):
        starts, scores, _ = run(StreamScorer(model, HOP, threshold), long_stream, blocks)
        np.testing.assert_array_equal(starts, np.arange(len(exact)) * HOP)
        assert merge_events(starts, scores, threshold, HOP) == ref, blocks
    for level in thresholds(model):
        ref = merge_events(np.arange(len(exact)) * HOP, exact, level, HOP)
        assert screened_events(exact, logits, level) == ref, level


def test_block_sizes_and_the_end_of_stream(model, long_stream):
    """One sample at a time, odd blocks and one big block (split into bounded pushes) give the
    same windows and screen; the flush scores the windows held back for lookahead, up to the
    last complete one."""
    for seconds, patterns in ((30, ((1,), (7, 333, 4000))), (150, ((3999,), (200000,)))):
        audio = long_stream[: seconds * 2000 + 1234]
        whole = run(StreamScorer(model, HOP, 0.0), audio, (64000,))
        assert len(whole[0]) == (len(audio) - 4000) // HOP + 1
        for blocks in patterns:
            starts, scores, logits = run(StreamScorer(model, HOP, 0.0), audio, blocks)
            np.testing.assert_array_equal(starts, whole[0])
            np.testing.assert_array_equal(scores, whole[1])
            np.testing.assert_allclose(logits, whole[2], atol=1e-3)
    scorer = StreamScorer(model, HOP, 0.5)
    pushed = scorer.push(audio)
    assert len(pushed[0]) < len(whole[0])  # the last windows wait for lookahead
    assert len(pushed[0]) + len(scorer.flush()[0]) == len(whole[0])


def test_short_streams(model):
    for n in (0, 255, 3999, 4000, 4001, 5000):
        audio = np.full(n, 0.01, np.float32)
        starts, scores, _ = run(StreamScorer(model, HOP, 0.0), audio, (n or 1,))
        assert len(starts) == len(scores) == ((n - 4000) // HOP + 1 if n >= 4000 else 0)


def test_a_head_without_pcen_keeps_frames_and_head(tmp_path):
    """The screen is built for the shipped layout only; another head scores as before."""
    torch = pytest.importorskip("torch", reason="exports a model with the train extra")
    from train.export import export_onnx, write_card
    from train.frontend import FrontEndConfig
    from train.net import UpcallDetector

    torch.manual_seed(0)
    net = UpcallDetector(FrontEndConfig(normalisation="contrast")).eval()
    export_onnx(net, tmp_path / "m.onnx")
    write_card(tmp_path / "m.onnx", net, threshold=0.5)
    model = load_model(tmp_path / "m.onnx", provider="cpu", threads=1)
    assert isinstance(make_scorer(model, HOP, 64, 0.5), FrameScorer)


def test_events_identical_on_the_readme_example(model):
    """The recording the README's first command replays (in the repository: no shared data)."""
    audio = sf.read(REPO_EXAMPLE, dtype="float32", always_2d=True)[0][:, 0]
    _, exact, _ = run(WindowScorer(model, HOP), audio, (64000,))
    for preset in ("high", "balanced", "strict"):
        threshold = model.card["presets"][preset]["threshold"]
        starts, scores, _ = run(StreamScorer(model, HOP, threshold), audio, (64000,))
        ref = merge_events(np.arange(len(exact)) * HOP, exact, threshold, HOP)
        assert ref and merge_events(starts, scores, threshold, HOP) == ref, preset


@pytest.mark.parametrize("hop", [520, 2000, 6000])
def test_other_window_hops(model, long_stream, hop):
    """Other whole-frame hops, including one longer than a window (samples between windows
    belong to none), give the per-window model's windows and events too."""
    audio = long_stream[: 120 * 2000 + 99]
    ref_starts, exact, _ = run(WindowScorer(model, hop), audio, (64000,))
    starts, scores, _ = run(StreamScorer(model, hop, model.threshold), audio, (7777,))
    np.testing.assert_array_equal(starts, ref_starts)
    ref = merge_events(ref_starts, exact, model.threshold, hop)
    assert merge_events(starts, scores, model.threshold, hop) == ref
