"""Speeds and durations as every line of the daemon writes them (summary, progress, STATUS).

A speed is audio seconds per wall-clock second: `140x real time`, `1.0x`, `0.25x`.
"""

import math


def speed(audio_s: float, wall_s: float) -> str:
    """`140x` from 10x up, `1.0x` about 1x, `0.25x` below; `-` before any time has passed."""
    if not (wall_s > 0 and math.isfinite(wall_s)):
        return "-"
    factor = audio_s / wall_s
    if factor >= 10:
        return f"{factor:.0f}x"
    return f"{factor:.1f}x" if factor >= 0.95 else f"{factor:.2g}x"


def clock(seconds: float) -> str:
    """`2:03:05`, `3:05`: hours, minutes and seconds."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
