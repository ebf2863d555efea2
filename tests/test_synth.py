"""The synthetic sounds have the shapes their names promise, and recordings are well formed."""

import numpy as np
import pytest
from scipy import signal

from train.synth import (
    LOOKALIKE_KINDS,
    lookalike,
    mix_at_snr,
    noise,
    synthetic_recording,
    upcall,
)

SR = 2000


def frequency_track(x: np.ndarray) -> np.ndarray:
    """Peak frequency of each STFT frame that holds real energy (the sound's ridge)."""
    freqs, _, spec = signal.stft(x, SR, nperseg=128, noverlap=120)
    power = np.abs(spec) ** 2
    energy = power.sum(axis=0)
    return freqs[power.argmax(axis=0)][energy > 0.01 * energy.max()]


def at_fraction(track: np.ndarray, fraction: float) -> float:
    return float(track[int(fraction * (len(track) - 1))])


def looks_like_upcall(track: np.ndarray) -> bool:
    start, end = at_fraction(track, 0.2), at_fraction(track, 0.8)
    return 40 <= track.min() <= 110 and 140 <= track.max() <= 260 and end > start + 20


@pytest.mark.parametrize("seed", range(8))
def test_upcall_rises_through_the_band(seed: int) -> None:
    call = upcall(np.random.default_rng(seed))
    assert call.dtype == np.float32
    assert 0.5 * SR <= len(call) <= 1.5 * SR
    assert np.max(np.abs(call)) == pytest.approx(1.0)
    assert abs(call[0]) < 0.05 and abs(call[-1]) < 0.05  # smooth envelope, no edge click
    track = frequency_track(call)
    assert at_fraction(track, 0.8) > at_fraction(track, 0.2)
    assert 40 <= track.min() <= 110
    assert 140 <= track.max() <= 260
    assert looks_like_upcall(track)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("kind", LOOKALIKE_KINDS)
def test_lookalikes_are_not_upcalls(kind: str, seed: int) -> None:
    sound = lookalike(np.random.default_rng(seed), kind=kind)
    assert np.max(np.abs(sound)) == pytest.approx(1.0)
    if kind == "pulses":  # no tonal track at all: brief bursts, most of the time quiet
        frames = sound[: len(sound) // 40 * 40].reshape(-1, 40).astype(np.float64)
        energy = np.sort((frames**2).sum(axis=1))[::-1]
        busy = np.searchsorted(np.cumsum(energy), 0.9 * energy.sum()) + 1
        assert busy / len(energy) < 0.5
        return
    track = frequency_track(sound)
    assert not looks_like_upcall(track)
    start, end = at_fraction(track, 0.2), at_fraction(track, 0.8)
    if kind == "downsweep":
        assert end < start
    elif kind == "tone":
        assert np.ptp(track) <= 16  # one STFT bin
    elif kind == "moan":
        assert 30 <= track.min() and track.max() <= 130
    else:
        assert track.max() > 300


def test_lookalike_random_kind_and_unknown_kind() -> None:
    assert len(lookalike(np.random.default_rng(0))) > 0
    with pytest.raises(ValueError, match="unknown"):
        lookalike(np.random.default_rng(0), kind="song")


@pytest.mark.parametrize("seed", range(6))
def test_noise_is_unit_rms_and_coloured(seed: int) -> None:
    x = noise(np.random.default_rng(seed), 20 * SR)
    assert x.dtype == np.float32 and len(x) == 20 * SR
    assert np.sqrt(np.mean(x.astype(np.float64) ** 2)) == pytest.approx(1.0, rel=1e-3)
    freqs, psd = signal.welch(x, SR, nperseg=1024)
    assert psd[(freqs > 5) & (freqs < 50)].mean() > psd[freqs > 500].mean()


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 10.0])
def test_mix_at_snr_gives_the_asked_snr(snr_db: float) -> None:
    rng = np.random.default_rng(1)
    background, call = noise(rng, 10 * SR), upcall(rng)
    mixed = mix_at_snr(call, background, snr_db, offset=3000)
    added = (mixed - background)[3000 : 3000 + len(call)]
    measured = 10 * np.log10(np.mean(added**2) / np.mean(background.astype(np.float64) ** 2))
    assert measured == pytest.approx(snr_db, abs=0.5)
    assert np.array_equal(mixed[:3000], background[:3000])  # copy, untouched outside the call
    with pytest.raises(ValueError):
        mix_at_snr(call, background, 0.0, offset=len(background) - 10)


def test_synthetic_recording_layout_and_determinism() -> None:
    audio, calls = synthetic_recording(np.random.default_rng(7), 120, 5, n_lookalikes=4)
    assert audio.dtype == np.float32 and len(audio) == 120 * SR
    assert np.max(np.abs(audio)) <= 0.5 + 1e-6
    assert len(calls) == 5
    assert calls == sorted(calls)
    assert calls[0][0] >= 6.0 and calls[-1][1] <= 120 - 6.0
    for (_, end), (next_start, _) in zip(calls, calls[1:], strict=False):
        assert next_start - end >= 6.0
    for start, end in calls:
        assert 0.5 <= end - start <= 1.5
    again, calls_again = synthetic_recording(np.random.default_rng(7), 120, 5, n_lookalikes=4)
    assert np.array_equal(audio, again) and calls == calls_again
    other, _ = synthetic_recording(np.random.default_rng(8), 120, 5, n_lookalikes=4)
    assert not np.array_equal(audio, other)


def test_planted_calls_are_where_the_list_says() -> None:
    audio, calls = synthetic_recording(np.random.default_rng(3), 60, 3, snr_db=20.0)
    band = signal.sosfiltfilt(signal.butter(4, [50, 250], "bandpass", fs=SR, output="sos"), audio)
    inside = np.zeros(len(audio), dtype=bool)
    for start, end in calls:
        inside[int(start * SR) : int(end * SR)] = True
    for start, end in calls:
        segment = band[int(start * SR) : int(end * SR)]
        assert np.mean(segment**2) > 3 * np.mean(band[~inside] ** 2)


def test_too_many_calls_for_the_length() -> None:
    with pytest.raises(ValueError, match="too many"):
        synthetic_recording(np.random.default_rng(0), 20, 5)
