"""`whale-listen`: the daemon's command line.

`whale-listen --replay FILE` or `whale-listen --device NAME` runs the listener;
`whale-listen subscribe ENDPOINT` prints what a running listener publishes.
Every failure a user can cause is one line on stderr and a non-zero exit, never a traceback,
and whatever was detected before it is already in the event log.
"""

import json
import math
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import click

from detector import __version__
from detector.errors import WhaleError
from detector.settings import DEFAULT_ENDPOINT, Settings, load_config, parse_time


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange, also refusing nan and inf: nan passes every bound (comparisons with it
    are false), and a nan threshold would never fire while a nan hop crashes."""

    def convert(self, value: object, param: object, ctx: object) -> float:
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number


EXIT_ERROR = 2


def fail(message: str) -> "None":
    click.echo(f"whale-listen: error: {message}", err=True)
    sys.exit(EXIT_ERROR)


def _start_time(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_time(value)
    except ValueError as e:
        raise WhaleError(f"--start-time: {e}") from None


class OneLineErrors(click.Group):
    """Click's usage errors (a bad option value, an unknown option) in the daemon's one-line form,
    so every mistake reads the same in a journal: `whale-listen: error: ...`, exit 2."""

    def main(self, *args: object, **kwargs: object) -> object:
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)  # the caller handles click's exceptions
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as e:
            fail(e.format_message())
        except click.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)


def gather_settings(ctx: click.Context, config: Path | None) -> Settings:
    """Defaults < config file < command line (only options the user actually typed)."""
    base = load_config(config) if config else {}
    given = {}
    for name, value in ctx.params.items():
        source = ctx.get_parameter_source(name)
        if (
            source is click.core.ParameterSource.COMMANDLINE
            and name in Settings.__dataclass_fields__
        ):
            given[name] = value
    if "publish" in given:
        given["publish"] = tuple(given["publish"])
    if "start_time" in given:
        given["start_time"] = _start_time(given["start_time"])
    for key in ("model", "events_log", "replay", "clips"):
        if key in given and given[key] is not None:
            given[key] = Path(given[key])
    if "replay" in given or "device" in given:
        # one source: `--replay` on the command line replaces a configured device, and vice versa
        base = {k: v for k, v in base.items() if k not in ("replay", "device")}
    return Settings().with_overrides(**base).with_overrides(**given)


@click.group(
    cls=OneLineErrors,
    invoke_without_command=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)
@click.option(
    "--replay",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Replay an AIFF/WAV/FLAC recording (any sample rate) instead of a device.",
)
@click.option("--device", help="Sound card: index, name, or ALSA card such as hw:1.")
@click.option("--list-devices", is_flag=True, help="List input devices and exit.")
@click.option("--channel", type=click.IntRange(0), help="Input channel, from 0.  [default: 0]")
@click.option(
    "--realtime/--no-realtime",
    default=None,
    help="Pace a replay at 1x like a live device.  [default: as fast as possible]",
)
@click.option(
    "--hop",
    type=FiniteFloatRange(0, 2, min_open=True),
    help="Seconds between 2-s windows.  [default: 0.5]",
)
@click.option(
    "--threshold",
    type=FiniteFloatRange(0, 1),
    help="Event threshold on the up-call probability.  [default: the model card's]",
)
@click.option(
    "--model",
    type=click.Path(dir_okay=False, path_type=Path),
    help="ONNX model.  [default: the shipped model]",
)
@click.option(
    "--provider",
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="onnxruntime execution provider.  [default: auto]",
)
@click.option(
    "--threads", type=click.IntRange(0), help="Model threads, 0 = all cores.  [default: 1]"
)
@click.option("--batch", type=click.IntRange(1), help="Windows per model call.  [default: 64]")
@click.option("--station", help="Station name in events.  [default: host name]")
@click.option("--start-time", help="UTC time of a replay's first sample (ISO-8601).")
@click.option(
    "--publish",
    multiple=True,
    help=f"ZeroMQ endpoint to bind; repeatable.  [default: {DEFAULT_ENDPOINT}]",
)
@click.option(
    "--heartbeat",
    type=FiniteFloatRange(0, min_open=True),
    help="Seconds between status messages.  [default: 10]",
)
@click.option(
    "--events-log",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Durable JSON-lines log of every event.  [default: whale-listen-events.jsonl]",
)
@click.option(
    "--wait-subscribers",
    type=click.IntRange(0),
    help="Replay: wait for this many subscribers before starting.  [default: 0]",
)
@click.option(
    "--linger",
    type=FiniteFloatRange(0),
    help="Seconds to deliver the last events before exit.  [default: 2]",
)
@click.option(
    "--clips",
    type=click.Path(file_okay=False, path_type=Path),
    help="Save each event's audio (+- 1 s, FLAC) and spectrogram (PNG) in this directory.",
)
@click.option(
    "--min-free-mb",
    type=FiniteFloatRange(0),
    help="Skip clips when the disk has less free space than this (MiB).  [default: 100]",
)
@click.option(
    "--stall-timeout",
    type=FiniteFloatRange(0, min_open=True),
    help="Device: seconds without audio before the card counts as down.  [default: 10]",
)
@click.option(
    "--retry-max",
    type=FiniteFloatRange(0, min_open=True),
    help="Device: longest wait (s) between attempts to reopen a lost card.  [default: 30]",
)
@click.option(
    "--blocksize",
    type=click.IntRange(0),
    help="Device: frames per PortAudio callback, 0 = PortAudio's choice.  [default: 0]",
)
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML config file; the command line overrides it.",
)
@click.version_option(__version__, prog_name="whale-listen")
@click.pass_context
def main(ctx: click.Context, list_devices: bool, config: Path | None, **_: object) -> None:
    """Listen for North Atlantic right whale up-calls and publish them on ZeroMQ."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        if list_devices:
            from detector.device import format_device_list

            click.echo(format_device_list())
            return
        settings = gather_settings(ctx, config)
        sys.exit(run(settings))
    except WhaleError as e:
        fail(str(e))
    except KeyboardInterrupt:  # Ctrl-C before the listener's own handler is installed
        sys.exit(130)


def run(settings: Settings) -> int:
    """Open everything (failing early, before any audio), then listen until done or stopped."""
    from detector.clips import ClipWriter
    from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
    from detector.events import parse_start_time
    from detector.model import load_model
    from detector.notify import Notifier
    from detector.pipeline import READ_TIMEOUT_S, STOP_WAIT_S, Listener, say
    from detector.publish import EventLog, Publisher
    from detector.ring import RingBuffer
    from detector.service import AllHooks, ClipHooks, SystemdHooks

    if (settings.replay is None) == (settings.device is None):
        raise WhaleError("give exactly one of --replay FILE or --device NAME (see --help)")
    hop = int(round(settings.hop * SAMPLE_RATE))
    if hop < 1:
        raise WhaleError(f"hop {settings.hop} s is under one sample at {SAMPLE_RATE} Hz")
    model = load_model(settings.model, settings.provider, settings.threads)
    threshold = settings.threshold if settings.threshold is not None else model.threshold
    if threshold is None:
        raise WhaleError(f"model {model.path} has no card threshold: give --threshold")

    notes = []  # said once everything is open, so a start-up failure is the only line
    if settings.replay is not None:
        from detector.replay import ReplaySource

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
            return 0
        stream_start = settings.start_time or parse_start_time(settings.replay.name)
        if stream_start is None:
            stream_start = datetime.now(UTC)
            notes.append("no start time in the file name and no --start-time: times count from now")
        info = source.info
        what = f"replay {settings.replay} ({info.duration_s:.1f} s at {info.samplerate} Hz)"
    else:
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

        source = open_device()
        stream_start = None
        what = f"device {source.name!r} at {source.samplerate} Hz"

    hooks = [SystemdHooks(Notifier())]
    if settings.clips is not None:
        hooks.append(ClipHooks(ClipWriter(settings.clips, settings.min_free_mb)))
        what += f"; clips in {settings.clips}"
    log = EventLog(settings.events_log)
    try:
        publisher = Publisher(list(settings.publish))
    except WhaleError:
        log.close()
        raise
    listener = Listener(
        model,
        threshold,
        hop,
        log,
        publisher,
        settings.station,
        batch=settings.batch,
        heartbeat_s=settings.heartbeat,
        hooks=AllHooks(*hooks),
        stall_s=settings.stall_timeout,
        retry_max=settings.retry_max,
    )

    def on_signal(signum: int, frame: object) -> None:
        listener.stop()

    # before the start-up note, so a supervisor that reacts to it can already stop us cleanly
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    for text in notes:
        say(text)
    say(
        f"model {model.name} ({model.sha256[:12]}) on {model.provider}, threshold {threshold}; "
        f"{what}; publishing on {', '.join(publisher.endpoints)}; log {settings.events_log}"
    )

    error: BaseException | None = None
    counters = listener.counters
    try:
        if settings.wait_subscribers:
            got = 0
            while got < settings.wait_subscribers and not listener.stopped:
                # in slices, so SIGTERM/SIGINT end the wait too
                got = publisher.wait_subscribers(settings.wait_subscribers, timeout=READ_TIMEOUT_S)
            say(f"{got} subscriber(s) connected")
        if stream_start is None:
            stream_start = datetime.now(UTC)  # live: the clock at the first sample, then counted
        if not listener.stopped:
            source.start()
            listener.run(source, stream_start, reopen if settings.device is not None else None)
            source = listener.source  # a reopened card replaces the first one
            if settings.replay is not None:  # a lost card is retried, never an error
                error = source.error
                if error is None and not listener.stopped and not listener.silence.heard:
                    error = WhaleError(
                        f"{settings.replay}: digital silence from start to end (every sample "
                        f"0): no call could be heard; check the recorder and its hydrophone"
                    )
    except WhaleError as failure:  # mid-stream (a model breaking its contract): summed up below
        error = failure
    finally:
        if settings.device is not None:
            source.stop(timeout=STOP_WAIT_S)  # a card stuck in its driver is abandoned
        else:
            source.stop()
        publisher.close(linger_ms=int(settings.linger * 1000))
        log.close()
        # events the disk never took: standard output is the last place left to keep them
        # (here, so that an error mid-stream cannot lose them either)
        sys.stdout.writelines(line.decode("utf-8") for line in log.pending)
        sys.stdout.flush()
        for sig, handler in previous.items():  # run() may be embedded: leave signals as found
            signal.signal(sig, handler)
    audio_s = counters.samples_in / SAMPLE_RATE
    speed = f"{audio_s / counters.processing_s:.0f}x real time" if counters.processing_s else "-"
    say(
        f"done: {audio_s:.1f} s of audio, {speed}, {counters.events} event(s), "
        f"{listener.dropped if listener.source else 0} dropped sample(s)"
    )
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
        say(f"error: {unlogged}")
    return 2 if log.pending else 0


@main.command("subscribe")
@click.argument("endpoint")
@click.option(
    "--topic",
    "topics",
    multiple=True,
    type=click.Choice(["upcall", "status"]),
    help="upcall or status; repeatable.  [default: all]",
)
@click.option(
    "--timeout",
    type=FiniteFloatRange(0, min_open=True),
    default=None,
    help="Exit after this many seconds without a message.",
)
def subscribe_cmd(endpoint: str, topics: tuple[str, ...], timeout: float | None) -> None:
    """Print what a whale-listen publisher sends, one JSON object per line."""
    from detector.publish import subscribe

    try:
        for _topic, obj in subscribe(endpoint, list(topics) or None, timeout):
            click.echo(json.dumps(obj))  # "type" says upcall or status
            sys.stdout.flush()
    except WhaleError as e:
        fail(str(e))
    except KeyboardInterrupt:
        pass


@main.command("export-raven")
@click.argument("events_log", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Selection table to write.  [default: beside the log, NAME.selections.txt]",
)
def export_raven_cmd(events_log: Path, output: Path | None) -> None:
    """Write a Raven Pro selection table of an event log; print its path."""
    from detector.raven import export_raven

    try:
        click.echo(str(export_raven(events_log, output)))
    except WhaleError as e:
        fail(str(e))
