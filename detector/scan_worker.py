"""One scan task: a whole file through the daemon's own listener, on whichever worker runs it.

A file is scored exactly as `whale-listen --replay FILE` scores it: the same `ReplaySource`
(decoding, resampling, truncated files replayed as far as they go), the same `Listener` loop
(scorer, event merging, event records), the same end-of-file checks (a truncated file, digital
silence throughout). Only the event log differs: a task holds its events in memory and returns
them, and the scan's client writes them durably, all of a file's events at once.

The model travels as bytes (`ModelFiles`, the ONNX file, its card and its streaming halves), so
workers on other machines need no shared copy of it; each worker process writes them once to a
private folder and keeps the loaded model for every later task. The audio does not travel: a
worker opens the file at its path (on a cluster, a shared file system).
"""

import atexit
import logging
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from detector.constants import SAMPLE_RATE, WINDOW_SAMPLES
from detector.errors import WhaleError
from detector.journal import log as journal
from detector.model import Model, card_path, load_model
from detector.pipeline import Listener
from detector.replay import ReplaySource
from detector.ring import RingBuffer

NO_HEARTBEAT_S = 1e9  # a task publishes nothing: no status messages
PLACEHOLDER_START = datetime(1970, 1, 1, tzinfo=UTC)  # a file without a start time: no times


@dataclass(frozen=True)
class ModelFiles:
    """The model's files by name (NAME.onnx, NAME.json, the halves its card names)."""

    name: str  # the ONNX file's name
    sha256: str
    files: dict[str, bytes] = field(repr=False)

    @classmethod
    def of(cls, model: Model) -> "ModelFiles":
        paths = [model.path, card_path(model.path)]
        streaming = model.card.get("streaming")
        if isinstance(streaming, dict):
            paths += [model.path.parent / str(streaming[half]) for half in ("frames", "head")]
        files = {p.name: p.read_bytes() for p in paths if p.is_file()}
        return cls(model.path.name, model.sha256, files)


@dataclass(frozen=True)
class ScanJob:
    """How every file of a scan is scored: the daemon's settings that change events."""

    threshold: float
    window_hop: int  # 2 kHz samples
    batch: int
    channel: int
    station: str


@dataclass(frozen=True)
class FileTask:
    path: str  # absolute
    start: datetime | None  # None: no start time known, events carry offsets only


@dataclass
class FileResult:
    """What a task sends back: the file's events (the daemon's event records), or why not."""

    path: str
    events: list[dict]
    samples: int = 0  # 2 kHz samples scored
    windows: int = 0
    error: str | None = None  # one line; events before it (a truncated file) are kept
    note: str | None = None  # e.g. shorter than one window
    task_s: float = 0.0  # wall time on the worker, model loading included
    worker: str | None = None  # the Dask worker's address (None: run in-process)


class HeldEvents:
    """The listener's event log for a task: in memory, since the client writes the output."""

    path = Path("<scan task>")
    error = None

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.pending: list[bytes] = []  # never any: nothing here can fail to write

    def last_seq(self) -> int:
        return 0  # the client numbers events over the whole scan

    def start_run(self, run: dict) -> bool:
        return True

    def append(self, event: dict) -> bool:
        self.events.append(event)
        return True

    def close(self) -> None:
        pass


_MODELS: dict[str, Model] = {}  # sha256 -> loaded model, per worker process


def worker_model(files: ModelFiles) -> Model:
    """The model, written out and loaded once per worker process (1 onnxruntime thread: a
    worker is one core, and the cluster's parallelism is its processes)."""
    model = _MODELS.get(files.sha256)
    if model is None:
        folder = Path(tempfile.mkdtemp(prefix="whale-listen-model-"))
        atexit.register(shutil.rmtree, folder, True)
        for name, data in files.files.items():
            (folder / name).write_bytes(data)
        model = load_model(folder / files.name, provider="cpu", threads=1)
        if model.sha256 != files.sha256:  # cannot happen unless the bytes were damaged
            raise WhaleError(f"model {files.name} arrived damaged (sha256 {model.sha256[:12]})")
        _MODELS[files.sha256] = model
    return model


def scan_file(task: FileTask, job: ScanJob, files: ModelFiles) -> FileResult:
    """Score one file; every failure of the file itself is returned, never raised."""
    started = time.monotonic()
    result = FileResult(task.path, [])
    try:
        with _journal_quiet():
            _score(task, job, worker_model(files), result)
    except WhaleError as e:
        result.error = str(e)
    except Exception as e:  # noqa: BLE001 - one bad file must never stop the scan
        result.error = f"{task.path}: {type(e).__name__}: {e}"
    result.task_s = time.monotonic() - started
    result.worker = _worker_address()
    return result


def _worker_address() -> str | None:
    """Which worker scored the file, for the state's record (None outside a Dask worker)."""
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return None


def _score(task: FileTask, job: ScanJob, model: Model, result: FileResult) -> None:
    """The daemon's replay (detector.source._open_replay, detector.daemon.listen) for one file."""
    source = ReplaySource(Path(task.path), RingBuffer(8 * 16384), job.channel, realtime=False)
    if source.info.duration_s * SAMPLE_RATE < WINDOW_SAMPLES:
        if source.info.truncation is not None:
            raise source.info.truncation
        result.note = f"{task.path} is {source.info.duration_s:.2f} s long, shorter than one window"
        return
    held = HeldEvents()
    listener = Listener(
        model, job.threshold, job.window_hop, held, [], job.station, batch=job.batch,
        heartbeat_s=NO_HEARTBEAT_S,
    )  # fmt: skip
    source.start()
    error: BaseException | None = None
    try:
        listener.run(source, task.start or PLACEHOLDER_START)
        error = source.error
        if error is None and not listener.silence.heard:
            error = WhaleError(
                f"{task.path}: digital silence from start to end (every sample 0): no call "
                f"could be heard; check the recorder and its hydrophone"
            )
    except WhaleError as failure:  # mid-stream (a model breaking its contract)
        error = failure
    finally:
        source.stop()
    result.events = [_timeless(e) for e in held.events] if task.start is None else held.events
    result.samples = listener.counters.samples_in
    result.windows = listener.counters.windows
    if error is not None:
        result.error = str(error) if isinstance(error, WhaleError) else f"{task.path}: {error}"


@contextmanager
def _journal_quiet() -> Iterator[None]:
    """The listener's own notes (digital silence for 10 s, ...) stay off the worker's stderr:
    what matters about a file comes back in its result, said once by the client."""
    level = journal.level
    journal.setLevel(logging.ERROR)
    try:
        yield
    finally:
        journal.setLevel(level)


def _timeless(event: dict) -> dict:
    """A file with no known start: its events say where in the file, not when."""
    return {**event, "start": None, "end": None}
