"""An event's clip on shore: found by the event's id only, played back audibly, drawn.

Clips reach the shore as the daemon's --clips folder synced (rsync) into one folder, `--clips
DIR`; the event's `clip` field names the file the daemon wrote. Only that file's base name is
used, it must look like a clip name, and it must resolve to a plain file directly inside DIR:
nothing the web sends becomes a path.

Browsers do not decode 2 kHz audio (Chromium's lowest sample rate is 3 kHz), and a 50-250 Hz
up-call is hard to hear at 1x anyway, so the clip is served as an 8 kHz WAV: at 4x its own
samples are declared at 8 kHz (four times the speed and pitch: 200-1000 Hz, where ears are
good), at 2x and 1x it is first resampled by 2 or 4.
"""

import io
import re
import wave
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from detector.clips import MARGIN_SECONDS, event_title, png_bytes, review_image
from detector.constants import SAMPLE_RATE

PLAYBACK_RATE = 8000  # the WAV's declared rate, whatever the speed
SPEEDS = (1, 2, 4)
_CLIP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\.flac", re.IGNORECASE)


def clip_path(clips_dir: Path | None, clip: str | None) -> Path | None:
    """The event's clip inside clips_dir, or None (no folder, no clip, or not a safe name)."""
    if clips_dir is None or not clip:
        return None
    name = PureWindowsPath(PurePosixPath(clip).name).name  # a buoy's path, either convention
    if not _CLIP_NAME.fullmatch(name):
        return None
    root = Path(clips_dir).resolve()
    path = (root / name).resolve()
    if path.parent != root or not path.is_file():
        return None
    return path


def read_clip(path: Path) -> np.ndarray:
    audio, rate = sf.read(path, dtype="float32", always_2d=True)
    if rate != SAMPLE_RATE:  # the daemon writes 2 kHz; anything else is resampled to it
        audio = resample_poly(audio, SAMPLE_RATE, rate, axis=0).astype(np.float32)
    return audio[:, 0]


def wav_bytes(audio: np.ndarray, speed: int) -> bytes:
    """16-bit mono WAV at PLAYBACK_RATE that plays the 2 kHz audio `speed` times faster."""
    if speed not in SPEEDS:
        raise ValueError(f"speed must be one of {SPEEDS}")
    up = PLAYBACK_RATE // (SAMPLE_RATE * speed)
    x = np.asarray(audio, dtype=np.float64)
    if up > 1:
        x = resample_poly(x, up, 1)
    peak = float(np.max(np.abs(x))) if len(x) else 0.0
    x = x / peak * 0.9 if peak > 0 else x  # quiet clips played at a useful level
    pcm = np.round(np.clip(x, -1.0, 1.0) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(PLAYBACK_RATE)
        out.writeframes(pcm.tobytes())
    return buffer.getvalue()


def clip_span(clip_seconds: float, duration_s: float) -> tuple[float, float]:
    """Where the event lies in its clip: MARGIN_SECONDS in, unless the clip was cut shorter."""
    start = max(0.0, min(MARGIN_SECONDS, clip_seconds - duration_s))
    return start, min(start + duration_s, clip_seconds)


def spectrogram_png(path: Path, event: dict, duration_s: float) -> bytes:
    """The daemon's review PNG beside the clip, or one drawn the same way from the clip."""
    beside = path.with_suffix(".png")
    if beside.is_file() and beside.resolve().parent == path.parent:  # no link out of DIR
        return beside.read_bytes()
    audio = read_clip(path)
    span = clip_span(len(audio) / SAMPLE_RATE, duration_s)
    return png_bytes(review_image(audio, SAMPLE_RATE, span, event_title(event)))
