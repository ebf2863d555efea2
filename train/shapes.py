"""Shapes of the annotated up-calls, measured from the audio, for synthetic calls like them.

The synthesizer's fixed ranges follow the published call description; the calls a recorder really
hears may be shorter, lower or flatter. annotations.csv holds only where each call is, so every
shape is read back from the audio: the ridge (loudest frequency per frame, against the noise
floor around the call) and a power-law fit to it, the very track `synth.upcall_from` draws.
Synthetic calls are then a bootstrap of the measured calls, each parameter jittered a little.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from scipy.signal import stft

from detector.constants import SAMPLE_RATE
from detector.errors import WhaleError
from train.data import Recording
from train.snr import call_snr_db
from train.synth import UpcallParams

SYNTH_SHAPES = ("fixed", "measured")
SHAPES_LINE = "synthetic call shapes:"  # how the training log's line starts
N_FFT, HOP = 256, 32  # 128-ms frames (7.8 Hz bins) every 16 ms
BAND_HZ = (40.0, 350.0)  # where the ridge of an up-call can be
CONTEXT_S = 1.0  # audio either side of the call that sets the noise floor
RIDGE_MIN = 4.0  # a frame holds the call when its ridge is this many times the floor (6 dB)
CONTEXT_PERCENTILE = 90  # ... and the context's band maximum this often
FUNDAMENTAL_SHARE = 0.25  # ... of the whitened peak, for a peak to count as a harmonic
MIN_FRAMES = 8  # fewer ridge frames than this (about 0.13 s) is no measurable call
OUTLIER_HZ = 30.0  # ridge frames this far off the fitted track are noise, not the call
MIN_RISE_HZ = 10.0  # a fitted track rising less than this is not an up-sweep
EDGE_S = N_FFT / 4 / SAMPLE_RATE  # a frame shows the call once it is half inside its window
CURVES = np.geomspace(0.25, 4.0, 81)
JITTER = 0.1  # each drawn parameter is a measured one times 1 +- this
LIMITS = {  # plausible up-calls: drawn parameters are clipped to these
    "duration_s": (0.3, 2.0),
    "start_hz": (30.0, 300.0),
    "end_hz": (60.0, 400.0),
    "curve": (0.3, 3.0),
    "harmonic": (0.0, 1.0),
}


@dataclass(frozen=True)
class CallShape:
    """One annotated call as measured: what `synth.upcall_from` needs, and its SNR."""

    duration_s: float
    start_hz: float
    end_hz: float
    curve: float
    harmonic: float  # amplitude at twice the ridge over the ridge's
    snr_db: float | None  # broadband, as train/snr.py measures it (None: no louder than noise)


@dataclass
class ShapeStats:
    """The measured calls of some recordings, and how many could not be measured."""

    calls: list[CallShape] = field(default_factory=list)
    skipped: int = 0

    def values(self, name: str) -> np.ndarray:
        return np.array([getattr(c, name) for c in self.calls if getattr(c, name) is not None])

    def describe(self) -> str:
        """The training log's line: how many calls, and the ranges synthetic calls come from."""
        text = f"{SHAPES_LINE} measured from {len(self.calls)} calls ({self.skipped} skipped)"
        if not self.calls:
            return text
        spans = [
            ("duration", "duration_s", "s", 2),
            ("start", "start_hz", "Hz", 0),
            ("end", "end_hz", "Hz", 0),
            ("curve", "curve", "", 2),
            ("harmonic", "harmonic", "", 2),
        ]
        parts = []
        for label, name, unit, digits in spans:
            v = self.values(name)
            parts.append(
                f"{label} {v.min():.{digits}f}-{v.max():.{digits}f}{' ' + unit if unit else ''}"
            )
        snr = self.values("snr_db")
        if len(snr):  # for reference: the mix takes its SNR from the recipe's --snr-db
            parts.append(f"their SNR median {np.median(snr):.1f} dB")
        return text + ": " + ", ".join(parts)

    def draw(self, rng: np.random.Generator) -> UpcallParams:
        """A measured call picked at random, each parameter jittered by +-JITTER and clipped to
        LIMITS: new calls, each close to one the recordings really hold."""
        call = self.calls[int(rng.integers(len(self.calls)))]

        def jitter(name: str) -> float:
            lo, hi = LIMITS[name]
            return float(np.clip(getattr(call, name) * rng.uniform(1 - JITTER, 1 + JITTER), lo, hi))

        duration, start, end = jitter("duration_s"), jitter("start_hz"), jitter("end_hz")
        curve, harmonic = jitter("curve"), jitter("harmonic")
        end = max(end, start + MIN_RISE_HZ)  # still an up-sweep after the jitter
        return UpcallParams(duration, start, end, curve, (harmonic,), rng.uniform(0.2, 0.5))


def _ridge(audio: np.ndarray, start_s: float, end_s: float) -> tuple[np.ndarray, ...] | None:
    """Times (s), frequencies (Hz), ridge power over the floor and 2x-ridge power over the floor of
    the frames inside the span where the call stands out; None when too few do."""
    a = max(0, int((start_s - CONTEXT_S) * SAMPLE_RATE))
    b = min(len(audio), int((end_s + CONTEXT_S) * SAMPLE_RATE))
    if b - a < N_FFT:
        return None
    freqs, times, spec = stft(
        audio[a:b].astype(np.float64), SAMPLE_RATE, nperseg=N_FFT, noverlap=N_FFT - HOP
    )
    power = np.abs(spec) ** 2
    floor = np.median(power, axis=1, keepdims=True) + 1e-20  # a sweep covers each bin briefly
    white = power / floor
    times = times + a / SAMPLE_RATE
    inside = (times >= start_s) & (times <= end_s)
    band = np.flatnonzero((freqs >= BAND_HZ[0]) & (freqs <= BAND_HZ[1]))
    cols = np.flatnonzero(inside)
    peak = band[np.argmax(white[band][:, inside], axis=0)]
    for order in (2, 3):  # a harmonic over quieter noise can outshine its fundamental: take
        below = np.rint(peak / order).astype(int)  # the fundamental when it is nearly as clear
        clear = np.maximum(RIDGE_MIN, FUNDAMENTAL_SHARE * white[peak, cols])
        stands = (freqs[below] >= BAND_HZ[0]) & (white[below, cols] > clear)
        peak = np.where(stands, below, peak)
    strength = white[peak, cols]
    # the loudest of the band's bins is well above the floor even in pure noise: the ridge must
    # beat what that maximum reaches in the context around the call
    context = white[band][:, ~inside].max(axis=0)
    beat = np.percentile(context, CONTEXT_PERCENTILE) if context.size else 0.0
    present = strength > max(RIDGE_MIN, beat)
    if present.sum() < MIN_FRAMES:
        return None
    peak, cols = peak[present], cols[present]
    # sub-bin frequency: a parabola through the log power of the peak bin and its neighbours
    lo, mid, hi = (np.log(power[peak + d, cols] + 1e-20) for d in (-1, 0, 1))
    bend = lo - 2 * mid + hi
    shift = np.where(bend < 0, 0.5 * (lo - hi) / np.where(bend < 0, bend, -1.0), 0.0)
    bin_hz = freqs[1]
    ridge_hz = (peak + np.clip(shift, -0.5, 0.5)) * bin_hz
    second = np.clip(np.rint(2 * ridge_hz / bin_hz).astype(int), 1, len(freqs) - 2)
    near = np.max([power[second + d, cols] - floor[second + d, 0] for d in (-1, 0, 1)], axis=0)
    ridge_excess = power[peak, cols] - floor[peak, 0]
    return times[cols], ridge_hz, ridge_excess, np.maximum(near, 0.0)


def _fit_track(t: np.ndarray, f: np.ndarray) -> tuple[float, float, float, np.ndarray]:
    """Least-squares start, end and power-law exponent of f(t) over the call's extent (EDGE_S
    beyond the first and last ridge frames), and the residuals."""
    u = (t - t[0] + EDGE_S) / (t[-1] - t[0] + 2 * EDGE_S)
    best = None
    for curve in CURVES:
        shape = u**curve
        design = np.column_stack([1 - shape, shape])
        (start, end), *_ = np.linalg.lstsq(design, f, rcond=None)
        residual = f - design @ np.array([start, end])
        cost = float(np.sum(residual**2))
        if best is None or cost < best[0]:
            best = (cost, float(start), float(end), float(curve), residual)
    _, start, end, curve, residual = best
    return start, end, curve, residual


def measure_call(audio: np.ndarray, start_s: float, end_s: float) -> CallShape | None:
    """One call's shape from its annotated span of the audio; None when no ridge can be found.
    The SNR is left to the caller (train/snr.py's measure needs the whole recording)."""
    ridge = _ridge(audio, start_s, end_s)
    if ridge is None:
        return None
    t, f, p1, p2 = ridge
    keep = np.ones(len(t), dtype=bool)
    for _ in range(2):  # fit, drop the frames far off the track (other sounds), fit again
        if keep.sum() < MIN_FRAMES:
            return None
        start, end, curve, residual = _fit_track(t[keep], f[keep])
        kept = np.flatnonzero(keep)
        keep[kept[np.abs(residual) > OUTLIER_HZ]] = False
    if keep.sum() < MIN_FRAMES or end - start < MIN_RISE_HZ:
        return None
    t, f = t[keep], f[keep]
    start, end, curve, _ = _fit_track(t, f)
    harmonic = float(np.median(np.sqrt(p2[keep] / np.maximum(p1[keep], 1e-20))))
    duration = float(t[-1] - t[0] + 2 * EDGE_S)
    return CallShape(duration, start, end, curve, harmonic, None)


def measure_shapes(recordings: list[Recording]) -> ShapeStats:
    """Every annotated call of the recordings, measured; the unmeasurable ones counted."""
    stats = ShapeStats()
    for rec in recordings:
        audio = rec.audio.astype(np.float64)
        for (start_s, end_s), snr in zip(rec.calls, call_snr_db(rec), strict=True):
            shape = measure_call(audio, start_s, end_s)
            if shape is None:
                stats.skipped += 1
                continue
            stats.calls.append(replace(shape, snr_db=None if snr is None else float(snr)))
    return stats


def recipe_shapes(mode: str, recordings: list[Recording]) -> ShapeStats | None:
    """The shapes a recipe's synthetic calls come from: None for the fixed ranges, else measured
    from exactly the recordings given (the ones trained on: never a held-out one)."""
    if mode not in SYNTH_SHAPES:
        raise WhaleError(f"--synth-shapes {mode!r}: choose {' or '.join(SYNTH_SHAPES)}")
    if mode == "fixed":
        return None
    stats = measure_shapes(recordings)
    if not stats.calls:
        raise WhaleError(
            f"--synth-shapes measured: none of the {stats.skipped} annotated calls of the "
            f"training recordings could be measured; use --synth-shapes fixed"
        )
    return stats
