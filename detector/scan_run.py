"""A scan's client side: plan the files, hand them to the cluster, write what comes back.

Files are the tasks. A bounded number are in flight at once (`IN_FLIGHT_PER_WORKER` per worker,
so a million-file archive is not a million futures at once, and an interrupted scan stops
quickly); results stream back in completion order (`as_completed`), and each is written by this
process alone: its rows appended and fsynced, then its `done` line in the resume state. A file
that fails is one error line and a count, and the scan goes on.
"""

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from detector.audio import audio_info
from detector.constants import SAMPLE_RATE
from detector.errors import WhaleError
from detector.journal import log, say
from detector.scan import FileKey, StartTimePattern, start_time
from detector.scan_output import RowsFile, rows
from detector.scan_progress import ScanProgress
from detector.scan_state import ScanState
from detector.scan_worker import FileResult, FileTask, ModelFiles, ScanJob, scan_file

IN_FLIGHT_PER_WORKER = 2


@dataclass
class PlannedFile:
    key: FileKey
    seconds: float
    start: datetime | None


@dataclass
class Tally:
    """What the summary says."""

    files: int = 0  # found
    skipped: int = 0  # done by an earlier run
    read: int = 0
    failed: int = 0
    audio_s: float = 0.0
    events: int = 0
    task_s: float = 0.0  # summed over the workers
    failures: list[str] = field(default_factory=list)


def plan(
    paths: list[str],
    pattern: StartTimePattern | None,
    state: ScanState,
    fingerprint: dict,
    tally: Tally,
) -> list[PlannedFile]:
    """The files still to do, in order; those already done are counted as skipped, and a file
    whose header cannot be read fails here, in one line."""
    todo: list[PlannedFile] = []
    sequence: list[tuple[str, float]] = []
    for path in paths:
        tally.files += 1
        try:
            key = FileKey.of(path)
            if state.is_done(key, fingerprint):
                tally.skipped += 1
                continue
            seconds = audio_info(path, keep_truncated=True).duration_s
        except OSError as e:
            _failed(tally, f"{path}: cannot read: {e.strerror or e}")
            continue
        except WhaleError as e:
            _failed(tally, str(e))
            continue
        sequence.append((path, seconds))
        todo.append(PlannedFile(key, seconds, start_time(path, pattern)))
    state.extend_sequence(sequence)
    return todo


def _failed(tally: Tally, message: str) -> None:
    tally.failed += 1
    tally.failures.append(message)
    log.error(message)


class Writer:
    """Writes each finished file's rows, then records it in the state (that order: see
    detector.scan_state)."""

    def __init__(self, rows_file: RowsFile, fmt: str, state: ScanState, fingerprint: dict) -> None:
        self.rows_file, self.fmt, self.state, self.fingerprint = rows_file, fmt, state, fingerprint
        self.run = str(uuid.uuid4())
        self.seq = state.resumed.last_seq

    def write(self, planned: PlannedFile, result: FileResult) -> None:
        events = []
        for event in result.events:
            self.seq += 1
            events.append({**event, "seq": self.seq, "run": self.run})
        begin = self.state.resumed.sequence.get(planned.key.path, 0.0)
        data = rows(self.fmt, events, begin)
        end = self.rows_file.append(data) if data else self.state.resumed.output_end
        counts = {
            "seconds": round(result.samples / SAMPLE_RATE, 3),
            "windows": result.windows,
            "events": len(events),
            "last_seq": self.seq,
            "error": result.error,
            "worker": result.worker,
        }
        self.state.commit(planned.key, self.fingerprint, counts, end)


def run_scan(
    client: object,
    todo: list[PlannedFile],
    job: ScanJob,
    model_files: ModelFiles,
    writer: Writer,
    progress: ScanProgress,
    tally: Tally,
    workers: int,
) -> None:
    """Score every planned file on the cluster, writing each as it finishes."""
    from distributed import as_completed

    if not todo:
        return
    model = client.scatter(model_files, broadcast=True, hash=False)
    waiting = iter(todo)
    in_flight: dict[object, PlannedFile] = {}
    finished = as_completed()

    def submit_next() -> None:
        planned = next(waiting, None)
        if planned is None:
            return
        task = FileTask(planned.key.path, planned.start)
        future = client.submit(
            scan_file, task, job, model, pure=False, key=f"scan-file-{uuid.uuid4().hex}"
        )
        in_flight[future] = planned
        finished.add(future)

    for _ in range(max(1, workers) * IN_FLIGHT_PER_WORKER):
        submit_next()
    for future in finished:
        planned = in_flight.pop(future)
        try:
            result = future.result()
        except Exception as e:  # noqa: BLE001 - a worker that died (KilledWorker, ...)
            result = FileResult(planned.key.path, [], error=f"{planned.key.path}: task lost: {e}")
        submit_next()  # keep the workers busy while this one is written
        record(planned, result, writer, progress, tally)


def record(
    planned: PlannedFile,
    result: FileResult,
    writer: Writer,
    progress: ScanProgress,
    tally: Tally,
) -> None:
    """One finished file: written, counted, its error said."""
    writer.write(planned, result)
    tally.audio_s += result.samples / SAMPLE_RATE
    tally.events += len(result.events)
    tally.task_s += result.task_s
    if result.note is not None:
        say(result.note)
    if result.error is not None:
        _failed(tally, result.error)
    else:
        tally.read += 1
    progress.file_done(planned.seconds, len(result.events), result.error is not None)


def summary(tally: Tally, wall_s: float, workers: int, out: Path, interrupted: str | None) -> str:
    """The scan's last line."""
    from detector.rates import speed

    hours = tally.audio_s / 3600
    per_s = f"{hours / wall_s:.3g} audio h per wall s" if wall_s > 0 else "-"
    ended = f"interrupted by {interrupted}: run it again to resume; " if interrupted else ""
    return (
        f"scan {ended}{tally.files} file(s): {tally.read} read, {tally.failed} failed, "
        f"{tally.skipped} done before; {hours:.2f} h of audio in {wall_s:.1f} s, "
        f"{speed(tally.audio_s, wall_s)} real time ({per_s}) on {workers} worker(s); "
        f"{tally.events} event(s) written to {out}"
    )
