"""Scan throughput on Dask: `python bench/scan.py [--write BENCHMARKS.md] [--copies N]`.

Audio hours per wall second for one file after another in this process on one core (the
baseline), on a LocalCluster of 1 and 2 worker processes, and on a `dask scheduler` with two
`dask worker` processes on 127.0.0.1; the per-task overhead (tiny files, where scoring is
nothing); and the cost model that follows (audio hours per core-hour). The archive is the real
recordings of ../shared/data (DCLDE 2013 + Gulf background, 2.25 h; `--copies` links them
several times over), else synthetic. Prints a Markdown section; `--write` puts it into the
report between its markers (replacing an earlier one).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from bench.common import DATA_DIR, SHIPPED_MODEL, load_average, md_table, write_wav  # noqa: E402
from detector.constants import SAMPLE_RATE  # noqa: E402
from detector.model import load_model  # noqa: E402
from detector.scan import discover  # noqa: E402
from detector.scan_dask import open_client, worker_count  # noqa: E402
from detector.scan_output import RowsFile, header  # noqa: E402
from detector.scan_progress import ScanProgress  # noqa: E402
from detector.scan_run import Tally, Writer, plan, run_scan  # noqa: E402
from detector.scan_state import ScanState  # noqa: E402
from detector.scan_worker import FileTask, ModelFiles, ScanJob, scan_file  # noqa: E402

BEGIN, END = "<!-- bench/scan.py: begin -->", "<!-- bench/scan.py: end -->"
TINY_FILES, TINY_S = 40, 2.5


def archive(workdir: Path, copies: int) -> tuple[list[str], str]:
    real = sorted((DATA_DIR / "dclde2013").glob("*.wav")) + sorted(
        (DATA_DIR / "background").glob("*.wav")
    )
    folder = workdir / "archive"
    folder.mkdir()
    if real:
        for k in range(copies):
            for f in real:
                (folder / f"{k}_{f.name}").symlink_to(f)
        note = f"the {len(real)} DCLDE 2013 and Gulf recordings of ../shared/data, {copies}x"
    else:
        from train.synth import synthetic_recording

        for k in range(8 * copies):
            audio, _ = synthetic_recording(np.random.default_rng(k), 900, 30)
            write_wav(folder / f"synthetic_{k:03d}.wav", audio)
        note = f"{8 * copies} synthetic 15-min recordings (../shared/data absent)"
    return discover([str(folder)]), note


def tiny(workdir: Path) -> list[str]:
    folder = workdir / "tiny"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for k in range(TINY_FILES):
        write_wav(folder / f"t{k:03d}.wav", 0.1 * rng.standard_normal(int(TINY_S * SAMPLE_RATE)))
    return discover([str(folder)])


def timed_scan(client: object, files: list[str], job: ScanJob, model_files: ModelFiles,
               workdir: Path, name: str) -> tuple[float, float]:  # fmt: skip
    """(wall s, audio s) of one scan of `files` into a fresh output, as the CLI runs it."""
    out = workdir / f"{name}.jsonl"
    state = ScanState(workdir / f"{name}.state", out, "jsonl")
    rows_file = RowsFile(out)
    if header("jsonl"):
        rows_file.append(header("jsonl"))
    state.start(rows_file.size)
    fingerprint = {"model": model_files.sha256}
    tally = Tally()
    todo = plan(files, None, state, fingerprint, tally)
    progress = ScanProgress(len(todo), sum(p.seconds for p in todo), quiet=True)
    started = time.monotonic()
    run_scan(client, todo, job, model_files, Writer(rows_file, "jsonl", state, fingerprint),
             progress, tally, worker_count(client))  # fmt: skip
    wall = time.monotonic() - started
    rows_file.close()
    state.close()
    assert tally.failed == 0, tally.failures
    return wall, tally.audio_s


def in_process(files: list[str], job: ScanJob, model_files: ModelFiles) -> tuple[float, float]:
    """(wall s, audio s) of scoring the files one after another here, pinned to one core."""
    scan_file(FileTask(files[0], None), job, model_files)  # model loaded, caches warm
    started, audio = time.monotonic(), 0.0
    for path in files:
        audio += scan_file(FileTask(path, None), job, model_files).samples / SAMPLE_RATE
    return time.monotonic() - started, audio


def dask_processes(workdir: Path) -> tuple[list[subprocess.Popen], str]:
    """`dask scheduler` and two `dask worker` processes on 127.0.0.1, as a user starts them."""
    dask = Path(sys.executable).with_name("dask")
    sched_file = workdir / "scheduler.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    quiet = {"env": env, "stderr": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
    scheduler = [dask, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    procs = [subprocess.Popen([*scheduler, "--scheduler-file", sched_file], **quiet)]
    while not sched_file.exists():
        time.sleep(0.1)
    address = json.loads(sched_file.read_text())["address"]
    for _ in range(2):
        procs.append(subprocess.Popen([dask, "worker", address, "--nthreads", "1", "--nworkers",
                                       "1", "--no-dashboard"], **quiet))  # fmt: skip
    return procs, address


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=2, help="times the archive is linked [2]")
    parser.add_argument("--write", type=Path, default=None, help="report to update")
    args = parser.parse_args(argv)
    load_start = load_average()
    model = load_model(SHIPPED_MODEL, "cpu", 1)
    model_files = ModelFiles.of(model)
    job = ScanJob(float(model.threshold), SAMPLE_RATE // 2, 64, 0, "bench")
    rows: list[list[object]] = []
    with tempfile.TemporaryDirectory(prefix="whale-scan-bench-") as tmp:
        workdir = Path(tmp)
        files, note = archive(workdir, args.copies)
        small = tiny(workdir)
        cores = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {max(cores)})  # one core, as `taskset -c N`
        try:
            base_wall, base_audio = in_process(files, job, model_files)
            tiny_wall, _ = in_process(small, job, model_files)
        finally:
            os.sched_setaffinity(0, cores)
        rows.append(["in-process, one file after another, 1 core", "-", base_wall, base_audio])
        results = {"tiny in-process": tiny_wall / len(small)}
        for workers in (1, 2):
            started = time.monotonic()
            with open_client(workers, None) as client:
                start_s = time.monotonic() - started
                wall, audio = timed_scan(client, files, job, model_files, workdir, f"l{workers}")
                rows.append([f"LocalCluster, {workers} worker process(es)", start_s, wall, audio])
                if workers == 1:
                    t_wall, _ = timed_scan(client, small, job, model_files, workdir, "tiny1")
                    results["tiny 1 worker"] = t_wall / len(small)
        procs, address = dask_processes(workdir)
        try:
            started = time.monotonic()
            with open_client(1, address) as client:
                client.wait_for_workers(2, timeout=120)
                start_s = time.monotonic() - started
                wall, audio = timed_scan(client, files, job, model_files, workdir, "tcp")
                rows.append(["`dask scheduler` + 2 `dask worker` (tcp, 127.0.0.1)", start_s,
                             wall, audio])  # fmt: skip
                t_wall, _ = timed_scan(client, small, job, model_files, workdir, "tinytcp")
                results["tiny tcp cluster"] = t_wall / len(small)
        finally:
            for proc in reversed(procs):
                proc.terminate()
                proc.wait(timeout=30)
    text = report(rows, results, note, base_audio / base_wall, load_start, load_average())
    print(text)
    if args.write is not None:
        replace_section(args.write, text)


def report(rows: list, tiny: dict, note: str, rate: float, load_start: str, load_end: str) -> str:
    table = md_table(
        ["run", "cluster start s", "scan wall s", "audio h", "audio h per wall s", "x real time"],
        [[name, start if start == "-" else f"{start:.1f}", f"{wall:.1f}", f"{audio / 3600:.2f}",
          f"{audio / 3600 / wall:.3f}", f"{audio / wall:,.0f}"]
         for name, start, wall, audio in rows],
    )  # fmt: skip
    overhead_1 = tiny["tiny 1 worker"] - tiny["tiny in-process"]
    overhead_tcp = 2 * tiny["tiny tcp cluster"] - tiny["tiny in-process"]  # 2 tasks at once
    core_hour = rate  # audio seconds per core-second = audio hours per core-hour
    lines = [
        BEGIN,
        "## Archive scan (`whale-listen scan`)",
        "",
        f"Generated by `python bench/scan.py` ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
        f"). Audio: {note}. Shipped model, hop 0.5 s, batch 64, one onnxruntime thread per "
        f"worker. Load average (`uptime`, 2 cores shared with other work) at start "
        f"{load_start}, at end {load_end}: the machine was not idle, so these figures are "
        f"low bounds for a quiet machine. Scan wall time counts from the first task submitted "
        f"to the last file written (rows fsynced, state recorded); the cluster's start is "
        f"beside it.",
        "",
        *table,
        "",
        *busy_note(load_start),
        f"Per-task overhead ({TINY_FILES} files of {TINY_S} s, where scoring is almost "
        f"nothing): {tiny['tiny in-process'] * 1000:.0f} ms per file in-process (opening, "
        f"one window batch), {tiny['tiny 1 worker'] * 1000:.0f} ms per file through a 1-worker "
        f"LocalCluster: **{overhead_1 * 1000:.0f} ms of Dask overhead per task** (scheduling, "
        f"pickling the result, the client writing and fsyncing rows and state); on the "
        f"2-worker tcp cluster {tiny['tiny tcp cluster'] * 1000:.0f} ms per file of wall "
        f"time with 2 tasks running at once, i.e. ~{overhead_tcp * 1000:.0f} ms of overhead "
        f"per task and core.",
        "",
        f"**Cost model.** One core scores {core_hour:,.0f} audio hours per core-hour "
        f"(the in-process single-core figure: {rate:,.0f}x real time). A file of F seconds "
        f"costs F / {rate:,.0f} s of a core plus ~{max(overhead_1, 0) * 1000:.0f} ms of "
        f"per-task overhead, so 15-minute files lose "
        f"{100 * max(overhead_1, 0) / (900 / rate + max(overhead_1, 0)):.0f}% to overhead "
        f"and 2-s clips (the Kaggle layout) "
        f"{100 * max(overhead_1, 0) / (2 / rate + max(overhead_1, 0)):.0f}%: pack clips "
        f"into longer files, or scan folders of them on one worker. A year of one 2 kHz "
        f"station (8,760 h) is ~{8760 / core_hour:.1f} core-hours; N workers divide the wall "
        f"time by up to N while the client (one process writing every result) keeps up, "
        f"which at these rates it does by far.",
        END,
    ]
    return "\n".join(lines) + "\n"


def busy_note(load: str) -> list[str]:
    """Said when the machine was already busier than its cores: workers then only compete."""
    try:
        first = float(load.split()[0])
    except (ValueError, IndexError):
        return []
    cores = os.cpu_count() or 1
    if first <= cores:
        return []
    return [
        f"The {cores} cores were oversubscribed before the benchmark started (load {first:g}): "
        f"a second worker only competed with the other work, so the 1- and 2-worker rows do "
        f"not show how a scan scales; the per-task overhead and the single-core rate are the "
        f"figures to carry to a cluster, the latter a low bound.",
        "",
    ]


def replace_section(path: Path, text: str) -> None:
    old = path.read_text() if path.exists() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        new = head + text.rstrip("\n") + rest.split(END, 1)[1]
    else:
        new = old.rstrip("\n") + "\n\n" + text
    path.write_text(new)


if __name__ == "__main__":
    main()
