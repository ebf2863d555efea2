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

from detector.card import check_card
from detector.constants import WINDOW_SAMPLES
from detector.errors import ConfigError, WhaleError

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEFAULT_MODEL = MODELS_DIR / "upcall.onnx"
PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}


def card_path(model_path: Path) -> Path:
    """The card lives beside the model: upcall.onnx -> upcall.json."""
    return model_path.with_suffix(".json")


def sha256_file(path: Path) -> str:
    """The file's sha256; an unreadable file (permissions, I/O) is a ConfigError naming it."""
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as e:
        raise ConfigError(f"cannot read model file {path}: {e.strerror or e}") from None
    return digest.hexdigest()


def load_card(model_path: Path) -> dict:
    """The model card, or an empty one when absent (a bare ONNX file works, without defaults)."""
    path = card_path(model_path)
    if not path.exists():
        return {}
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as e:
        raise ConfigError(f"corrupt model card {path}: {e}") from None
    if not isinstance(card, dict):
        raise ConfigError(f"corrupt model card {path}: not a JSON object")
    return check_card(card, path)


def choose_providers(provider: str, available: list[str]) -> list[str]:
    """auto: CUDA when onnxruntime offers it, else CPU. An explicit choice must be available."""
    if provider == "auto":
        wanted = [PROVIDERS["cuda"]] if PROVIDERS["cuda"] in available else []
        return wanted + [PROVIDERS["cpu"]]
    if provider not in PROVIDERS:
        raise ConfigError(f"unknown provider {provider!r}; choose auto, cpu or cuda")
    if PROVIDERS[provider] not in available:
        raise ConfigError(
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
    stream_session: object = field(default=None, repr=False)  # a pcen-stream model's map

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

    def stream_logits(self, samples: np.ndarray) -> np.ndarray:
        """1-D float32 samples (whole windows at the stream hop) -> every window's logit."""
        x = np.ascontiguousarray(samples, dtype=np.float32)[None, :]
        logits = self.stream_session.run(None, {"samples": x})[0].reshape(-1)
        if np.isnan(logits).any():
            raise WhaleError(f"model {self.path} returned NaN from its stream half")
        return logits

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
    """Open the model with onnxruntime; every failure is a one-line ConfigError naming the file
    (a model or card that is wrong stays wrong however often the service restarts)."""
    import onnxruntime as ort

    path = Path(path) if path else DEFAULT_MODEL
    if not path.is_file():
        raise ConfigError(f"model {'is a directory' if path.is_dir() else 'not found'}: {path}")
    card = load_card(path)
    sha256 = sha256_file(path)
    _check_sha(path, sha256, card.get("sha256"), card_path(path))
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    providers = choose_providers(provider, ort.get_available_providers())
    session = _session(path, options, providers)
    frames_session, head_session = _halves(path, card, options, providers)
    stream_session = _stream_half(path, card, options, providers) if frames_session else None
    inputs = session.get_inputs()
    if len(inputs) != 1 or inputs[0].shape[-1] != WINDOW_SAMPLES or len(inputs[0].shape) != 2:
        raise ConfigError(f"model {path} does not take [batch, {WINDOW_SAMPLES}] samples")
    _check_dynamic_batch(path, inputs[0].shape)
    model = Model(
        path=path,
        card=card,
        sha256=sha256,
        provider=session.get_providers()[0],
        session=session,
        input_name=inputs[0].name,
        frames_session=frames_session,
        head_session=head_session,
        stream_session=stream_session,
    )
    _try(model)
    return model


def _halves(path: Path, card: dict, options: object, providers: list[str]) -> tuple:
    """The streaming halves the card names, each checked against its sha256, or (None, None)."""
    streaming = card.get("streaming")
    if not isinstance(streaming, dict):
        return None, None
    halves = []
    for half, input_name in (("frames", "samples"), ("head", "logmel")):
        session = _half(path, streaming, half, input_name, options, providers)
        if half == "head":  # the frames half takes one stream, [1, samples], by design
            _check_dynamic_batch(path.parent / str(streaming[half]), session.get_inputs()[0].shape)
        halves.append(session)
    return tuple(halves)


def _stream_half(path: Path, card: dict, options: object, providers: list[str]) -> object:
    """The stream half the card names (pcen-stream models), or None."""
    if card["streaming"].get("stream") is None:
        return None
    return _half(path, card["streaming"], "stream", "samples", options, providers)


def _half(
    path: Path, streaming: dict, half: str, input_name: str, options: object, providers: list
) -> object:
    """One extra graph the card's `streaming` names, checked against its sha256 and input."""
    half_path = path.parent / str(streaming.get(half))
    if half_path.is_file():
        digest = sha256_file(half_path)
        _check_sha(half_path, digest, streaming.get(f"{half}_sha256"), card_path(path))
    session = _session(half_path, options, providers)
    names = [i.name for i in session.get_inputs()]
    if names != [input_name]:  # e.g. the card's two halves swapped
        raise ConfigError(
            f"model file {half_path} takes {names}, not [{input_name!r}]: it is not the "
            f"{half} half its card {card_path(path)} says it is"
        )
    return session


def _check_dynamic_batch(path: Path, shape: list) -> None:
    """A graph exported with a fixed batch passes a start-up test at that batch and then fails
    on the first longer or shorter call (batches vary: the last one of a replay is short)."""
    if shape and isinstance(shape[0], int):
        raise ConfigError(
            f"model {path} has a fixed batch of {shape[0]} window(s); the daemon needs a "
            f"dynamic batch axis: re-export it (train/export.py does)"
        )


def _try(model: Model) -> None:
    """One tiny run of every path now, so a model outside the contract fails at start-up,
    not mid-stream: the whole model, and the streaming halves when the card names them."""
    try:
        model.score(np.zeros((2, WINDOW_SAMPLES), dtype=np.float32))
        if model.frames_session is not None:
            spec = model.streaming
            frames = model.log_mel(np.zeros(WINDOW_SAMPLES, dtype=np.float32))
            if frames.ndim != 2 or frames.shape[1] != spec["frames_per_window"]:
                raise ConfigError(
                    f"model {model.path}: its frames half gives {list(frames.shape)} for one "
                    f"window, not [n_mels, {spec['frames_per_window']}] as the card says"
                )
            model.score_log_mel(np.stack([frames, frames]))
        if model.stream_session is not None:
            hop = int(model.streaming["stream_window_hop"])
            logits = model.stream_logits(np.zeros(WINDOW_SAMPLES + hop, dtype=np.float32))
            if logits.shape != (2,):
                raise ConfigError(
                    f"model {model.path}: its stream half gives {list(logits.shape)} logits "
                    f"for 2 windows"
                )
    except WhaleError as e:
        raise ConfigError(str(e)) from None
    except Exception as e:  # onnxruntime raises several private exception types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"model {model.path} fails on a batch of 2 windows: {first_line}") from e


def _check_sha(path: Path, actual: str, expected: object, card: Path) -> None:
    """A file that is not the one its card describes (a half-copied update, a bit flip, a model
    swapped under an old card) could still load and then score with the wrong threshold or
    the wrong half: refuse it rather than publish its events under the card's name."""
    if expected is not None and actual != expected:
        raise ConfigError(
            f"model file {path} does not match its card {card} (sha256 {actual[:12]}, "
            f"card says {str(expected)[:12]}): reinstall or re-export the model"
        )


def _session(path: Path, options: object, providers: list[str]) -> object:
    import onnxruntime as ort

    if not path.is_file():
        raise ConfigError(f"model file not found: {path}")
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:  # onnxruntime raises several private exception types
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"cannot load model {path}: {first_line}") from None
