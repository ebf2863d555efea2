"""How loud the annotated calls are, measured the way the sampler mixes synthetic ones.

`synth.mix_at_snr` sets a broadband SNR: the sound's mean power over its own span against the
noise's mean power. The same figure for a real call is its span's power less the power of the
audio just around it (the noise under it), over that noise. Training on synthetic calls far
louder than the real ones teaches the network that a call is loud: this measures the range the
recipe's `--snr-db` should cover.

    python -m train.snr ../shared/data/dclde2013/annotations.csv
"""

import sys
from pathlib import Path

import numpy as np

from detector.constants import SAMPLE_RATE
from train.data import Recording, load_recordings

CONTEXT_S = 1.3  # noise measured this far either side of the call
GUARD_S = 0.2  # ... leaving out this much next to it (annotation edges are loose)


def call_snr_db(rec: Recording) -> list[float | None]:
    """Broadband SNR of each annotated call (None: its span is no louder than its context)."""
    audio = rec.audio.astype(np.float64)
    out: list[float | None] = []
    for start_s, end_s in rec.calls:
        a, b = int(start_s * SAMPLE_RATE), int(end_s * SAMPLE_RATE)
        guard, context = int(GUARD_S * SAMPLE_RATE), int(CONTEXT_S * SAMPLE_RATE)
        around = np.concatenate(
            [audio[max(0, a - context) : max(0, a - guard)], audio[b + guard : b + context]]
        )
        if b <= a or len(around) == 0:
            out.append(None)
            continue
        noise = float(np.mean(around**2))
        excess = float(np.mean(audio[a:b] ** 2)) - noise
        out.append(10 * np.log10(excess / noise) if excess > 0 and noise > 0 else None)
    return out


def summary(recordings: list[Recording]) -> str:
    """One line per recording: calls, how many are measurable, and the quantiles in dB."""
    lines = []
    for rec in recordings:
        values = call_snr_db(rec)
        measured = np.array([v for v in values if v is not None])
        quantiles = (
            " ".join(
                f"{q:.0f}%:{v:.1f}"
                for q, v in zip(
                    (0, 25, 50, 75, 100), np.percentile(measured, (0, 25, 50, 75, 100)), strict=True
                )
            )  # fmt: skip
            if len(measured)
            else "-"
        )
        lines.append(
            f"{rec.path.name}: {len(values)} calls, {len(values) - len(measured)} no louder "
            f"than their context; broadband SNR dB {quantiles}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(summary(load_recordings(Path(sys.argv[1]))))
