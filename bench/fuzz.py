"""Fuzz the daemon at length: `python bench/fuzz.py --cases 1000 [--seed S] [--workers W]`.

The suite's fuzz generator (tests/fuzzing.py: truncated, flipped, odd-rate, odd-subtype, NaN and
silent recordings, hostile names, model cards, configs, options, signals), each case one real
`whale-listen` process checked the same way (status of the README's kind, one error line, no
traceback, no hang, no event lost), plus each run's peak RSS against the unit's MemoryMax. Prints
the counts and, with --write, puts them in BENCHMARKS.md's "Hostile input" section. A failing
case keeps its folder and is listed with the seed and index that reproduce it.
"""

import argparse
import os
import re
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/fuzz.py` from anywhere

from bench.common import cpu_model, git_commit, load_average, md_table  # noqa: E402
from tests.fuzzing import Fuzzer, Outcome, run_many  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "whale-listen.service"
SHIPPED_MODEL = REPO / "detector" / "models" / "upcall.onnx"
BEGIN, END = "<!-- bench/fuzz.py: begin -->", "<!-- bench/fuzz.py: end -->"
NOTES = "<!-- bench/fuzz.py: notes (kept by --write) -->"
SECTION = "## Hostile input (bench/fuzz.py)"


def memory_max_bytes(unit: Path = UNIT) -> int | None:
    """The unit's MemoryMax= in bytes (K/M/G/T suffixes are powers of 1024, as systemd's)."""
    match = re.search(r"^MemoryMax=(\d+)([KMGT]?)\s*$", unit.read_text(), re.MULTILINE)
    if match is None:
        return None
    return int(match.group(1)) * 1024 ** " KMGT".index(match.group(2) or " ")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1000, help="hostile inputs to run [1000]")
    parser.add_argument("--seed", type=int, default=14, help="generator seed [14]")
    parser.add_argument("--workers", type=int, default=2, help="runs at once [2]")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="seconds before a run counts as a hang and is killed [60]; more on "
                        "a loaded machine under nice")  # fmt: skip
    parser.add_argument(
        "--only",
        type=lambda t: [int(i) for i in t.split(",")],
        default=None,
        metavar="I,J,...",
        help="run only these case indices (a failure's rerun)",
    )
    parser.add_argument("--model", type=Path, default=SHIPPED_MODEL, help="[the shipped model]")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder [a temp one]")
    parser.add_argument("--write", type=Path, default=None, metavar="BENCHMARKS.md",
                        help="put the counts in this file's Hostile input section")  # fmt: skip
    return parser.parse_args(argv)


class Tally:
    """Counts as outcomes arrive from the worker threads, with a progress line every 50."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.started = total, 0, time.monotonic()
        self.lock = threading.Lock()
        self.failed: list[Outcome] = []

    def __call__(self, outcome: Outcome) -> None:
        with self.lock:
            self.done += 1
            if outcome.problems:
                self.failed.append(outcome)
                print(f"FAIL {outcome.case.name}: {'; '.join(outcome.problems)}", flush=True)
                print(f"     stderr tail: {outcome.stderr[-300:]!r}", flush=True)
            if self.done % 50 == 0 or self.done == self.total:
                elapsed = time.monotonic() - self.started
                print(f"{self.done}/{self.total} runs, {len(self.failed)} failed, "
                      f"{elapsed:.0f} s, load {load_average()}", flush=True)  # fmt: skip


def report(outcomes: list[Outcome], args: argparse.Namespace, info: dict) -> list[str]:
    """The BENCHMARKS.md section (also printed)."""
    limit = memory_max_bytes()
    peak = max(outcomes, key=lambda o: o.peak_rss_kb)
    over = [o for o in outcomes if limit and o.peak_rss_kb * 1024 > limit]
    kinds = Counter(o.case.kind for o in outcomes)
    statuses = Counter("hung" if o.hung else o.status for o in outcomes)
    rows = []
    for kind in sorted(kinds):
        mine = [o for o in outcomes if o.case.kind == kind]
        rows.append([
            kind, len(mine),
            ", ".join(f"{s}: {n}" for s, n in sorted(Counter(o.status for o in mine).items(),
                                                     key=str)),
            sum(o.traceback for o in mine), sum(o.hung for o in mine),
            sum(o.events_lost for o in mine), sum(bool(o.problems) for o in mine),
            f"{max(o.peak_rss_kb for o in mine) / 1024:.0f}",
        ])  # fmt: skip
    limit_text = f"{limit / 2**20:.0f} MiB" if limit else "none"
    lines = [
        SECTION,
        "",
        f"`{_nice()}python bench/fuzz.py --cases {len(outcomes)} --seed {args.seed} "
        f"--workers {args.workers} --timeout {args.timeout:g}` on {info['date']} "
        f"(commit {info['commit']}, {info['cpu']}, "
        f"{os.cpu_count()} cores shared with other work: load average {info['load_start']} at "
        f"the start, {info['load_end']} at the end), model `{args.model.name}`, "
        f"{info['wall_s'] / 60:.0f} min. Each case is one `whale-listen` process, killed "
        f"after {args.timeout:.0f} s (a hang); peak RSS is its VmHWM from /proc, MiB.",
        "",
        *md_table(
            ["figure", "value"],
            [
                ["runs", len(outcomes)],
                ["tracebacks", sum(o.traceback for o in outcomes)],
                ["hangs", sum(o.hung for o in outcomes)],
                [
                    "events lost (published or counted but not logged, or before a cut)",
                    sum(o.events_lost for o in outcomes),
                ],
                [
                    "runs breaking any check (status, one line, escaping, events)",
                    sum(bool(o.problems) for o in outcomes),
                ],
                ["events logged, all runs", sum(o.logged for o in outcomes)],
                [
                    "exit statuses",
                    ", ".join(f"{s}: {n}" for s, n in sorted(statuses.items(), key=str)),
                ],
                [
                    f"peak RSS of one run (unit's MemoryMax {limit_text})",
                    f"{peak.peak_rss_kb / 1024:.0f} MiB ({peak.case.name})",
                ],
                ["runs over MemoryMax", len(over)],
            ],
        ),  # fmt: skip
        "",
        *md_table(
            [
                "kind",
                "runs",
                "exit statuses",
                "tracebacks",
                "hangs",
                "events lost",
                "failed",
                "peak RSS MiB",
            ],
            rows,
        ),  # fmt: skip
        "",
    ]
    failed = [o for o in outcomes if o.problems]
    if failed:
        lines += ["Failed cases (seed, index, what; their folders were kept):", ""]
        lines += [f"- {o.case.name}: {'; '.join(o.problems)[:300]}" for o in failed[:30]]
        lines.append("")
    return lines


def _nice() -> str:
    """How the run was niced, as the command line would say it."""
    niceness = os.nice(0)
    return f"nice -n {niceness} " if niceness else ""


def write_section(path: Path, lines: list[str]) -> None:
    """Replace (or append) the Hostile input section of BENCHMARKS.md, leaving the rest: the
    figures up to the notes marker (or the section's end marker); the notes written by hand
    after it and the markers that bench/run.py keeps the section by stay as they are."""
    text = path.read_text() if path.exists() else ""
    start = text.find(SECTION)
    if start < 0:
        text = text.rstrip("\n") + "\n\n" + "\n".join([BEGIN, *lines, NOTES, END]) + "\n"
    else:
        ends = [i for i in (text.find(NOTES, start), text.find(END, start)) if i >= 0]
        end = min(ends) if ends else len(text)
        text = text[:start] + "\n".join(lines) + "\n\n" + text[end:]
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="whale-fuzz-"))
    info = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "commit": git_commit(),
            "cpu": cpu_model(), "load_start": load_average()}  # fmt: skip
    started = time.monotonic()
    fuzzer = Fuzzer(workdir, args.model, args.seed)
    fuzzer.prepare()
    indices = args.only if args.only is not None else list(range(args.cases))
    tally = Tally(len(indices))
    outcomes = run_many(fuzzer, indices, args.workers, on_outcome=tally, timeout=args.timeout)
    info.update(wall_s=time.monotonic() - started, load_end=load_average())
    lines = report(outcomes, args, info)
    print("\n".join(lines))
    if args.write:
        write_section(args.write, lines)
    print(f"scratch: {workdir} (failed cases kept)")
    return 1 if tally.failed else 0


if __name__ == "__main__":
    sys.exit(main())
