"""Start-up: from process start to the first window scored (and to READY=1 if the CLI sends it).

The CLI is started with a 60-s replay, a subscriber waiting on its endpoint and a 1-ms heartbeat,
so the first status message reporting windows_scored > 0 marks the first scored block (up to
16,384 samples, about 30 windows, ~10 ms of scoring, are included). A NOTIFY_SOCKET is bound
too: if the CLI speaks sd_notify, the time to READY=1 is reported, otherwise "not sent".
"""

import os
import re
import socket
import subprocess
import sys
import threading
import time

import soundfile as sf

from bench.common import (
    Context,
    Figure,
    Section,
    Subscriber,
    check,
    goal_at_most,
    goal_figure,
    md_table,
    median,
    replay_args,
    run_process,
    write_wav,
)
from detector.constants import SAMPLE_RATE

GOAL_S = 1.5
SHORT_S = 60


class NotifyListener:
    """A bound AF_UNIX datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ready_at: float | None = None
        if os.path.exists(path):
            os.unlink(path)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(path)
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "NotifyListener":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()
        os.unlink(self.path)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._sock.recv(4096)
            except TimeoutError:
                continue
            if b"READY=1" in data.split(b"\n") and self.ready_at is None:
                self.ready_at = time.monotonic()


def one_start(ctx: Context, short) -> dict:
    endpoint = f"ipc://{ctx.workdir}/startup.sock"
    first_scored: list[float] = []

    def on_message(arrived: float, topic: str, obj: dict) -> None:
        if topic == "status" and obj.get("windows_scored", 0) > 0 and not first_scored:
            first_scored.append(arrived)

    args = replay_args(
        ctx, short, tag="startup", extra=("--heartbeat", "0.001", "--wait-subscribers", "1")
    )
    args[args.index("--publish") + 1] = endpoint
    env = {**os.environ, "NOTIFY_SOCKET": str(ctx.workdir / "notify.sock")}
    with Subscriber(endpoint, on_message), NotifyListener(env["NOTIFY_SOCKET"]) as notify:
        result = check(
            run_process(args, env=env, measure_memory=False), "whale-listen start-up run"
        )
    loaded = next(
        (t for t, line in result.stderr_lines if " on " in line and "model" in line), None
    )
    return {
        "first_window": first_scored[0] - result.started if first_scored else None,
        "ready": notify.ready_at - result.started if notify.ready_at else None,
        "model_loaded": loaded - result.started if loaded else None,
        "exit": result.wall_s,
    }


def import_times() -> list[tuple[str, float]]:
    """The slowest imports of the daemon's modules at any depth (python -X importtime)."""
    code = (
        "import detector.cli, detector.model, detector.pipeline, detector.publish, detector.replay"
    )
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", code], capture_output=True, text=True
    ).stderr
    found = []
    for line in out.splitlines():
        match = re.match(r"import time:\s+\d+ \|\s+(\d+) \|( *)(\S+)", line)
        if match:
            depth = (len(match.group(2)) - 1) // 2
            found.append(("  " * depth + match.group(3), int(match.group(1)) / 1e6))
    total = sum(t for name, t in found if not name.startswith(" "))
    slowest = sorted(found, key=lambda item: -item[1])[:10]
    return [("(all imports)", total)] + [(name.replace("  ", ". "), t) for name, t in slowest]


def model_load_time(ctx: Context) -> float:
    from detector.model import load_model

    t0 = time.perf_counter()
    load_model(ctx.model, "cpu", 1)
    return time.perf_counter() - t0


def run(ctx: Context) -> Section:
    section = Section("Start-up")
    audio, _ = sf.read(ctx.audio, dtype="float32", frames=SHORT_S * SAMPLE_RATE)
    short = write_wav(ctx.workdir / "short.wav", audio)
    one_start(ctx, short)  # warm the page cache: every measured start is a warm start
    runs = [one_start(ctx, short) for _ in range(max(3, ctx.repeats + 2))]

    def med(key: str) -> float | None:
        values = [r[key] for r in runs if r[key] is not None]
        return median(values) if values else None

    first, ready = med("first_window"), med("ready")
    imports = import_times()
    ctx.results["startup_s"] = first
    ctx.results["imports"] = imports
    section.figures.append(
        goal_figure(
            "Start-up: process start to first window scored",
            first,
            "s",
            GOAL_S,
            f"< {GOAL_S} s",
            higher_is_better=False,
        )
    )
    section.figures.append(
        Figure(
            "Start-up: process start to READY=1 (sd_notify)",
            ready,
            "s",
            f"< {GOAL_S} s",
            goal_at_most(ready, GOAL_S),
            "the CLI does not send READY=1 yet" if ready is None else "",
        )
    )
    rows = [
        [
            "to the start-up note (model loaded, sockets bound)",
            *[_ms(r["model_loaded"]) for r in runs],
        ],
        ["to READY=1", *[_ms(r["ready"]) for r in runs]],
        ["to first window scored", *[_ms(r["first_window"]) for r in runs]],
        [f"to exit ({SHORT_S} s replay)", *[_ms(r["exit"]) for r in runs]],
    ]
    section.body += [
        f"Warm starts (page cache filled by one unmeasured start) of `whale-listen --replay` on "
        f"a {SHORT_S}-s file; the clock starts just before the fork. 'First window scored' is "
        f"the arrival of the first status message with windows_scored > 0, so it includes "
        f"scoring the first block (up to ~30 windows).",
        "",
        *md_table(["milestone", *[f"run {i + 1}" for i in range(len(runs))]], rows),
        "",
        f"In-process `load_model` (onnxruntime session, sha256 of the file): "
        f"{1e3 * model_load_time(ctx):.0f} ms. The ten slowest imports of the daemon's modules "
        f"(`python -X importtime`, cumulative, fresh process; dots mark nesting depth):",
        "",
        *md_table(["module", "import time"], [[m, _ms(s)] for m, s in imports]),
    ]
    return section


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{1e3 * seconds:.0f} ms"
