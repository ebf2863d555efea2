"""Adapt a shipped model to a new site without labels.

A buoy moved to a new place hears new noise (ships, other species, another seabed) and the model
raises false alarms on sounds it never saw. The new site's call-free audio is all it takes: the
known calls (the training recordings' annotated calls and synthetic ones) are mixed into it, so
the network learns the new noise as background while it keeps seeing calls, and the presets'
thresholds are re-chosen so that their false-alarm rates hold on a part of the site's audio that
fine-tuning never saw (the last third of each file).

The model comes from its ONNX file: batch norm is folded into the convolutions there, so the
rebuilt network keeps each batch norm as a fixed identity (frozen during fine-tuning) and the
rebuilt model is checked against the ONNX output before anything is trained.
"""

from pathlib import Path

import numpy as np
import torch
from torch import nn

from detector.errors import WhaleError
from train.crossval import GRID, pooled_row, preset_fields
from train.data import Clip, Recording
from train.evaluate import Scored, score_audio
from train.frontend import FrontEndConfig
from train.net import UpcallDetector
from train.sampler import WindowSampler
from train.train import TrainConfig, train

CALIBRATION_SHARE = 1 / 3  # the last third of each site file: never trained on, sets thresholds
SITE_SHARE = 0.8  # share of plain negatives (and of the noise under calls) from the new site
RULE_LIMITS = {"balanced": 2.0, "strict": 0.5}  # false alarms/h the presets promise


def detector_from_onnx(path: Path, card: dict) -> UpcallDetector:
    """The torch detector behind an exported single-network model (weights read from the
    graph's initializers; batch norm folded into each convolution's weight and bias)."""
    import onnx
    from onnx import numpy_helper

    arch = card.get("architecture") or {}
    if arch.get("members", 1) != 1:
        raise WhaleError(f"{path}: an ensemble of {arch['members']} nets; adapt takes one")
    try:
        cfg = FrontEndConfig(**card["frontend"])
        detector = UpcallDetector(cfg, tuple(arch["channels"]), arch["time_pool"])
        graph = onnx.load(str(path)).graph
    except (KeyError, TypeError, ValueError, OSError) as e:
        raise WhaleError(f"{path}: cannot rebuild the network from its card ({e!r})") from None
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [
        n
        for n in graph.node
        if n.op_type == "Conv" and not n.input[1].startswith("detector.frontend")
    ]
    blocks = list(detector.net.features)
    if len(convs) != len(blocks):
        raise WhaleError(f"{path}: {len(convs)} convolutions in the graph, card says {len(blocks)}")
    state = detector.state_dict()
    for node, block in zip(convs, blocks, strict=True):
        conv, norm = block[0], block[1]
        conv.weight.data = torch.from_numpy(weights[node.input[1]].copy())
        norm.weight.data.fill_(1.0)
        norm.bias.data = torch.from_numpy(weights[node.input[2]].copy())
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
    for name, value in weights.items():
        key = name.removeprefix("detector.")
        if key.startswith("net.head.") and key in state:
            state[key].copy_(torch.from_numpy(value.copy()))
    check_rebuilt(detector, path)
    return detector.eval()


def check_rebuilt(detector: UpcallDetector, path: Path) -> None:
    """The rebuilt torch model must score as the ONNX file does, or adapting it is meaningless."""
    from detector.model import load_model

    rng = np.random.default_rng(0)
    windows = (0.1 * rng.standard_normal((8, detector.frontend.cfg.window_samples))).astype(
        np.float32
    )
    expected = load_model(path, provider="cpu", threads=1).score(windows)
    with torch.no_grad():
        got = torch.sigmoid(detector.eval()(torch.from_numpy(windows))).numpy()
    if not np.allclose(got, expected, atol=1e-4):
        raise WhaleError(f"{path}: the rebuilt network does not match the ONNX model")


def freeze_batch_norm(model: nn.Module) -> None:
    """Keep folded batch norms fixed: identity maps whose statistics must not move."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
            for p in m.parameters():
                p.requires_grad_(m.weight is not p)


def split_site(site: list[Recording]) -> tuple[list[Recording], list[Recording]]:
    """Each site file cut in time: the first part to fine-tune on, the rest to calibrate."""
    tune, calibrate = [], []
    for rec in site:
        cut = int(len(rec.audio) * (1 - CALIBRATION_SHARE))
        tune.append(Recording(rec.path, rec.audio[:cut], []))
        calibrate.append(Recording(rec.path, rec.audio[cut:], []))
    return tune, calibrate


class SiteSampler(WindowSampler):
    """Training windows whose noise comes mostly from the new site."""

    def __init__(
        self, site: list[Recording], known: list[Recording], clips: list[Clip], seed: int
    ) -> None:
        super().__init__(site + known, clips, seed=seed)
        ids = {id(r) for r in site}
        self.site_negatives = [(i, s) for i, s in self.negatives if id(self.recordings[i]) in ids]

    def real_negative(self) -> np.ndarray:
        if self.site_negatives and self.rng.random() < SITE_SHARE:
            i, start = self.site_negatives[self.rng.integers(len(self.site_negatives))]
            start += int(self.rng.integers(-250, 250))
            return self._excerpt(self.recordings[i].audio, start, self._stretch())
        return super().real_negative()


def fine_tune(
    detector: UpcallDetector,
    site: list[Recording],
    known: list[Recording],
    clips: list[Clip],
    steps: int,
    seed: int = 0,
    log=print,
) -> UpcallDetector:
    """A short, low-rate run from the shipped weights, batch norms frozen."""
    sampler = SiteSampler(site, known, clips, seed)
    cfg = TrainConfig(steps=steps, lr=3e-4, warmup=min(20, steps), mine_every=100, seed=seed)
    return train(sampler, cfg, init=detector, freeze=freeze_batch_norm, log=log).cpu()


def site_rows(score, recordings: list[Recording]) -> list[dict]:
    """False alarms per hour on call-free site audio over the operating-point grid."""
    scored = [Scored(r, *score_audio(score, r.audio)) for r in recordings]
    return [pooled_row([], scored, t) for t in GRID]


def rechoose_presets(presets: dict, calibration: list[dict]) -> dict:
    """Each preset keeps its threshold unless the site needs a higher one to hold its
    false-alarm promise (balanced <= 2/h, strict <= 0.5/h, high: its cross-validated rate);
    its recall and precision stay the cross-validated ones, its false alarms are the site's."""
    rows = sorted(calibration, key=lambda r: r["threshold"])
    chosen = {}
    for name, preset in presets.items():
        limit = RULE_LIMITS.get(name, preset.get("background_false_alarms_per_hour") or 0.0)
        ok = [
            r
            for r in rows
            if r["threshold"] >= preset["threshold"]
            and r["background_false_alarms_per_hour"] <= limit
        ]
        row = ok[0] if ok else rows[-1]
        fields = dict(preset)
        fields["threshold"] = row["threshold"]
        fields["site_false_alarms_per_hour"] = row["background_false_alarms_per_hour"]
        fields["rule"] = f"{preset.get('rule', name)}; raised until the site keeps <= {limit}/h"
        chosen[name] = fields
    return chosen


def held_out(score, annotated: list[Recording], background: list[Recording]) -> tuple[list, list]:
    """The held-out recordings scored once by one model; figures at any threshold re-merge them."""
    ann = [Scored(r, *score_audio(score, r.audio)) for r in annotated]
    return ann, [Scored(r, *score_audio(score, r.audio)) for r in background]


def heldout_figures(scored: tuple[list, list], t: float) -> dict:
    """Recall on held-out annotated recordings and false alarms/h on held-out site audio."""
    return preset_fields(pooled_row(*scored, t))
