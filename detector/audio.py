"""Audio input: open sound files safely and bring any sample rate to SAMPLE_RATE.

The daemon (live cards at 44.1/48 kHz, file replays) and the training code share this module, so a
model sees exactly the same 2 kHz signal in training and in service. Files are read in blocks so a
day-long recording costs constant memory.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from detector.constants import MIN_INPUT_RATE, SAMPLE_RATE
from detector.errors import WhaleError

STOPBAND_DB = 80.0  # alias rejection of the resampling filter
TRANSITION_FRACTION = 0.2  # transition band as a fraction of the lower Nyquist rate
DEFAULT_BLOCK_FRAMES = 65536

# libsndfile silently shortens a file whose header promises more data than it holds, and only
# says so in its log: "data : 40000 (should be 24999)" (WAV) or "SSND : ... (should be ...)" (AIFF).
_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_UNFINISHED_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}  # streaming writers that never patched the header


def _design_filter(up: int, down: int) -> np.ndarray:
    """Kaiser low-pass at the up-sampled rate, odd length (integer delay), DC gain `up`."""
    from scipy import signal  # 1-3 s to import: only a file or card not at 2 kHz pays it

    nyquist_low = 0.5 / max(up, down)  # lower Nyquist, in cycles per up-sampled sample
    width = TRANSITION_FRACTION * nyquist_low
    numtaps, beta = signal.kaiserord(STOPBAND_DB, width / 0.5)
    numtaps |= 1
    cutoff = nyquist_low - width / 2  # full rejection is reached at the lower Nyquist rate
    taps = signal.firwin(numtaps, cutoff, window=("kaiser", beta), fs=1.0)
    return taps * up


class StreamingResampler:
    """Polyphase FIR resampler that keeps its state, so output never depends on block sizes.

    Output sample k lies at time k / out_rate (the filter's delay is compensated); after
    `flush()` the total output length is ceil(n_in * out_rate / in_rate).
    """

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise WhaleError(f"sample rates must be positive, got {in_rate} -> {out_rate} Hz")
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        common = math.gcd(self.in_rate, self.out_rate)
        self.up, self.down = self.out_rate // common, self.in_rate // common
        self.passthrough = self.up == self.down
        if not self.passthrough:
            taps = _design_filter(self.up, self.down)
            self.delay = (len(taps) - 1) // 2
            self.taps_per_phase = -(-len(taps) // self.up)
            padded = np.zeros(self.taps_per_phase * self.up)
            padded[: len(taps)] = taps
            # bank[p, j] = taps[p + j*up], reversed so it lines up with x[i-K+1 .. i]
            self.bank = padded.reshape(self.taps_per_phase, self.up).T[:, ::-1].copy()
        self._reset()

    def _reset(self) -> None:
        self.n_in = 0  # input samples received
        self.n_out = 0  # output samples emitted
        if not self.passthrough:
            self.buffer = np.zeros(self.taps_per_phase - 1)  # zeros before the first sample
            self.buffer_start = -(self.taps_per_phase - 1)  # input index of buffer[0]

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample the next block of a stream; returns the outputs it completes."""
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 1:
            raise ValueError(f"expected a 1-D block of samples, got shape {block.shape}")
        if self.passthrough:
            self.n_in += len(block)
            return block.copy()
        self.buffer = np.concatenate([self.buffer, block.astype(np.float64)])
        self.n_in += len(block)
        # output m needs inputs up to (m*down + delay) // up
        n_ready = (self.n_in * self.up - self.delay - 1) // self.down + 1
        return self._emit(max(n_ready, self.n_out))

    def flush(self) -> np.ndarray:
        """End of stream: emit the tail (inputs past the end count as zeros), then reset."""
        if self.passthrough:
            self._reset()
            return np.zeros(0, dtype=np.float32)
        n_total = -(-self.n_in * self.up // self.down)
        last_needed = (max(n_total - 1, 0) * self.down + self.delay) // self.up
        pad = max(0, last_needed + 1 - (self.buffer_start + len(self.buffer)))
        self.buffer = np.concatenate([self.buffer, np.zeros(pad)])
        tail = self._emit(max(n_total, self.n_out))
        self._reset()
        return tail

    def _emit(self, n_until: int) -> np.ndarray:
        if n_until <= self.n_out:
            return np.zeros(0, dtype=np.float32)
        m = np.arange(self.n_out, n_until, dtype=np.int64)
        t = m * self.down + self.delay
        newest = t // self.up - self.buffer_start  # buffer index of each output's newest input
        phase = t % self.up
        windows = np.lib.stride_tricks.sliding_window_view(self.buffer, self.taps_per_phase)
        out = np.empty(len(m))
        for p in np.unique(phase):
            rows = phase == p
            out[rows] = windows[newest[rows] - self.taps_per_phase + 1] @ self.bank[p]
        self.n_out = n_until
        oldest_needed = (self.n_out * self.down + self.delay) // self.up - self.taps_per_phase + 1
        drop = max(0, min(oldest_needed - self.buffer_start, len(self.buffer)))
        self.buffer = self.buffer[drop:]
        self.buffer_start += drop
        return out.astype(np.float32)


def resample(x: np.ndarray, in_rate: int, out_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One-shot resampling, by definition identical to streaming the whole signal at once."""
    resampler = StreamingResampler(in_rate, out_rate)
    return np.concatenate([resampler.process(x), resampler.flush()])


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    samplerate: int
    channels: int
    frames: int
    duration_s: float
    truncation: WhaleError | None = None  # only with keep_truncated: what the header promised


def _open(path: str | Path, keep_truncated: bool = False) -> sf.SoundFile:
    """Open a sound file, turning every way it can be unusable into a WhaleError naming it.

    With keep_truncated, a file whose header promises more than it holds still opens (its
    `truncation` attribute holds the error), so a replay can score what is there first."""
    path = Path(path)
    if not path.exists():
        raise WhaleError(f"{path}: no such audio file")
    if not path.is_file():
        raise WhaleError(f"{path}: not a file")
    try:
        handle = sf.SoundFile(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError) as error:
        raise WhaleError(f"{path}: unreadable or corrupt audio file ({error})") from None
    if handle.frames <= 0:
        handle.close()
        raise WhaleError(f"{path}: empty audio file (0 frames)")
    if handle.samplerate < MIN_INPUT_RATE:
        rate = handle.samplerate
        handle.close()
        raise WhaleError(
            f"{path}: sampled at {rate} Hz, too low to hold up-calls (the models look at "
            f"30-400 Hz; at least {MIN_INPUT_RATE} Hz is needed)"
        )
    handle.truncation = None
    for declared, present in _SHORT_CHUNK.findall(handle.extra_info):
        if int(present) < int(declared) and int(declared) not in _UNFINISHED_SIZES:
            handle.truncation = WhaleError(
                f"{path}: truncated audio file (header promises {declared} data bytes, "
                f"only {present} present)"
            )
            if not keep_truncated:
                handle.close()
                raise handle.truncation
    return handle


def audio_info(path: str | Path, keep_truncated: bool = False) -> AudioInfo:
    """Rate, channels and length of a file, without reading its samples."""
    with _open(path, keep_truncated) as handle:
        return AudioInfo(
            path=Path(path),
            samplerate=handle.samplerate,
            channels=handle.channels,
            frames=handle.frames,
            duration_s=handle.frames / handle.samplerate,
            truncation=handle.truncation,
        )


def iter_file_blocks(
    path: str | Path,
    channel: int = 0,
    block_frames: int = DEFAULT_BLOCK_FRAMES,
    keep_truncated: bool = False,
) -> Iterator[np.ndarray]:
    """Yield one channel of a file as float32 blocks at SAMPLE_RATE, in constant memory.

    A truncated file is an error before any audio, or with keep_truncated (the daemon: never
    lose what can be detected) after every frame it holds."""
    with _open(path, keep_truncated) as handle:
        if not 0 <= channel < handle.channels:
            raise WhaleError(
                f"{path}: channel {channel} requested but the file has {handle.channels} "
                f"channel(s) (0-based)"
            )
        resampler = StreamingResampler(handle.samplerate, SAMPLE_RATE)
        frames_read = 0
        while frames_read < handle.frames:
            try:
                data = handle.read(block_frames, dtype="float32", always_2d=True)
            except (sf.LibsndfileError, RuntimeError) as error:
                raise WhaleError(
                    f"{path}: truncated or corrupt after frame {frames_read} ({error})"
                ) from None
            if len(data) == 0:
                if handle.truncation is not None:
                    break  # libsndfile's shortened length ran out: report after the tail
                raise WhaleError(
                    f"{path}: truncated audio file ({frames_read} of {handle.frames} frames)"
                )
            samples = data[:, channel]
            if not np.all(np.isfinite(samples)):
                bad = frames_read + int(np.argmin(np.isfinite(samples)))
                raise WhaleError(f"{path}: NaN or infinite sample at frame {bad}")
            frames_read += len(data)
            out = resampler.process(samples)
            if len(out):
                yield out
        tail = resampler.flush()
        if len(tail):
            yield tail
        if handle.truncation is not None:
            raise handle.truncation


def read_audio(path: str | Path, channel: int = 0) -> np.ndarray:
    """A whole file at SAMPLE_RATE as float32 mono: for training and tests, not the daemon."""
    blocks = list(iter_file_blocks(path, channel))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
