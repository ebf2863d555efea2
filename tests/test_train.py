"""The model contract: front end = librosa, ONNX = torch, training learns, export is valid."""

import json
import warnings
from dataclasses import replace

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training tests need the train extra (torch)")
librosa = pytest.importorskip("librosa", reason="training tests need the train extra (librosa)")

from detector.constants import WINDOW_SAMPLES  # noqa: E402
from detector.model import load_model  # noqa: E402
from train import synth  # noqa: E402
from train.data import Recording  # noqa: E402
from train.export import export_onnx, write_card  # noqa: E402
from train.frontend import FrontEnd, FrontEndConfig  # noqa: E402
from train.net import UpcallDetector, count_parameters, flops_per_window  # noqa: E402
from train.sampler import CALL_MARGIN_S, Mix, WindowSampler  # noqa: E402
from train.train import (  # noqa: E402
    TrainConfig,
    mine_hard_negatives,
    soft_targets,
    train,
    train_ensemble,
)


def synthetic_windows(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        x = 0.05 * synth.noise(rng, WINDOW_SAMPLES)
        call = synth.upcall(rng)
        at = rng.integers(0, WINDOW_SAMPLES - len(call))
        x[at : at + len(call)] += 0.2 * call
        out.append(x)
    return np.stack(out).astype(np.float32)


def test_front_end_mel_power_matches_librosa():
    cfg = FrontEndConfig()
    fe = FrontEnd(cfg)
    x = synthetic_windows(2)
    ours = fe.mel_power(torch.from_numpy(x)).numpy()
    for i in range(len(x)):
        ref = librosa.feature.melspectrogram(
            y=x[i],
            sr=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            center=False,
            power=2.0,
            n_mels=cfg.n_mels,
            fmin=cfg.f_min,
            fmax=cfg.f_max,
        )
        assert ours[i].shape == ref.shape
        np.testing.assert_allclose(ours[i], ref, rtol=1e-3, atol=1e-6 * ref.max())


def test_front_end_has_no_empty_mel_filters():
    fe = FrontEnd()
    assert ((fe.mel > 0).sum(dim=1) >= 2).all()


def test_front_end_rejects_the_notebooks_filters():
    """The notebook's 128 bands over 129 FFT bins: each band is one or two bins, some empty."""
    with pytest.raises(ValueError, match="empty or one-bin mel filters"):
        FrontEnd(FrontEndConfig(n_fft=256, n_mels=128, f_min=0, f_max=1000))


def test_model_is_small():
    model = UpcallDetector()
    assert count_parameters(model) < 500_000
    assert 0 < flops_per_window(model) < 50_000_000


@pytest.fixture(scope="module", params=["contrast", "pcen", "pcen-stream"])
def exported(tmp_path_factory, request):
    torch.manual_seed(0)
    hop = 50 if request.param == "pcen-stream" else 40  # a stream net's 0.5 s is whole cells
    model = UpcallDetector(FrontEndConfig(hop_length=hop, normalisation=request.param)).eval()
    path = tmp_path_factory.mktemp("model") / "upcall.onnx"
    export_onnx(model, path)
    write_card(path, model, threshold=0.5, metrics={"note": "untrained"})
    return model, path


def test_export_warns_nothing_and_leaves_the_filters_as_they_were(tmp_path):
    """torch 2.9+ warns on every TorchScript export; ours keeps that exporter on purpose."""
    model = UpcallDetector().eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        export_onnx(model, tmp_path / "upcall.onnx")
        warnings.warn("after the export", DeprecationWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["after the export"]
    assert {p.name for p in tmp_path.iterdir()} == {
        "upcall.onnx",
        "upcall.frames.onnx",
        "upcall.head.onnx",
    }


def test_onnx_matches_torch(exported):
    model, path = exported
    onnx_model = load_model(path, provider="cpu")
    rng = np.random.default_rng(1)
    for x in (rng.uniform(-1, 1, (5, WINDOW_SAMPLES)).astype(np.float32), synthetic_windows(7)):
        with torch.no_grad():
            expected = torch.sigmoid(model(torch.from_numpy(x))).numpy()
        got = onnx_model.score(x)
        assert got.shape == (len(x),)
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_onnx_front_end_matches_librosa(exported):
    """The front end as the daemon runs it (the exported frames graph), not only in torch."""
    model, path = exported
    onnx_model = load_model(path, provider="cpu")
    cfg = model.frontend.cfg
    for x in synthetic_windows(2, seed=4):
        ours = np.exp(onnx_model.log_mel(x)) - cfg.log_floor
        ref = librosa.feature.melspectrogram(
            y=x,
            sr=cfg.sample_rate,
            n_fft=cfg.n_fft,
            hop_length=cfg.hop_length,
            center=False,
            n_mels=cfg.n_mels,
            fmin=cfg.f_min,
            fmax=cfg.f_max,
        )
        np.testing.assert_allclose(ours, ref, rtol=1e-3, atol=1e-5 * ref.max())


def test_onnx_contract_and_card(exported):
    _, path = exported
    m = load_model(path, provider="cpu")
    inp = m.session.get_inputs()[0]
    assert inp.name == "samples" and inp.shape[1] == WINDOW_SAMPLES
    assert isinstance(inp.shape[0], str)  # dynamic batch
    assert m.score(np.zeros((1, WINDOW_SAMPLES), np.float32)).shape == (1,)
    assert m.score(np.zeros((33, WINDOW_SAMPLES), np.float32)).shape == (33,)
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["sample_rate"] == 2000 and card["window_samples"] == WINDOW_SAMPLES
    assert card["frontend"]["n_fft"] == FrontEndConfig().n_fft
    assert card["sha256"] == m.sha256 and m.threshold == 0.5
    assert card["architecture"]["parameters"] < 500_000


def test_a_few_steps_lower_the_loss_and_export(tmp_path):
    rng = np.random.default_rng(3)
    recs = []
    for k in range(2):
        audio, calls = synth.synthetic_recording(rng, 120, 8, n_lookalikes=3)
        recs.append(Recording(tmp_path / f"r{k}.wav", audio, calls))
    sampler = WindowSampler(recs, seed=0)
    held_x, held_y = WindowSampler(recs, seed=99).batch(128)
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def held_loss(model) -> float:
        model.eval()
        with torch.no_grad():
            return loss_fn(model(torch.from_numpy(held_x)), torch.from_numpy(held_y)).item()

    torch.manual_seed(0)
    before = held_loss(UpcallDetector())
    model = train(sampler, TrainConfig(steps=40, batch_size=32, mine_every=0), log=lambda s: None)
    after = held_loss(model)
    assert after < before - 0.1
    path = tmp_path / "m.onnx"
    export_onnx(model, path)
    assert load_model(path, provider="cpu").score(held_x[:4]).shape == (4,)


def test_training_is_deterministic_with_seed(tmp_path):
    rng = np.random.default_rng(5)
    audio, calls = synth.synthetic_recording(rng, 60, 4)
    recs = [Recording(tmp_path / "r.wav", audio, calls)]
    cfg = TrainConfig(steps=5, batch_size=16, mine_every=0, seed=7)
    a = train(WindowSampler(recs, seed=7), cfg, log=lambda s: None)
    b = train(WindowSampler(recs, seed=7), cfg, log=lambda s: None)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)


def test_ensemble_members_are_seeded_runs_and_export_averages_their_logits(tmp_path):
    rng = np.random.default_rng(6)
    audio, calls = synth.synthetic_recording(rng, 60, 4)
    recs = [Recording(tmp_path / "r.wav", audio, calls)]
    cfg = TrainConfig(steps=5, batch_size=16, mine_every=0, seed=3)
    done = []
    ensemble = train_ensemble(
        recs, [], cfg, 2, log=lambda s: None, progress=lambda n, loss: done.append(n)
    )
    assert sum(done) == 2 * cfg.steps
    members = ensemble.member_nets()
    assert len(members) == 2
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each member was trained
    try:
        for k, net in enumerate(members):
            sampler = WindowSampler(recs, seed=3 + k)
            alone = train(sampler, replace(cfg, seed=3 + k), log=lambda s: None)
            pairs = zip(net.state_dict().values(), alone.net.state_dict().values(), strict=True)
            for pa, pb in pairs:
                assert torch.equal(pa, pb)
    finally:
        torch.set_num_threads(threads)
    x = torch.from_numpy(synthetic_windows(6, seed=8))
    with torch.no_grad():
        image = ensemble.frontend(x)
        each = torch.stack([net.eval()(image) for net in members])
        assert not torch.allclose(each[0], each[1])  # different seeds, different nets
        torch.testing.assert_close(ensemble(x), each.mean(dim=0))
        expected = torch.sigmoid(ensemble(x)).numpy()
    path = tmp_path / "ensemble.onnx"
    export_onnx(ensemble, path)
    card = write_card(path, ensemble, threshold=0.5)
    onnx_model = load_model(path, provider="cpu")
    np.testing.assert_allclose(onnx_model.score(x.numpy()), expected, atol=1e-4)
    assert card["architecture"]["members"] == 2
    assert card["architecture"]["parameters"] == 2 * count_parameters(members[0])


@pytest.mark.parametrize("normalisation", ["pcen", "pcen-stream"])
def test_pcen_keeps_a_steady_level_steady_and_a_faint_call_as_visible_as_a_loud_one(
    normalisation,
):
    """The smoother's weights sum to one (a steady band maps to one value), and dividing by the
    band's own level makes the image nearly independent of gain: what decides is the shape."""
    fe = FrontEnd(FrontEndConfig(normalisation=normalisation))
    steady = torch.log(torch.full((1, fe.cfg.n_mels, fe.cfg.n_frames), 1e-6))
    image = fe.normalise(steady)
    assert image.shape == (1, 1, fe.cfg.n_mels, fe.cfg.image_frames)
    torch.testing.assert_close(image, torch.full_like(image, float(image[0, 0, 0, 0])))
    rng = np.random.default_rng(3)
    call = synth.upcall(rng)
    window = synth.noise(rng, WINDOW_SAMPLES)
    window[1000 : 1000 + len(call)] += 3 * call
    loud, faint = (torch.from_numpy((g * window)[None].astype(np.float32)) for g in (0.5, 0.005))
    a, b = fe(loud), fe(faint)
    assert float((a - b).abs().max()) < 0.2 * float(a.abs().max())  # 40 dB apart: within 20 %
    with pytest.raises(ValueError, match="unknown normalisation"):
        FrontEnd(FrontEndConfig(normalisation="median"))


def test_a_stream_models_windows_read_one_shared_map():
    """pcen-stream: every output of the per-window network depends on frames inside the window
    only, so the stream half's logit of each window is the per-window model's (in torch, to
    rounding), wherever the window starts."""
    from train.net import StreamModel

    torch.manual_seed(0)
    model = UpcallDetector(FrontEndConfig(hop_length=50, normalisation="pcen-stream")).eval()
    x = torch.from_numpy(np.tile(synthetic_windows(1)[0], 4)[None] * 0.3)
    windows = torch.stack([x[0, k * 1000 : k * 1000 + WINDOW_SAMPLES] for k in range(13)])
    with torch.no_grad():
        stream, single = StreamModel(model, 1000)(x)[0], model(windows)
    torch.testing.assert_close(stream, single, atol=1e-5, rtol=0)


def test_a_stream_model_is_shown_its_calls_where_it_can_see_them():
    """pcen-stream: a window's first 0.475 s only feed the smoother, so the sampler keeps at
    least half of each call after them (a call there would be a positive the model cannot see)."""
    rng = np.random.default_rng(2)
    audio = 1e-4 * rng.standard_normal(120 * 2000)
    calls = [(t, t + 0.4) for t in (10.0, 40.0, 70.0, 100.0)]
    t = np.arange(800) / 2000
    for s, _ in calls:  # a loud 150 Hz tone where each annotated call is
        audio[int(s * 2000) : int(s * 2000) + 800] += 0.5 * np.sin(2 * np.pi * 150 * t)
    sampler = WindowSampler([Recording("r.wav", audio.astype(np.float32), calls)], seed=1)
    sampler.unseen = FrontEndConfig(hop_length=50, normalisation="pcen-stream").unseen_samples
    assert sampler.unseen == 950  # 19 frames of 25 ms before the first one normalised
    for _ in range(40):
        window = sampler.real_positive().astype(np.float64)
        before, after = np.sum(window[:950] ** 2), np.sum(window[950:] ** 2)
        assert after >= 0.8 * before  # half the call or more where it is seen (+-8 % stretch)
        assert np.abs(window).max() > 0.3  # the call is in the window


def test_reviewed_probable_calls_are_kept_out_of_the_negatives_when_asked():
    """Labels are incomplete: a call nobody marked is drawn as a call-free window and, scoring
    high, mined as a hard negative, which teaches the model to miss faint calls. With review
    'exclude' no negative window (drawn or mined) comes near a reviewed probable call; with
    'calls' it is trained on as a call; 'off' keeps the old sampler."""
    rng = np.random.default_rng(4)
    audio = (1e-3 * rng.standard_normal(60 * 2000)).astype(np.float32)
    rec = Recording("r.wav", audio, [(10.0, 11.0)], probable=[(30.0, 31.0), (45.0, 46.5)])
    margin = CALL_MARGIN_S * 2000

    def near_probable(starts: np.ndarray) -> bool:
        return any(
            ((starts > s * 2000 - margin - 4000) & (starts < e * 2000 + margin)).any()
            for s, e in rec.probable
        )

    for use in ("off", "exclude", "calls"):
        sampler = WindowSampler([rec], mix=Mix(review=use), seed=0)
        starts = np.array([st for _, st in sampler.negatives])
        hard, _ = mine_hard_negatives(UpcallDetector(), sampler, 10_000, "cpu")
        mined = np.array([st for _, st in hard])
        assert near_probable(starts) == near_probable(mined) == (use == "off")
        spans = [(s, e) for _, s, e in sampler.calls]
        assert spans == ([(10.0, 11.0)] + rec.probable if use == "calls" else [(10.0, 11.0)])
    with pytest.raises(ValueError, match="review"):
        WindowSampler([rec], mix=Mix(review="positive"), seed=0)


def test_distillation_targets_mix_the_label_and_the_teacher():
    labels = np.array([1.0, 0.0, 1.0], dtype=np.float32)
    teacher = np.array([0.2, 0.9, 1.0])
    np.testing.assert_allclose(soft_targets(labels, teacher, 0.0), labels)
    np.testing.assert_allclose(soft_targets(labels, teacher, 1.0), teacher)
    np.testing.assert_allclose(soft_targets(labels, teacher, 0.25), [0.8, 0.225, 1.0])
    assert soft_targets(labels, teacher, 0.5).dtype == np.float32


def test_a_student_learns_its_teachers_scores_not_the_labels(tmp_path):
    """With the whole target from a teacher that calls every window a call, the student learns
    that, whatever the labels say: the teacher is really in the loss."""
    rng = np.random.default_rng(3)
    audio, calls = synth.synthetic_recording(rng, 120, 8, n_lookalikes=3)
    recs = [Recording(tmp_path / "r.wav", audio, calls)]
    cfg = TrainConfig(steps=30, batch_size=32, mine_every=0, seed=1)
    held_x, held_y = WindowSampler(recs, seed=99).batch(64)

    def mean_probability(model) -> float:
        model.eval()
        with torch.no_grad():
            return torch.sigmoid(model(torch.from_numpy(held_x[held_y == 0]))).mean().item()

    plain = train(WindowSampler(recs, seed=1), cfg, log=lambda s: None)
    student = train(
        WindowSampler(recs, seed=1),
        cfg,
        log=lambda s: None,
        teacher=lambda x: np.ones(len(x)),
        distil_weight=1.0,
    )
    assert mean_probability(student) > 0.8 > mean_probability(plain)
