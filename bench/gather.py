"""gather's events/s into SQLite: `python bench/gather.py [--events N] [--stations S]`.

Real parts end to end: S stations, each a real event log served by the daemon's own
`CatchupServer` and a real `Publisher` (XPUB) on 127.0.0.1, and `whale-listen gather` as a
subprocess writing a real SQLite file (WAL, synchronous=FULL). Two figures:

- live: gather is subscribed, then the stations publish N events in all as fast as they can;
  from the first send to the last event stored (what the stream drops comes through catch-up);
- backlog: the N events are in the logs before gather starts (an outage): all come through
  catch-up, 100 a request; from the first event stored to the last.

A station appends each event to its log (flushed, not fsync'ed: the daemon's fsync is its own
cost, not gather's) just before publishing it, as the daemon does. Prints the section for
BENCHMARKS.md.
"""

import argparse
import os
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/gather.py`

from detector.catchup import CatchupServer  # noqa: E402
from detector.publish import Publisher  # noqa: E402
from detector.records import encode  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
GATHER = [sys.executable, "-c", "from detector.cli import main; main(prog_name='whale-listen')"]


def event(station: str, run: str, seq: int) -> dict:
    """An event shaped as the daemon's (about 500 bytes of JSON)."""
    second = seq * 7.5
    return {
        "schema": 1, "type": "upcall", "seq": seq, "run": run, "id": str(uuid.uuid4()),
        "station": station, "start": f"2009-03-28T00:{int(second // 60) % 60:02d}:"
        f"{second % 60:06.3f}Z", "end": f"2009-03-28T00:{int((second + 2) // 60) % 60:02d}:"
        f"{(second + 2) % 60:06.3f}Z", "offset_start_s": second, "offset_end_s": second + 2,
        "score": 0.9912, "peak_offset_s": second + 1, "windows": 3,
        "source": "NOPP6_EST_20090328_001500.wav",
        "model": {"name": "upcall", "sha256": "0ece4a46ddda" * 5 + "abcd"}, "threshold": 0.97,
    }  # fmt: skip


class Station:
    """A log of `n` events (written now, or as each is published), its catch-up server and its
    publisher."""

    def __init__(self, folder: Path, name: str, n: int, logged: bool) -> None:
        self.name = name
        self.log = folder / f"{name}.jsonl"
        run = str(uuid.uuid4())
        self.events = [event(name, run, seq) for seq in range(1, n + 1)]
        head = {"schema": 1, "type": "run", "run": run, "station": name, "time": "", "after_seq": 0}
        self.log.write_bytes(b"")
        self.catchup = CatchupServer("tcp://127.0.0.1:*", self.log)  # first, as the daemon
        lines = [encode(head)] + ([encode(e) for e in self.events] if logged else [])
        self.log.write_bytes(b"\n".join(lines) + b"\n")  # then its run line: the current run
        self.file = open(self.log, "ab")  # noqa: SIM115 - open for the station's life
        self.publisher = Publisher(["tcp://127.0.0.1:*"])
        self.endpoint = self.publisher.endpoints[0]

    def emit(self, one: dict) -> None:
        """As the daemon does: the log first (flushed, not fsync'ed here), then the stream."""
        self.file.write(encode(one) + b"\n")
        self.file.flush()
        self.publisher.send("upcall", one)

    @property
    def target(self) -> str:
        return f"{self.endpoint}={self.catchup.endpoint}"

    def close(self) -> None:
        self.file.close()
        self.publisher.close(linger_ms=0)
        self.catchup.close()


def stored(db: Path) -> int:
    try:
        conn = sqlite3.connect(db, timeout=10)
        try:
            return conn.execute("SELECT count(*) FROM events").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0  # not created yet


def wait_for(db: Path, n: int, timeout: float) -> float | None:
    """When the database first held `n` events (monotonic), or None on timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stored(db) >= n:
            return time.monotonic()
        time.sleep(0.02)
    return None


def stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    return err.strip().splitlines()[-1] if err.strip() else ""


def via_catchup(summary: str) -> int:
    return sum(int(n) for n in re.findall(r"\((\d+) via catch-up", summary))


def live(folder: Path, n: int, stations: int) -> tuple[float, int, str]:
    group = [Station(folder, f"live-{k}", n // stations, logged=False) for k in range(stations)]
    db = folder / "live.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([*GATHER, "gather", *(s.target for s in group), "--db", db],
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        for station in group:
            station.publisher.wait_subscribers(2, timeout=60)  # upcall + status
        time.sleep(0.5)  # its first catch-up requests answered (empty): a quiet start
        total = sum(len(s.events) for s in group)
        started = time.monotonic()
        for rows in zip(*(s.events for s in group), strict=True):
            for station, one in zip(group, rows, strict=True):
                station.emit(one)
        done = wait_for(db, total, 120)
    finally:
        summary = stop(proc)
        for station in group:
            station.close()
    return (total / (done - started) if done else float("nan")), via_catchup(summary), summary


def backlog(folder: Path, n: int, stations: int) -> tuple[float, int, str]:
    group = [Station(folder, f"backlog-{k}", n // stations, logged=True) for k in range(stations)]
    db = folder / "backlog.db"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    total = sum(len(s.events) for s in group)
    proc = subprocess.Popen([*GATHER, "gather", *(s.target for s in group), "--db", db],
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip
    try:
        first = wait_for(db, 1, 60)
        done = wait_for(db, total, 120)
    finally:
        summary = stop(proc)
        for station in group:
            station.close()
    rate = total / (done - first) if done and first and done > first else float("nan")
    return rate, via_catchup(summary), summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=30_000, help="events in all [30000]")
    parser.add_argument("--stations", type=int, default=3, help="stations [3]")
    args = parser.parse_args(argv)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with tempfile.TemporaryDirectory() as tmp:
        live_rate, live_fetched, _ = live(Path(tmp), args.events, args.stations)
        back_rate, back_fetched, _ = backlog(Path(tmp), args.events, args.stations)
    n = args.events // args.stations * args.stations
    print(f"## Shore station: gather\n\n`python bench/gather.py --events {args.events} "
          f"--stations {args.stations}`; load average at start {load}; {os.cpu_count()} cores, "
          f"gather and the stations on the same machine.\n")  # fmt: skip
    print("| figure | events/s into SQLite | via catch-up | note |\n|---|---|---|---|")
    print(
        f"| live: {n:,} events published as fast as {args.stations} stations can | "
        f"{live_rate:,.0f} | {live_fetched:,} of {n:,} | first send to last stored |"
    )
    print(f"| backlog after an outage: {n:,} events already logged | {back_rate:,.0f} | "
          f"{back_fetched:,} of {n:,} | first stored to last stored, 100 a request |")  # fmt: skip


if __name__ == "__main__":
    main()
