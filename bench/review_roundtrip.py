"""The review station's round trip on real data (issue 19's acceptance), with the real parts.

`python bench/review_roundtrip.py [--data ../shared/data] [--workdir DIR] [--reviews N]`

1. Three daemons replay real recordings as three stations (two DCLDE 2013 Cape Cod files and a
   Gulf of St. Lawrence background file, each with its own --station, --events-log, --clips and
   --publish on free 127.0.0.1 ports), as fast as they can, and `whale-listen gather` follows
   them into one SQLite file. Each daemon waits for gather's two subscriptions before it starts
   and lingers at exit until gather holds its last event (what the fast stream drops comes
   through catch-up). Checked: the database holds every event of every log, once.
2. The stations' clip folders are copied into one shore folder (what rsync does on shore), a
   reviewer is added (`whale-listen review --add-user`, password on stdin), and `whale-listen
   review` is served on a free port; an analyst is played through its HTTP server: login, the
   queue, each detection's page, audio and spectrogram, and a verdict POST with the session's
   CSRF token. The verdicts come from the recordings' own labels: up-call when the event,
   widened 0.5 s each side, overlaps an annotated call (annotations.csv); unsure when it overlaps
   only a span of dclde2013-review/likely_missed_calls.csv; not an up-call otherwise (every
   detection in the background file).
3. `whale-listen review --export` writes labels.csv and the Raven labels.txt; `whale-train train
   --data labels.csv --data .../annotations.csv --steps 40 --batch-size 32` trains briefly, and
   its `from review:` line must count the exported confirmed and rejected detections.

Prints a short summary. Exits 1 with the reason when a check fails. Run it under `nice`.
"""

import argparse
import csv
import http.client
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlencode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/review_roundtrip.py`

from detector.review_server import PAGE_SIZE  # noqa: E402
from tests.ports import free_port_pair  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
LISTEN = [sys.executable, "-c", "from detector.cli import main; main(prog_name='whale-listen')"]
TRAIN = [
    sys.executable,
    "-c",
    "import sys; sys.argv[0] = 'whale-train'; from train.entry import main; main()",
]
STATIONS = (  # station, recording under --data, --start-time (None: from the file name)
    ("cape-cod-1", "dclde2013/NOPP6_EST_20090328_001500.wav", None),
    ("cape-cod-2", "dclde2013/NOPP6_EST_20090401_000000.wav", None),
    ("gulf-1", "background/GSC_2000-05-19_00-00-00.wav", "2000-05-19T00:00:00Z"),
)
REVIEWER, PASSWORD = "analyst", "round-trip-analyst"
WIDEN_S = 0.5  # the data README's scoring rule: the event widened 0.5 s each side
SUMMARY = re.compile(r"(\S+) (\d+) stored \((\d+) via catch-up, (\d+) duplicate\(s\) dropped\)")
FROM_REVIEW = re.compile(
    r"from review: (\d+) examples in (\d+) event clips: (\d+) confirmed calls \(positives\), "
    r"(\d+) rejected detections \(hard negatives\)"
)


class Failed(Exception):
    """A check of the round trip failed: the message says which."""


def check(ok: bool, what: str) -> None:
    if not ok:
        raise Failed(what)


def read_log(path: Path) -> list[dict]:
    """The upcall events of a daemon's JSON-lines log."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, filter(None, lines)) if r.get("type") == "upcall"]


def stored_ids(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return [row[0] for row in conn.execute("SELECT id FROM events")]
    except sqlite3.OperationalError:
        return []  # gather has not made its tables yet
    finally:
        conn.close()


# -- 1. three daemons and gather -------------------------------------------------------------
def gather_stations(data: Path, work: Path, env: dict, sensitivity: str) -> tuple[dict, dict]:
    """Replay the stations into work/shore.db through gather; (logged events, gather's counts)."""
    ports = [free_port_pair() for _ in STATIONS]
    db = work / "shore.db"
    endpoints = [f"tcp://127.0.0.1:{port}" for port in ports]
    gather_err = open(work / "gather.err", "w")  # noqa: SIM115 - closed below
    gather = subprocess.Popen(
        [*LISTEN, "gather", *endpoints, "--db", db],
        env=env,
        stderr=gather_err,
        stdout=subprocess.DEVNULL,
    )
    daemons, logs = {}, {}
    try:
        for (station, recording, start_time), port in zip(STATIONS, ports, strict=True):
            logs[station] = work / f"{station}.events.jsonl"
            command = [
                *LISTEN, "--replay", data / recording, "--station", station,
                "--events-log", logs[station], "--clips", work / "buoy-clips" / station,
                "--publish", f"tcp://127.0.0.1:{port}", "--wait-subscribers", "2",
                "--heartbeat", "1", "--linger", "60", "--quiet", "--sensitivity", sensitivity,
            ]  # fmt: skip
            if start_time:
                command += ["--start-time", start_time]
            err = open(work / f"{station}.err", "w")  # noqa: SIM115 - the daemon's stderr
            daemons[station] = (
                subprocess.Popen(command, env=env, stderr=err, stdout=subprocess.DEVNULL),
                err,
            )
        for station, (proc, err) in daemons.items():
            code = proc.wait(timeout=1800)
            err.close()
            check(code == 0, f"{station}'s daemon exited {code}: {(work / f'{station}.err')}")
        logged = {station: read_log(path) for station, path in logs.items()}
        wanted = {e["id"] for events in logged.values() for e in events}
        deadline = time.monotonic() + 60
        while not wanted <= set(stored_ids(db)) and time.monotonic() < deadline:
            time.sleep(0.5)
        gather.send_signal(signal.SIGTERM)
        code = gather.wait(timeout=60)
        gather_err.close()
        check(code == 0, f"gather exited {code}: {work / 'gather.err'}")
    finally:
        for proc in [gather, *(p for p, _ in daemons.values())]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    lines = [ln for ln in (work / "gather.err").read_text().splitlines() if "stopped by" in ln]
    check(len(lines) == 1, f"no summary line from gather: {work / 'gather.err'}")
    counts = {m[0]: tuple(int(n) for n in m[1:]) for m in SUMMARY.findall(lines[0])}

    ids = stored_ids(db)
    check(len(ids) == len(set(ids)), "an event is stored twice")
    conn = sqlite3.connect(db)
    for station, events in logged.items():
        rows = conn.execute(
            "SELECT seq, id, record FROM events WHERE station = ? ORDER BY seq", (station,)
        ).fetchall()
        check(
            [(s, i) for s, i, _ in rows] == [(e["seq"], e["id"]) for e in events],
            f"{station}: the database does not hold its log's events, each once",
        )
        check([json.loads(r) for _, _, r in rows] == events, f"{station}: a record changed")
    conn.close()
    return logged, counts


# -- 2. the analyst through the review server -------------------------------------------------
def label_spans(path: Path) -> dict[str, list[tuple[float, float]]]:
    spans: dict[str, list[tuple[float, float]]] = {}
    with open(path, newline="") as file:
        for row in csv.DictReader(file):
            spans.setdefault(row["filename"], []).append((float(row["start"]), float(row["end"])))
    return spans


class Analyst:
    """Plain HTTP to the review server as a browser would: session cookie, CSRF token."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.cookie = ""
        self.csrf = ""

    def request(self, method: str, path: str, form: dict | None = None):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Cookie": self.cookie} if self.cookie else {}
        if form is not None:
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        conn.request(method, path, urlencode(form) if form is not None else None, headers)
        response = conn.getresponse()
        body = response.read()
        conn.close()
        return response, body

    def login(self, user: str, password: str) -> None:
        response, _ = self.request("POST", "/login", {"user": user, "password": password})
        check(response.status == 303, f"login answered {response.status}")
        self.cookie = (response.getheader("Set-Cookie") or "").split(";")[0]
        check(bool(self.cookie), "login set no session cookie")

    def get(self, path: str, kind: str) -> bytes:
        response, body = self.request("GET", path)
        check(response.status == 200, f"GET {path} answered {response.status}")
        check(
            (response.getheader("Content-Type") or "").startswith(kind),
            f"GET {path} is {response.getheader('Content-Type')}, not {kind}",
        )
        return body

    def queue(self) -> list[str]:
        """The unreviewed detections, newest first (the first page), and the CSRF token."""
        page = self.get("/queue", "text/html")
        self.csrf = re.search(rb'name="csrf" value="([^"]+)"', page).group(1).decode()
        return [i.decode() for i in re.findall(rb'data-href="/event/([^?"]+)', page)]

    def verdict(self, event_id: str, verdict: str) -> None:
        form = {"csrf": self.csrf, "verdict": verdict, "back": "status=unreviewed"}
        response, _ = self.request("POST", f"/event/{event_id}/verdict", form)
        check(response.status == 303, f"the verdict on {event_id} answered {response.status}")


def judge(record: dict, calls: dict, missed: dict) -> str:
    """The recordings' own labels as the analyst's ears."""
    name = Path(record["source"]).name
    start, end = record["offset_start_s"] - WIDEN_S, record["offset_end_s"] + WIDEN_S

    def hit(spans: dict) -> bool:
        return any(a < end and b > start for a, b in spans.get(name, []))

    return "upcall" if hit(calls) else "unsure" if hit(missed) else "not"


def wait_for_line(path: Path, pattern: str, proc: subprocess.Popen, timeout: float) -> re.Match:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, path.read_text()) if path.exists() else None
        if found:
            return found
        check(proc.poll() is None, f"exited {proc.returncode}: {path}")
        time.sleep(0.2)
    raise Failed(f"no {pattern!r} in {path} after {timeout:.0f} s")


def review(data: Path, work: Path, env: dict, logged: dict, limit: int | None) -> dict:
    """Sync the clips, add the analyst, serve the page, give verdicts through it; the verdicts
    given, by event id."""
    db, clips = work / "shore.db", work / "shore-clips"
    clips.mkdir(exist_ok=True)
    for station in logged:  # stands for `rsync -a buoy:/var/lib/whale-listen/clips/ clips/`
        shutil.copytree(work / "buoy-clips" / station, clips, dirs_exist_ok=True)
    added = subprocess.run(
        [*LISTEN, "review", "--db", db, "--add-user", REVIEWER],
        input=PASSWORD + "\n",
        env=env,
        capture_output=True,
        text=True,
    )
    check(added.returncode == 0, f"--add-user failed: {added.stderr.strip()}")

    calls = label_spans(data / "dclde2013" / "annotations.csv")
    missed = label_spans(data / "dclde2013-review" / "likely_missed_calls.csv")
    conn = sqlite3.connect(db)
    records = {i: json.loads(r) for i, r in conn.execute("SELECT id, record FROM events")}
    conn.close()

    err_path = work / "review.err"
    err = open(err_path, "w")  # noqa: SIM115 - closed below
    server = subprocess.Popen(
        [*LISTEN, "review", "--db", db, "--clips", clips, "--listen", "127.0.0.1:0"],
        env=env,
        stderr=err,
        stdout=subprocess.DEVNULL,
    )
    given: dict[str, str] = {}
    try:
        port = int(
            wait_for_line(err_path, r"review page at http://127\.0\.0\.1:(\d+)/", server, 60)[1]
        )
        analyst = Analyst(port)
        analyst.login(REVIEWER, PASSWORD)
        stations = analyst.get("/stations", "text/html").decode()
        for station, events in logged.items():
            row = re.search(rf"<tr><td><a [^>]*>{re.escape(station)}</a></td>(.*?)</tr>", stations)
            check(row is not None, f"{station} is not on the stations page")
            cells = re.findall(r"<td>(.*?)</td>", row[1])
            health = cells[0] != "no status yet" and cells[1] == "up"  # a status arrived
            check(health, f"{station}'s health on the stations page: {cells[:2]}")
            check(cells[6] == str(len(events)), f"{station}: {cells[6]} events on its page")
        queue = analyst.queue()
        shown = min(len(records), PAGE_SIZE)  # its first page
        check(len(queue) == shown, f"the queue shows {len(queue)} of {len(records)}")
        for event_id in queue[:limit]:
            analyst.get(f"/event/{event_id}", "text/html")
            if records[event_id].get("clip"):  # what the analyst looks at and listens to
                analyst.get(f"/event/{event_id}/spectrogram.png", "image/png")
                analyst.get(f"/event/{event_id}/audio.wav?speed=4", "audio/wav")
            given[event_id] = judge(records[event_id], calls, missed)
            analyst.verdict(event_id, given[event_id])
        check(
            len(analyst.queue()) == min(len(records) - len(given), PAGE_SIZE), "queue not shorter"
        )
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        err.close()
    conn = sqlite3.connect(db)
    stored = {
        e: (v, who)
        for e, v, who in conn.execute("SELECT event_id, verdict, reviewer FROM verdicts")
    }
    conn.close()
    check(stored == {e: (v, REVIEWER) for e, v in given.items()}, "the verdicts table differs")
    return given


# -- 3. export and retrain --------------------------------------------------------------------
def export_and_train(data: Path, work: Path, env: dict, given: dict) -> tuple[dict, str]:
    db, clips = work / "shore.db", work / "shore-clips"
    written = {}
    for name in ("labels.csv", "labels.txt"):
        done = subprocess.run(
            [*LISTEN, "review", "--db", db, "--clips", clips, "--export", work / name],
            env=env,
            capture_output=True,
            text=True,
        )
        check(done.returncode == 0, f"--export {name} failed: {done.stderr.strip()}")
        written[name] = done.stderr.strip().splitlines()[-1]
    with open(work / "labels.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    labels = Counter(row["label"] for row in rows)
    named = {"upcall": "upcall", "not": "not-upcall", "unsure": "unsure"}
    check(all(row["label"] == named[given[row["event_id"]]] for row in rows), "a label differs")
    left_out = re.search(r"(\d+) reviewed events left out", written["labels.csv"])
    check(
        len(rows) + (int(left_out[1]) if left_out else 0) == len(given),
        f"labels.csv has {len(rows)} rows for {len(given)} verdicts",
    )
    check(all((work / row["filename"]).is_file() for row in rows), "a row names no clip")

    out = work / "retrained"
    trained = subprocess.run(
        [
            *TRAIN,
            "train",
            "--data",
            work / "labels.csv",
            "--data",
            data / "dclde2013" / "annotations.csv",
            "--steps",
            "40",
            "--batch-size",
            "32",
            "--out",
            out,
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    (work / "train.log").write_text(trained.stdout + trained.stderr)
    check(trained.returncode == 0, f"whale-train failed ({trained.returncode}): {work}/train.log")
    found = FROM_REVIEW.search(trained.stdout + trained.stderr)
    check(found is not None, f"no 'from review:' line in {work}/train.log")
    examples, clip_count, confirmed, rejected = map(int, found.groups())
    check(
        (confirmed, rejected) == (labels["upcall"], labels["not-upcall"]),
        f"{found[0]!r} does not count labels.csv's {labels['upcall']} upcall and "
        f"{labels['not-upcall']} not-upcall rows",
    )
    check(examples == confirmed + rejected and clip_count == confirmed + rejected, found[0])
    check((out / "upcall.onnx").is_file(), "whale-train wrote no model")
    return {"rows": len(rows), **labels, **written}, found[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="the shared recordings (default: ../shared/data)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="an empty folder to keep everything in (default: a temp dir)"
    )
    parser.add_argument(
        "--reviews",
        type=int,
        default=None,
        help="verdicts to give, newest first (default: every detection)",
    )
    parser.add_argument(
        "--sensitivity",
        default="high",
        help="the daemons' --sensitivity (default: high: with an analyst reviewing every "
        "detection, the buoys can trade precision for recall)",
    )
    args = parser.parse_args()
    data = args.data.resolve()
    for _, recording, _ in STATIONS:
        if not (data / recording).is_file():
            print(f"review_roundtrip: no {data / recording}: give --data", file=sys.stderr)
            return 2
    work = args.workdir or Path(tempfile.mkdtemp(prefix="review-roundtrip-"))
    work.mkdir(parents=True, exist_ok=True)
    if any(work.iterdir()):  # the daemons' logs would go on from an earlier run's
        print(f"review_roundtrip: --workdir {work} is not empty", file=sys.stderr)
        return 2
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    began = time.monotonic()
    try:
        logged, counts = gather_stations(data, work, env, args.sensitivity)
        given = review(data, work, env, logged, args.reviews)
        exported, from_review = export_and_train(data, work, env, given)
        tally = Counter(given.values())
    except Failed as e:
        print(f"review_roundtrip: FAILED: {e} (files in {work})", file=sys.stderr)
        return 1
    print(f"review round trip in {work} ({time.monotonic() - began:.0f} s)")
    for station, recording, _ in STATIONS:
        stored, fetched, duplicates = counts.get(station, (0, 0, 0))
        print(
            f"  {station} ({Path(recording).name}): {len(logged[station])} events logged, "
            f"{stored} stored by gather ({fetched} via catch-up, {duplicates} duplicates dropped)"
        )
    total = sum(map(len, logged.values()))
    print(f"  database: {total} events, each once")
    print(
        f"  reviewed through the server: {sum(tally.values())} ({tally['upcall']} up-call, "
        f"{tally['not']} not an up-call, {tally['unsure']} unsure)"
    )
    print(f"  export: {exported['labels.csv']}")
    print(f"  export: {exported['labels.txt']}")
    print(f"  whale-train: {from_review}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
