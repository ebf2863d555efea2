"""`whale-listen scan PATH... --out FILE`: an archive through the daemon's detector, on Dask.

Every file is scored as `whale-listen --replay FILE` would score it (detector.scan_worker),
files are Dask tasks (detector.scan_dask, detector.scan_run), the events go to one table
(detector.scan_output) and the resume state records each finished file (detector.scan_state),
so an interrupted scan run again does no file twice. Exit status: 0 when every file was read,
3 when some could not be (each said in one line and counted in the summary), 2/64/78 as the
daemon's for a failure of the scan itself, 130 (SIGINT) or 143 (SIGTERM) when interrupted.
"""

import os
import signal
import sys
import time
from pathlib import Path

import click

EX_SOME_FAILED = 3
SCAN_SETTINGS = ("model", "sensitivity", "threshold", "hop", "channel", "batch", "station")


class Interrupted(BaseException):
    """SIGTERM as SIGINT is KeyboardInterrupt: a BaseException, so that no `except Exception`
    on the way (a task's result) takes it for a failed file and scans on."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


def _daemon_options(command: click.Command) -> click.Command:
    """The daemon's own declarations (detector.settings.OPTIONS) of the settings that decide
    events, so scan and --replay take them with the same names, bounds, defaults and help."""
    from detector.settings import OPTIONS

    for option in reversed([o for o in OPTIONS if o.name in SCAN_SETTINGS]):
        shown = f"  [default: {option.shown.strip('`')}]" if option.shown else ""
        command = click.option(
            option.option,
            option.name,
            type=option.param_type(),
            default=None,
            metavar=option.metavar,
            help=option.help + shown,
        )(command)
    return command


@click.command("scan")
@click.argument("paths", nargs=-1, required=True)
@click.option(
    "--out",
    "out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Events table to write (appended file by file): .csv, .jsonl, .txt (Raven "
    "selection table) or .parquet (needs pyarrow).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl", "raven", "parquet"]),
    default=None,
    help="Output format.  [default: from --out's suffix]",
)
@click.option(
    "--state",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Resume state (JSON lines): the files done.  [default: OUT.scan-state.jsonl]",
)
@click.option(
    "--start-time",
    "start_pattern",
    default=None,
    metavar="PATTERN",
    help="strptime pattern of each file's UTC start, found in its name (in its path "
    "when the pattern has a /), e.g. %Y%m%d_%H%M%S.  [default: a YYYYMMDD_HHMMSS "
    "stamp in the name; else events carry offsets only]",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 1024),
    default=None,
    metavar="N",
    help="Local Dask worker processes (1 thread each).  [default: the CPU count]",
)
@click.option(
    "--scheduler",
    default=None,
    metavar="tcp://HOST:8786",
    help="Run on this existing Dask cluster instead of local workers (whale-listen "
    "installed on every worker, the audio at the same paths).",
)
@click.option("--quiet", is_flag=True, help="No progress on stderr (the summary stays).")
@_daemon_options
def scan_cmd(
    paths: tuple[str, ...],
    out: Path,
    fmt: str | None,
    state: Path | None,
    start_pattern: str | None,
    workers: int | None,
    scheduler: str | None,
    quiet: bool,
    **daemon: object,
) -> None:
    """Scan recordings (files, folders, globs) for up-calls into one table, resumably, on Dask.

    Each file gives the events `whale-listen --replay FILE` gives; an interrupted scan run
    again skips the files it finished. Exit status: 0 all files read, 3 some could not be."""
    from detector.cli import _default_signals, fail
    from detector.errors import WhaleError

    _default_signals()
    previous = signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        sys.exit(_scan(paths, out, fmt, state, start_pattern, workers, scheduler, quiet, daemon))
    except WhaleError as e:
        fail(str(e), e.exit_status)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _settings(daemon: dict) -> object:
    """The daemon's Settings from the options given, each through the daemon's own checks."""
    from detector.cli import _typed
    from detector.settings import OPTIONS, Settings

    given = {}
    for option in OPTIONS:
        if daemon.get(option.name) is not None:
            given[option.name] = _typed(option, daemon[option.name])
    return Settings().with_overrides(**given)


def _scan(
    paths: tuple[str, ...],
    out: Path,
    fmt: str | None,
    state_path: Path | None,
    start_pattern: str | None,
    workers: int | None,
    scheduler: str | None,
    quiet: bool,
    daemon: dict,
) -> int:
    from detector.errors import UsageError
    from detector.journal import configure, say
    from detector.model import card_path, load_model
    from detector.presets import choose_threshold
    from detector.scan import StartTimePattern, discover
    from detector.scan_dask import check_scheduler, open_client, require_distributed, worker_count
    from detector.scan_output import choose_format, require_pyarrow, rows_path
    from detector.scan_progress import ScanProgress
    from detector.scan_run import Tally, Writer, plan, run_scan, summary
    from detector.scan_worker import ModelFiles, ScanJob
    from detector.settings import window_hop_samples

    configure()
    started = time.monotonic()
    if scheduler is not None and workers is not None:
        raise UsageError("--workers sizes the local cluster; with --scheduler the cluster's own "
                         "workers run the scan")  # fmt: skip
    require_distributed()  # before any work: the one line that names the extra
    if scheduler is not None:
        check_scheduler(scheduler)
    settings = _settings(daemon)
    fmt = choose_format(out, fmt)
    if fmt == "parquet":
        require_pyarrow()
    pattern = StartTimePattern(start_pattern) if start_pattern is not None else None
    files = discover(paths)
    model = load_model(settings.model, "cpu", 1)
    threshold, why = choose_threshold(
        model.card, card_path(model.path), settings.sensitivity, settings.threshold
    )
    job = ScanJob(threshold, window_hop_samples(settings.hop), settings.batch, settings.channel,
                  settings.station)  # fmt: skip
    fingerprint = {"model": model.sha256, "threshold": threshold, "hop": job.window_hop,
                   "channel": job.channel}  # fmt: skip
    out = Path(os.path.abspath(out))
    state, rows_file = _open_output(out, fmt, state_path)
    tally = Tally()
    interrupted, workers_used, progress = None, 0, None
    try:
        todo = plan(files, pattern, state, fingerprint, tally)
        hours = sum(p.seconds for p in todo) / 3600
        progress = ScanProgress(len(todo), hours * 3600, quiet)
        say(why)
        say(
            f"scan: {len(files)} file(s), {len(todo)} to do ({tally.skipped} done before), "
            f"{hours:.2f} h of audio; model {model.name} ({model.sha256[:12]}), threshold "
            f"{threshold}; {fmt} to {out}"
        )
        if todo:
            with open_client(workers or os.cpu_count() or 1, scheduler) as client:
                workers_used = worker_count(client)
                writer = Writer(rows_file, fmt, state, fingerprint)
                run_scan(client, todo, job, ModelFiles.of(model), writer, progress, tally,
                         workers_used)  # fmt: skip
    except (KeyboardInterrupt, Interrupted) as e:
        interrupted = e.args[0] if isinstance(e, Interrupted) else "SIGINT"
    finally:
        if progress is not None:
            progress.close()
        rows_file.close()
        state.close()
    if fmt == "parquet":
        from detector.scan_output import write_parquet

        write_parquet(out, rows_path(out, fmt))
    say(summary(tally, time.monotonic() - started, workers_used, out, interrupted))
    if interrupted is not None:
        return 128 + signal.Signals[interrupted].value
    return EX_SOME_FAILED if tally.failed else 0


def _open_output(out: Path, fmt: str, state_path: Path | None) -> tuple[object, object]:
    """The resume state and the rows file, made consistent with each other (see _open_rows)."""
    from detector.scan_output import rows_path
    from detector.scan_state import ScanState, default_state_path

    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = state_path or default_state_path(out)
    _refuse_foreign_output(rows_path(out, fmt), state_path, fmt)
    state = ScanState(state_path, out, fmt)
    try:
        return state, _open_rows(rows_path(out, fmt), fmt, state)
    except BaseException:
        state.close()
        raise


def _refuse_foreign_output(path: Path, state_path: Path, fmt: str) -> None:
    """An output with rows but no state (another scan's table, someone's file) is never
    overwritten; one holding only its header (a scan stopped before it began) is."""
    from detector.errors import UsageError
    from detector.scan_output import header

    if state_path.exists() and state_path.stat().st_size:
        return
    if path.exists() and path.stat().st_size and path.read_bytes() != header(fmt):
        raise UsageError(
            f"{path} exists and no scan state says what is in it ({state_path}): give a new "
            f"--out, or move it away"
        )


def _open_rows(path: Path, fmt: str, state: object) -> object:
    """The rows file, cut back to what the state has recorded (a crash after a file's rows were
    written but before its `done` line), or started with its header."""
    from detector.errors import UsageError
    from detector.scan_output import RowsFile, header

    if state.fresh:
        head = header(fmt)
        rows_file = RowsFile(path)
        rows_file.cut(0)
        if head:
            rows_file.append(head)
        state.start(rows_file.size)
        return rows_file
    rows_file = RowsFile(path)
    committed = state.resumed.output_end
    if rows_file.size < committed:
        size = rows_file.size
        rows_file.close()
        raise UsageError(
            f"{path} is {size} bytes, shorter than the {committed} its scan state {state.path} "
            f"recorded: it was changed; give a new --out (or remove the state to start over)"
        )
    if rows_file.size > committed:
        rows_file.cut(committed)  # rows of a file that was never recorded as done
    return rows_file
