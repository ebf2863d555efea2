"""Replay throughput: how many times faster than real time an hour of audio is scored.

Three views of the same work, from the outside in:
- the full CLI as a subprocess (its own "done: ... Nx real time" line counts only the scoring
  loop; the wall clock adds start-up and shutdown),
- the in-process scoring loop (`Listener.run` over a `ReplaySource`, as the CLI wires it),
- the model alone on pre-cut windows (the ceiling the loop can approach).
"""

import cProfile
import io
import pstats
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.common import (
    Context,
    Figure,
    Section,
    check,
    goal_figure,
    md_table,
    median,
    one_core,
    replay_args,
    run_process,
    spread,
)
from detector.constants import SAMPLE_RATE
from detector.eventlog import EventLog
from detector.model import load_model
from detector.pipeline import Listener
from detector.publish import Publisher
from detector.replay import ReplaySource
from detector.ring import RingBuffer
from detector.windows import frame_windows
from detector.zmq_output import ZmqOutput

GOAL_X_REALTIME = 15000  # one core, hop 0.5 s (issue 16, the `done:` line)
GOAL_WALL_X = 10000  # the same run's wall clock, start-up included
MODEL_ONLY_WINDOWS = 1000


def cli_replay(ctx: Context, threads: int, hop: float, batch: int) -> dict:
    """Median over repeats of one CLI configuration: loop x real time, wall x real time, RSS."""
    loop_x, wall_x, rss = [], [], []
    for _ in range(ctx.repeats):
        args = replay_args(ctx, ctx.audio, threads=threads, hop=hop, batch=batch, tag="tput")
        cores = one_core() if threads == 1 else None  # one core: taskset, as the issue asks
        result = check(run_process(args, cores=cores), "whale-listen --replay")
        audio_s, x = result.done_line() or (0.0, 0.0)
        loop_x.append(x)
        wall_x.append(audio_s / result.wall_s)
        rss.append(result.max_rss_mb)
    return {"loop_x": loop_x, "wall_x": wall_x, "rss_mb": median(rss)}


def inprocess_replay(
    ctx: Context,
    threads: int,
    hop: float,
    batch: int,
    profile: cProfile.Profile | None = None,
    provider: str = "cpu",
) -> tuple[float, float]:
    """One in-process replay of the hour: (wall x real time, scoring-loop x real time)."""
    model = load_model(ctx.model, provider, threads)
    hop_samples = int(round(hop * SAMPLE_RATE))
    source = ReplaySource(ctx.audio, RingBuffer(8 * 16384))
    with tempfile.TemporaryDirectory(dir=ctx.workdir) as tmp:
        log = EventLog(Path(tmp) / "events.jsonl")
        publisher = Publisher([f"ipc://{tmp}/pub.sock"])
        listener = Listener(
            model,
            model.threshold or 0.5,
            hop_samples,
            log,
            [ZmqOutput(publisher)],
            "bench",
            batch=batch,
        )
        try:
            t0 = time.perf_counter()
            source.start()
            if profile is not None:
                profile.enable()
            counters = listener.run(source, datetime(2009, 3, 28, tzinfo=UTC))
            if profile is not None:
                profile.disable()
            wall = time.perf_counter() - t0
        finally:
            source.stop()
            publisher.close(linger_ms=0)
            log.close()
    audio_s = counters.samples_in / SAMPLE_RATE
    return audio_s / wall, audio_s / counters.processing_s


def model_only(ctx: Context, threads: int, hop: float, batch: int) -> list[float]:
    """x real time of model.score alone on pre-cut windows (the loop's ceiling), per repeat."""
    model = load_model(ctx.model, "cpu", threads)
    audio, _ = sf.read(ctx.audio, dtype="float32", frames=MODEL_ONLY_WINDOWS * 1000 + 4000)
    _, windows = frame_windows(audio, int(round(hop * SAMPLE_RATE)))
    windows = np.ascontiguousarray(windows[:MODEL_ONLY_WINDOWS])
    model.score(windows[:batch])  # warm-up: first call allocates
    out = []
    for _ in range(ctx.repeats):
        t0 = time.perf_counter()
        for i in range(0, len(windows), batch):
            model.score(windows[i : i + batch])
        out.append(len(windows) * hop / (time.perf_counter() - t0))
    return out


def profile_loop(ctx: Context) -> tuple[list[str], dict[str, float]]:
    """cProfile of the in-process loop (main thread; the file decoding thread is not in it)."""
    profile = cProfile.Profile()
    inprocess_replay(ctx, 1, 0.5, 64, profile)
    stats = pstats.Stats(profile)
    total = max(stats.total_tt, 1e-9)
    buckets = {"onnxruntime (model)": 0.0, "windowing": 0.0, "ring read/wait": 0.0}
    buckets["stream screen (numpy)"] = 0.0
    buckets.update({"events + publish": 0.0, "level (dbfs)": 0.0, "other": 0.0})
    for (filename, _, name), (_, _, own, _, _) in stats.stats.items():
        if "onnxruntime" in filename or "onnxruntime" in name:
            key = "onnxruntime (model)"
        elif filename.endswith("streaming.py"):
            key = "stream screen (numpy)"
        elif filename.endswith("windows.py") or "stride_tricks" in filename:
            key = "windowing"
        elif filename.endswith("ring.py") or "threading.py" in filename or "_thread.lock" in name:
            key = "ring read/wait"
        elif (
            filename.endswith(("events.py", "records.py", "eventlog.py", "publish.py"))
            or "zmq" in filename
        ):
            key = "events + publish"
        elif name == "dbfs" or "_methods.py" in filename or "mean" in name:
            key = "level (dbfs)"
        else:
            key = "other"
        buckets[key] += own
    shares = {k: v / total for k, v in buckets.items()}
    text = io.StringIO()
    pstats.Stats(profile, stream=text).strip_dirs().sort_stats("cumulative").print_stats(15)
    own = io.StringIO()
    pstats.Stats(profile, stream=own).strip_dirs().sort_stats("tottime").print_stats(8)
    body = [
        f"cProfile of one in-process replay of the hour (1 thread, hop 0.5 s, batch 64); "
        f"{total:.2f} s profiled in the scoring thread. Own time by stage:",
        "",
        *md_table(
            ["stage", "share of own time"],
            [[k, f"{100 * v:.1f}%"] for k, v in sorted(shares.items(), key=lambda kv: -kv[1])],
        ),
        "",
        "Top functions by cumulative time:",
        "",
        "```",
        *_trim_pstats(text.getvalue()),
        "```",
        "",
        "Top functions by own time:",
        "",
        "```",
        *_trim_pstats(own.getvalue()),
        "```",
    ]
    return body, shares


def _trim_pstats(text: str) -> list[str]:
    lines = text.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.strip().startswith("ncalls")), 0)
    return lines[start:]


def configs(ctx: Context) -> tuple[list[tuple[int, float]], list[int]]:
    """(threads, hop) for the CLI and loop, and the batch sizes swept."""
    if ctx.quick:
        return [(1, 0.5), (0, 0.5)], [1, 64, 256]
    return [(1, 0.5), (0, 0.5), (1, 0.25), (1, 1.0)], [1, 8, 16, 64, 256]


def run(ctx: Context) -> Section:
    section = Section("Replay throughput")
    thread_hops, batches = configs(ctx)
    cli_rows, loop_rows, batch_rows = [], [], []
    cli_main = loop_main = None
    for threads, hop in thread_hops:
        cli = cli_replay(ctx, threads, hop, 64)
        label = f"{'1 thread' if threads == 1 else 'all cores'}, hop {hop} s, batch 64"
        cli_rows.append(
            [label, spread(cli["loop_x"]), spread(cli["wall_x"]), f"{cli['rss_mb']:.0f}"]
        )
        if (threads, hop) == (1, 0.5):
            cli_main = cli
            ctx.results["rss_1h_mb"] = cli["rss_mb"]
            ctx.results["x_cli_loop"] = median(cli["loop_x"])
            ctx.results["x_cli_wall"] = median(cli["wall_x"])
        if (threads, hop) == (0, 0.5):
            ctx.results["x_cli_all_cores"] = median(cli["loop_x"])
    for threads in (1, 0):
        loop = [inprocess_replay(ctx, threads, 0.5, 64) for _ in range(ctx.repeats)]
        label = f"{'1 thread' if threads == 1 else 'all cores'}, hop 0.5 s, batch 64"
        loop_rows.append([label, spread([w for w, _ in loop]), spread([x for _, x in loop])])
        if threads == 1:
            loop_main = [w for w, _ in loop]
            ctx.results["x_inprocess"] = median(loop_main)
    for batch in batches:
        loop = (
            loop_main
            if batch == 64
            else [inprocess_replay(ctx, 1, 0.5, batch)[0] for _ in range(ctx.repeats)]
        )
        alone = model_only(ctx, 1, 0.5, batch)
        batch_rows.append([batch, spread(loop), spread(alone)])
        ctx.results.setdefault("x_model_only", {})[batch] = median(alone)

    x_cli = median(cli_main["loop_x"])
    x_loop = median(loop_main)
    section.figures += [
        goal_figure(
            "Replay, CLI, 1 thread, hop 0.5 s (scoring loop, from its summary line)",
            x_cli,
            "x real time",
            GOAL_X_REALTIME,
            f">= {GOAL_X_REALTIME:,}x",
            higher_is_better=True,
        ),
        goal_figure(
            "Replay, CLI, 1 thread, hop 0.5 s (wall clock incl. start-up)",
            median(cli_main["wall_x"]),
            "x real time",
            GOAL_WALL_X,
            f">= {GOAL_WALL_X:,}x",
            higher_is_better=True,
        ),
        goal_figure(
            "Replay, in-process loop, 1 thread, hop 0.5 s (wall clock)",
            x_loop,
            "x real time",
            GOAL_X_REALTIME,
            f">= {GOAL_X_REALTIME:,}x",
            higher_is_better=True,
        ),
        Figure(
            "Replay, CLI, all cores, hop 0.5 s (scoring loop)",
            ctx.results["x_cli_all_cores"],
            "x real time",
        ),
    ]
    section.body += [
        f"Audio: {ctx.audio_note}. Model: {ctx.model_note}. Figures are medians "
        f"(min-max, n repeats) in x real time = seconds of audio / seconds taken.",
        "",
        "**Full CLI** (`whale-listen --replay`, a fresh process per run). *Loop*: from the CLI's "
        "own `done:` line (time spent reading, windowing, scoring, merging). *Wall*: the "
        "subprocess's wall clock, start-up and shutdown included.",
        "",
        *md_table(["configuration", "loop x RT", "wall x RT", "peak RSS MB"], cli_rows),
        "",
        "**In-process loop** (`Listener.run` over a `ReplaySource`, wired as the CLI does). "
        "*Wall*: source start to loop end; *loop*: the listener's own processing time.",
        "",
        *md_table(["configuration", "wall x RT", "loop x RT"], loop_rows),
        "",
        f"**Batch size** (1 thread, hop 0.5 s): the in-process loop, and the model alone "
        f"(`Model.score` on {MODEL_ONLY_WINDOWS} pre-cut windows, the loop's ceiling).",
        "",
        *md_table(["batch", "loop x RT", "model alone x RT"], batch_rows),
    ]
    profile_body, shares = profile_loop(ctx)
    ctx.results["profile_shares"] = shares
    section.body += ["", "#### Profile of the scoring loop", "", *profile_body]
    return section
