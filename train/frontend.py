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

    @property
    def n_frames(self) -> int:
        return 1 + (self.window_samples - self.n_fft) // self.hop_length

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

    def mel_power(self, x: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> mel power [B, n_mels, frames] = librosa melspectrogram(center=False)."""
        spec = nn.functional.conv1d(x.unsqueeze(1), self.dft, stride=self.cfg.hop_length)
        re, im = spec[:, : self.n_bins], spec[:, self.n_bins :]
        return torch.matmul(self.mel, re * re + im * im)

    def log_mel(self, x: torch.Tensor) -> torch.Tensor:
        """[B, samples] -> log mel power [B, n_mels, frames]: each frame depends on its own
        n_fft samples only, so a stream's frames can be computed once and shared by windows."""
        return torch.log(self.mel_power(x) + self.cfg.log_floor)

    @staticmethod
    def contrast(logmel: torch.Tensor) -> torch.Tensor:
        """Per-window contrast enhancement: remove each band's background (tonals, coloured
        noise), then each frame's (broadband clicks, gain changes). What is left stands out in
        both. [B, n_mels, frames] -> image [B, 1, n_mels, frames]."""
        logmel = logmel - logmel.mean(dim=2, keepdim=True)
        logmel = logmel - logmel.mean(dim=1, keepdim=True)
        return logmel.unsqueeze(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.contrast(self.log_mel(x))
