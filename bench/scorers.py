"""The scorers side by side on the same audio and core: speed, FLOPs per second of audio, and the
share of the core's own measured GFLOP/s that each reaches.

- per-window model: `WindowScorer`, the whole model (`upcall.onnx`) on every 2-s window;
- frames + head: `FrameScorer`, STFT frames once per stream, the head per window (live mode);
- stream scorer: `StreamScorer`, a screen over the whole stream plus the whole model on the
  windows near the threshold (replay), model alone here and whole CLI from the throughput
  section (same `done:` line);
- the notebook pipeline, from its own section.

FLOPs are 2 x multiply-adds of the DFT, mel product, convolutions and dense layers, as the card
counts them (PCEN's smoother and the element-wise work are not counted).
"""

import json
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

from bench.common import (
    HOUR_S,
    REPO,
    Context,
    Figure,
    Section,
    md_table,
    median,
    one_core,
    pin_to,
    repeat,
)
from bench.throughput import GOAL_WALL_X, GOAL_X_REALTIME
from detector.constants import SAMPLE_RATE
from detector.model import card_path, load_model
from detector.scoring import FrameScorer, WindowScorer
from detector.streaming import MARGIN_LOGIT, StreamScorer, load_screen

HOP = SAMPLE_RATE // 2
BLOCK = 64 * HOP  # what the replay loop reads at batch 64
SECONDS = 900  # the hour's first recording: the per-window scorers are slow
CLI_LOOP = "stream scorer, whole CLI (done: line)"
CLI_WALL = "stream scorer, whole CLI (wall clock, start-up included)"


def gemm_gflops(repeats: int) -> float:
    """float32 matrix-product speed of whatever cores this process has (numpy/BLAS, 512^3)."""
    a = np.random.default_rng(0).standard_normal((512, 512)).astype(np.float32)
    a @ a
    best = min(_timed(lambda: a @ a) for _ in range(max(5, repeats)))
    return 2 * 512**3 / best / 1e9


def core_gflops(repeats: int) -> float:
    """One core's `gemm_gflops`, in a child pinned to one core: in this process BLAS would use
    every core (twice the figure on 2 cores)."""
    code = f"from bench.scorers import gemm_gflops; print(gemm_gflops({max(20, 4 * repeats)}))"
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        preexec_fn=pin_to(one_core()),
    )
    return float(out.stdout.split()[-1])


def import_floor_s(repeats: int) -> float:
    """Seconds for a fresh interpreter to import numpy and onnxruntime and exit (median of warm
    runs): no replay can start faster, whatever the daemon does around them."""
    command = [sys.executable, "-c", "import numpy, onnxruntime"]
    pinned = pin_to(one_core())

    def start() -> float:
        return _timed(lambda: subprocess.run(command, check=True, preexec_fn=pinned))

    start()  # page cache
    return median(repeat(start, max(5, repeats)))


def floor_lines(flops_s: float, gflops: float, start_s: float) -> tuple[float, float, list[str]]:
    """The stream scorer's arithmetic floor on this core (x real time with every FLOP at the
    core's measured peak and nothing else done) and the wall clock's for the hour (that plus the
    interpreter and import floor), with the text that sets them against the issue's goals."""
    floor_x = gflops * 1e9 / flops_s
    wall_x = HOUR_S / (start_s + HOUR_S / floor_x)
    text = [
        f"**Arithmetic floor.** The stream scorer does {flops_s / 1e6:.1f} MFLOPs per second of "
        f"audio (the DFT and mel product of every frame, the screen's convolutions, the dense "
        f"layers, and the whole model on the rescored windows). At the core's measured "
        f"{gflops:.0f} GFLOP/s, with every FLOP at that peak and nothing else done (no PCEN, "
        f"no reading, no events), it could run at most **{floor_x:,.0f}x** real time. The "
        f"goal for the CLI's scoring loop is {GOAL_X_REALTIME:,}x "
        f"({100 * GOAL_X_REALTIME / floor_x:.0f}% of that floor, loop included). A fresh "
        f"interpreter importing numpy and onnxruntime takes {1000 * start_s:.0f} ms (median of "
        f"warm runs); with the hour at the arithmetic floor after it, the wall clock would be at "
        f"most **{wall_x:,.0f}x**, against a goal of {GOAL_WALL_X:,}x. Both goals need a model "
        f"with fewer FLOPs per second of audio, not faster code around this one.",
    ]
    return floor_x, wall_x, text


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def best_x(make, audio: np.ndarray, repeats: int) -> tuple[float, object]:
    """Best-of-N x real time of one scorer over the audio in replay-sized blocks, flushed."""
    best, scorer = 0.0, None
    for _ in range(repeats):
        scorer = make()
        t0 = time.perf_counter()
        for i in range(0, len(audio), BLOCK):
            scorer.push(audio[i : i + BLOCK])
        scorer.flush()
        best = max(best, len(audio) / SAMPLE_RATE / (time.perf_counter() - t0))
    return best, scorer


def flops_per_second(card: dict, screen, rescored: float) -> dict[str, float]:
    """FLOPs per second of audio of each scorer, from the card and the screen's layers."""
    fe = card["frontend"]
    per_window = card["architecture"]["flops_per_window"]
    frames_s = SAMPLE_RATE / fe["hop_length"]
    windows_s = SAMPLE_RATE / HOP
    n_bins = screen.dft.shape[1] // 2 if screen else 0
    frame = 2 * 2 * n_bins * fe["n_fft"] + 2 * fe["n_mels"] * n_bins  # DFT + mel, one frame
    head = per_window - frame * card["streaming"]["frames_per_window"]
    out = {"per-window model": per_window * windows_s, "frames + head": frame * frames_s}
    out["frames + head"] += head * windows_s
    if screen is not None:
        dense = 2 * (screen.hidden[0].size + screen.out[0].size)
        out["stream scorer"] = (frame + screen.conv_flops_per_frame) * frames_s
        out["stream scorer"] += (dense + rescored * per_window) * windows_s
    return out


def run(ctx: Context) -> Section:
    section = Section("Scorers side by side (one core)")
    model = load_model(ctx.model, "cpu", 1)
    card = json.loads(card_path(ctx.model).read_text())
    audio, _ = sf.read(ctx.audio, dtype="float32", frames=SECONDS * SAMPLE_RATE)
    threshold = model.threshold or 0.5
    screen = load_screen(model)
    repeats = ctx.repeats
    rows, speeds = [], {}
    speeds["per-window model"], _ = best_x(lambda: WindowScorer(model, HOP), audio, repeats)
    speeds["frames + head"], _ = best_x(lambda: FrameScorer(model, HOP), audio, repeats)
    rescored = 1.0
    if screen is not None:
        x, scorer = best_x(
            lambda: StreamScorer(model, HOP, threshold, screen=screen), audio, repeats
        )
        speeds["stream scorer"] = x
        rescored = scorer.rescored / max(1, scorer.windows)
    gflops = core_gflops(repeats)
    flops = flops_per_second(card, screen, rescored)
    notebook = ctx.results.get("notebook")
    if notebook:
        speeds["notebook pipeline"] = notebook["audio_s"] / (
            notebook["total_s"] * notebook["windows_in_hour"]
        )
        flops["notebook pipeline"] = notebook["flops"] * SAMPLE_RATE / HOP
    cli_loop, cli_wall = ctx.results.get("x_cli_loop"), ctx.results.get("x_cli_wall")
    if cli_loop:  # the throughput section's CLI replay of the hour (the stream scorer's)
        for name, x in ((CLI_LOOP, cli_loop), (CLI_WALL, cli_wall)):
            speeds[name] = x
            if "stream scorer" in flops:
                flops[name] = flops["stream scorer"]
    for name, x in speeds.items():
        f = flops.get(name)
        achieved = f * x / 1e9 if f else None
        rows.append(
            [
                name,
                f"{x:,.0f}",
                f"{f / 1e6:,.1f}" if f else "-",
                f"{achieved:,.1f}" if achieved else "-",
                f"{100 * achieved / gflops:.0f}%" if achieved else "-",
            ]
        )
    ctx.results["x_stream_alone"] = speeds.get("stream scorer")
    floor_text: list[str] = []
    if "stream scorer" in flops:
        floor_x, wall_x, floor_text = floor_lines(
            flops["stream scorer"], gflops, import_floor_s(repeats)
        )
        section.figures += [
            Figure("Stream scorer at the core's peak (arithmetic floor)", floor_x, "x real time"),
            Figure("Wall clock floor for the hour (imports + floor)", wall_x, "x real time"),
        ]
    section.figures += [
        Figure("Per-window model alone, 1 thread", speeds["per-window model"], "x real time"),
        Figure("Frames + head alone, 1 thread", speeds["frames + head"], "x real time"),
        Figure("Stream scorer alone, 1 thread", speeds.get("stream scorer"), "x real time"),
    ]
    section.body += [
        f"Best of {repeats} on the first {SECONDS} s of the hour ({ctx.audio_note}), "
        f"{BLOCK} samples a push as the replay loop reads them, threshold {threshold} (the "
        f"card's), hop 0.5 s, one onnxruntime thread. The stream scorer rescored "
        f"{100 * rescored:.1f}% of the windows with the whole model (margin {MARGIN_LOGIT} "
        f"logits). Core: {gflops:.0f} GFLOP/s measured (numpy float32 512^3 product, one "
        f"thread on one core).",
        "",
        *md_table(
            ["scorer", "x real time", "MFLOPs per s of audio", "GFLOP/s reached", "of the core"],
            rows,
        ),
        "",
        *floor_text,
    ]
    return section
