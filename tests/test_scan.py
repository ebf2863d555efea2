"""`whale-listen scan`: discovery, start times, outputs, resume state, and real Dask runs.

The scans run on real clusters: a LocalCluster of worker processes (the default), and a
`dask scheduler` with two `dask worker` processes started here on 127.0.0.1. Each file's events
are held equal to `whale-listen --replay FILE`'s (same code path in-process, `cli.run`), on
generated files always and on every recording of ../shared/data when it is there.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from scipy.signal import resample_poly

from detector import cli
from detector.audio import read_audio
from detector.constants import WINDOW_SAMPLES
from detector.errors import EX_USAGE, UsageError, WhaleError
from detector.eventlog import read_events
from detector.scan import FileKey, StartTimePattern, discover, start_time
from detector.scan_cli import EX_SOME_FAILED
from detector.scan_output import CSV_COLUMNS, choose_format, header, rows
from detector.scan_progress import ScanProgress
from detector.scan_state import ScanState
from detector.settings import Settings
from train import synth

from .conftest import REPO, SHARED_DATA

pytest.importorskip("distributed", reason="scan runs on dask.distributed (the scan extra)")

DASK = Path(sys.executable).with_name("dask")
HOP = 1000  # 0.5 s at 2 kHz
COMPARED = ("source", "start", "end", "offset_start_s", "offset_end_s", "peak_offset_s", "score",
            "windows", "threshold", "model", "station")  # fmt: skip
STATION = "test-station"
WAV_HEADER = 44


def _calls(path: Path, seconds: float, seed: int, rate: int = 2000, fmt: str | None = None) -> Path:
    audio, _ = synth.synthetic_recording(np.random.default_rng(seed), seconds, int(seconds // 12))
    if rate != 2000:
        audio = resample_poly(audio, rate // 2000, 1).astype(np.float32)
    sf.write(path, audio, rate, format=fmt, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Short recordings in every format the replay reads, in sub-folders, with a corrupt file,
    a truncated one, a silent one, one without a start time, and a text file the walk skips."""
    root = tmp_path_factory.mktemp("archive")
    (root / "day1").mkdir()
    (root / "day2" / "deep").mkdir(parents=True)
    _calls(root / "day1" / "EST_20090328_001500.wav", 40, 1)
    _calls(root / "day1" / "EST_20090328_003000.flac", 40, 2)
    _calls(root / "day2" / "deep" / "EST_20090329_000000.aiff", 40, 3, rate=4000, fmt="AIFF")
    _calls(root / "day2" / "nostamp.wav", 30, 4)
    cut = _calls(root / "day2" / "EST_20090329_001500.wav", 40, 5)
    data = cut.read_bytes()
    cut.write_bytes(data[: WAV_HEADER + (len(data) - WAV_HEADER) * 3 // 4])  # a recorder died
    (root / "day2" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio at all")
    sf.write(root / "day2" / "silent.wav", np.zeros(20 * 2000, np.float32), 2000)  # dead preamp
    (root / "day1" / "notes.txt").write_text("not audio: the folder walk leaves it out\n")
    return root


def _invoke(*args: object) -> object:
    return CliRunner().invoke(cli.main, ["scan", *[str(a) for a in args]])


def _scan_args(model: Path, out: Path, *extra: object) -> list[object]:
    return ["--out", out, "--model", model, "--station", STATION, "--quiet", *extra]


def _replay(recording: Path, model: Path, log: Path) -> list[dict]:
    """The daemon's own replay of one file, in-process; a truncated file ends in a WhaleError
    after its events are logged."""
    settings = Settings(replay=recording, model=model, events_log=log, station=STATION,
                        publish=("tcp://127.0.0.1:*",), linger=0.0, catchup="off")  # fmt: skip
    try:
        cli.run(settings)
    except WhaleError:
        pass
    return read_events(log) if log.exists() else []


def _compared(event: dict) -> tuple:
    return tuple(event[k] if k != "model" else event[k]["sha256"] for k in COMPARED)


def _done_lines(state: Path) -> list[dict]:
    return [r for r in map(json.loads, state.read_text().splitlines()) if r["type"] == "done"]


@pytest.fixture(scope="module")
def local_scan(archive: Path, shipped_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """One scan of the archive on the default LocalCluster (2 worker processes), JSON lines."""
    out = tmp_path_factory.mktemp("local") / "events.jsonl"
    result = _invoke(archive, *_scan_args(shipped_model, out, "--workers", 2))
    return result, out


# -- discovery and start times ------------------------------------------------------------------


def test_discovery_walks_folders_takes_files_and_globs_once_sorted(archive):
    found = discover([str(archive), str(archive / "day1" / "notes.txt"), f"{archive}/day1/*.wav"])
    names = [Path(p).name for p in found]
    assert found == sorted(found) and len(found) == len(set(found))
    assert "notes.txt" in names  # named by the user: taken (and fails as one line if not audio)
    assert {"broken.wav", "nostamp.wav", "EST_20090329_000000.aiff"} <= set(names)
    assert all(os.path.isabs(p) for p in found)
    assert "notes.txt" not in [Path(p).name for p in discover([str(archive)])]
    with pytest.raises(UsageError, match="nothing-here"):
        discover([str(archive / "nothing-here")])
    with pytest.raises(UsageError, match="no such"):
        discover([f"{archive}/*.mp3"])


def test_start_times_from_the_name_or_a_strptime_pattern():
    assert start_time("/a/NOPP6_EST_20090328_001500.wav", None).isoformat() == (
        "2009-03-28T00:15:00+00:00"
    )
    assert start_time("/a/unit7-090328.wav", None) is None
    assert (
        StartTimePattern("%y%m%d")
        .find("/a/unit7-090328.wav")
        .isoformat()
        .startswith("2009-03-28T00:00")
    )
    julian = StartTimePattern("%Y%j_%H%M%S").find("/x/MARU_2009087_001500_CH1.aif")
    assert julian.isoformat() == "2009-03-28T00:15:00+00:00"
    in_path = StartTimePattern("%Y/%m/%d/%H%M").find("/archive/2009/03/31/2200.wav")
    assert in_path.isoformat() == "2009-03-31T22:00:00+00:00"
    assert StartTimePattern("%Y%m%d").find("/a/20091399_20090401.wav").day == 1  # month 13 skipped
    with pytest.raises(UsageError, match="%z"):
        StartTimePattern("%Y%m%d%z")
    with pytest.raises(UsageError, match="no date"):
        StartTimePattern("station")


# -- outputs and state --------------------------------------------------------------------------

EVENT = {"schema": 1, "type": "upcall", "seq": 7, "run": "r", "id": "i", "station": "s",
         "start": None, "end": None, "offset_start_s": 1.5, "offset_end_s": 3.0,
         "score": 0.99, "peak_offset_s": 2.0, "windows": 3, "source": "/a/b, c.wav",
         "model": {"name": "m", "sha256": "ab" * 32}, "threshold": 0.9}  # fmt: skip


def test_formats_from_the_suffix_and_their_rows():
    assert [choose_format(Path(f"e{s}"), None) for s in (".csv", ".jsonl", ".txt")] == [
        "csv", "jsonl", "raven"]  # fmt: skip
    assert choose_format(Path("e.dat"), "csv") == "csv"
    with pytest.raises(UsageError, match="format"):
        choose_format(Path("e.dat"), None)
    import csv
    import io

    text = (header("csv") + rows("csv", [EVENT], 0.0)).decode()
    (row,) = csv.DictReader(io.StringIO(text))
    assert list(row) == CSV_COLUMNS
    assert (row["source"], row["start"], row["model_sha256"]) == ("/a/b, c.wav", "", "ab" * 32)
    assert json.loads(rows("jsonl", [EVENT], 0.0)) == EVENT
    raven = (header("raven") + rows("raven", [EVENT], 100.0)).decode().splitlines()
    fields = dict(zip(raven[0].split("\t"), raven[1].split("\t"), strict=True))
    assert fields["Selection"] == "7" and fields["Begin Time (s)"] == "101.500"
    assert (fields["File Offset (s)"], fields["Begin Path"]) == ("1.500", "/a/b, c.wav")


def test_state_skips_the_same_file_only_and_cuts_a_torn_line(tmp_path):
    audio = _calls(tmp_path / "a.wav", 20, 1)
    key = FileKey.of(str(audio))
    path = tmp_path / "state.jsonl"
    state = ScanState(path, tmp_path / "out.csv", "csv")
    assert state.fresh
    state.start(10)
    state.extend_sequence([(key.path, 3.0)])
    model = {"model": "a" * 64, "threshold": 0.5, "hop": HOP, "channel": 0}
    state.commit(key, model, {"events": 0, "error": "unreadable", "last_seq": 0}, 10)
    assert not state.is_done(key, model)  # failed with no event: retried
    state.commit(key, model, {"events": 2, "error": None, "last_seq": 2}, 99)
    state.close()
    with open(path, "ab") as f:
        f.write(b'{"type": "done", "path": "half-writ')  # a crash mid-line
    again = ScanState(path, tmp_path / "out.csv", "csv")
    assert not again.fresh and again.is_done(key, model)
    assert (again.resumed.output_end, again.resumed.last_seq) == (99, 2)
    assert again.resumed.sequence == {key.path: 0.0}
    assert not again.is_done(key, {**model, "model": "b" * 64})  # another model: scanned again
    assert not again.is_done(FileKey(key.path, key.size + 1, key.mtime_ns), model)  # changed
    again.close()
    assert path.read_bytes().endswith(b"\n")
    with pytest.raises(UsageError, match="csv, not raven"):
        ScanState(path, tmp_path / "out.csv", "raven")


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("pyarrow") is not None, reason="pyarrow installed"
)
def test_parquet_without_pyarrow_is_one_line_naming_it(archive, shipped_model, tmp_path):
    result = _invoke(archive, *_scan_args(shipped_model, tmp_path / "e.parquet"))
    assert result.exit_code == EX_USAGE
    assert result.stderr.count("\n") == 1 and "pyarrow" in result.stderr
    assert not (tmp_path / "e.parquet").exists()


def test_parquet_holds_the_same_events_as_json_lines(local_scan, archive, shipped_model, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="Parquet is the optional pyarrow extra")
    result = _invoke(archive, *_scan_args(shipped_model, tmp_path / "e.parquet", "--workers", 1))
    assert result.exit_code == EX_SOME_FAILED, result.stderr
    table = pq.read_table(tmp_path / "e.parquet").to_pylist()
    _, jsonl = local_scan
    events = [json.loads(line) for line in jsonl.read_text().splitlines()]
    key = lambda r: (r["source"], r["offset_start_s"])  # noqa: E731
    assert sorted(map(key, table)) == sorted(map(key, events)) and table
    assert {r["score"] for r in table} == {e["score"] for e in events}


def test_without_the_scan_extra_it_is_one_line_naming_it_before_any_work(archive, tmp_path):
    from .test_cli import BLOCK_EXTRAS

    out = tmp_path / "e.csv"
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_EXTRAS, "scan", str(archive), "--out", str(out)],
        capture_output=True, text=True, timeout=120, env=_env(),
    )  # fmt: skip
    assert json.loads(proc.stdout.strip().splitlines()[-1])["code"] == EX_USAGE, proc.stderr
    assert proc.stderr.count("\n") == 1 and "whale-listen[scan]" in proc.stderr, proc.stderr
    assert not out.exists()


# -- real scans ---------------------------------------------------------------------------------


def test_local_scan_gives_each_files_replay_events(local_scan, archive, shipped_model, tmp_path):
    result, out = local_scan
    assert result.exit_code == EX_SOME_FAILED, result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 3  # one line per bad file
    assert any("broken.wav" in line for line in errors)
    assert any("silent.wav" in line and "digital silence" in line for line in errors)
    assert any("EST_20090329_001500.wav" in line and "truncated" in line for line in errors)
    assert "7 file(s): 4 read, 3 failed, 0 done before" in result.stderr.splitlines()[-1]
    events = read_events(out)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))
    state = out.with_name(out.name + ".scan-state.jsonl")
    done = {line["path"]: line for line in _done_lines(state)}
    for recording in sorted(archive.rglob("*.*")):
        if recording.suffix == ".txt" or recording.name in ("broken.wav", "silent.wav"):
            continue
        replayed = _replay(recording, shipped_model, tmp_path / f"{recording.stem}.jsonl")
        scanned = [e for e in events if e["source"] == str(recording)]
        assert scanned, recording  # every file has calls the model finds
        if recording.name == "nostamp.wav":  # the replay counts from now; the scan has no time
            assert {e["start"] for e in scanned} == {None}
            replayed = [{**e, "start": None, "end": None} for e in replayed]
        assert [_compared(e) for e in scanned] == [_compared(e) for e in replayed], recording
        if recording.name != "EST_20090329_001500.wav":  # intact: every window was scored
            samples = len(read_audio(recording))
            assert done[str(recording)]["windows"] == 1 + (samples - WINDOW_SAMPLES) // HOP


def test_scheduler_and_two_worker_processes_give_the_same_output(
    local_scan, archive, shipped_model, tmp_path
):
    _, local_out = local_scan
    scheduler_file = tmp_path / "scheduler.json"
    env = _env()
    procs = [subprocess.Popen(
        [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
         "--scheduler-file", scheduler_file], env=env, stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not scheduler_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(scheduler_file.read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        for _ in range(2):
            procs.append(subprocess.Popen(
                [DASK, "worker", address, "--nthreads", "1", "--nworkers", "1", "--no-dashboard",
                 "--local-directory", tmp_path / "dask"], env=env,
                stderr=subprocess.DEVNULL))  # fmt: skip
        from distributed import Client

        with Client(address, timeout=60) as client:
            client.wait_for_workers(2, timeout=120)
        out = tmp_path / "cluster.jsonl"
        result = _invoke(archive, *_scan_args(shipped_model, out, "--scheduler", address))
        assert result.exit_code == EX_SOME_FAILED, result.stderr
        assert "on 2 worker(s)" in result.stderr
        state = out.with_name(out.name + ".scan-state.jsonl")
        workers = {line["worker"] for line in _done_lines(state)}
        assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    assert sorted(map(_compared, read_events(out))) == sorted(
        map(_compared, read_events(local_out))
    )


def test_rows_a_crash_left_unrecorded_are_cut_and_that_file_scanned_once(
    local_scan, archive, shipped_model, tmp_path
):
    _, local_out = local_scan
    out = tmp_path / "events.jsonl"
    state = tmp_path / "events.jsonl.scan-state.jsonl"
    shutil.copy(local_out, out)
    lines = local_out.with_name(local_out.name + ".scan-state.jsonl").read_text()
    lines = lines.splitlines(keepends=True)
    # the last file recorded with rows (two workers: an event-less one, silent.wav, may finish
    # after it; its line goes too, as a file done after the crash would not be recorded)
    cut = max(i for i, line in enumerate(lines) if json.loads(line).get("events"))
    last = json.loads(lines[cut])
    assert last["type"] == "done" and last["events"] > 0
    assert all(not json.loads(line).get("events") for line in lines[cut + 1 :])
    state.write_text("".join(lines[:cut]))  # the process died after the rows, before this line
    silent_kept = sum(line["path"].endswith("silent.wav") for line in _done_lines(state))
    with open(out, "a") as f:
        f.write('{"half": "a row')
    result = _invoke(archive, *_scan_args(shipped_model, out, "--workers", 1))
    assert result.exit_code == EX_SOME_FAILED, result.stderr
    # that file, and the silent one (failed without an event: retried); broken.wav fails first
    assert "2 to do (4 done before)" in result.stderr
    after = read_events(out)
    assert sorted(map(_compared, after)) == sorted(map(_compared, read_events(local_out)))
    assert [e["seq"] for e in after] == list(range(1, len(after) + 1))
    counted = [line["path"] for line in _done_lines(state) if line["events"]]
    assert counted.count(last["path"]) == 1 and len(counted) == len(set(counted))
    silent = [line for line in _done_lines(state) if line["path"].endswith("silent.wav")]
    # retried, no rows: one line more than the cut state kept (its first line is gone when it
    # finished after the cut file, which the two workers' order decides)
    assert len(silent) == silent_kept + 1 and not any(line["events"] for line in silent)


def _interrupt_when(args: list[str], state: Path, done: int, how: str) -> tuple[int, str]:
    """Run the scan CLI and stop it once the state records `done` files: SIGTERM to the client
    (a clean stop), or SIGKILL to it and its worker processes (a crash): (status, stderr)."""
    proc = subprocess.Popen(args, start_new_session=True, env=_env(),
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if state.exists() and len(_done_lines(state)) >= done:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.stderr.read()
        if how == "SIGKILL":
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGTERM)
        status = proc.wait(timeout=60)
        stderr = proc.stderr.read()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        proc.stderr.close()
    return status, stderr


def test_interrupted_and_killed_scans_resume_without_doing_a_file_twice(
    archive, shipped_model, tmp_path
):
    folder = tmp_path / "archive"
    shutil.copytree(archive / "day1", folder, ignore=shutil.ignore_patterns("*.txt"))
    for k in range(4):
        _calls(folder / f"b{k}_20090330_00{k}000.wav", 20, 10 + k)
    for name in ("y", "z"):  # last, and long: each run is still busy when it is stopped
        _calls(folder / f"{name}_20090331_000000.wav", 1200, ord(name))
    out, state = tmp_path / "events.csv", tmp_path / "events.csv.scan-state.jsonl"
    args = [*cli_command(), "scan", folder, *_scan_args(shipped_model, out, "--workers", 1)]
    args = list(map(str, args))
    status, stderr = _interrupt_when(args, state, 2, "SIGTERM")
    assert status == 128 + signal.SIGTERM, stderr
    assert "scan interrupted by SIGTERM: run it again to resume" in stderr
    first = len(_done_lines(state))
    assert 2 <= first < 8
    _, stderr = _interrupt_when(args, state, first + 1, "SIGKILL")  # client and its workers
    assert f"({first} done before)" in stderr
    second = len(_done_lines(state))
    assert first < second < 8
    again = subprocess.run(args, stderr=subprocess.PIPE, text=True, timeout=300, env=_env())
    assert again.returncode == 0, again.stderr
    assert f"({second} done before)" in again.stderr
    paths = [line["path"] for line in _done_lines(state)]
    assert sorted(paths) == sorted(set(paths)) and len(paths) == 8  # every file, once
    import csv

    with open(out, newline="") as f:
        table = list(csv.DictReader(f))
    assert [int(row["seq"]) for row in table] == list(range(1, len(table) + 1))
    spans = [(row["source"], row["offset_start_s"]) for row in table]
    assert len(spans) == len(set(spans))  # each event exactly once
    assert {row["source"] for row in table} == {str(p) for p in folder.iterdir()}


def _env() -> dict:
    """Subprocesses (the CLI, dask's scheduler and workers) import this checkout."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), path]))}


def cli_command() -> list[str]:
    return [sys.executable, "-c", "from detector.cli import main; main(prog_name='whale-listen')"]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"no real recordings at {SHARED_DATA}")
def test_scan_of_the_shared_data_matches_replaying_each_file(shipped_model, tmp_path):
    out = tmp_path / "events.jsonl"
    result = _invoke(SHARED_DATA, *_scan_args(shipped_model, out, "--workers", 2))
    assert result.exit_code == 0, result.stderr
    events = read_events(out)
    recordings = discover([str(SHARED_DATA)])
    assert len(recordings) >= 10
    for recording in recordings:
        replayed = _replay(Path(recording), shipped_model, tmp_path / f"{Path(recording).name}.j")
        scanned = [e for e in events if e["source"] == recording]
        if start_time(recording, None) is None:  # the replay counts from now, the scan not
            replayed = [{**e, "start": None, "end": None} for e in replayed]
        assert [_compared(e) for e in scanned] == [_compared(e) for e in replayed], recording


def test_an_output_without_its_state_is_refused_not_overwritten(archive, shipped_model, tmp_path):
    out = tmp_path / "events.csv"
    out.write_text("someone's table\n")
    result = _invoke(archive, *_scan_args(shipped_model, out))
    assert result.exit_code == EX_USAGE
    assert "no scan state" in result.stderr and result.stderr.count("\n") == 1
    assert out.read_text() == "someone's table\n"
    assert not (tmp_path / "events.csv.scan-state.jsonl").exists()


def test_progress_says_files_audio_hours_speed_and_eta():
    progress = ScanProgress(files_total=4, audio_total_s=4 * 3600, quiet=True)
    progress.file_done(3600, events=5, failed=False)
    progress.file_done(3600, events=0, failed=True)
    line = progress.figures(now=progress.started + 10)
    assert line == (
        "2/4 files, 2.00 of 4.00 h of audio (50.0%), 720x real time, 5 event(s), 1 failed, ETA 0:10"
    )
