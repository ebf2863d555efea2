"""Shared fixtures: a tiny up-call model trained by the project's own training code.

No trained model ships yet, so the daemon's tests train one in well under a minute on synthetic
recordings (cached in pytest's cache directory, keyed by the training code, so reruns are quick).
It is good enough to exercise the plumbing; accuracy tests need the real, shipped model.
"""

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from detector.model import DEFAULT_MODEL, card_path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TINY_RECIPE = {"seed": 7, "recordings": 2, "seconds": 120, "calls": 8, "lookalikes": 4}
TINY_STEPS, TINY_BATCH, TINY_THRESHOLD = 80, 64, 0.5
# Point the accuracy tests at a candidate model before it ships: WHALE_LISTEN_TEST_MODEL=path.onnx
CANDIDATE = Path(os.environ.get("WHALE_LISTEN_TEST_MODEL", DEFAULT_MODEL))


def _recipe_key() -> str:
    """Changes whenever the training code or the recipe does: then the cached model is stale."""
    digest = hashlib.sha256(repr((TINY_RECIPE, TINY_STEPS, TINY_BATCH)).encode())
    for path in sorted((REPO / "train").glob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _train_tiny(out: Path, frontend: dict | None = None) -> None:
    torch = pytest.importorskip("torch", reason="training the test model needs torch")
    pytest.importorskip("librosa", reason="training the test model needs librosa")
    from train import synth
    from train.data import Recording
    from train.export import export_onnx, write_card
    from train.frontend import FrontEndConfig
    from train.sampler import WindowSampler
    from train.train import TrainConfig, train

    torch.set_num_threads(2)
    rng = np.random.default_rng(TINY_RECIPE["seed"])
    recordings = []
    for k in range(TINY_RECIPE["recordings"]):
        audio, calls = synth.synthetic_recording(
            rng,
            TINY_RECIPE["seconds"],
            TINY_RECIPE["calls"],
            n_lookalikes=TINY_RECIPE["lookalikes"],
        )
        recordings.append(Recording(out / f"train{k}.wav", audio, calls))
    sampler = WindowSampler(recordings, seed=TINY_RECIPE["seed"])
    cfg = TrainConfig(steps=TINY_STEPS, batch_size=TINY_BATCH, warmup=10, mine_every=0)
    detector = train(sampler, cfg, FrontEndConfig(**(frontend or {})), log=lambda _: None)
    model_path = out / "tiny.onnx"
    export_onnx(detector, model_path)
    write_card(model_path, detector, name="tiny-test-model", threshold=TINY_THRESHOLD)


@pytest.fixture(scope="session")
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model trained here (card threshold 0.5): for plumbing tests, not for accuracy."""
    return _cached_tiny(request, tmp_path_factory, "whale-listen-tiny-model")


@pytest.fixture(scope="session")
def tiny_stream_model(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The same, of the pcen-stream recipe (its windows share one map; it has a stream half)."""
    frontend = {"hop_length": 50, "normalisation": "pcen-stream"}
    return _cached_tiny(request, tmp_path_factory, "whale-listen-tiny-stream-model", frontend)


def _cached_tiny(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    name: str,
    frontend: dict | None = None,
) -> Path:
    cache_plugin = getattr(request.config, "cache", None)  # absent with -p no:cacheprovider
    if cache_plugin is None:
        root = tmp_path_factory.mktemp(f"{name}-cache")
    else:
        root = Path(cache_plugin.mkdir(name))
    cache = root / _recipe_key()
    for stale in root.iterdir():  # models of older training code or recipes
        if stale != cache:
            shutil.rmtree(stale, ignore_errors=True)
    model_path = cache / "tiny.onnx"
    if not (model_path.exists() and card_path(model_path).exists()):
        build = tmp_path_factory.mktemp(name)
        _train_tiny(build, frontend)
        cache.mkdir(parents=True, exist_ok=True)
        for half in build.glob("tiny.*.onnx"):  # the streaming halves the card names
            shutil.copy(half, cache / half.name)
        shutil.copy(build / "tiny.onnx", cache / "tiny.onnx.part")
        shutil.copy(card_path(build / "tiny.onnx"), card_path(model_path))
        (cache / "tiny.onnx.part").rename(model_path)  # whole, or not there at all
    return model_path


@pytest.fixture(scope="session")
def shipped_model(tiny_model: Path) -> Path:
    """The shipped model (detector/models/upcall.onnx) once it exists, else the tiny one."""
    return CANDIDATE if CANDIDATE.exists() else tiny_model


@pytest.fixture(scope="session")
def real_model() -> Path:
    """The shipped model only: accuracy promises are about it, not the test model."""
    if not CANDIDATE.exists():
        pytest.skip(f"no shipped model yet ({CANDIDATE} is absent)")
    return CANDIDATE


@pytest.fixture(scope="session")
def long_stream() -> np.ndarray:
    """10 minutes of synthetic ocean with 60 up-calls and 20 look-alikes from -5 to 15 dB SNR,
    and an odd length (not whole windows, hops or STFT frames): for the stream scorers' tests."""
    from train import synth

    rng = np.random.default_rng(16)
    audio, _ = synth.synthetic_recording(
        rng, 600, 60, snr_db=(-5, 15), n_lookalikes=20, min_gap_s=3
    )
    return audio[:-777]
