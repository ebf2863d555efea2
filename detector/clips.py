"""Review clips: each event's audio (FLAC) and spectrogram (PNG), so a person can check it.

An event is known only after the quiet window that closes it, so the writer keeps the last
seconds of 2 kHz audio in memory and cuts the clip from there. The spectrogram is drawn and
PNG-encoded here with numpy and zlib, its axes and title in a built-in bitmap font (no
matplotlib: the daemon stays small). Clips are a
convenience: a full disk or a write error is counted and skipped, never raised, because the
event itself (already logged and published) matters more.
"""

import math
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import soundfile as sf

from detector.bitmap import GLYPH_H, draw_text, fill_rect, text_width
from detector.constants import SAMPLE_RATE
from detector.errors import WhaleError
from detector.journal import log

HISTORY_SECONDS = 30.0  # audio kept: covers the event, its margins and the closing delay
MARGIN_SECONDS = 1.0  # audio saved before and after the event
N_FFT = 256  # 128 ms frames: 7.8 Hz bins, fine enough for a 50-250 Hz up-call sweep
FRAME_HOP = 16  # spectrogram frames every 8 ms (not the window hop)
MAX_FREQ_HZ = 500.0  # up-calls sit well below; higher bins are mostly noise
# Colour scale: each frequency band is drawn relative to its own median level (so the energy
# under 30 Hz or a ship's tone does not swamp the picture), from the median of the result (black)
# to its 99.5th percentile (pale yellow), with at least MIN_RANGE_DB between them so that pure
# noise is not stretched into false contrast.
LOW_PERCENTILE, HIGH_PERCENTILE, MIN_RANGE_DB = 50.0, 99.5, 12.0
# Layout of the review PNG (pixels): title above, frequency axis left, time axis below.
WIDTH = 800
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 64, 44
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, 300
HEIGHT = TOP + PLOT_H + BOTTOM
FREQ_TICKS_HZ = (0, 100, 200, 300, 400, 500)
TICK = 5  # tick mark length
BACKGROUND, INK, SPAN = (24, 24, 24), (235, 235, 235), (0, 230, 255)
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
# Dark to bright ramp (black, blue, magenta, orange, pale yellow) so faint energy stays visible.
_RAMP = np.array(
    [[0, 0, 4], [40, 11, 84], [136, 34, 106], [212, 72, 66], [250, 153, 8], [252, 255, 164]],
    dtype=np.float64,
)


def spectrogram_db(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Log power (dB) of a Hann STFT up to MAX_FREQ_HZ: shape [frequency bins, frames]."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if len(x) < N_FFT:
        x = np.pad(x, (0, N_FFT - len(x)))
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::FRAME_HOP] * np.hanning(N_FFT)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2
    n_bins = int(MAX_FREQ_HZ * N_FFT / sample_rate) + 1
    return 10.0 * np.log10(power[:, :n_bins].T + 1e-12)


def spectrogram_levels(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The spectrogram scaled to [0, 1] for display: per-band median removed, percentile-clipped."""
    db = spectrogram_db(x, sample_rate)
    db = db - np.median(db, axis=1, keepdims=True)
    low = float(np.percentile(db, LOW_PERCENTILE))
    high = max(float(np.percentile(db, HIGH_PERCENTILE)), low + MIN_RANGE_DB)
    return np.clip((db - low) / (high - low), 0.0, 1.0)


def colourise(level: np.ndarray) -> np.ndarray:
    """[0, 1] levels -> RGB uint8 along the dark-to-bright ramp."""
    stops = np.linspace(0.0, 1.0, len(_RAMP))
    rgb = np.stack([np.interp(level, stops, _RAMP[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def plot_row(hz: float) -> int:
    """Image row of a frequency (0 Hz at the bottom of the plot, MAX_FREQ_HZ at its top)."""
    return TOP + round((PLOT_H - 1) * (1.0 - hz / MAX_FREQ_HZ))


def plot_col(seconds: float, clip_seconds: float) -> int:
    """Image column of a time, in seconds from the clip's first sample."""
    return LEFT + round((PLOT_W - 1) * seconds / clip_seconds)


def spectrogram_image(x: np.ndarray, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """RGB uint8 plot area [PLOT_H, PLOT_W, 3]: 0 Hz at the bottom, time left to right."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    n = max(len(x), 1)
    # frames centred on k * FRAME_HOP: reflect half a frame at each end so the plot covers the clip
    padded = np.pad(x, N_FFT // 2, mode="reflect") if len(x) > N_FFT // 2 else x
    levels = spectrogram_levels(padded, sample_rate)  # [bins, frames]
    n_bins, n_frames = levels.shape
    hz_per_bin = sample_rate / N_FFT
    hz = MAX_FREQ_HZ * (1.0 - np.arange(PLOT_H) / (PLOT_H - 1))
    rows = np.clip(np.round(hz / hz_per_bin).astype(int), 0, n_bins - 1)
    seconds = (np.arange(PLOT_W) + 0.5) / PLOT_W * n / sample_rate
    frames = np.round(seconds * sample_rate / FRAME_HOP).astype(int)
    return colourise(levels[rows][:, np.clip(frames, 0, n_frames - 1)])


def _time_step(clip_seconds: float) -> float:
    for step in (0.25, 0.5, 1.0, 2.0, 5.0, 10.0):
        if clip_seconds / step <= 12:
            return step
    return 30.0


def review_image(
    x: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    span: tuple[float, float] | None = None,
    title: tuple[str, ...] = (),
) -> np.ndarray:
    """The review PNG's pixels: spectrogram with a frequency axis (Hz), a time axis (seconds from
    the event's start, which is at span[0] seconds into the clip), the event's span bracketed
    above the plot and marked by dashed lines, and up to two title lines."""
    clip_seconds = max(len(x), 1) / sample_rate
    image = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    image[:] = BACKGROUND
    image[TOP : TOP + PLOT_H, LEFT : LEFT + PLOT_W] = spectrogram_image(x, sample_rate)
    for i, line in enumerate(title[:2]):
        draw_text(image, 8, 6 + i * (2 * GLYPH_H + 8), line, INK, scale=2)
    # frequency axis
    fill_rect(image, LEFT - 1, TOP, LEFT, TOP + PLOT_H, INK)
    for hz in FREQ_TICKS_HZ:
        row = plot_row(hz)
        fill_rect(image, LEFT - 1 - TICK, row, LEFT - 1, row + 1, INK)
        label = f"{hz:g}"
        draw_text(image, LEFT - 3 - TICK - text_width(label), row - GLYPH_H // 2, label, INK)
    draw_text(image, LEFT - 3 - TICK - text_width("HZ"), TOP - GLYPH_H - 10, "HZ", INK)
    # time axis, in seconds from the event's start
    zero = span[0] if span else 0.0
    bottom = TOP + PLOT_H
    fill_rect(image, LEFT - 1, bottom, LEFT + PLOT_W, bottom + 1, INK)
    step = _time_step(clip_seconds)
    for k in range(math.ceil(-zero / step), math.floor((clip_seconds - zero) / step) + 1):
        col = plot_col(zero + k * step, clip_seconds)
        fill_rect(image, col, bottom + 1, col + 1, bottom + 1 + TICK, INK)
        label = f"{k * step:g}"
        draw_text(image, col - text_width(label) // 2, bottom + TICK + 4, label, INK)
    axis = "SECONDS FROM EVENT START" if span else "SECONDS"
    draw_text(image, LEFT + (PLOT_W - text_width(axis)) // 2, bottom + TICK + 20, axis, INK)
    if span:
        c0, c1 = (plot_col(min(max(t, 0.0), clip_seconds), clip_seconds) for t in span)
        fill_rect(image, c0, TOP - 8, c1 + 1, TOP - 3, SPAN)  # the bracket above the plot
        for col in (c0, c1):
            fill_rect(image, col, TOP - 8, col + 1, TOP, SPAN)
            for y in range(TOP, bottom, 8):  # dashed lines through the plot
                fill_rect(image, col, y, col + 1, min(y + 4, bottom), SPAN)
    return image


def event_title(event: dict) -> tuple[str, str]:
    """Two title lines: what fired and how sure it was, then where and when."""
    score, threshold = event.get("score"), event.get("threshold")
    first = "UP-CALL"
    if isinstance(score, int | float):
        first += f"  SCORE {score:.4f}"
    if isinstance(threshold, int | float):
        first += f"  THRESHOLD {threshold:g}"
    start = str(event.get("start") or "").replace("T", " ")  # 2009-03-28 00:19:55.500Z
    return first, "  ".join(part for part in (str(event.get("station") or ""), start) if part)


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def png_bytes(image: np.ndarray) -> bytes:
    """PNG encoding of a uint8 image, [h, w] grayscale or [h, w, 3] RGB (8 bits, no filter)."""
    image = np.ascontiguousarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"need a non-empty uint8 [h, w] or [h, w, 3] image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] != 3:
        raise ValueError(f"need 3 colour channels, got {image.shape[2]}")
    height, width = image.shape[:2]
    colour_type = 0 if image.ndim == 2 else 2
    rows = image.reshape(height, -1)
    raw = np.hstack([np.zeros((height, 1), dtype=np.uint8), rows]).tobytes()  # filter 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def write_png(path: Path, image: np.ndarray) -> None:
    """Write a uint8 grayscale [h, w] or RGB [h, w, 3] image as a PNG file."""
    Path(path).write_bytes(png_bytes(image))


class ClipWriter:
    """Keeps recent 2 kHz audio and saves event clips from it; feed and save from one thread."""

    def __init__(
        self,
        directory: Path,
        min_free_mb: float = 100.0,
        history_seconds: float = HISTORY_SECONDS,
        sample_rate: int = SAMPLE_RATE,
    ) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WhaleError(
                f"cannot create clips directory {self.directory}: {exc.strerror or exc}"
            ) from exc
        self.min_free_bytes = min_free_mb * 1024 * 1024
        self.sample_rate = sample_rate
        self._history = np.zeros(int(history_seconds * sample_rate), dtype=np.float32)
        self.samples_fed = 0  # absolute index of the next sample
        self.saved = 0
        self.skipped_low_disk = 0
        self.errors = 0
        self.last_error: str | None = None
        self.disk_low = False  # as of the last save attempt

    def feed(self, block: np.ndarray, start_sample: int | None = None) -> None:
        """Append audio (mono, 2 kHz, in [-1, 1]); only the last history_seconds are kept.

        `start_sample`, the stream index of the block's first sample, keeps clips aligned with
        event samples across a gap (samples lost upstream are held as silence); without it the
        block is taken to follow the previous one.
        """
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        if start_sample is not None:
            if start_sample > self.samples_fed:
                gap = start_sample - self.samples_fed
                self._append(np.zeros(min(gap, len(self._history)), dtype=np.float32))
                self.samples_fed = start_sample
            elif start_sample < self.samples_fed:
                block = block[self.samples_fed - start_sample :]  # already held
        self._append(block)
        self.samples_fed += len(block)

    def _append(self, block: np.ndarray) -> None:
        size = len(self._history)
        n = len(block)
        if n >= size:
            self._history[:] = block[len(block) - size :]
        elif n > 0:
            self._history[: size - n] = self._history[n:]
            self._history[size - n :] = block

    def audio(self, start_sample: int, end_sample: int) -> np.ndarray:
        """Stream samples [start, end) still in the history (clipped to what is held)."""
        first_held = max(0, self.samples_fed - len(self._history))
        start = max(start_sample, first_held)
        end = min(end_sample, self.samples_fed)
        if end <= start:
            return np.zeros(0, dtype=np.float32)
        offset = len(self._history) - self.samples_fed
        return self._history[start + offset : end + offset].copy()

    def stats(self) -> dict:
        """Counters for the daemon's status/heartbeat."""
        return {
            "saved": self.saved,
            "skipped_low_disk": self.skipped_low_disk,
            "errors": self.errors,
            "last_error": self.last_error,
            "disk_low": self.disk_low,
        }

    def _fail(self, message: str) -> None:
        self.errors += 1
        self.last_error = message
        log.warning("clip not saved: %s", message)

    def save(self, event: dict, start_sample: int, end_sample: int) -> Path | None:
        """Write `<id>.flac` (event +- 1 s, PCM_16) and `<id>.png`; the FLAC path, or None."""
        event_id = str(event.get("id", ""))
        if not _SAFE_ID.fullmatch(event_id):
            self._fail(f"event id {event_id!r} is not a safe file name")
            return None
        try:
            free = shutil.disk_usage(self.directory).free
        except OSError as exc:
            self._fail(f"cannot check free space in {self.directory}: {exc.strerror or exc}")
            return None
        self.disk_low = free < self.min_free_bytes
        if self.disk_low:
            self.skipped_low_disk += 1
            return None
        margin = round(MARGIN_SECONDS * self.sample_rate)
        audio = self.audio(start_sample - margin, end_sample + margin)
        if len(audio) == 0:
            self._fail(f"audio of event {event_id} is no longer in the {self._span()} history")
            return None
        flac = self.directory / f"{event_id}.flac"
        png = flac.with_suffix(".png")
        try:
            _write_atomic(flac, lambda tmp: _write_flac(tmp, audio, self.sample_rate))
        except (OSError, RuntimeError, ValueError) as exc:  # soundfile errors are RuntimeErrors
            self._fail(f"cannot write {flac}: {exc}")
            return None
        self.saved += 1
        clip_start = max(start_sample - margin, self.samples_fed - len(self._history), 0)
        span = (
            (start_sample - clip_start) / self.sample_rate,
            (end_sample - clip_start) / self.sample_rate,
        )
        try:
            image = review_image(audio, self.sample_rate, span, event_title(event))
            _write_atomic(png, lambda tmp: write_png(tmp, image))
        except (OSError, ValueError) as exc:
            self._fail(f"cannot write {png}: {exc}")  # the audio is the part that matters
        return flac

    def _span(self) -> str:
        return f"{len(self._history) / self.sample_rate:g}-s"


def _write_flac(path: Path, audio: np.ndarray, sample_rate: int) -> None:
    sf.write(path, np.clip(audio, -1.0, 1.0), sample_rate, subtype="PCM_16", format="FLAC")


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary name so a reader never sees a half-written clip."""
    tmp = path.with_name(path.name + ".part")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
