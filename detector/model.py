"""Load the ONNX up-call model and its card, pick an execution provider, score batches of windows.

The contract (written by train/export.py): input `samples` float32 [batch, 4000] in [-1, 1] at
2 kHz, output `probability` float32 [batch]. The card (`model.json` beside the model) carries the
suggested threshold and everything needed to know what the model is.
"""

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from detector.errors import WhaleError

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODELS_DIR / "upcall.onnx"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def card_path(model_path: Path) -> Path:
    """The card lives beside the model: upcall.onnx -> upcall.json."""
    return model_path.with_suffix(".json")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_card(model_path: Path) -> dict:
    """The model card, or an empty one when absent (a bare ONNX file works, without defaults)."""
    path = card_path(model_path)
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise WhaleError(f"corrupt model card {path}: {e}") from None
    if not isinstance(card, dict):
        raise WhaleError(f"corrupt model card {path}: not a JSON object")
    return card


def choose_providers(provider: str, available: list[str]) -> list[str]:
    """auto: CUDA when onnxruntime offers it, else CPU. An explicit choice must be available."""
    if provider == "auto":
        wanted = [PROVIDERS["cuda"]] if PROVIDERS["cuda"] in available else []
        return wanted + [PROVIDERS["cpu"]]
    if provider not in PROVIDERS:
        raise WhaleError(f"unknown provider {provider!r}; choose auto, cpu or cuda")
    if PROVIDERS[provider] not in available:
        raise WhaleError(
            f"provider {provider!r} is not available in this onnxruntime "
            f"(has: {', '.join(available)}); install the gpu extra for CUDA"
        )
    return [PROVIDERS[provider]] + ([PROVIDERS["cpu"]] if provider != "cpu" else [])


@dataclass
class Model:
    """An ONNX session plus what the daemon reports about it."""

    path: Path
    card: dict
    sha256: str
    provider: str
    session: object = field(repr=False)
    input_name: str = "samples"
    frames_session: object = field(default=None, repr=False)  # streaming halves, when shipped
    head_session: object = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return str(self.card.get("name", self.path.stem))

    @property
    def threshold(self) -> float | None:
        value = self.card.get("threshold")
        return float(value) if value is not None else None

    @property
    def identity(self) -> dict:
        return {"name": self.name, "sha256": self.sha256}

    @property
    def streaming(self) -> dict | None:
        """Frame hop, n_fft and frames per window when the model can share STFT frames."""
        return self.card.get("streaming") if self.frames_session is not None else None

    def log_mel(self, samples: np.ndarray) -> np.ndarray:
        """1-D float32 samples (>= n_fft) -> log-mel frames [n_mels, frames]."""
        x = np.ascontiguousarray(samples, dtype=np.float32)[None, :]
        return self.frames_session.run(None, {"samples": x})[0][0]

    def score_log_mel(self, windows: np.ndarray) -> np.ndarray:
        """Log-mel windows [batch, n_mels, frames_per_window] -> probabilities [batch]."""
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        return self._checked(self.head_session.run(None, {"logmel": batch})[0], len(batch))

    def score(self, windows: np.ndarray) -> np.ndarray:
        """[batch, 4000] float32 -> probabilities [batch]."""
        if len(windows) == 0:
            return np.zeros(0, dtype=np.float32)
        batch = np.ascontiguousarray(windows, dtype=np.float32)
        return self._checked(self.session.run(None, {self.input_name: batch})[0], len(batch))

    def _checked(self, output: np.ndarray, n: int) -> np.ndarray:
        """The contract, checked on every call (cheap next to the model): one probability per
        window. A model exported with two softmax outputs, logits or NaN would otherwise merge
        into wrong events, or none, without a word."""
        scores = output.reshape(-1)
        if scores.shape != (n,):
            raise WhaleError(
                f"model {self.path} returned shape {list(output.shape)} for {n} windows, not "
                f"one up-call probability per window ([batch])"
            )
        if not np.all((scores >= 0) & (scores <= 1)):  # NaN fails both comparisons
            bad = scores[~((scores >= 0) & (scores <= 1))][0]
            raise WhaleError(f"model {self.path} returned {bad}, not a probability in [0, 1]")
        return scores


def load_model(path: Path | str | None = None, provider: str = "auto", threads: int = 0) -> Model:
    """Open the model with onnxruntime; every failure is a one-line WhaleError naming the file."""
    import onnxruntime as ort

    path = Path(path) if path else DEFAULT_MODEL
    if not path.is_file():
        raise WhaleError(f"model not found: {path}")
    card = load_card(path)
    if card.get("sample_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise WhaleError(f"model {path} expects {card['sample_rate']} Hz, not {SAMPLE_RATE} Hz")
    sha256 = sha256_file(path)
    _check_sha(path, sha256, card.get("sha256"), card_path(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = choose_providers(provider, ort.get_available_providers())
    session = _session(path, options, providers)
    frames_session = head_session = None
    streaming = card.get("streaming")
    if isinstance(streaming, dict):
        halves = []
        for half in ("frames", "head"):
            half_path = path.parent / str(streaming.get(half))
            if half_path.is_file():
                _check_sha(
                    half_path,
                    sha256_file(half_path),
                    streaming.get(f"{half}_sha256"),
                    card_path(path),
                )
            halves.append(_session(half_path, options, providers))
        frames_session, head_session = halves
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].shape[-1] != WINDOW_SAMPLES:
        raise WhaleError(f"model {path} does not take [batch, {WINDOW_SAMPLES}] samples")
    model = Model(
        path=path,
        card=card,
        sha256=sha256,
        provider=session.get_providers()[0],
        session=session,
        input_name=inputs[0].name,
        frames_session=frames_session,
        head_session=head_session,
    )
    # one tiny run now, so a model outside the contract fails at start-up, not mid-stream
    try:
        model.score(np.zeros((2, WINDOW_SAMPLES), dtype=np.float32))
    except WhaleError:
        raise
    except Exception as e:  # onnxruntime raises several private exception types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WhaleError(f"model {path} fails on a batch of 2 windows: {first_line}") from None
    return model


def _check_sha(path: Path, actual: str, expected: object, card: Path) -> None:
    """A file that is not the one its card describes (a half-copied update, a bit flip, a model
    swapped under an old card) could still load and then score with the wrong threshold or
    the wrong half: refuse it rather than publish its events under the card's name."""
    if expected is not None and actual != expected:
        raise WhaleError(
            f"model file {path} does not match its card {card} (sha256 {actual[:12]}, "
            f"card says {str(expected)[:12]}): reinstall or re-export the model"
        )


def _session(path: Path, options: object, providers: list[str]) -> object:
    import onnxruntime as ort

    if not path.is_file():
        raise WhaleError(f"model file not found: {path}")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises several private exception types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WhaleError(f"cannot load model {path}: {first_line}") from None
