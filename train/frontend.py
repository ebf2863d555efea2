"""The spectrogram front end, written once in torch so it is exported inside the ONNX graph.

Training and serving then share one implementation: the daemon feeds raw samples and never
computes features itself. The STFT is a strided convolution with windowed DFT kernels for the
bins the mel filters use (the up-call band only), which exports to a plain ONNX Conv.
"""

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES


@dataclass(frozen=True)
class FrontEndConfig:
    """Parameters chosen on validation; written into the model card."""

    sample_rate: int = SAMPLE_RATE
    window_samples: int = WINDOW_SAMPLES
    n_fft: int = 256  # 128 ms frames: 7.8 Hz bins, sharp enough for a 100 Hz/s sweep
    hop_length: int = 40  # 20 ms
    n_mels: int = 32  # no empty filters over 48 FFT bins (128 bands over 129 bins leaves many)
    f_min: float = 30.0
    f_max: float = 400.0  # up-calls sweep 50-100 Hz -> 150-250 Hz; harmonics reach a bit higher
    log_floor: float = 1e-10
    # "contrast": log mel, each band's then each frame's mean over the window removed;
    # "pcen": per-channel energy normalisation (Lostanlen et al. 2019) over the window's frames;
    # "pcen-stream": PCEN over the last PCEN_MEMORY_S of frames only, and a CNN valid in time, so
    # that a window's score is a function of one map shared by the whole stream
    normalisation: str = "contrast"

    @property
    def n_frames(self) -> int:
        return 1 + (self.window_samples - self.n_fft) // self.hop_length

    @property
    def stream(self) -> bool:
        return self.normalisation == "pcen-stream"

    @property
    def pcen_taps(self) -> int:
        """Frames of the finite smoother ("pcen-stream"): the newest and those before it."""
        return max(1, round(PCEN_MEMORY_S * self.sample_rate / self.hop_length))

    @property
    def unseen_samples(self) -> int:
        """Samples at a window's start that no output depends on alone: the smoother's memory
        before a pcen-stream model's first frame; a call placed there cannot be seen."""
        return (self.pcen_taps - 1) * self.hop_length if self.stream else 0

    @property
    def image_frames(self) -> int:
        """Frames of the normalised image: all of them, or those with a full smoother memory."""
        return self.n_frames - self.pcen_taps + 1 if self.stream else self.n_frames

    def to_dict(self) -> dict:
        return asdict(self)


def mel_filters(cfg: FrontEndConfig) -> np.ndarray:
    """librosa's Slaney mel filterbank [n_mels, n_fft // 2 + 1], computed at training time only."""
    import librosa

    return librosa.filters.mel(
        sr=cfg.sample_rate, n_fft=cfg.n_fft, n_mels=cfg.n_mels, fmin=cfg.f_min, fmax=cfg.f_max
    )


class FrontEnd(nn.Module):
    """Raw samples [B, 4000] -> contrast-enhanced log-mel image [B, 1, n_mels, n_frames]."""

    def __init__(self, cfg: FrontEndConfig | None = None) -> None:
        super().__init__()
        self.cfg = cfg = cfg or FrontEndConfig()
        mel = mel_filters(cfg)
        bins_per_filter = (mel > 0).sum(axis=1)
        if bins_per_filter.min() < 2:
            # a band narrower than the FFT's resolution is empty or a copy of one bin
            raise ValueError(f"empty or one-bin mel filters with {cfg}")
        used = np.nonzero(mel.sum(axis=0))[0]
        lo, hi = int(used.min()), int(used.max()) + 1
        n = np.arange(cfg.n_fft)
        k = np.arange(lo, hi)[:, None]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.n_fft)  # periodic Hann, as librosa
        angle = 2 * np.pi * k * n / cfg.n_fft
        kernels = np.concatenate([np.cos(angle) * window, -np.sin(angle) * window])
        self.n_bins = hi - lo
        self.register_buffer("dft", torch.tensor(kernels[:, None, :], dtype=torch.float32))
        self.register_buffer("mel", torch.tensor(mel[:, lo:hi], dtype=torch.float32))
        if cfg.normalisation == "pcen":
            self.register_buffer("pcen_kernel", pcen_kernel(cfg.n_mels, cfg.n_frames))
        elif cfg.stream:
            if cfg.image_frames < 1:
                raise ValueError(f"a window has fewer frames than the smoother's memory: {cfg}")
            smooth = 1 - (1 - PCEN_SMOOTH) ** (cfg.hop_length / PCEN_SMOOTH_HOP)
            self.register_buffer("pcen_kernel", fir_kernel(cfg.n_mels, cfg.pcen_taps, smooth))
        elif cfg.normalisation != "contrast":
            raise ValueError(f"unknown normalisation {cfg.normalisation!r}")

    def mel_power(self, x: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> mel power [B, n_mels, frames] = librosa melspectrogram(center=False)."""
        spec = nn.functional.conv1d(x.unsqueeze(1), self.dft, stride=self.cfg.hop_length)
        re, im = spec[:, : self.n_bins], spec[:, self.n_bins :]
        return torch.matmul(self.mel, re * re + im * im)

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> log mel power [B, n_mels, frames]: each frame depends on its own
        n_fft samples only, so a stream's frames can be computed once and shared by windows."""
        return torch.log(self.mel_power(x) + self.cfg.log_floor)

    def normalise(self, logmel: torch.Tensor) -> torch.Tensor:
        """Per-window normalisation chosen by the config: [B, n_mels, frames] -> [B, 1, ...]."""
        if self.cfg.normalisation == "pcen":
            return pcen(logmel, self.pcen_kernel, self.cfg.log_floor)
        if self.cfg.stream:
            return pcen_valid(logmel, self.pcen_kernel, self.cfg.log_floor)
        return self.contrast(logmel)

    @staticmethod
    def contrast(logmel: torch.Tensor) -> torch.Tensor:
        """Per-window contrast enhancement: remove each band's background (tonals, coloured
        noise), then each frame's (broadband clicks, gain changes). What is left stands out in
        both. [B, n_mels, frames] -> image [B, 1, n_mels, frames]."""
        logmel = logmel - logmel.mean(dim=2, keepdim=True)
        logmel = logmel - logmel.mean(dim=1, keepdim=True)
        return logmel.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalise(self.log_mel(x))


PCEN_SMOOTH, PCEN_ALPHA, PCEN_DELTA, PCEN_R = 0.04, 0.98, 2.0, 0.5  # 0.5-s smoother at 20 ms
PCEN_SCALE = 2.0**31  # mel power of [-1, 1] samples, brought to librosa's int-scaled range
PCEN_SMOOTH_HOP = 40  # samples: the frame hop PCEN_SMOOTH is given for
PCEN_MEMORY_S = 0.5  # "pcen-stream": the smoother's memory, one time constant
STREAM_FRAME_HOP = 50  # "pcen-stream" frames: 25 ms, so a 0.5-s hop is 20 frames, 5 cells of 4


def pcen_kernel(n_mels: int, n_frames: int) -> torch.Tensor:
    """The smoother as causal weights over a window's frames, one copy per band: frame t-k
    weighs s(1-s)^k, and the oldest tap also stands for every frame before the window (so the
    weights sum to 1 and a steady level maps to itself). [n_mels, 1, n_frames]."""
    k = np.arange(n_frames - 1, -1, -1)
    weights = PCEN_SMOOTH * (1 - PCEN_SMOOTH) ** k
    weights[0] = (1 - PCEN_SMOOTH) ** (n_frames - 1)
    return torch.tensor(np.tile(weights, (n_mels, 1, 1)), dtype=torch.float32)


def fir_kernel(n_mels: int, taps: int, smooth: float) -> torch.Tensor:
    """The smoother cut to its last `taps` frames (frame t-k weighs s(1-s)^k), rescaled to sum
    1 so that a steady level still maps to itself. [n_mels, 1, taps], oldest tap first."""
    weights = smooth * (1 - smooth) ** np.arange(taps - 1, -1, -1)
    weights /= weights.sum()
    return torch.tensor(np.tile(weights, (n_mels, 1, 1)), dtype=torch.float32)


def pcen_valid(logmel: torch.Tensor, kernel: torch.Tensor, floor: float) -> torch.Tensor:
    """PCEN over a finite memory, for the frames that have all of it: frame t is divided by the
    smoothed level of frames t-taps+1..t only. Each output frame then depends on the same
    frames wherever a window starts, so a stream's normalised map is shared exactly by every
    window over it (unlike `pcen`, whose smoother restarts at each window's first frame).
    [B, n_mels, frames] -> [B, 1, n_mels, frames - taps + 1]."""
    power = (torch.exp(logmel) - floor).clamp_min(0) * PCEN_SCALE
    smooth = nn.functional.conv1d(power, kernel, groups=kernel.shape[0])
    # the same formula as `pcen`'s, in ops that onnxruntime runs vectorised (its Pow with a
    # fractional exponent is a scalar loop: a fifth of a stream's time)
    gain = torch.exp(PCEN_ALPHA * torch.log(1e-6 + smooth))
    out = torch.sqrt(power[:, :, kernel.shape[-1] - 1 :] / gain + PCEN_DELTA) - PCEN_DELTA**PCEN_R
    return out.unsqueeze(1)


def pcen(logmel: torch.Tensor, kernel: torch.Tensor, floor: float) -> torch.Tensor:
    """Per-channel energy normalisation inside one window: each band divided by its own smoothed
    level (a first-order low-pass over time, run as a causal convolution whose first frame
    stands for the frames before the window), then root-compressed. Unlike a mean removed over
    the whole window, the smoother follows noise that changes within the window, and the
    division keeps a faint call as visible as a loud one. [B, n_mels, frames] -> [B, 1, ...]."""
    power = (torch.exp(logmel) - floor).clamp_min(0) * PCEN_SCALE
    first = power[:, :, :1].expand(-1, -1, kernel.shape[-1] - 1)
    padded = torch.cat([first, power], dim=2)
    smooth = nn.functional.conv1d(padded, kernel, groups=kernel.shape[0])
    gain = (1e-6 + smooth) ** PCEN_ALPHA
    out = (power / gain + PCEN_DELTA) ** PCEN_R - PCEN_DELTA**PCEN_R
    return out.unsqueeze(1)
