"""Draw labelled, augmented 2-s training windows from recordings, clips and the synthesizer.

Positives: real annotated calls placed whole at random offsets, real calls with another stretch of
real background mixed in, and synthetic up-calls mixed into real noise at random SNR. Negatives:
real windows that overlap no annotation, mined hard negatives (what the model last got most
wrong), windows of spans labelled not a call (detections an analyst rejected at the review
station: what a deployed model really got wrong) and synthetic look-alikes (down-sweeps, tones,
moans) in real noise.
"""

from dataclasses import dataclass

import numpy as np

from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from train import synth
from train.data import Clip, Recording
from train.shapes import recipe_shapes

CALL_MARGIN_S = 0.5  # negatives keep this far from any annotated call


@dataclass
class Mix:
    """What share of each half-batch comes from each source; the rest is plain real windows."""

    synthetic_positive: float = 0.35
    remixed_positive: float = 0.25
    lookalike_negative: float = 0.2
    hard_negative: float = 0.3
    rejected_negative: float = 0.15  # taken from the hard share when there are rejected spans
    remixed_negative: float = 0.15
    snr_db: tuple[float, float] = (-3.0, 15.0)
    stretch: float = 0.08  # frequency/time stretch, +-8 %
    remix_scale: tuple[float, float] = (0.2, 1.5)  # other background under a real call, x its level
    synth_shapes: str = "fixed"  # synthetic calls from synth's fixed ranges, or "measured" ones
    review: str = "off"  # the recordings' probable calls: "off", "exclude" from negatives, "calls"


REVIEW_USES = ("off", "exclude", "calls")


def negative_starts(
    rec: Recording,
    hop: int,
    window: int = WINDOW_SAMPLES,
    keep_off: list[tuple[float, float]] | None = None,
) -> np.ndarray:
    """Window starts (every hop samples) whose window keeps CALL_MARGIN_S away from every span
    of keep_off (by default the recording's calls)."""
    starts = np.arange(0, len(rec.audio) - window + 1, hop)
    keep = np.ones(len(starts), dtype=bool)
    for s, e in rec.calls if keep_off is None else keep_off:
        lo = (s - CALL_MARGIN_S) * SAMPLE_RATE - window
        hi = (e + CALL_MARGIN_S) * SAMPLE_RATE
        keep &= ~((starts > lo) & (starts < hi))
    return starts[keep]


def rejected_starts(rec: Recording, hop: int, window: int = WINDOW_SAMPLES) -> np.ndarray:
    """Call-free window starts whose window centre lies inside a span labelled not a call."""
    starts = negative_starts(rec, hop, window)
    centres = starts + window / 2
    keep = np.zeros(len(starts), dtype=bool)
    for s, e in rec.rejected:
        keep |= (centres >= s * SAMPLE_RATE) & (centres <= e * SAMPLE_RATE)
    return starts[keep]


def resample_linear(x: np.ndarray, length: int) -> np.ndarray:
    """Stretch x to length samples (content < 400 Hz at 2 kHz: linear interpolation is enough)."""
    if len(x) == length:
        return x
    return np.interp(np.linspace(0, len(x) - 1, length), np.arange(len(x)), x)


class WindowSampler:
    """Makes balanced batches of float32 windows [B, 4000] with labels [B]."""

    def __init__(
        self,
        recordings: list[Recording],
        clips: list[Clip] | None = None,
        mix: Mix | None = None,
        seed: int = 0,
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.mix = mix or Mix()
        # a review clip (a 2-s event and 1 s each side) is 4 s: one window must fit
        self.recordings = [r for r in recordings if len(r.audio) >= WINDOW_SAMPLES]
        # labels are incomplete: with mix.review, the probable calls a person found unmarked are
        # not drawn (nor mined) as negatives, and with "calls" they are trained on as calls
        review = self.mix.review
        if review not in REVIEW_USES:
            raise ValueError(f"review {review!r}: choose one of {REVIEW_USES}")
        probable = [r.probable if review != "off" else [] for r in self.recordings]
        keep_off = [r.calls + p for r, p in zip(self.recordings, probable, strict=True)]
        positives = keep_off if review == "calls" else [r.calls for r in self.recordings]
        self.calls = [(i, s, e) for i, spans in enumerate(positives) for s, e in spans if e - s > 0]
        self.negatives = [
            (i, st)
            for i, r in enumerate(self.recordings)
            for st in negative_starts(r, 500, keep_off=keep_off[i])
        ]
        clips = clips or []
        self.pos_clips = [c.audio for c in clips if c.label == 1 and len(c.audio) >= 1000]
        self.neg_clips = [c.audio for c in clips if c.label == 0 and len(c.audio) >= 1000]
        self.hard: list[tuple[int, int]] = []
        self.unseen = 0  # samples at a window's start the model does not see: half a call at most
        self.rejected = [
            (i, st) for i, r in enumerate(self.recordings) for st in rejected_starts(r, 250)
        ]
        if not self.negatives and not self.neg_clips:
            raise ValueError("no negative windows: give call-free audio or negative clips")
        # measured from these recordings only: in crossval, a fold's training days
        self.shapes = recipe_shapes(self.mix.synth_shapes, self.recordings)

    # -- single windows ------------------------------------------------------------------------
    def _stretch(self) -> float:
        return float(self.rng.uniform(1 - self.mix.stretch, 1 + self.mix.stretch))

    def _excerpt(self, audio: np.ndarray, start: int, factor: float) -> np.ndarray:
        length = int(round(WINDOW_SAMPLES * factor))
        start = int(np.clip(start, 0, max(0, len(audio) - length)))
        chunk = audio[start : start + length]
        if len(chunk) < length:
            chunk = np.pad(chunk, (0, length - len(chunk)), mode="reflect")
        return resample_linear(chunk, WINDOW_SAMPLES)

    def _fit_clip(self, audio: np.ndarray) -> np.ndarray:
        if len(audio) >= WINDOW_SAMPLES:
            start = self.rng.integers(0, len(audio) - WINDOW_SAMPLES + 1)
            return audio[start : start + WINDOW_SAMPLES]
        return np.pad(audio, (0, WINDOW_SAMPLES - len(audio)), mode="reflect")

    def real_negative(self) -> np.ndarray:
        use_clip = self.neg_clips and (not self.negatives or self.rng.random() < 0.05)
        if use_clip:
            return self._fit_clip(self.neg_clips[self.rng.integers(len(self.neg_clips))])
        i, start = self.negatives[self.rng.integers(len(self.negatives))]
        start += int(self.rng.integers(-250, 250))
        return self._excerpt(self.recordings[i].audio, start, self._stretch())

    def hard_negative(self) -> np.ndarray:
        i, start = self.hard[self.rng.integers(len(self.hard))]
        start += int(self.rng.integers(-100, 100))
        return self._excerpt(self.recordings[i].audio, start, self._stretch())

    def rejected_negative(self) -> np.ndarray:
        i, start = self.rejected[self.rng.integers(len(self.rejected))]
        return self._excerpt(self.recordings[i].audio, start, self._stretch())

    def real_positive(self) -> np.ndarray:
        use_clip = self.pos_clips and (not self.calls or self.rng.random() < 0.05)
        if use_clip:
            return self._fit_clip(self.pos_clips[self.rng.integers(len(self.pos_clips))])
        i, s, e = self.calls[self.rng.integers(len(self.calls))]
        factor = self._stretch()
        length, call_len = WINDOW_SAMPLES * factor, (e - s) * SAMPLE_RATE
        first = max(0.0, self.unseen * factor - call_len / 2)  # half the call where it is seen
        slack = max(length - first - call_len, 0.0)  # the whole call inside the window
        start = s * SAMPLE_RATE - first - self.rng.uniform(0.1, 0.9) * slack
        if slack == 0:
            start = (s + e) / 2 * SAMPLE_RATE - (length + first) / 2
        return self._excerpt(self.recordings[i].audio, int(start), factor)

    def synthetic_positive(self) -> np.ndarray:
        if self.shapes is None:
            call = synth.upcall(self.rng)
        else:
            call = synth.upcall_from(self.shapes.draw(self.rng))
        return self._mix_into_noise(call, self.unseen)

    def lookalike_negative(self) -> np.ndarray:
        return self._mix_into_noise(synth.lookalike(self.rng))

    def _mix_into_noise(self, signal: np.ndarray, unseen: int = 0) -> np.ndarray:
        """unseen: samples at the window's start where no more than half the signal may lie."""
        noise = self.real_negative().astype(np.float64)
        signal = signal[:WINDOW_SAMPLES]
        first = min(max(0, unseen - len(signal) // 2), WINDOW_SAMPLES - len(signal))
        offset = int(self.rng.integers(first, WINDOW_SAMPLES - len(signal) + 1))
        return synth.mix_at_snr(signal, noise, float(self.rng.uniform(*self.mix.snr_db)), offset)

    def remixed_positive(self) -> np.ndarray:
        """A real call plus another stretch of real background: new noise under a true shape."""
        pos = self.real_positive()
        noise = self.real_negative()
        lo, hi = self.mix.remix_scale
        scale = self.rng.uniform(lo, hi) * (np.std(pos) + 1e-9) / (np.std(noise) + 1e-9)
        mixed = pos + scale * noise
        if self.rng.random() < 0.3:  # a knock or a moan beside a call leaves it a call
            other = synth.lookalike(self.rng)[:WINDOW_SAMPLES]
            offset = int(self.rng.integers(0, WINDOW_SAMPLES - len(other) + 1))
            snr = float(self.rng.uniform(*self.mix.snr_db))
            mixed = synth.mix_at_snr(other, mixed, snr, offset)
        return mixed

    # -- batches --------------------------------------------------------------------------------
    def batch(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        half = size // 2
        windows = [self._positive() for _ in range(half)]
        windows += [self._negative() for _ in range(size - half)]
        x = np.stack(windows).astype(np.float32)
        x *= 10 ** self.rng.uniform(-1.5, 0.5, size=(size, 1))  # gain: quiet and loud buoys
        x *= self.rng.choice([-1.0, 1.0], size=(size, 1))
        peak = np.abs(x).max(axis=1, keepdims=True)
        x /= np.maximum(peak, 1.0)  # stay inside [-1, 1] like real input
        y = np.concatenate([np.ones(half), np.zeros(size - half)]).astype(np.float32)
        return x.astype(np.float32), y

    def _positive(self) -> np.ndarray:
        r = self.rng.random()
        if r < self.mix.synthetic_positive or not (self.calls or self.pos_clips):
            return self.synthetic_positive()
        if r < self.mix.synthetic_positive + self.mix.remixed_positive:
            return self.remixed_positive()
        return self.real_positive()

    def remixed_negative(self) -> np.ndarray:
        """Two call-free windows summed: noise combinations the recordings never had."""
        a, b = self.real_negative(), self.real_negative()
        return a + self.rng.uniform(0.3, 1.0) * b * (np.std(a) + 1e-9) / (np.std(b) + 1e-9)

    def _negative(self) -> np.ndarray:
        r = self.rng.random()
        if r < self.mix.lookalike_negative:
            return self.lookalike_negative()
        if r > 1 - self.mix.remixed_negative:
            return self.remixed_negative()
        if self.rejected and r < self.mix.lookalike_negative + self.mix.rejected_negative:
            return self.rejected_negative()
        if self.hard and r < self.mix.lookalike_negative + self.mix.hard_negative:
            return self.hard_negative()
        return self.real_negative()
