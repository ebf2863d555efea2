"""Shared benchmark helpers: repeats and medians, the machine, the model and audio under test.

Every benchmark module exposes `run(ctx) -> Section`; `bench/run.py` calls them in order and
writes BENCHMARKS.md. Nothing here is imported by the daemon or the tests.
"""

import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import soundfile as sf

from detector.constants import SAMPLE_RATE

REPO = Path(__file__).resolve().parents[1]
DATA_DIR = REPO.parent / "shared" / "data"
DCLDE_FILES = (
    "NOPP6_EST_20090328_000000.wav",
    "NOPP6_EST_20090328_001500.wav",
    "NOPP6_EST_20090328_003000.wav",
    "NOPP6_EST_20090331_220000_CH10.wav",
)
SHIPPED_MODEL = REPO / "detector" / "models" / "upcall.onnx"
HOUR_S = 3600
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
# the CLI's last line: "done: 3600.0 s of audio in 2.37 s, 1519x real time (scoring loop 2010x)"
DONE_LINE = re.compile(
    r"done: ([\d.]+) s of audio in [\d.]+ s, [\d.]+x real time "
    r"\((?:paced at 1x by [^;]*; )?scoring loop ([\d.]+)x\)"
)


# -- results ------------------------------------------------------------------------------------
@dataclass
class Figure:
    """One reported number, with its goal when the issue sets one."""

    name: str
    value: float | None
    unit: str
    goal: str = ""
    met: bool | None = None  # None: no goal, or not measured
    note: str = ""

    def cell(self) -> str:
        if self.value is None:
            return "not measured"
        v = self.value
        text = f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return f"{text} {self.unit}".strip()


@dataclass
class Section:
    """A benchmark's figures plus free markdown (tables, profiles, notes)."""

    title: str
    figures: list[Figure] = field(default_factory=list)
    body: list[str] = field(default_factory=list)
    seconds: float = 0.0  # how long the benchmark itself took


def goal_at_least(value: float | None, goal: float) -> bool | None:
    return None if value is None else value >= goal


def goal_at_most(value: float | None, goal: float) -> bool | None:
    return None if value is None else value <= goal


def shortfall(value: float, goal: float, higher_is_better: bool) -> str:
    """'missed by 38% (needs 1.6x)' style text for a missed goal."""
    if higher_is_better:
        return f"missed by {100 * (1 - value / goal):.0f}% (needs {goal / value:.2f}x)"
    return f"missed by {100 * (value / goal - 1):.0f}% (needs {value / goal:.2f}x less)"


def goal_figure(
    name: str,
    value: float | None,
    unit: str,
    goal: float,
    goal_text: str,
    higher_is_better: bool,
    note: str = "",
) -> Figure:
    """A figure set against its goal: whether it met it and, when missed, by how much."""
    met = (goal_at_least if higher_is_better else goal_at_most)(value, goal)
    parts = [note] if note else []
    if met is False:
        parts.append(shortfall(value, goal, higher_is_better))
    return Figure(name, value, unit, goal_text, met, "; ".join(parts))


def md_table(header: list[str], rows: list[list[object]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


# -- repeats ------------------------------------------------------------------------------------
def median(values: list[float]) -> float:
    return float(statistics.median(values))


def repeat(fn: Callable[[], float], repeats: int) -> list[float]:
    """Call fn `repeats` times; each call returns one measurement."""
    return [fn() for _ in range(repeats)]


def spread(values: list[float]) -> str:
    """'median (min-max, n=3)' for tables."""
    if len(values) == 1:
        return f"{values[0]:,.0f} (n=1)"
    return f"{median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f}, n={len(values)})"


# -- machine ------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def ram_gib() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("nan")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def machine_info() -> dict[str, str]:
    import onnxruntime

    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count()),
        "ram": f"{ram_gib():.1f} GiB",
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "providers": ", ".join(onnxruntime.get_available_providers()),
        "load average at start": load_average(),
    }


# -- model and audio under test -----------------------------------------------------------------
@dataclass
class Context:
    """What every benchmark shares: scratch space, the model, the hour of audio, the budget."""

    workdir: Path
    quick: bool
    repeats: int
    model: Path
    model_note: str
    audio: Path
    audio_note: str
    results: dict = field(default_factory=dict)  # figures one benchmark passes to another


def prepare_model(workdir: Path) -> tuple[Path, str]:
    """The shipped model when present, else a freshly exported UpcallDetector (random weights).

    Speed and memory do not depend on the weights; which events fire does, so the stand-in's
    card threshold is only a placeholder (the latency benchmark picks its own, see there).
    """
    if SHIPPED_MODEL.is_file():
        return SHIPPED_MODEL, f"shipped model `{SHIPPED_MODEL.relative_to(REPO)}`"
    import torch

    from train.export import export_onnx, write_card
    from train.net import UpcallDetector

    torch.manual_seed(0)
    detector = UpcallDetector().eval()
    path = workdir / "upcall.onnx"
    export_onnx(detector, path)
    write_card(path, detector, name="upcall-untrained", threshold=0.5)
    return path, (
        "stand-in: `detector/models/upcall.onnx` is not in the tree, so an untrained "
        "`train.net.UpcallDetector` (same architecture, random weights) was exported"
    )


def write_wav(path: Path, blocks: list[np.ndarray] | np.ndarray) -> Path:
    """16-bit PCM at 2 kHz, written block by block."""
    with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as out:
        for block in [blocks] if isinstance(blocks, np.ndarray) else blocks:
            out.write(np.clip(block, -1, 1 - 2**-15))
    return path


def prepare_hour(workdir: Path) -> tuple[Path, str]:
    """One hour of 2 kHz audio: the four DCLDE 2013 files back to back, else synthetic."""
    files = [DATA_DIR / "dclde2013" / name for name in DCLDE_FILES]
    path = workdir / "hour.wav"
    if all(f.is_file() for f in files):
        with sf.SoundFile(path, "w", SAMPLE_RATE, 1, "PCM_16") as out:
            for f in files:
                data, rate = sf.read(f, dtype="int16", always_2d=True)
                if rate != SAMPLE_RATE:
                    raise RuntimeError(f"{f} is {rate} Hz, expected {SAMPLE_RATE}")
                out.write(data[:, 0])
        seconds = sf.info(path).duration
        return path, f"the four DCLDE 2013 recordings back to back ({seconds:.0f} s, real audio)"
    from train.synth import synthetic_recording

    audio, _ = synthetic_recording(np.random.default_rng(1), HOUR_S, n_calls=60)
    write_wav(path, audio)
    return path, "synthetic (../shared/data absent): ocean noise with 60 planted up-calls, 1 h"


# -- running the CLI ----------------------------------------------------------------------------
def cli_command() -> list[str]:
    """The installed `whale-listen` script run by this Python, else the same entry point inline."""
    script = Path(sys.executable).parent / "whale-listen"
    if script.is_file():
        return [sys.executable, str(script)]
    found = shutil.which("whale-listen")
    if found and not Path(found).read_bytes().startswith(b"#!/usr/bin/env bash"):
        return [found]
    return [sys.executable, "-c", "from detector.cli import main; main()"]


@dataclass
class ProcessResult:
    returncode: int
    started: float  # monotonic, just before the fork
    wall_s: float
    cpu_s: float  # user + system over the whole life of the process
    max_rss_mb: float | None  # peak resident set (10^6 bytes), from wait4's rusage
    stderr: str
    stderr_lines: list[tuple[float, str]]  # (monotonic arrival, line)

    def done_line(self) -> tuple[float, float] | None:
        """(seconds of audio, the scoring loop's x real time) from the CLI's summary line."""
        match = DONE_LINE.search(self.stderr)
        return (float(match.group(1)), float(match.group(2))) if match else None


def status_mb(pid: int, field: str) -> float | None:
    """One memory line of /proc/PID/status (VmHWM: peak, VmRSS: now) in MB; None once the
    process is gone (0.0 if the kernel has no such line)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1]) * 1024 / 1e6
        return 0.0
    except (OSError, IndexError, ValueError):
        return None


def read_proc(pid: int) -> tuple[float, float] | None:
    """(cpu seconds, peak RSS MB) of a live process from /proc, None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        cpu = (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime
    except (OSError, IndexError, ValueError):
        return None
    hwm = status_mb(pid, "VmHWM")
    return None if hwm is None else (cpu, hwm)


# A tiny parent for the measured process: a child's peak RSS from wait4 counts the memory of
# the process it was forked from, so the fork must come from a small process, not from this one.
RUSAGE_WRAPPER = """
import os, sys, time
t0 = time.monotonic()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
print(f"@@pid {pid}", file=sys.stderr, flush=True)
_, status, usage = os.wait4(pid, 0)
wall = time.monotonic() - t0
cpu = usage.ru_utime + usage.ru_stime
print(f"@@rusage {usage.ru_maxrss} {cpu} {wall}", file=sys.stderr, flush=True)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def one_core() -> set[int]:
    """The last core this process may run on: what `taskset -c N` gives a one-core run."""
    return {max(os.sched_getaffinity(0))}


def pin_to(cores: set[int] | None) -> Callable[[], None] | None:
    """A preexec_fn that pins the child, and so every thread it starts, to `cores` (as taskset
    does: a thread's affinity is its own, so pinning the parent later would miss BLAS threads)."""
    return None if cores is None else lambda: os.sched_setaffinity(0, cores)


def run_process(
    cmd: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 600,
    on_start: Callable[[int], None] | None = None,
    measure_memory: bool = True,
    cores: set[int] | None = None,
) -> ProcessResult:
    """Run to completion, time-stamping stderr lines as they arrive.

    With measure_memory, a small wrapper forks the command and reports its peak RSS, CPU time
    and wall time from wait4 (the wrapper's own ~20 ms start is outside that wall time).
    Without it, wall time counts from just before the fork and peak RSS is not known.
    With cores, the command (and its children) run on those cores only, as under taskset.
    """
    t0 = time.monotonic()
    full = [sys.executable, "-c", RUSAGE_WRAPPER, *cmd] if measure_memory else cmd
    proc = subprocess.Popen(
        full,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
        text=True,
        preexec_fn=pin_to(cores),
    )
    lines: list[tuple[float, str]] = []
    child: list[int] = [] if measure_memory else [proc.pid]
    usage: list[str] = []

    def pump() -> None:
        for line in proc.stderr:
            now, line = time.monotonic(), line.rstrip("\n")
            if line.startswith("@@pid "):
                child.append(int(line.split()[1]))
                if on_start is not None:
                    on_start(child[0])
            elif line.startswith("@@rusage "):
                usage.extend(line.split()[1:])
            else:
                lines.append((now, line))

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    if on_start is not None and not measure_memory:
        on_start(proc.pid)

    def kill() -> None:
        for pid in child:
            try:
                os.kill(pid, 9)
            except OSError:
                pass
        proc.kill()

    timer = threading.Timer(timeout, kill)
    timer.start()
    try:
        _, status, own = os.wait4(proc.pid, 0)
    finally:
        timer.cancel()
    wall = time.monotonic() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=5)
    proc.stderr.close()
    if measure_memory and len(usage) == 3:
        max_rss, cpu, wall = int(usage[0]) * 1024 / 1e6, float(usage[1]), float(usage[2])
    else:
        max_rss, cpu = None, own.ru_utime + own.ru_stime
    return ProcessResult(
        returncode=proc.returncode,
        started=t0,
        wall_s=wall,
        cpu_s=cpu,
        max_rss_mb=max_rss,
        stderr="\n".join(line for _, line in lines),
        stderr_lines=lines,
    )


def replay_args(
    ctx: Context,
    audio: Path,
    *,
    threads: int = 1,
    hop: float = 0.5,
    batch: int = 64,
    extra: tuple[str, ...] = (),
    tag: str = "run",
) -> list[str]:
    """A `whale-listen --replay` command line writing only into the scratch directory."""
    return [
        *cli_command(),
        "--replay",
        str(audio),
        "--model",
        str(ctx.model),
        "--provider",
        "cpu",
        "--threads",
        str(threads),
        "--hop",
        str(hop),
        "--batch",
        str(batch),
        "--start-time",
        "2009-03-28T00:00:00Z",
        "--station",
        "bench",
        "--events-log",
        str(ctx.workdir / f"{tag}-events.jsonl"),
        "--publish",
        f"ipc://{ctx.workdir}/{tag}.sock",
        "--linger",
        "0",
        *extra,
    ]


def check(result: ProcessResult, what: str) -> ProcessResult:
    if result.returncode != 0:
        tail = result.stderr.strip().splitlines()[-3:]
        raise RuntimeError(f"{what} failed (exit {result.returncode}): {' | '.join(tail)}")
    return result


class Subscriber:
    """A ZeroMQ SUB socket in its own thread, time-stamping every message on arrival."""

    def __init__(self, endpoint: str, on_message: Callable[[float, str, dict], None] | None = None):
        self.endpoint = endpoint
        self.messages: list[tuple[float, str, dict]] = []  # (monotonic arrival, topic, object)
        self.on_message = on_message
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="subscriber", daemon=True)

    def __enter__(self) -> "Subscriber":
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import json

        import zmq

        context = zmq.Context()
        socket = context.socket(zmq.SUB)
        socket.setsockopt(zmq.RECONNECT_IVL, 5)  # connect within 5 ms of the daemon binding
        socket.setsockopt(zmq.RCVHWM, 0)
        socket.setsockopt(zmq.SUBSCRIBE, b"")
        socket.connect(self.endpoint)
        self._ready.set()
        try:
            while not self._stop.is_set():
                if not socket.poll(50, zmq.POLLIN):
                    continue
                topic, payload = socket.recv_multipart()
                arrived = time.monotonic()
                obj = json.loads(payload)
                self.messages.append((arrived, topic.decode(), obj))
                if self.on_message is not None:
                    self.on_message(arrived, topic.decode(), obj)
        finally:
            socket.close(linger=0)
            context.term()
