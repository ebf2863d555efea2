"""Where detections go after the durable event log: one list of `Output`s, built from the settings.

The event log is not an output: it stays first and is the source of truth (an event is fsynced,
or held in memory, before any output sees it). Outputs are called in list order; every method
has a do-nothing default, so an output overrides only what it needs. A new output is one module
with `open_output(settings)` plus one setting declaration naming that module (`output=`).
"""

from collections.abc import Callable
from importlib import import_module

import numpy as np

from detector.events import RawEvent
from detector.journal import log
from detector.records import Event
from detector.settings import OPTIONS, Settings


class Output:
    """A consumer of the loop's events and status. Must never block scoring for long."""

    name = "output"

    def prepare(self, stopped: Callable[[], bool]) -> None:
        """Before the source starts; may wait (ZeroMQ waits for subscribers) until `stopped()`."""

    def on_start(self) -> None:
        """Everything is open and the loop is about to read the first audio."""

    def on_audio(self, block: np.ndarray, start_sample: int) -> None:
        """Every 2 kHz block, in stream order; `start_sample` skips any gap."""

    def annotate(self, event: Event, raw: RawEvent) -> dict[str, object] | None:
        """Before the event is logged: values for its declared optional fields (the clip's path),
        which only this hook may set (`Event.OPTIONAL`)."""
        return None

    def on_event(self, event: dict) -> None:
        """After the event is durable (or held by the log): deliver its JSON object."""

    def on_tick(self) -> None:
        """Once per loop iteration: proof the loop is alive (the systemd watchdog)."""

    def on_status(self, status: dict) -> None:
        """Each heartbeat: the `Status` record's JSON object."""

    def status_fields(self) -> dict:
        """Fields this output adds to the status message (its own counters, declared optional
        fields of `Status`)."""
        return {}

    def on_stop(self) -> None:
        """The loop is ending: the open event is about to be flushed."""

    def describe(self) -> str | None:
        """Its part of the start-up line, if any."""
        return None

    def close(self) -> None:
        """End of the run, after the last event: deliver what is queued, release resources."""


def build_outputs(settings: Settings) -> list[Output]:
    """systemd first, then one output per set option that names an output module, in order."""
    from detector.notify import Notifier
    from detector.service import SystemdOutput

    outputs: list[Output] = [SystemdOutput(Notifier())]
    try:
        for option in OPTIONS:
            if option.output is not None and getattr(settings, option.name):
                outputs.append(import_module(option.output).open_output(settings))
    except BaseException:
        close_all(outputs)
        raise
    return outputs


def close_all(outputs: list[Output]) -> None:
    """Close every output, even when one fails: a broken one must not keep the others' events."""
    for output in outputs:
        try:
            output.close()
        except Exception as exc:  # noqa: BLE001 - said, then the next one is closed
            log.warning("output %s did not close cleanly: %s", output.name, exc)
