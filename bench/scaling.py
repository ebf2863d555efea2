"""Scaling: memory of a replay against recording length (streamed: should be flat).

A long recording is the hour repeated, written block-wise to a 16-bit WAV in the scratch
directory (24 h = 346 MB) and deleted afterwards. The goal is judged on the resident set
sampled through the long replay, not on the two peaks: the allocators (glibc's arenas,
onnxruntime's) keep growing for the first minutes of audio, past the end of a 1-h replay at
these speeds, so a 24-h peak a few MB over the 1-h one is warm-up; a leak grows with the hours.
(The one thing that does grow by design is the catch-up server's index of the event log, a
seq and an offset per event: about 100 bytes an event, 0.1 MB for the 24 h here.)
Throughput against hop and batch is in the throughput section's tables.
"""

import threading
import time
from pathlib import Path

import numpy as np
import soundfile as sf

from bench.common import (
    Context,
    Figure,
    Section,
    check,
    md_table,
    replay_args,
    run_process,
    status_mb,
)
from detector.constants import SAMPLE_RATE

SAMPLE_EVERY_S = 0.1
GROWTH_GOAL_MB = 2.0  # from a quarter of the way through to the end


def write_repeated(ctx: Context, hours: int) -> Path:
    """The hour repeated `hours` times, one hour in memory at a time."""
    path = ctx.workdir / f"{hours}h.wav"
    hour, _ = sf.read(ctx.audio, dtype="int16")
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as out:
        for _ in range(hours):
            out.write(hour)
    return path


class RssSampler:
    """Samples a child's resident set every SAMPLE_EVERY_S from its start to its exit."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._thread: threading.Thread | None = None

    def start(self, pid: int) -> None:
        self._thread = threading.Thread(target=self._run, args=(pid,), daemon=True)
        self._thread.start()

    def _run(self, pid: int) -> None:
        while True:
            time.sleep(SAMPLE_EVERY_S)
            mb = status_mb(pid, "VmRSS")
            if mb is None:
                return
            self.samples.append(mb)

    def join(self) -> None:
        if self._thread is not None:
            self._thread.join(timeout=5)


def growth_after_warmup(samples: list[float]) -> tuple[float, float, float] | None:
    """(RSS MB a quarter of the way through, at the end, difference): medians of a tenth each.

    The end is the last tenth before the final few samples (the exit path frees and flushes).
    """
    n = len(samples)
    if n < 40:
        return None
    tenth = n // 10
    quarter = float(np.median(samples[n // 4 : n // 4 + tenth]))
    end = float(np.median(samples[n - 1 - tenth - 3 : n - 3]))
    return quarter, end, end - quarter


def replay_rss(ctx: Context, path: Path, sampler: RssSampler | None = None):
    """(peak RSS MB, x real time of the loop, audio seconds) of one CLI replay."""
    on_start = sampler.start if sampler is not None else None
    result = check(
        run_process(replay_args(ctx, path, tag="scaling"), on_start=on_start), "long replay"
    )
    if sampler is not None:
        sampler.join()
    audio_s, x = result.done_line() or (0.0, 0.0)
    return result.max_rss_mb, x, audio_s


def run(ctx: Context) -> Section:
    section = Section("Scaling with recording length")
    hours = 2 if ctx.quick else 24
    short_rss, short_x, short_s = replay_rss(ctx, ctx.audio)
    long_path = write_repeated(ctx, hours)
    sampler = RssSampler()
    try:
        long_rss, long_x, long_s = replay_rss(ctx, long_path, sampler)
    finally:
        long_path.unlink(missing_ok=True)
    growth = growth_after_warmup(sampler.samples)
    section.figures += [
        Figure("Peak RSS, 1 h replay", short_rss, "MB"),
        Figure(
            f"Peak RSS, {hours} h replay",
            long_rss,
            "MB",
            note=f"{long_rss - short_rss:+.1f} MB against 1 h (allocator warm-up, see scaling)",
        ),
        Figure(
            f"RSS growth through a {hours} h replay, after its first quarter",
            None if growth is None else growth[2],
            "MB",
            f"flat (<= {GROWTH_GOAL_MB:g} MB)",
            None if growth is None else growth[2] <= GROWTH_GOAL_MB,
            "" if growth is None else f"{growth[0]:.1f} MB -> {growth[1]:.1f} MB",
        ),
    ]
    samples = sampler.samples
    quarters = (
        [
            f"{float(np.median(samples[max(0, i - 5) : i + 5])):.1f}"
            for i in (len(samples) * q // 4 for q in (1, 2, 3))
        ]
        if len(samples) >= 40
        else ["-", "-", "-"]
    )
    section.body += [
        "One CLI replay each (1 thread, hop 0.5 s, batch 64); peak RSS from the kernel "
        "(wait4 ru_maxrss), MB = 10^6 bytes. The long replay's resident set (VmRSS) is sampled "
        f"every {SAMPLE_EVERY_S:g} s ({len(samples)} samples); the goal is on its growth from a "
        "quarter of the way through to the end (medians of a tenth of the samples each), "
        "because a 1-h replay ends before the allocators have warmed up."
        + (" Quick run: 2 h instead of 24 h." if ctx.quick else ""),
        "",
        *md_table(
            ["recording", "audio s", "peak RSS MB", "RSS at 1/4, 1/2, 3/4 (MB)", "loop x RT"],
            [
                ["1 h", f"{short_s:,.0f}", f"{short_rss:.1f}", "-", f"{short_x:,.0f}"],
                [
                    f"{hours} h",
                    f"{long_s:,.0f}",
                    f"{long_rss:.1f}",
                    ", ".join(quarters),
                    f"{long_x:,.0f}",
                ],
            ],
        ),
    ]
    return section
