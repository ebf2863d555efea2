"""Export the trained detector to ONNX (front end inside the graph) and write its model card."""

import datetime as dt
import json
import subprocess
from pathlib import Path

import torch

from detector import __version__
from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from detector.model import card_path, sha256_file
from train.net import ProbabilityModel, UpcallDetector, count_parameters, flops_per_window

OPSET = 17


def export_onnx(detector: UpcallDetector, path: Path) -> None:
    """Write the contract: `samples` float32 [batch, 4000] -> `probability` float32 [batch]."""
    model = ProbabilityModel(detector).eval()
    example = torch.zeros(2, WINDOW_SAMPLES)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["samples"],
            output_names=["probability"],
            dynamic_axes={"samples": {0: "batch"}, "probability": {0: "batch"}},
            opset_version=OPSET,
            dynamo=False,  # the TorchScript exporter gives a small, plain graph for this model
        )


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
        "architecture": {
            "channels": [b[0].out_channels for b in detector.net.features],
            "parameters": count_parameters(detector),
            "flops_per_window": flops_per_window(detector),
        },
        **fields,
    }
    card_path(model_path).write_text(json.dumps(card, indent=2) + "\n")
    return card
