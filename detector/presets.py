"""The threshold in force: `--threshold`, else the model card's preset for `--sensitivity`.

A card may carry `presets` (high / balanced / strict), each a threshold with the figures it was
measured at (leave-one-day-out cross-validation), so an operator picks an operating point by its
expected recall and false-alarm rate instead of by a bare probability. Older or bare cards have
only `threshold`, which still works. A malformed preset is an error naming the card.
"""

import math
from pathlib import Path

from detector.errors import ConfigError


def _fraction(value: object, absent_ok: bool) -> bool:
    if value is None:
        return absent_ok
    return (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and math.isfinite(value)
        and 0 <= value <= 1
    )


def _bad_preset(preset: object) -> str | None:
    """Why a preset is unusable, or None."""
    if not isinstance(preset, dict):
        return "not an object"
    if not _fraction(preset.get("threshold"), absent_ok=False):
        return f"threshold {preset.get('threshold')!r} is not a number in [0, 1]"
    for key in ("recall", "precision"):
        if not _fraction(preset.get(key), absent_ok=True):
            return f"{key} {preset.get(key)!r} is not a number in [0, 1]"
    alarms = preset.get("background_false_alarms_per_hour")
    if alarms is not None and not (
        isinstance(alarms, int | float)
        and not isinstance(alarms, bool)
        and math.isfinite(alarms)
        and alarms >= 0
    ):
        return f"background_false_alarms_per_hour {alarms!r} is not a number >= 0"
    return None


def check_presets(card: dict, card_file: Path) -> dict | None:
    """The card's presets, validated; None when it has none."""
    presets = card.get("presets")
    if presets is None:
        return None
    if not isinstance(presets, dict):
        raise ConfigError(f"model card {card_file}: presets is not an object")
    for name, preset in presets.items():
        why = _bad_preset(preset)
        if why is not None:
            raise ConfigError(f"model card {card_file}: preset {name!r}: {why}")
    return presets


def _figures(preset: dict) -> str:
    parts = [f"{key} {preset[key]:g}" for key in ("recall", "precision") if key in preset]
    alarms = preset.get("background_false_alarms_per_hour")
    if alarms is not None:
        parts.append(f"{alarms:g} false alarms/h on unseen background")
    return f" (cross-validated on unseen days: {', '.join(parts)})" if parts else ""


def choose_threshold(
    card: dict, card_file: Path, sensitivity: str, given: float | None
) -> tuple[float, str]:
    """(threshold, the start-up line that says where it came from)."""
    presets = check_presets(card, card_file)
    if given is not None:
        return given, f"--threshold {given:g} overrides the {sensitivity!r} preset"
    if presets is None:
        value = card.get("threshold")
        if value is None:
            raise ConfigError(f"model card {card_file} has no threshold: give --threshold")
        if not _fraction(value, absent_ok=False):
            raise ConfigError(f"model card {card_file}: threshold {value!r} is not in [0, 1]")
        return float(value), (
            f"model card {card_file} has no presets: --sensitivity ignored, "
            f"card threshold {value:g}"
        )
    if sensitivity not in presets:
        raise ConfigError(
            f"model card {card_file} has no {sensitivity!r} preset (has: {', '.join(presets)})"
        )
    preset = presets[sensitivity]
    threshold = float(preset["threshold"])
    return threshold, f"sensitivity {sensitivity}: threshold {threshold:g}{_figures(preset)}"
