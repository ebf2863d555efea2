"""`whale-listen`: the daemon's command line.

`whale-listen --replay FILE` or `whale-listen --device NAME` runs the listener;
`whale-listen subscribe ENDPOINT` prints what a running listener publishes.
Every failure a user can cause is one line on stderr and a non-zero exit, never a traceback,
and whatever was detected before it is already in the event log. The exit status says what
kind of failure it was (detector.errors): 64 a bad command line, 78 a bad configuration (config
file, model, card), 2 a runtime failure (file, device, endpoint, disk), 0 a clean stop.
"""

import os
import signal
import sys
import threading
import time


def _stopped_while_starting(signum: int, frame: object) -> None:
    """SIGINT/SIGTERM before the listener's own handlers (imports, model loading, binding):
    nothing is detected yet, so stop at once, in one line: no traceback, no death by signal."""
    name = signal.Signals(signum).name
    os.write(2, f"whale-listen: stopped by {name} during start-up\n".encode())
    os._exit(130 if signum == signal.SIGINT else 0)


if threading.current_thread() is threading.main_thread():  # first, before the slow imports
    for _sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(_sig, _stopped_while_starting)


def _default_signals() -> None:
    """Commands other than the daemon: Ctrl-C is an ordinary KeyboardInterrupt again."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


import json  # noqa: E402 - after the handlers: a signal during these imports is handled
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402

import click  # noqa: E402

from detector import __version__  # noqa: E402
from detector.curve_options import client_options  # noqa: E402
from detector.errors import EX_USAGE, UsageError, WhaleError  # noqa: E402
from detector.journal import configure, log, say  # noqa: E402
from detector.settings import (  # noqa: E402
    OPTIONS,
    FiniteFloatRange,
    Option,
    Settings,
    load_config,
)

EXIT_ERROR = 2


def fail(message: str, status: int = EXIT_ERROR) -> "None":
    log.error(message)
    sys.exit(status)


class OneLineErrors(click.Group):
    """Click's usage errors (a bad option value, an unknown option) in the daemon's one-line form,
    so every mistake reads the same in a journal: `whale-listen: error: ...`, exit 64."""

    def main(self, *args: object, **kwargs: object) -> object:
        if kwargs.get("standalone_mode", True) is False:
            return super().main(*args, **kwargs)  # the caller handles click's exceptions
        kwargs["standalone_mode"] = False
        try:
            code = super().main(*args, **kwargs)
        except click.ClickException as e:
            fail(e.format_message(), EX_USAGE)
        except click.Abort:
            sys.exit(130)
        sys.exit(code if isinstance(code, int) else 0)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each subcommand with its whole first sentence: click's default cuts it to the
        terminal's width ("Print what a whale-listen publisher...")."""
        rows = [
            (name, command.get_short_help_str(limit=1000))
            for name, command in sorted(self.commands.items())
            if not command.hidden
        ]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


def gather_settings(ctx: click.Context, config: Path | None) -> Settings:
    """Defaults < config file < command line (only options the user actually typed)."""
    base = load_config(config) if config else {}
    given = {}
    for option in OPTIONS:
        if ctx.get_parameter_source(option.name) is click.core.ParameterSource.COMMANDLINE:
            given[option.name] = _typed(option, ctx.params[option.name])
    if "replay" in given or "device" in given:
        # one source: `--replay` on the command line replaces a configured device, and vice versa
        base = {k: v for k, v in base.items() if k not in ("replay", "device")}
    return Settings().with_overrides(**base).with_overrides(**given)


def _typed(option: Option, value: object) -> object:
    """A command-line value through the option's own check (click typed the numbers already)."""
    if isinstance(value, Path):
        value = str(value)  # through the path's check too: a name must be valid UTF-8
    if value is None or isinstance(value, int | float):
        return value
    try:
        return option.check(value)
    except ValueError as e:
        raise UsageError(f"{option.option}: {e}") from None


def setting_options(command: Callable) -> Callable:
    """One click option per declared setting, in declaration order."""
    for option in reversed(OPTIONS):
        help_text = option.help + (
            f"  [default: {option.shown.strip('`')}]" if option.shown else ""
        )
        flag = f"{option.option}/--no-{option.option[2:]}" if option.flag else option.option
        command = click.option(
            flag,
            option.name,
            type=option.param_type(),
            multiple=option.multiple,
            default=None,
            metavar=option.metavar,
            help=help_text,
        )(command)
    return command


EXAMPLES = """
\b
Examples:
  whale-listen --list-devices                      # find the hydrophone's card
  whale-listen --device hw:1 --clips clips/        # live, ALSA card 1, with review clips
  whale-listen --replay NOPP6_EST_20090328_001500.wav --events-log events.jsonl
  whale-listen --replay recording.aiff --realtime  # paced at 1x, like a card
  whale-listen --config /etc/whale-listen/config.toml
  whale-listen subscribe tcp://127.0.0.1:5556      # print what a listener publishes
  whale-listen export-raven events.jsonl           # a Raven Pro selection table
  whale-listen decode message.sbd                  # compact SBD messages as JSON lines
  whale-listen scan archive/ --out events.csv      # a folder of recordings, on Dask, resumable
  whale-listen review --db shore.db --clips clips/ # analysts confirm detections in a browser
  whale-listen gather tcp://buoy-1:5556 tcp://buoy-2:5556 --db shore.db  # many stations, one DB
  whale-listen keygen /etc/whale-listen/curve --name buoy  # CURVE keys for access control
"""

# -h as well as --help, on the group and (inherited) on every subcommand
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(
    cls=OneLineErrors,
    invoke_without_command=True,
    context_settings=CONTEXT,
    epilog=EXAMPLES,
)
@click.option("--list-devices", is_flag=True, help="List input devices (index, name, channels, "
              "sample rates) and exit.")  # fmt: skip
@setting_options
@click.option(
    "--config",
    type=click.Path(path_type=Path),  # a folder: load_config's "cannot read", exit 78
    help="TOML config file (keys as in deploy/config.example.toml); the command line overrides it.",
)
@click.version_option(__version__, "--version", prog_name="whale-listen")
@click.pass_context
def main(ctx: click.Context, list_devices: bool, config: Path | None, **_: object) -> None:
    """Listen for North Atlantic right whale up-calls and publish them on ZeroMQ.

    Give a sound card (--device) or a recording (--replay); every option also has a key in the
    TOML config file (--events-log is events_log). Times are in seconds unless said.
    """
    if ctx.invoked_subcommand is not None:
        return
    configure()
    try:
        if list_devices:
            from detector.device import format_device_list

            click.echo(format_device_list())
            return
        settings = gather_settings(ctx, config)
        sys.exit(run(settings))
    except WhaleError as e:
        fail(str(e), e.exit_status)
    except KeyboardInterrupt:  # Ctrl-C before the listener's own handler is installed
        sys.exit(130)


def run(settings: Settings) -> int:
    """Open everything (failing early, before any audio), then listen until done or stopped."""
    previous_umask = os.umask(0o027)  # events and clips: 0640, folders 0750, at most
    os.umask(previous_umask | 0o027)
    try:
        return _run(settings, time.monotonic())
    finally:
        os.umask(previous_umask)  # an in-process caller gets its own back


def _run(settings: Settings, started: float) -> int:
    from detector.daemon import finish, listen, open_listener, summary

    opened = open_listener(settings)
    if opened is None:
        return 0  # a file shorter than one window: said, nothing to score
    listener, source, outputs = opened
    error = listen(listener, source, outputs, settings)
    with _signals_ignored():  # already stopping: a second signal must not cut the summary
        paced_by = "--realtime" if settings.realtime else None
        paced_by = "the card" if settings.replay is None else paced_by
        say(summary(listener, time.monotonic() - started, paced_by))
        return finish(listener.log, error, settings)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


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
@click.option(
    "--catchup",
    default="auto",
    help="The daemon's catch-up endpoint, to fetch missed events from its log: auto = ENDPOINT's "
    "port + 1 (ipc: PATH.catchup; then the one status messages name), or off.  [default: auto]",
)
@click.option(
    "--since-seq",
    type=click.IntRange(0),
    default=None,
    help="Start with the logged events after this seq (0: the whole log).  "
    "[default: the daemon's current run]",
)
@client_options("The daemon's")
def subscribe_cmd(
    endpoint: str,
    topics: tuple[str, ...],
    timeout: float | None,
    catchup: str,
    since_seq: int | None,
    curve_secret: Path | None,
    server_key: Path | None,
) -> None:
    """Print what a whale-listen publisher sends, one JSON object per line.

    Every event once, in seq order, fetching what the stream missed from the daemon's catch-up
    endpoint."""
    from detector.catchup import resolve
    from detector.curve import client_keys
    from detector.settings import _catchup, _check_endpoint
    from detector.subscriber import Follower, subscribe

    _default_signals()
    try:
        try:
            _check_endpoint(endpoint)
            catchup = _catchup(catchup)
            catchup_at = resolve(catchup, [endpoint])
        except ValueError as e:
            raise UsageError(str(e)) from None
        curve = client_keys(curve_secret, server_key)
        follower = None
        if catchup_at is None or (topics and "upcall" not in topics):
            messages = subscribe(endpoint, list(topics) or None, timeout, curve)
        else:
            follower = Follower(
                endpoint,
                catchup_at,
                statuses=not topics or "status" in topics,
                since_seq=since_seq,
                discover=catchup == "auto",
                curve=curve,
            )
            messages = follower.follow(timeout)
        try:
            for _topic, obj in messages:
                click.echo(json.dumps(obj))  # "type" says upcall or status
                sys.stdout.flush()
        finally:
            if follower is not None:
                follower.close()
    except WhaleError as e:
        fail(str(e), e.exit_status)
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

    _default_signals()
    try:
        click.echo(str(export_raven(events_log, output)))
    except WhaleError as e:
        fail(str(e), e.exit_status)


# The subcommands that live in their own modules (each imports its heavy parts when it runs).
from detector.decode_cli import decode_cmd  # noqa: E402
from detector.gather_cli import gather_cmd  # noqa: E402
from detector.keygen_cli import keygen_cmd  # noqa: E402
from detector.review_cli import review_cmd  # noqa: E402
from detector.scan_cli import scan_cmd  # noqa: E402

for _command in (decode_cmd, gather_cmd, keygen_cmd, review_cmd, scan_cmd):
    main.add_command(_command)
