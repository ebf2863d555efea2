"""Synthetic right whale up-calls, look-alikes and ocean noise.

Used by tests (known ground truth), training augmentation and the demo recording. The shapes follow
the published call description: a 0.5-1.5 s up-sweep from about 50-100 Hz to 150-250 Hz.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.signal import butter, sosfilt, windows

SR = 2000
LOOKALIKE_KINDS = ("downsweep", "tone", "moan", "humpback", "pulses")


def _tone(freq_hz: np.ndarray, sr: int, harmonics: tuple[float, ...] = ()) -> np.ndarray:
    """A tone following an instantaneous-frequency track, plus weaker harmonics (2x, 3x...)."""
    phase = 2 * np.pi * np.cumsum(freq_hz) / sr
    out = np.sin(phase)
    for order, gain in enumerate(harmonics, start=2):
        out += gain * np.sin(order * phase)
    return out


def _envelope(n: int, rng: np.random.Generator) -> np.ndarray:
    """Smooth attack and decay so the call has no clicks at its edges."""
    return windows.tukey(n, alpha=rng.uniform(0.2, 0.5))


def _peak_one(x: np.ndarray) -> np.ndarray:
    return (x / np.max(np.abs(x))).astype(np.float32)


@dataclass(frozen=True)
class UpcallParams:
    """One up-call's shape, apart from its synthesis: drawn from fixed ranges (`draw_upcall`) or
    from the annotated calls' measurements (train/shapes.py)."""

    duration_s: float
    start_hz: float
    end_hz: float
    curve: float  # power-law exponent: <1 rises fast then levels off, >1 starts slowly
    harmonics: tuple[float, ...]  # gains of 2x, 3x, ... relative to the fundamental
    taper: float  # Tukey window alpha of the attack and decay


def draw_upcall(rng: np.random.Generator) -> UpcallParams:
    """The published call description's ranges (the draws in the order upcall always made them,
    so the same rng gives the same call)."""
    duration = rng.uniform(0.5, 1.5)
    start, end = rng.uniform(50, 100), rng.uniform(150, 250)
    curve = rng.uniform(0.7, 1.4)
    harmonics = tuple(float(g) for g in rng.uniform(0.1, 0.4, size=rng.integers(1, 3)))
    return UpcallParams(duration, start, end, curve, harmonics, rng.uniform(0.2, 0.5))


def upcall_from(params: UpcallParams, sr: int = SR) -> np.ndarray:
    """The call a shape describes: power-law frequency track, harmonics, peak amplitude 1."""
    n = int(params.duration_s * sr)
    start, end = params.start_hz, params.end_hz
    freq = start + (end - start) * np.linspace(0, 1, n) ** params.curve
    envelope = windows.tukey(n, alpha=params.taper)
    return _peak_one(_tone(freq, sr, params.harmonics) * envelope)


def upcall(rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    """One up-call: curved rise (power-law track), 1-2 weaker harmonics, peak amplitude 1."""
    return upcall_from(draw_upcall(rng), sr)


def lookalike(rng: np.random.Generator, sr: int = SR, kind: str | None = None) -> np.ndarray:
    """A sound that is not an up-call but shares its band: the detector must reject these."""
    kind = kind or str(rng.choice(LOOKALIKE_KINDS))
    if kind == "downsweep":
        n = int(rng.uniform(0.5, 1.5) * sr)
        freq = np.linspace(rng.uniform(180, 250), rng.uniform(60, 100), n)
    elif kind == "tone":
        n = int(rng.uniform(0.5, 2.0) * sr)
        freq = np.full(n, rng.uniform(50, 300))
    elif kind == "moan":
        n = int(rng.uniform(1.0, 3.0) * sr)
        t = np.arange(n) / sr
        wander = np.sin(2 * np.pi * rng.uniform(0.3, 1.0) * t + rng.uniform(0, 2 * np.pi))
        freq = np.clip(80 + 35 * wander + rng.uniform(-5, 5), 40, 120)
    elif kind == "humpback":
        n = int(rng.uniform(0.15, 0.3) * sr)
        freq = np.linspace(rng.uniform(280, 350), rng.uniform(550, 700), n)
    elif kind == "pulses":
        return _pulses(rng, sr)
    else:
        raise ValueError(f"unknown look-alike kind {kind!r}; choose from {LOOKALIKE_KINDS}")
    return _peak_one(_tone(freq, sr, (rng.uniform(0.1, 0.3),)) * _envelope(n, rng))


def _pulses(rng: np.random.Generator, sr: int) -> np.ndarray:
    """1-6 short band-limited bursts (knocks, gunshots, fish, pile driving): energy across the
    up-call band without any sweep. Held-out real recordings are full of these."""
    n = int(rng.uniform(0.3, 1.8) * sr)
    out = np.zeros(n)
    lo = rng.uniform(30, 150)
    hi = min(lo + rng.uniform(80, 400), 0.45 * sr)
    sos = butter(4, [lo, hi], btype="band", fs=sr, output="sos")
    for at in rng.integers(0, n - sr // 20, size=rng.integers(1, 7)):
        length = int(rng.uniform(0.01, 0.08) * sr)
        burst = rng.standard_normal(length) * windows.hann(length)
        out[at : at + length] += burst[: n - at] * rng.uniform(0.3, 1.0)
    return _peak_one(sosfilt(sos, out) + 1e-9)


def _coloured(rng: np.random.Generator, n: int, exponent: float) -> np.ndarray:
    """Noise with power spectrum ~ 1/f^exponent (pink at 1, brown at 2)."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    return np.fft.irfft(spectrum / freqs ** (exponent / 2), n)


def noise(rng: np.random.Generator, n: int, sr: int = SR) -> np.ndarray:
    """Ocean-like background: coloured noise, maybe ship tonals and clicks, unit RMS."""
    out = _coloured(rng, n, rng.uniform(0.5, 2.0))
    out /= np.std(out) + 1e-12
    t = np.arange(n) / sr
    if rng.random() < 0.5:  # ship: harmonics of a low shaft rate, slowly breathing
        fundamental = rng.uniform(20, 60)
        for order in rng.choice(np.arange(1, 8), size=rng.integers(1, 4), replace=False):
            wobble = 1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.02, 0.2) * t + rng.uniform(0, 6))
            out += rng.uniform(0.1, 0.5) * wobble * np.sin(2 * np.pi * fundamental * order * t)
    if rng.random() < 0.5:  # clicks: snapping shrimp, mooring knocks
        click = windows.hann(7) * rng.uniform(3, 10)
        for at in rng.integers(0, max(n - len(click), 1), size=rng.integers(1, 20)):
            out[at : at + len(click)] += click[: n - at] * rng.choice([-1, 1])
    out -= np.mean(out)
    return (out / (np.sqrt(np.mean(out**2)) + 1e-12)).astype(np.float32)


def _snr_gain(signal: np.ndarray, noise_power: float, snr_db: float) -> float:
    signal_power = np.mean(np.square(signal, dtype=np.float64))
    return float(np.sqrt(noise_power / signal_power * 10 ** (snr_db / 10)))


def mix_at_snr(signal: np.ndarray, noise: np.ndarray, snr_db: float, offset: int) -> np.ndarray:
    """Add a sound into a copy of the noise at `offset` with a broadband SNR of `snr_db`.

    SNR = mean power of the sound over its own duration / mean power of the whole noise,
    both broadband (simple, and independent of any band a detector might favour).
    """
    if offset < 0 or offset + len(signal) > len(noise):
        raise ValueError("the sound does not fit inside the noise at that offset")
    noise_power = float(np.mean(np.square(noise, dtype=np.float64)))
    out = np.array(noise, dtype=np.float32, copy=True)
    out[offset : offset + len(signal)] += _snr_gain(signal, noise_power, snr_db) * signal
    return out


def _place(rng: np.random.Generator, n: int, lengths: list[int], gap: int) -> list[int]:
    """Random non-overlapping offsets with `gap` samples between sounds and from the edges."""
    slack = n - sum(lengths) - gap * (len(lengths) + 1)
    if slack < 0:
        raise ValueError("too many sounds for the recording length and minimum gap")
    cuts = np.sort(rng.uniform(0, slack, size=len(lengths)))
    offsets, cursor = [], gap
    for length, extra in zip(lengths, np.diff(np.concatenate([[0], cuts])), strict=True):
        cursor += int(extra)
        offsets.append(cursor)
        cursor += length + gap
    return offsets


def synthetic_recording(
    rng: np.random.Generator,
    seconds: float,
    n_calls: int,
    snr_db: float | tuple[float, float] = (5, 15),
    n_lookalikes: int = 0,
    sr: int = SR,
    min_gap_s: float = 6.0,
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Noise with planted up-calls (and look-alikes), all well apart.

    Returns float32 audio with peak 0.5 and the sorted (start_s, end_s) of the up-calls.
    A tuple snr_db draws each sound's SNR uniformly from that range.
    """
    n = int(seconds * sr)
    sounds = [(upcall(rng, sr), True) for _ in range(n_calls)]
    sounds += [(lookalike(rng, sr), False) for _ in range(n_lookalikes)]
    order = rng.permutation(len(sounds))
    sounds = [sounds[i] for i in order]
    offsets = _place(rng, n, [len(s) for s, _ in sounds], int(min_gap_s * sr))
    audio = noise(rng, n, sr)  # unit power: every SNR is measured against this background
    calls = []
    for (sound, is_call), offset in zip(sounds, offsets, strict=True):
        snr = rng.uniform(*snr_db) if isinstance(snr_db, tuple) else snr_db
        audio[offset : offset + len(sound)] += _snr_gain(sound, 1.0, snr) * sound
        if is_call:
            calls.append((offset / sr, (offset + len(sound)) / sr))
    audio = 0.5 * audio / np.max(np.abs(audio))
    return audio.astype(np.float32), calls
