"""Live latency, CPU share and peak memory: a synthetic recording replayed at 1x (`--realtime`).

Latency of an event = its arrival at a ZeroMQ subscriber - the moment the last sample of the
window that closed it would have left a sound card. An event is closed by the first window
below the threshold after it: that window starts one hop after the event's last window, and the
event's end is its last window's start + 3/4 window, so the closing window's last sample is
end_sample - 3000 + hop + 4000. The replay paces on the sample count from its start, which is
taken from the CLI's "1 subscriber(s) connected" line (printed just before the replay starts).

With the untrained stand-in model the card threshold is meaningless, so the threshold is chosen
on a pre-scan of the same recording to give many events (only the timing matters here).
"""

import os
import threading
import time

import numpy as np
import soundfile as sf

from bench.common import (
    Context,
    Figure,
    Section,
    Subscriber,
    check,
    goal_figure,
    md_table,
    read_proc,
    replay_args,
    run_process,
    write_wav,
)
from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from detector.events import merge_events
from detector.model import load_model
from detector.windows import frame_windows

GOAL_P99_MS = 50
GOAL_CPU_PERCENT = 2
GOAL_RSS_MB = 150
WANTED_EVENTS = 100
HOP_S = 0.5
CALL_PITCH_S = 3.6  # a call (0.5-1.5 s) plus a 2.5-s gap: at least one quiet window between
SETTLE_S = 5.0  # CPU share is measured after start-up has settled


def make_recording(ctx: Context, seconds: float) -> tuple[object, int]:
    from train.synth import synthetic_recording

    n_calls = max(1, int(seconds / CALL_PITCH_S) - 1)
    while True:
        try:
            audio, calls = synthetic_recording(
                np.random.default_rng(7), seconds, n_calls, snr_db=(10, 20), min_gap_s=2.5
            )
            return write_wav(ctx.workdir / "live.wav", audio), len(calls)
        except ValueError:  # the drawn calls did not fit: fewer
            n_calls = int(0.95 * n_calls)


def closed_events(scores: np.ndarray, starts: np.ndarray, threshold: float, hop: int) -> int:
    """Events closed by a quiet window (not by the end of the stream)."""
    events = merge_events(starts, scores, threshold, hop)
    last_close = starts[-1] + WINDOW_SAMPLES if len(starts) else 0
    return sum(
        e.end_sample - 3 * WINDOW_SAMPLES // 4 + hop + WINDOW_SAMPLES <= last_close for e in events
    )


def choose_threshold(ctx: Context, path, hop: int, n_calls: int) -> tuple[float, str]:
    """The card's threshold if it gives enough events on this recording, else the busiest one."""
    model = load_model(ctx.model, "cpu", 1)
    audio, _ = sf.read(path, dtype="float32")
    starts, windows = frame_windows(audio, hop)
    scores = np.concatenate([model.score(windows[i : i + 256]) for i in range(0, len(starts), 256)])
    wanted = min(WANTED_EVENTS, int(0.8 * n_calls))
    card = model.threshold
    if card is not None and closed_events(scores, starts, card, hop) >= wanted:
        return card, "the model card's threshold"
    candidates = np.unique(np.quantile(scores, np.linspace(0.05, 0.95, 91)))
    counts = [closed_events(scores, starts, float(t), hop) for t in candidates]
    best = float(candidates[int(np.argmax(counts))])
    return best, (
        f"chosen on a pre-scan to give the most events ({max(counts)}), since the card's "
        f"threshold gives too few on this recording"
    )


def run_live(ctx: Context, path, threshold: float) -> dict:
    endpoint = f"ipc://{ctx.workdir}/live.sock"
    args = replay_args(
        ctx,
        path,
        hop=HOP_S,
        tag="live",
        extra=("--realtime", "--wait-subscribers", "1", "--threshold", repr(threshold)),
    )
    args[args.index("--publish") + 1] = endpoint
    args[args.index("--linger") + 1] = "1"
    samples: list[tuple[float, float, float]] = []  # (monotonic, cpu s, VmHWM MB)
    stop = threading.Event()

    def sample(pid: int) -> None:
        while not stop.is_set():
            got = read_proc(pid)
            if got is not None:
                samples.append((time.monotonic(), *got))
            stop.wait(1.0)

    def on_start(pid: int) -> None:
        threading.Thread(target=sample, args=(pid,), daemon=True).start()

    info = sf.info(path)
    with Subscriber(endpoint) as subscriber:
        result = run_process(args, on_start=on_start, timeout=info.duration + 120)
        stop.set()
    check(result, "whale-listen --realtime")
    started = next(t for t, line in result.stderr_lines if "subscriber(s) connected" in line)
    return {
        "result": result,
        "started": started,
        "messages": subscriber.messages,
        "samples": samples,
        "n_samples": info.frames,
    }


def analyse(live: dict, hop: int) -> dict:
    started, n_samples = live["started"], live["n_samples"]
    latencies = []
    for arrived, topic, obj in live["messages"]:
        if topic != "upcall":
            continue
        end_sample = round(obj["offset_end_s"] * SAMPLE_RATE)
        closing_end = end_sample - 3 * WINDOW_SAMPLES // 4 + hop + WINDOW_SAMPLES
        if closing_end > n_samples:
            continue  # closed by the end of the stream, not by a quiet window
        latencies.append(arrived - (started + closing_end / SAMPLE_RATE))
    # clock check: the daemon can never have consumed audio before it was due
    ahead = [
        obj["samples_in"] / SAMPLE_RATE - (arrived - started)
        for arrived, topic, obj in live["messages"]
        if topic == "status"
    ]
    steady = [
        s
        for s in live["samples"]
        if started + SETTLE_S <= s[0] <= started + n_samples / SAMPLE_RATE
    ]
    cpu_share = (
        (steady[-1][1] - steady[0][1]) / (steady[-1][0] - steady[0][0])
        if len(steady) >= 2
        else None
    )
    lat = np.array(latencies) * 1e3
    result = live["result"]
    return {
        "events": len(lat),
        "p50_ms": float(np.percentile(lat, 50)) if len(lat) else None,
        "p99_ms": float(np.percentile(lat, 99)) if len(lat) else None,
        "min_ms": float(lat.min()) if len(lat) else None,
        "max_ms": float(lat.max()) if len(lat) else None,
        "cpu_percent": 100 * cpu_share if cpu_share is not None else None,
        "cpu_window_s": steady[-1][0] - steady[0][0] if len(steady) >= 2 else 0.0,
        "cpu_whole_percent": 100 * result.cpu_s / result.wall_s,
        "rss_mb": result.max_rss_mb,
        "clock_ahead_ms": 1e3 * max(ahead) if ahead else None,
        "wall_s": result.wall_s,
    }


def fsync_ms(directory, n: int = 30) -> tuple[float, float]:
    """(median, max) ms to append and fsync one event-sized line where the run keeps its log."""
    path = directory / "fsync-probe.jsonl"
    times = []
    with open(path, "ab") as f:
        for _ in range(n):
            t0 = time.perf_counter()
            f.write(b"x" * 500 + b"\n")
            f.flush()
            os.fsync(f.fileno())
            times.append(time.perf_counter() - t0)
    path.unlink()
    return 1e3 * float(np.median(times)), 1e3 * max(times)


def run(ctx: Context, seconds: float) -> Section:
    section = Section("Live latency, CPU and memory")
    hop = int(HOP_S * SAMPLE_RATE)
    path, n_calls = make_recording(ctx, seconds)
    threshold, why = choose_threshold(ctx, path, hop, n_calls)
    a = analyse(run_live(ctx, path, threshold), hop)
    sync_median, sync_max = fsync_ms(ctx.workdir)
    ctx.results["live"] = a
    enough = a["events"] >= WANTED_EVENTS
    few = "" if enough else f"only {a['events']} events (< {WANTED_EVENTS}): p99 is rough"
    section.figures += [
        Figure("Live latency p50 (last sample -> subscriber)", a["p50_ms"], "ms", note=few),
        goal_figure(
            "Live latency p99 (last sample -> subscriber)",
            a["p99_ms"],
            "ms",
            GOAL_P99_MS,
            f"< {GOAL_P99_MS} ms",
            higher_is_better=False,
            note=few,
        ),
        goal_figure(
            f"Live CPU share of one core ({seconds / 60:.1f}-min run)",
            a["cpu_percent"],
            "%",
            GOAL_CPU_PERCENT,
            f"< {GOAL_CPU_PERCENT}%",
            higher_is_better=False,
        ),
        goal_figure(
            f"Live peak RSS ({seconds / 60:.1f}-min run)",
            a["rss_mb"],
            "MB",
            GOAL_RSS_MB,
            f"< {GOAL_RSS_MB} MB",
            higher_is_better=False,
        ),
    ]
    length_note = (
        ""
        if seconds >= 600
        else f" **The run lasted {seconds / 60:.1f} min, not the 10 min the issue asks for**, "
        f"so that the whole benchmark fits in its 10-minute budget."
    )
    section.body += [
        f"`whale-listen --replay --realtime` (1 thread, hop {HOP_S} s) on {seconds:.0f} s "
        f"({seconds / 60:.1f} min) of synthetic ocean noise with {n_calls} planted up-calls; "
        f"threshold {threshold:.6g} ({why}).{length_note} Every event is fsync'ed to the log "
        f"before it is published, so the latency includes one fsync on the scratch disk.",
        "",
        *md_table(
            ["figure", "value"],
            [
                ["events timed (closed by a quiet window)", a["events"]],
                [
                    "latency p50 / p99",
                    f"{a['p50_ms']:.1f} / {a['p99_ms']:.1f} ms" if a["events"] else "-",
                ],
                [
                    "latency min / max",
                    f"{a['min_ms']:.1f} / {a['max_ms']:.1f} ms" if a["events"] else "-",
                ],
                [
                    f"CPU share, steady state ({a['cpu_window_s']:.0f} s from /proc/PID/stat)",
                    _pct(a["cpu_percent"]),
                ],
                [
                    "CPU share over the whole process life (start-up included)",
                    _pct(a["cpu_whole_percent"]),
                ],
                ["peak RSS (wait4 ru_maxrss)", f"{a['rss_mb']:.1f} MB"],
                [
                    "append + fsync of one event line on the log's disk (median / max of 30)",
                    f"{sync_median:.1f} / {sync_max:.1f} ms",
                ],
                [
                    "clock check: most audio consumed ahead of its due time (should be <= ~0)",
                    "-" if a["clock_ahead_ms"] is None else f"{a['clock_ahead_ms']:.1f} ms",
                ],
            ],
        ),
    ]
    return section


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"
