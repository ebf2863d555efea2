"""Export the trained detector to ONNX (front end inside the graph) and write its model card."""

import datetime as dt
import json
import subprocess
import warnings
from pathlib import Path

import torch

from detector import __version__
from detector.constants import DEFAULT_HOP_SECONDS, SAMPLE_RATE, WINDOW_SAMPLES
from detector.model import card_path, sha256_file
from train.net import (
    FramesModel,
    HeadModel,
    ProbabilityModel,
    StreamModel,
    UpcallDetector,
    count_parameters,
    flops_per_stream_second,
    flops_per_window,
    frame_flops,
)

OPSET = 17
STREAM_HOP = int(DEFAULT_HOP_SECONDS * SAMPLE_RATE)  # the window hop a stream half scores at


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, names: tuple, axes: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), warnings.catch_warnings():
        # We keep the TorchScript exporter on purpose: it gives the small, plain graph the tests
        # hold to the contract, while the torch.export one needs onnxscript and writes another
        # graph. torch (2.9+) warns on every such call, and its own exporter calls a deprecated
        # helper; neither asks anything of us, so exactly those two are silenced, here only.
        warnings.filterwarnings(
            "ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning
        )
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        torch.onnx.export(
            module.eval(),
            (example,),
            str(path),
            input_names=[names[0]],
            output_names=[names[1]],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def streaming_paths(path: Path) -> tuple[Path, Path]:
    """upcall.onnx -> (upcall.frames.onnx, upcall.head.onnx)."""
    return path.with_suffix(".frames.onnx"), path.with_suffix(".head.onnx")


def stream_path(path: Path) -> Path:
    """upcall.onnx -> upcall.stream.onnx (pcen-stream models only)."""
    return path.with_suffix(".stream.onnx")


def export_onnx(detector: UpcallDetector, path: Path) -> None:
    """Write the contract, `samples` float32 [batch, 4000] -> `probability` float32 [batch],
    and the same model cut in two for streaming (each STFT frame computed once, not once per
    overlapping window): `samples` [1, n] -> `logmel` [1, n_mels, frames], and
    `logmel` [batch, n_mels, frames_per_window] -> `probability` [batch]."""
    cfg = detector.frontend.cfg
    _export(
        ProbabilityModel(detector),
        torch.zeros(2, WINDOW_SAMPLES),
        path,
        ("samples", "probability"),
        {"samples": {0: "batch"}, "probability": {0: "batch"}},
    )
    frames_path, head_path = streaming_paths(path)
    _export(
        FramesModel(detector),
        torch.zeros(1, WINDOW_SAMPLES),
        frames_path,
        ("samples", "logmel"),
        {"samples": {1: "n"}, "logmel": {2: "frames"}},
    )
    _export(
        HeadModel(detector),
        torch.zeros(2, cfg.n_mels, cfg.n_frames),
        head_path,
        ("logmel", "probability"),
        {"logmel": {0: "batch"}, "probability": {0: "batch"}},
    )
    if cfg.stream:
        _export(
            StreamModel(detector, STREAM_HOP),
            torch.zeros(1, WINDOW_SAMPLES + 2 * STREAM_HOP),
            stream_path(path),
            ("samples", "logit"),
            {"samples": {1: "n"}, "logit": {1: "windows"}},
        )


def _stream_fields(model_path: Path, detector: UpcallDetector) -> dict:
    """The card's entries for the stream half, when the model has one."""
    if not detector.frontend.cfg.stream:
        return {}
    return {
        "stream": stream_path(model_path).name,
        "stream_sha256": sha256_file(stream_path(model_path)),
        "stream_window_hop": STREAM_HOP,
    }


def code_version() -> str:
    """Package version plus the git commit when run from a checkout (dirty marked)."""
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            capture_output=True,
            text=True,
            cwd=Path(__file__).parent,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def write_card(model_path: Path, detector: UpcallDetector, **fields: object) -> dict:
    """model.json beside the model: what it is, how it was made, how well it did."""
    frames_path, head_path = streaming_paths(model_path)
    nets = detector.member_nets()
    card = {
        "name": fields.pop("name", model_path.stem),
        "created": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "code_version": code_version(),
        "sha256": sha256_file(model_path),
        "input": {"name": "samples", "shape": ["batch", WINDOW_SAMPLES], "dtype": "float32"},
        "output": {"name": "probability", "shape": ["batch"], "dtype": "float32"},
        "sample_rate": SAMPLE_RATE,
        "window_samples": WINDOW_SAMPLES,
        "frontend": detector.frontend.cfg.to_dict(),
        "streaming": {
            "frames": frames_path.name,
            "frames_sha256": sha256_file(frames_path),
            "head": head_path.name,
            "head_sha256": sha256_file(head_path),
            "frame_hop": detector.frontend.cfg.hop_length,
            "n_fft": detector.frontend.cfg.n_fft,
            "frames_per_window": detector.frontend.cfg.n_frames,
            **_stream_fields(model_path, detector),
        },
        "architecture": {
            "channels": [b[0].out_channels for b in nets[0].features],
            "time_pool": nets[0].time_pool,
            "members": len(nets),
            "parameters": count_parameters(detector),
            "flops_per_window": flops_per_window(detector),
            "frame_flops": frame_flops(detector),
            **(
                {"stream_flops_per_second": round(flops_per_stream_second(detector, STREAM_HOP))}
                if detector.frontend.cfg.stream
                else {}
            ),
        },
        **fields,
    }
    card_path(model_path).write_text(json.dumps(card, indent=2) + "\n")
    return card
