"""The model card's schema: every field the daemon reads, typed and bounded, checked before use.

A card is JSON a person may edit or a half-finished export may write; a `"threshold": "abc"`,
a `frame_hop` of 0 or an `n_fft` of 1e9 would otherwise surface as a traceback mid-stream or,
worse, be used. Fields the daemon does not read (metrics, training data) are not checked.
"""

import math
import re
from pathlib import Path

from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from detector.errors import ConfigError

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_FILE_NAME = re.compile(r"^[^/\\\x00]+\.onnx$")  # a file beside the card, never a path


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _is_int(value: object, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value <= hi


def _top_level(card: dict) -> str | None:
    """Why the card's own fields are unusable, or None."""
    if "name" in card and not (isinstance(card["name"], str) and card["name"].isprintable()):
        return f"name {card['name']!r} is not a printable string"
    if "sha256" in card and not (isinstance(card["sha256"], str) and _SHA256.match(card["sha256"])):
        return f"sha256 {card['sha256']!r} is not 64 hex digits"
    if "sample_rate" in card and card["sample_rate"] != SAMPLE_RATE:
        return f"sample_rate {card['sample_rate']!r}: the daemon runs at {SAMPLE_RATE} Hz"
    if "window_samples" in card and card["window_samples"] != WINDOW_SAMPLES:
        return f"window_samples {card['window_samples']!r}: the daemon's are {WINDOW_SAMPLES}"
    threshold = card.get("threshold")
    if threshold is not None and not (_is_number(threshold) and 0 <= threshold <= 1):
        return f"threshold {threshold!r} is not a number in [0, 1]"
    return None


def _streaming(spec: object) -> str | None:
    """Why the streaming halves' description is unusable, or None."""
    if not isinstance(spec, dict):
        return "streaming is not an object"
    optional = ("stream",) if "stream" in spec else ()  # a pcen-stream model's third graph
    for half in ("frames", "head", *optional):
        if not (isinstance(spec.get(half), str) and _FILE_NAME.match(spec[half])):
            return f"streaming.{half} {spec.get(half)!r} is not an .onnx file name"
        digest = spec.get(f"{half}_sha256")
        if digest is not None and not (isinstance(digest, str) and _SHA256.match(digest)):
            return f"streaming.{half}_sha256 {digest!r} is not 64 hex digits"
    if spec["frames"] == spec["head"]:
        return f"streaming.frames and streaming.head are both {spec['frames']!r}"
    for key in ("frame_hop", "n_fft", "frames_per_window"):
        if not _is_int(spec.get(key), 1, WINDOW_SAMPLES):
            return f"streaming.{key} {spec.get(key)!r} is not an integer in 1..{WINDOW_SAMPLES}"
    frames = (WINDOW_SAMPLES - spec["n_fft"]) // spec["frame_hop"] + 1
    if spec["frames_per_window"] != frames:
        return (
            f"streaming.frames_per_window {spec['frames_per_window']} does not match n_fft "
            f"{spec['n_fft']} and frame_hop {spec['frame_hop']} ({frames} frames a window)"
        )
    if not optional:
        return None
    if spec["stream"] in (spec["frames"], spec["head"]):
        return f"streaming.stream {spec['stream']!r} is also another half"
    if not _is_int(spec.get("stream_window_hop"), 1, WINDOW_SAMPLES):
        hop = spec.get("stream_window_hop")
        return f"streaming.stream_window_hop {hop!r} is not an integer in 1..{WINDOW_SAMPLES}"
    return None


def check_card(card: dict, path: Path) -> dict:
    """The card, once every field the daemon uses has the right type and range."""
    why = _top_level(card)
    if why is None and "streaming" in card:
        why = _streaming(card["streaming"])
    if why is not None:
        raise ConfigError(f"model card {path}: {why}")
    return card
