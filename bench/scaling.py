"""Scaling: peak memory of a replay against recording length (streamed: should be flat).

A long recording is the hour repeated, written block-wise to a 16-bit WAV in the scratch
directory (24 h = 346 MB) and deleted afterwards. Throughput against hop and batch is in the
throughput section's tables.
"""

import soundfile as sf

from bench.common import Context, Figure, Section, check, md_table, replay_args, run_process
from detector.constants import SAMPLE_RATE

GOAL_RSS_MB = 150


def write_repeated(ctx: Context, hours: int):
    """The hour repeated `hours` times, one hour in memory at a time."""
    path = ctx.workdir / f"{hours}h.wav"
    hour, _ = sf.read(ctx.audio, dtype="int16")
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as out:
        for _ in range(hours):
            out.write(hour)
    return path


def replay_rss(ctx: Context, path) -> tuple[float, float, float]:
    """(peak RSS MB, x real time of the loop, audio seconds) of one CLI replay."""
    result = check(run_process(replay_args(ctx, path, tag="scaling")), "long replay")
    audio_s, x = result.done_line() or (0.0, 0.0)
    return result.max_rss_mb, x, audio_s


def run(ctx: Context) -> Section:
    section = Section("Scaling with recording length")
    hours = 2 if ctx.quick else 24
    short_rss, short_x, short_s = replay_rss(ctx, ctx.audio)
    long_path = write_repeated(ctx, hours)
    try:
        long_rss, long_x, long_s = replay_rss(ctx, long_path)
    finally:
        long_path.unlink(missing_ok=True)
    growth = long_rss - short_rss
    section.figures += [
        Figure("Peak RSS, 1 h replay", short_rss, "MB"),
        Figure(
            f"Peak RSS, {hours} h replay",
            long_rss,
            "MB",
            "flat (same as 1 h)",
            abs(growth) <= max(5.0, 0.05 * short_rss),
            f"{growth:+.1f} MB against 1 h",
        ),
    ]
    section.body += [
        "One CLI replay each (1 thread, hop 0.5 s, batch 64); peak RSS from the kernel "
        "(wait4 ru_maxrss), MB = 10^6 bytes."
        + (" Quick run: 2 h instead of 24 h." if ctx.quick else ""),
        "",
        *md_table(
            ["recording", "audio s", "peak RSS MB", "loop x RT"],
            [
                ["1 h", f"{short_s:,.0f}", f"{short_rss:.1f}", f"{short_x:,.0f}"],
                [f"{hours} h", f"{long_s:,.0f}", f"{long_rss:.1f}", f"{long_x:,.0f}"],
            ],
        ),
    ]
    return section
