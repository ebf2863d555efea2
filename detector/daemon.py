"""The daemon's run, stage by stage: open everything, listen until done or stopped, sum up.

Opening fails early, before any audio, and every failure is a WhaleError (one line). Listening
always ends the same way, whatever stopped it: the source is stopped, the outputs deliver what
they hold, the log is closed, and the events the disk never took go to standard output.
"""

import os
import signal
import stat
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from detector.clock import ClockWatch
from detector.constants import SAMPLE_RATE
from detector.errors import ConfigError, WhaleError
from detector.eventlog import EventLog
from detector.journal import log as journal
from detector.journal import say
from detector.model import card_path, load_model
from detector.outputs import Output, build_outputs, close_all
from detector.pipeline import Listener
from detector.presets import choose_threshold
from detector.progress import Progress, open_progress
from detector.rates import speed
from detector.service import SystemdOutput
from detector.settings import Settings, window_hop_samples
from detector.source import STOP_WAIT_S, Input, open_input


def open_listener(settings: Settings) -> tuple[Listener, Input, list[Output]] | None:
    """Model, threshold, source, log and outputs; None for a file too short to score."""
    window_hop = window_hop_samples(settings.hop)
    model = load_model(settings.model, settings.provider, settings.threads)
    threshold, why = choose_threshold(
        model.card, card_path(model.path), settings.sensitivity, settings.threshold
    )
    opened = open_input(settings)
    if opened is None:
        return None
    _refuse_pipe(settings.events_log)
    log = EventLog(settings.events_log)
    try:
        outputs = build_outputs(settings)
    except BaseException:
        log.close()
        raise
    outputs.append(_progress(settings, opened, outputs))
    listener = Listener(
        model, threshold, window_hop, log, outputs, settings.station, batch=settings.batch,
        heartbeat_s=settings.heartbeat, stall_s=settings.stall_timeout,
        retry_max=settings.retry_max,
        clock=ClockWatch(opened.source.name) if opened.reopen is not None else None,
    )  # fmt: skip
    described = [o.describe() for o in outputs]
    opened.notes += [
        why,
        f"model {model.name} ({model.sha256[:12]}) on {model.provider}, threshold {threshold}; "
        f"{'; '.join([opened.source.describe(), *filter(None, described)])}; "
        f"log {settings.events_log}",
    ]
    return listener, opened, outputs


def _progress(settings: Settings, opened: Input, outputs: list[Output]) -> Progress:
    """The run's progress, on the terminal (unless --quiet) and in systemd's STATUS."""
    info = getattr(opened.source, "info", None)  # a replay knows its length: an ETA
    total_s = info.duration_s if opened.reopen is None and info is not None else None
    progress = open_progress(total_s, settings.quiet)
    for output in outputs:
        if isinstance(output, SystemdOutput):
            output.follow(progress)
    return progress


def _refuse_pipe(path: object) -> None:
    """Opening a FIFO (or a socket) to append would wait for a reader forever, before any audio:
    an event log must be a file (or a device, such as /dev/full in a disk-full drill)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # absent (created) or unreadable: EventLog says why
    if stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISDIR(mode):
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a socket"
        kind = "a directory" if stat.S_ISDIR(mode) else kind
        raise ConfigError(f"event log {path} is {kind}, not a file")


@contextmanager
def stop_on_signals(listener: Listener) -> Iterator[None]:
    """SIGINT/SIGTERM stop the listener cleanly; the previous handlers come back after."""

    def on_signal(signum: int, frame: object) -> None:
        listener.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():  # run() may be embedded: leave signals as found
            signal.signal(sig, handler)


def listen(
    listener: Listener, opened: Input, outputs: list[Output], settings: Settings
) -> BaseException | None:
    """Run until the source ends or a signal; the error that ended it early, if any."""
    error: BaseException | None = None
    with stop_on_signals(listener):
        for note in opened.notes:  # after the handlers: a supervisor may already stop us
            say(note)
        source = opened.source
        try:
            for output in outputs:
                output.prepare(lambda: listener.stopped)
            # live: the clock at the first sample, then counted
            start = opened.stream_start or datetime.now(UTC)
            if not listener.stopped:
                source.start()
                listener.run(source, start, opened.reopen)
                source = listener.source  # a reopened card replaces the first one
                if opened.reopen is None:  # a lost card is retried, never an error
                    error = source.error or _silent_throughout(listener, settings)
        except WhaleError as failure:  # mid-stream (a model breaking its contract)
            error = failure
        finally:
            source.stop(timeout=STOP_WAIT_S)  # a card stuck in its driver is abandoned
            close_all(outputs)
            _close_log(listener.log)
    return error


def _silent_throughout(listener: Listener, settings: Settings) -> WhaleError | None:
    if listener.stopped or listener.silence.heard:
        return None
    return WhaleError(
        f"{settings.replay}: digital silence from start to end (every sample 0): no call could "
        f"be heard; check the recorder and its hydrophone"
    )


def _close_log(log: EventLog) -> None:
    """Close the log; events the disk never took go to standard output, the last place left
    (here, so that an error mid-stream cannot lose them either)."""
    log.close()
    sys.stdout.writelines(line.decode("utf-8") for line in log.pending)
    sys.stdout.flush()


def summary(listener: Listener, wall_s: float, paced_by: str | None = None) -> str:
    """The last line: audio done, the wall clock's speed (from the run's start: start-up,
    decoding and resampling included) with the scoring loop's own beside it, events, drops.
    `paced_by` names what held the run to 1x (`--realtime`, the card), said beside the figure."""
    c = listener.counters
    audio_s = c.samples_in / SAMPLE_RATE
    loop = f"scoring loop {speed(audio_s, c.processing_s)}"
    how = f"paced at 1x by {paced_by}; {loop}" if paced_by else loop
    dropped = listener.dropped if listener.source else 0
    return (
        f"done: {audio_s:.1f} s of audio in {wall_s:.{2 if wall_s < 10 else 1}f} s, "
        f"{speed(audio_s, wall_s)} real time "
        f"({how}), {listener.events} event(s), {dropped} dropped sample(s)"
    )


def finish(log: EventLog, error: BaseException | None, settings: Settings) -> int:
    """The exit status; an error (with any unlogged events) is raised as one line."""
    unlogged = (
        f"cannot write event log {settings.events_log}: {log.error}; {len(log.pending)} "
        f"event(s) published but never logged are on standard output"
    )
    if error is not None:
        message = (
            str(error) if isinstance(error, WhaleError) else f"{type(error).__name__}: {error}"
        )
        raise WhaleError(f"{message}; also, {unlogged}" if log.pending else message)
    if log.pending:
        journal.error(unlogged)
    return 2 if log.pending else 0
