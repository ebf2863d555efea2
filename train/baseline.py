"""A classical detector to measure the CNN against: spectrogram correlation with up-sweep templates.

The same contrast-enhanced log-mel image the CNN sees is correlated with a few hand-drawn
up-sweeps (the method analysts used before learned detectors); the best match is the score.
"""

import numpy as np
import torch

from train.frontend import FrontEnd, FrontEndConfig

# (start Hz, end Hz, duration s) of the templates: the range annotated up-calls span
SWEEPS = ((60, 150, 0.7), (70, 180, 1.0), (90, 220, 1.2), (60, 200, 1.5))


def hz_to_band(freqs: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.interp(freqs, centres, np.arange(len(centres)))


class TemplateBaseline:
    """score(windows [B, 4000]) -> best normalised template correlation [B] (higher = call)."""

    def __init__(self, cfg: FrontEndConfig | None = None) -> None:
        import librosa

        self.frontend = FrontEnd(cfg).eval()
        c = self.frontend.cfg
        centres = librosa.mel_frequencies(n_mels=c.n_mels + 2, fmin=c.f_min, fmax=c.f_max)[1:-1]
        frame_s = c.hop_length / c.sample_rate
        self.templates = []
        for f0, f1, dur in SWEEPS:
            n_t = int(round(dur / frame_s))
            track = hz_to_band(np.linspace(f0, f1, n_t), centres)
            img = np.zeros((c.n_mels, n_t), dtype=np.float32)
            rows = np.arange(c.n_mels)[:, None]
            img += np.exp(-0.5 * ((rows - track[None, :]) / 1.0) ** 2)
            img -= img.mean()
            img /= np.linalg.norm(img)
            self.templates.append(torch.tensor(img)[None, None])

    @torch.no_grad()
    def score(self, windows: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(windows, dtype=np.float32))
        image = self.frontend(x)
        image = image / (image.flatten(1).std(dim=1)[:, None, None, None] + 1e-6)
        best = None
        for t in self.templates:
            corr = torch.nn.functional.conv2d(image, t).flatten(1).amax(dim=1)
            best = corr if best is None else torch.maximum(best, corr)
        return best.numpy()
