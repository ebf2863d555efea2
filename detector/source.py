"""Where audio comes from: the `Source` both a replayed file and a sound card implement, and
`open_input`, which opens the one the settings name (failing early, before any audio).

The scoring loop reads a source's ring; a card lost mid-run is replaced by `reopen()`, while a
file is never retried. Both stop the same way: `stop(timeout)`, abandoning a stuck driver.
"""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from detector.errors import UsageError
from detector.journal import say
from detector.ring import RingBuffer
from detector.settings import Settings

STOP_WAIT_S = 2.0  # how long a lost card may take to close before it is abandoned


class Source(Protocol):
    """A started-on-demand producer of audio blocks into `ring` at `samplerate`."""

    name: str
    samplerate: int
    ring: RingBuffer
    error: BaseException | None  # why it ended early, once the ring is closed

    def start(self) -> None: ...

    def stop(self, timeout: float | None = None) -> object: ...

    def describe(self) -> str:
        """What the start-up line says about it."""
        ...


@dataclass
class Input:
    """An opened source and how to carry on with it."""

    source: Source
    reopen: Callable[[], Source] | None  # live cards only: a fresh, started source
    stream_start: datetime | None  # None: live, the clock at the first sample
    notes: list[str] = field(default_factory=list)  # said once everything is open


def open_input(settings: Settings) -> Input | None:
    """The source the settings name; None (after a note) for a file shorter than one window."""
    if (settings.replay is None) == (settings.device is None):
        raise UsageError("give exactly one of --replay FILE or --device NAME (see --help)")
    if settings.replay is not None:
        return _open_replay(settings)
    return _open_device(settings)


def _open_replay(settings: Settings) -> Input | None:
    from detector.replay import ReplaySource
    from detector.timestamps import parse_start_time

    source = ReplaySource(
        settings.replay, RingBuffer(8 * 16384), settings.channel, settings.realtime
    )
    if source.info.duration_s * SAMPLE_RATE < WINDOW_SAMPLES:
        if source.info.truncation is not None:
            raise source.info.truncation
        say(
            f"{settings.replay} is {source.info.duration_s:.2f} s long, shorter than one "
            f"2-s window: nothing to score"
        )
        return None
    opened = Input(source, None, settings.start_time or parse_start_time(settings.replay.name))
    if source.info.header_note is not None:  # a header that understated the length
        opened.notes.append(f"{settings.replay}: {source.info.header_note}")
    if opened.stream_start is None:
        opened.stream_start = datetime.now(UTC)
        opened.notes.append(
            "no start time in the file name and no --start-time: times count from now"
        )
    return opened


def _open_device(settings: Settings) -> Input:
    from detector.device import DeviceSource, choose_samplerate, refresh_devices, resolve_device

    def open_device() -> DeviceSource:
        index = resolve_device(settings.device)
        # 60 s of room at the card's rate: a slow model call never drops audio
        ring = RingBuffer(60 * choose_samplerate(index, SAMPLE_RATE, settings.channel + 1))
        return DeviceSource(index, ring, settings.channel, settings.blocksize)

    def reopen() -> DeviceSource:
        refresh_devices()  # a replugged USB card has a new PortAudio entry
        fresh = open_device()
        fresh.start()
        return fresh

    return Input(open_device(), reopen, None)
