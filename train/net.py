"""The small up-call CNN and the exported model (front end + CNN + sigmoid).

An up-call is a shape (a rising curve) at a place (50-250 Hz). The convolutions find the shape;
pooling over time makes the answer independent of where in the window the call sits, while the
coarse frequency position survives into the classifier, so a sweep in the right band counts and
the Gulf's low tonals and moans do not.
"""

import copy

import numpy as np
import torch
from torch import nn

from train.frontend import FrontEnd, FrontEndConfig

CHANNELS = (8, 16, 32, 32)
TIME_POOL = 2  # the first pooling's step in time; 4 halves the cost of every later layer
MAX_BLOCKS = 6  # conv blocks a recipe may ask for (6 halve the default 32 mel bands to 1)
MAX_WIDTH = 128  # channels per block a recipe may ask for


def time_pools(n_blocks: int, time_pool: int, stream: bool = False) -> list[int]:
    """Time step of each block's pooling (the last block does not pool): the first
    `time_pool`, the others 2; a streaming net pools in time in its first two blocks only, so
    that its cells stay fine enough for a window hop to be a whole number of them."""
    pools = ([time_pool] + [2] * (n_blocks - 2))[: max(0, n_blocks - 1)]
    return [p if i < 2 or not stream else 1 for i, p in enumerate(pools)]


def pooled_size(
    n_blocks: int, time_pool: int, n_mels: int, n_frames: int, stream: bool = False
) -> tuple[int, int]:
    """(bands, frames) of the last block's map: every block but the last pools 2 in frequency,
    and in time as `time_pools` says; a streaming net's convolutions are valid in time (each
    loses a frame at both ends). A size of 0 or less is a net that cannot be built."""
    frames = n_frames
    for pool in [*time_pools(n_blocks, time_pool, stream), None]:
        frames -= 2 if stream else 0
        frames = frames // pool if pool else frames
    return n_mels // 2 ** (n_blocks - 1), frames


def conv_block(
    c_in: int, c_out: int, pool: tuple[int, int] | None, stream: bool = False
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=(1, 0) if stream else 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]
    if pool:
        layers.append(nn.MaxPool2d(pool))
    return nn.Sequential(*layers)


class UpcallNet(nn.Module):
    """Feature image [B, 1, n_mels, frames] -> logit [B]."""

    def __init__(
        self,
        n_mels: int,
        channels: tuple[int, ...] = CHANNELS,
        time_pool: int = TIME_POOL,
        dropout: float = 0.3,
        stream: bool = False,
    ):
        """stream: convolutions valid in time (no padding at a window's edges), so that each
        cell of the last map depends on the same frames in every window that holds it."""
        super().__init__()
        self.time_pool = time_pool
        self.stream = stream
        blocks, c_in = [], 1
        pools = time_pools(len(channels), time_pool, stream)
        for i, c_out in enumerate(channels):
            pool = (2, pools[i]) if i < len(pools) else None
            blocks.append(conv_block(c_in, c_out, pool, stream))
            c_in = c_out
        self.features = nn.Sequential(*blocks)
        n_freq, _ = pooled_size(len(channels), time_pool, n_mels, 0)
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(c_in * n_freq, 32),
            nn.ReLU(inplace=True),
            nn.Linear(32, 1),
        )

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        fmap = self.features(image)  # [B, C, F', T']
        pooled = fmap.amax(dim=3)  # over time only: keep coarse frequency position
        return self.head(pooled).squeeze(1)


class MeanLogit(nn.Module):
    """Several UpcallNets trained from different seeds, their logits averaged. Members agree on
    real calls and disagree on odd noise, so the mean keeps calls high and pulls down the one-off
    false alarms a single small net makes on sounds it never saw."""

    def __init__(self, members: list[UpcallNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(image) for m in self.members]).mean(dim=0)


class UpcallDetector(nn.Module):
    """Raw samples [B, 4000] -> logit [B]; the training-time model."""

    def __init__(
        self,
        cfg: FrontEndConfig | None = None,
        channels: tuple[int, ...] = CHANNELS,
        time_pool: int = TIME_POOL,
    ):
        super().__init__()
        self.frontend = FrontEnd(cfg)
        cfg = self.frontend.cfg
        self.net = UpcallNet(cfg.n_mels, channels, time_pool, stream=cfg.stream)

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.net(self.frontend(samples))

    def member_nets(self) -> list[UpcallNet]:
        return list(self.net.members) if isinstance(self.net, MeanLogit) else [self.net]


def combine(detectors: list[UpcallDetector]) -> UpcallDetector:
    """One detector whose net averages the members' logits; they must share one front end."""
    first = detectors[0]
    if len(detectors) == 1:
        return first
    configs = {d.frontend.cfg for d in detectors}
    if len(configs) != 1:
        raise ValueError("ensemble members need the same front end")
    nets = [copy.deepcopy(net) for d in detectors for net in d.member_nets()]
    ensemble = copy.deepcopy(first)
    ensemble.net = MeanLogit(nets)
    return ensemble.eval()


class ProbabilityModel(nn.Module):
    """The exported contract: raw float32 samples [batch, 4000] -> up-call probability [batch]."""

    def __init__(self, detector: UpcallDetector):
        super().__init__()
        self.detector = detector

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.detector(samples))


class FramesModel(nn.Module):
    """Streaming part 1: samples [1, n] -> log-mel frames [1, n_mels, frames] of a whole block."""

    def __init__(self, detector: UpcallDetector):
        super().__init__()
        self.frontend = detector.frontend

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        return self.frontend.log_mel(samples)


class HeadModel(nn.Module):
    """Streaming part 2: log-mel windows [batch, n_mels, frames] -> probability [batch]."""

    def __init__(self, detector: UpcallDetector):
        super().__init__()
        self.detector = detector

    def forward(self, logmel: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.detector.net(self.detector.frontend.normalise(logmel)))


class StreamModel(nn.Module):
    """Streaming part 3 (a "pcen-stream" model): samples [1, n] -> the logits [1, windows] of
    every window of the stream at a hop of `window_hop` samples. Its map is the per-window
    model's, computed once: window k's logit is the max over its cells, k * cells_per_hop on,
    then the same dense layers."""

    def __init__(self, detector: UpcallDetector, window_hop: int):
        super().__init__()
        self.detector = detector
        self.cells_per_window, self.cells_per_hop = stream_cells(detector, window_hop)
        self.dense = detector.net.head[2:]  # after Flatten and Dropout

    def forward(self, samples: torch.Tensor) -> torch.Tensor:
        fmap = self.detector.net.features(self.detector.frontend(samples))  # [1, C, F, cells]
        cells = fmap.flatten(1, 2)
        pooled = nn.functional.max_pool1d(cells, self.cells_per_window, self.cells_per_hop)
        return self.dense(pooled.transpose(1, 2)).squeeze(2)


def cell_samples(cfg: FrontEndConfig, n_blocks: int, time_pool: int) -> int:
    """Samples between the cells of a streaming net's last map: frame hop x time pooling."""
    return cfg.hop_length * int(np.prod(time_pools(n_blocks, time_pool, True)))


def stream_cells(detector: UpcallDetector, window_hop: int) -> tuple[int, int]:
    """(cells a window's max runs over, cells between windows) of a "pcen-stream" model; a
    ValueError when the window hop is not a whole number of cells."""
    cfg, net = detector.frontend.cfg, detector.net
    if not net.stream:
        raise ValueError("only a pcen-stream model has a stream map")
    n_blocks = len(net.features)
    step = cell_samples(cfg, n_blocks, net.time_pool)
    if window_hop % step:
        raise ValueError(f"a window hop of {window_hop} samples is not whole cells of {step}")
    _, cells = pooled_size(n_blocks, net.time_pool, cfg.n_mels, cfg.image_frames, True)
    return cells, window_hop // step


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_window(model: UpcallDetector) -> int:
    """2 x multiply-adds of the DFT, mel product, convolutions and linear layers per window."""
    return _counted_flops(model, model, model.frontend.cfg.window_samples)


def flops_per_stream_second(model: UpcallDetector, window_hop: int, seconds: int = 100) -> float:
    """The same count for the stream half (a pcen-stream model), per second of audio: every
    frame and conv cell once, the dense layers once per window."""
    samples = model.frontend.cfg.window_samples + seconds * model.frontend.cfg.sample_rate
    stream = StreamModel(model, window_hop)
    return _counted_flops(model, stream, samples) / seconds


def frame_flops(model: UpcallDetector) -> int:
    """2 x multiply-adds of one STFT frame: the DFT's kernels and the mel product."""
    fe = model.frontend
    return 2 * fe.dft.shape[0] * fe.cfg.n_fft + 2 * fe.cfg.n_mels * fe.n_bins


def _counted_flops(model: UpcallDetector, module: nn.Module, samples: int) -> int:
    """FLOPs of `module` (model or one of its exports) on `samples` samples, by hooks on its
    convolutions and linear layers, plus the front end's DFT and mel product."""
    flops = 0

    def conv_hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal flops
        kernel = mod.weight[0].numel()  # c_in * kh * kw
        flops += 2 * kernel * out.numel()

    def linear_hook(mod: nn.Module, inp: tuple, out: torch.Tensor) -> None:
        nonlocal flops
        flops += 2 * mod.in_features * out.numel()

    hooks = [
        m.register_forward_hook(conv_hook if isinstance(m, nn.Conv2d) else linear_hook)
        for m in model.modules()
        if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    cfg = model.frontend.cfg
    flops += frame_flops(model) * (1 + (samples - cfg.n_fft) // cfg.hop_length)
    was_training = model.training
    model.eval()
    with torch.no_grad():
        module(torch.zeros(1, samples))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return flops
