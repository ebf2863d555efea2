"""The original notebook's pipeline, timed on the same audio: the speed-up the daemon must show.

Per 2-s window: librosa mel spectrogram -> dB -> flip, keep the low 64 rows, append a column of
ones (64x64) -> uint8 image -> PIL resize to 227x227 -> [-1, 1] -> AlexNet (about 58M parameters,
random weights: only its speed matters), batch 1, one thread. It is slow, so it is timed on a
subset of windows spread over the hour and extrapolated per window.
"""

import time
import warnings

import numpy as np
import soundfile as sf

from bench.common import Context, Figure, Section, goal_figure, md_table
from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES

GOAL_RATIO = 1500  # issue 16
HOP_S = 0.5
WARMUP = 3


def alexnet():
    """AlexNet for a 1x227x227 image and 2 classes (torch, only the notebook needs it)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 96, 11, stride=4),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(96, 256, 5, padding=2),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Conv2d(256, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 384, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, 2),
        nn.Flatten(),
        nn.Dropout(0.5),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, 2),
        nn.Softmax(dim=1),
    ).eval()


def alexnet_cost(net) -> tuple[int, int]:
    """(parameters, FLOPs per image) counted as 2 x multiply-adds of convolutions and fc layers."""
    import torch
    from torch import nn

    flops = 0

    def hook(mod, inp, out) -> None:
        nonlocal flops
        per_output = mod.weight[0].numel() if isinstance(mod, nn.Conv2d) else mod.in_features
        flops += 2 * per_output * out.numel()

    handles = [m.register_forward_hook(hook) for m in net if isinstance(m, nn.Conv2d | nn.Linear)]
    with torch.no_grad():
        net(torch.zeros(1, 1, 227, 227))
    for h in handles:
        h.remove()
    return sum(p.numel() for p in net.parameters()), flops


def notebook_image(window: np.ndarray) -> np.ndarray:
    """The notebook's features for one 2-s window: float32 [1, 1, 227, 227] in [-1, 1]."""
    import librosa
    from PIL import Image

    mel = librosa.feature.melspectrogram(
        y=window, sr=SAMPLE_RATE, n_fft=256, hop_length=64, n_mels=128
    )
    db = librosa.power_to_db(mel, ref=np.max)
    low = np.flipud(db)[64:]  # 64 x 63
    image = np.hstack([low, np.ones((64, 1), dtype=low.dtype)])  # 64 x 64
    span = float(image.max() - image.min()) or 1.0
    pixels = ((image - image.min()) / span * 255).astype(np.uint8)
    resized = np.asarray(Image.fromarray(pixels).resize((227, 227)), dtype=np.float32)
    return (resized / 127.5 - 1.0)[None, None]


def time_notebook(ctx: Context, n_windows: int) -> dict:
    """Per-window seconds (features, model, total) over n windows spread across the hour."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    net = alexnet()
    audio, _ = sf.read(ctx.audio, dtype="float32")
    n_total = (len(audio) - WINDOW_SAMPLES) // int(HOP_S * SAMPLE_RATE) + 1
    picks = np.linspace(0, n_total - 1, n_windows + WARMUP).astype(int)
    hop = int(HOP_S * SAMPLE_RATE)
    features, model = [], []
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # librosa: empty mel filters at n_mels=128, n_fft=256
        for i, k in enumerate(picks):
            window = audio[k * hop : k * hop + WINDOW_SAMPLES]
            t0 = time.perf_counter()
            image = notebook_image(window)
            t1 = time.perf_counter()
            net(torch.from_numpy(image))
            t2 = time.perf_counter()
            if i >= WARMUP:
                features.append(t1 - t0)
                model.append(t2 - t1)
    total = np.add(features, model)
    params, flops = alexnet_cost(net)
    return {
        "windows": n_windows,
        "windows_in_hour": n_total,
        "audio_s": len(audio) / SAMPLE_RATE,
        "features_s": float(np.median(features)),
        "model_s": float(np.median(model)),
        "total_s": float(np.median(total)),
        "mean_s": float(np.mean(total)),
        "params": params,
        "flops": flops,
    }


def run(ctx: Context) -> Section:
    section = Section("The notebook's pipeline, same audio")
    n = 20 if ctx.quick else 200
    t = time_notebook(ctx, n)
    hour_s = t["total_s"] * t["windows_in_hour"]  # extrapolated from the median window
    x_notebook = t["audio_s"] / hour_s
    ours = ctx.results.get("x_cli_loop")
    ratio = ours / x_notebook if ours else None
    ours_wall = ctx.results.get("x_cli_wall")
    ratio_wall = ours_wall / x_notebook if ours_wall else None
    ctx.results["notebook"] = t
    section.figures += [
        Figure("Notebook pipeline, 1 thread, batch 1, hop 0.5 s", x_notebook, "x real time"),
        goal_figure(
            "Speed-up of whale-listen (CLI scoring loop, 1 thread) over the notebook",
            ratio,
            "x",
            GOAL_RATIO,
            f">= {GOAL_RATIO}x",
            higher_is_better=True,
        ),
        Figure(
            "Speed-up, CLI wall clock (start-up included) over the notebook",
            ratio_wall,
            "x",
        ),
    ]
    section.body += [
        f"Timed on {t['windows']} windows spread evenly over the same hour (after {WARMUP} "
        f"warm-up windows), then extrapolated from the median window to all "
        f"{t['windows_in_hour']:,} windows of the hour at hop {HOP_S} s: "
        f"{hour_s:,.0f} s for {t['audio_s']:,.0f} s of audio. One torch thread, batch 1; "
        f"AlexNet has {t['params'] / 1e6:.1f}M parameters and "
        f"{t['flops'] / 1e9:.2f} GFLOPs per window (random weights).",
        "",
        *md_table(
            ["stage", "median per window", "share"],
            [
                [
                    "features (librosa mel, dB, image, PIL resize)",
                    f"{1e3 * t['features_s']:.2f} ms",
                    f"{100 * t['features_s'] / t['total_s']:.0f}%",
                ],
                [
                    "AlexNet",
                    f"{1e3 * t['model_s']:.2f} ms",
                    f"{100 * t['model_s'] / t['total_s']:.0f}%",
                ],
                ["total (median)", f"{1e3 * t['total_s']:.2f} ms", ""],
                ["total (mean)", f"{1e3 * t['mean_s']:.2f} ms", ""],
            ],
        ),
    ]
    return section
