"""Live input: find the hydrophone's sound card and copy its samples into the ring.

The PortAudio callback runs on a real-time thread, so it only copies one channel into the
ring's non-blocking `write` (a full ring counts drops, it never waits); everything slow
(resampling to 2 kHz, scoring) happens on the consumer side, in the daemon's loop.

sounddevice is imported inside functions: importing `detector` must stay cheap, and a machine
without PortAudio must get a one-line WhaleError, not an ImportError traceback.
"""

from __future__ import annotations

import re
import threading
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np

from detector.constants import SAMPLE_RATE
from detector.errors import WhaleError

if TYPE_CHECKING:
    from detector.ring import RingBuffer

# int16 everywhere: every card supports it, and ALSA's `file` PCM (used by the tests) hands
# over its file's bytes in whatever format the stream asks for, so float32 would read garbage.
STREAM_DTYPE = "int16"
INT16_SCALE = 1.0 / 32768.0

# "hw:1", "hw:1,2", "plughw:1,0" as typed at an ALSA prompt; PortAudio names say "(hw:1,0)"
_ALSA_CARD = re.compile(r"^(?:plug)?hw:(\d+)(?:,(\d+))?$")


def _sounddevice() -> ModuleType:
    """Import sounddevice (and so PortAudio) on first use; a missing library is a user error."""
    try:
        import sounddevice
    except (ImportError, OSError) as exc:
        raise WhaleError(
            f"live audio needs PortAudio, which could not be loaded ({exc}); "
            "install libportaudio2 or replay a file instead"
        ) from exc
    return sounddevice


def list_input_devices() -> list[dict[str, Any]]:
    """Every PortAudio device with at least one input channel, in PortAudio's index order."""
    sd = _sounddevice()
    hostapis = sd.query_hostapis()
    inputs = []
    for index, device in enumerate(sd.query_devices()):
        if device["max_input_channels"] <= 0:
            continue
        inputs.append(
            {
                "index": index,
                "name": device["name"],
                "max_input_channels": int(device["max_input_channels"]),
                "default_samplerate": float(device["default_samplerate"]),
                "hostapi": hostapis[device["hostapi"]]["name"],
            }
        )
    return inputs


def format_device_list() -> str:
    """The `whale-listen --list-devices` table: what to pass to --device, one input per line."""
    inputs = list_input_devices()
    if not inputs:
        return "no input devices found"
    lines = [f"{'index':>5}  {'channels':>8}  {'rate':>7}  {'host API':<10}  name"]
    for d in inputs:
        lines.append(
            f"{d['index']:>5}  {d['max_input_channels']:>8}  {d['default_samplerate']:>7.0f}  "
            f"{d['hostapi']:<10}  {d['name']}"
        )
    return "\n".join(lines)


def _describe(devices: list[dict[str, Any]]) -> str:
    return ", ".join(f"{d['index']} {d['name']!r}" for d in devices) or "none"


def resolve_device(spec: str | int) -> int:
    """Turn what a user typed for --device into a PortAudio input device index.

    Order: an index; an ALSA card name (hw:1 -> the input named "(hw:1,0)"); an exact device
    name; a case-insensitive piece of one. Anything unknown or ambiguous is a WhaleError that
    lists the candidates, so the user can fix the flag without another command.
    """
    inputs = list_input_devices()
    if isinstance(spec, int) or (isinstance(spec, str) and spec.strip().isdigit()):
        index = int(spec)
        if any(d["index"] == index for d in inputs):
            return index
        raise WhaleError(f"device {index} is not an input device; inputs: {_describe(inputs)}")

    text = spec.strip()
    card = _ALSA_CARD.match(text)
    if card:
        tag = f"(hw:{card.group(1)},{card.group(2) or 0})"
        found = [d for d in inputs if tag in d["name"]]
        if len(found) == 1:
            return found[0]["index"]
        if len(found) > 1:
            raise WhaleError(f"ambiguous input device {text!r}; matches: {_describe(found)}")

    for matches in (
        [d for d in inputs if d["name"] == text],
        [d for d in inputs if text.lower() in d["name"].lower()],
    ):
        if len(matches) == 1:
            return matches[0]["index"]
        if len(matches) > 1:
            raise WhaleError(f"ambiguous input device {text!r}; matches: {_describe(matches)}")
    raise WhaleError(f"unknown input device {text!r}; inputs: {_describe(inputs)}")


def refresh_devices() -> bool:
    """Re-read PortAudio's device list, which it takes once at start: a replugged USB card
    comes back as a new entry. Restarting PortAudio closes every stream, so it is skipped
    (False) while any stream is still open, e.g. one abandoned inside a stuck driver."""
    sd = _sounddevice()
    if DeviceSource.open_streams:
        return False
    sd._terminate()
    sd._initialize()
    return True


def choose_samplerate(index: int, preferred: int = SAMPLE_RATE, channels: int = 1) -> int:
    """Record at 2 kHz when the device can (no resampling), else at its own default rate."""
    sd = _sounddevice()
    try:
        sd.check_input_settings(
            device=index, samplerate=preferred, channels=channels, dtype=STREAM_DTYPE
        )
        return int(preferred)
    except (sd.PortAudioError, ValueError):
        return int(sd.query_devices(index)["default_samplerate"])


class DeviceSource:
    """A started-on-demand PortAudio input stream that feeds one channel into a RingBuffer.

    `samplerate` is the rate the device records at; when it is not 2 kHz the consumer resamples
    (the daemon's loop does). If the stream dies, `error` holds why and the ring is closed, so the
    consumer drains what arrived and then learns the cause.
    """

    open_streams = 0  # streams not yet closed, abandoned ones included (see refresh_devices)

    def __init__(self, spec: str | int, ring: RingBuffer, channel: int = 0, blocksize: int = 0):
        sd = _sounddevice()
        if channel < 0:
            raise WhaleError(f"input channel must be >= 0, got {channel}")
        self.index = resolve_device(spec)
        info = sd.query_devices(self.index)
        self.name: str = info["name"]
        if channel >= info["max_input_channels"]:
            raise WhaleError(
                f"input device {self.name!r} has {info['max_input_channels']} channel(s); "
                f"channel {channel} does not exist (channels count from 0)"
            )
        self.ring = ring
        self.channel = channel
        self.samplerate = choose_samplerate(self.index, SAMPLE_RATE, channels=channel + 1)
        self.error: BaseException | None = None
        self.input_overflows = 0  # callbacks PortAudio flagged: the card had to drop input
        self.last_status = ""  # text of the most recent non-empty callback status
        self._stopping = False
        self._closer: threading.Thread | None = None
        self._close_error: BaseException | None = None
        try:
            self._stream = sd.InputStream(
                device=self.index,
                samplerate=self.samplerate,
                channels=channel + 1,
                dtype=STREAM_DTYPE,
                blocksize=blocksize,
                callback=self._callback,
                finished_callback=self._finished,
            )
            DeviceSource.open_streams += 1
        except (sd.PortAudioError, ValueError) as exc:
            raise WhaleError(
                f"cannot open input device {self.name!r} at {self.samplerate} Hz "
                f"with {channel + 1} channel(s): {exc}"
            ) from exc

    def _callback(self, indata: np.ndarray, frames: int, time: Any, status: Any) -> None:
        """PortAudio's real-time thread: copy, never wait, never raise into C."""
        try:
            if status:
                self.last_status = str(status)
                if status.input_overflow:
                    self.input_overflows += 1
            self.ring.write(indata[:, self.channel].astype(np.float32) * INT16_SCALE)
        except Exception as exc:  # kept for the consumer; the stream is aborted
            self.error = exc
            raise _sounddevice().CallbackAbort from exc

    def _finished(self) -> None:
        """Stream ended: on purpose (stop) or because the device went away."""
        if not self._stopping and self.error is None:
            self.error = WhaleError(f"input device {self.name!r} stopped delivering audio")
        self.ring.close()

    def start(self) -> None:
        sd = _sounddevice()
        try:
            self._stream.start()
        except sd.PortAudioError as exc:
            raise WhaleError(f"cannot start input device {self.name!r}: {exc}") from exc

    def stop(self, timeout: float | None = None) -> bool:
        """Stop and close the stream and close the ring, so the consumer drains and ends.

        A driver stuck in a read (a card that stopped delivering) can block PortAudio's abort;
        with `timeout` the stream is then abandoned to a daemon thread. True once closed.
        """
        if not self._stopping:
            self._stopping = True
            self.ring.close()
            self._closer = threading.Thread(target=self._close_stream, daemon=True)
            self._closer.start()
        self._closer.join(timeout)
        if self._closer.is_alive():
            return False
        if self._close_error is not None:
            error, self._close_error = self._close_error, None
            raise error
        return True

    def describe(self) -> str:
        return f"device {self.name!r} at {self.samplerate} Hz"

    def _close_stream(self) -> None:
        try:
            self._stream.abort()
            self._stream.close()
            DeviceSource.open_streams -= 1
        except BaseException as exc:  # re-raised by stop() in the caller's thread
            self._close_error = exc

    def __enter__(self) -> DeviceSource:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
