"""The small up-call CNN and the exported model (front end + CNN + sigmoid).

An up-call is a shape (a rising curve) at a place (50-250 Hz). The convolutions find the shape;
pooling over time makes the answer independent of where in the window the call sits, while the
coarse frequency position survives into the classifier, so a sweep in the right band counts and
the Gulf's low tonals and moans do not.
"""

import copy

import torch
from torch import nn

from train.frontend import FrontEnd, FrontEndConfig

CHANNELS = (8, 16, 32, 32)
TIME_POOL = 2  # the first pooling's step in time; 4 halves the cost of every later layer
MAX_BLOCKS = 6  # conv blocks a recipe may ask for (6 halve the default 32 mel bands to 1)
MAX_WIDTH = 128  # channels per block a recipe may ask for


def pooled_size(n_blocks: int, time_pool: int, n_mels: int, n_frames: int) -> tuple[int, int]:
    """(bands, frames) of the last block's map: every block but the last pools 2 in frequency,
    the first `time_pool` in time and the others 2. A size of 0 is a net that cannot be built."""
    if n_blocks < 2:
        return n_mels, n_frames
    return n_mels // 2 ** (n_blocks - 1), n_frames // (time_pool * 2 ** (n_blocks - 2))


def conv_block(c_in: int, c_out: int, pool: tuple[int, int] | None) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
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
    ):
        super().__init__()
        self.time_pool = time_pool
        blocks, c_in = [], 1
        for i, c_out in enumerate(channels):
            last = i == len(channels) - 1
            pool = None if last else (2, time_pool) if i == 0 else (2, 2)
            blocks.append(conv_block(c_in, c_out, pool))
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
        self.net = UpcallNet(self.frontend.cfg.n_mels, channels, time_pool)

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


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def flops_per_window(model: UpcallDetector) -> int:
    """2 x multiply-adds of the DFT, mel product, convolutions and linear layers per window."""
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
    fe = model.frontend
    cfg = fe.cfg
    frames = cfg.n_frames
    flops += 2 * fe.dft.shape[0] * cfg.n_fft * frames  # DFT convolution
    flops += 2 * cfg.n_mels * fe.n_bins * frames  # mel product
    was_training = model.training
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, cfg.window_samples))
    model.train(was_training)
    for h in hooks:
        h.remove()
    return flops
