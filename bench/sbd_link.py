"""Bytes per event on the compact SBD link against JSON, and messages per hour:
`python bench/sbd_link.py [FILE ...]` prints a markdown section for BENCHMARKS.md.

It replays real recordings (by default the six DCLDE 2013 files in ../shared/data) with the
shipped model and `--sbd-port` at the scripted modem of the tests (a pty), so the bytes counted
are those the daemon handed the modem; JSON is the event log's own lines. Messages per hour
replay the batching rule (a message opens at an event and closes `--sbd-delay` later or at ten
events) over the recordings' own event times, and over Poisson calls at set rates.
Not part of bench/run.py: it is about bytes, not speed, and takes a few seconds.
"""

import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA_DIR, REPO, md_table  # noqa: E402
from detector.compact import EVENT_SIZE, HEADER_SIZE, MAX_EVENTS, STATUS_SIZE  # noqa: E402
from detector.eventlog import read_events  # noqa: E402
from detector.model import DEFAULT_MODEL  # noqa: E402
from detector.records import encode  # noqa: E402
from tests.iridium import ScriptedModem  # noqa: E402
from tests.test_cli import invoke, replay_args  # noqa: E402

DELAYS_S = (0, 60, 600)
RATES_PER_H = (1, 10, 60, 300)


def messages_for(times_s: list[float], delay_s: float) -> int:
    """How many messages the output's batching rule sends for events at these times."""
    count, opened, held = 0, None, 0
    for t in sorted(times_s):
        if opened is not None and (t - opened > delay_s or held == MAX_EVENTS):
            opened = None
        if opened is None:
            count, opened, held = count + 1, t, 0
        held += 1
    return count


def poisson_per_hour(rate_per_h: float, delay_s: float, hours: float = 200.0) -> float:
    rng = np.random.default_rng(1)
    times = np.cumsum(rng.exponential(3600 / rate_per_h, int(rate_per_h * hours * 1.2) + 10))
    return messages_for(list(times[times < hours * 3600]), delay_s) / hours


def main(files: list[Path]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "events.jsonl"
        modem = ScriptedModem()
        try:
            for path in files:
                result = invoke(
                    *replay_args(path, DEFAULT_MODEL, log), "--sbd-port", modem.path,
                    "--sbd-delay", "3600", "--linger", "30", "--quiet",
                )  # fmt: skip
                assert result.exit_code == 0, result.stderr
        finally:
            modem.close()
        logged = read_events(log)
    sent = sum(len(m) for m in modem.delivered)
    json_sizes = [len(encode(e)) + 1 for e in logged]  # the log's line, newline included
    audio_h = sum(sf.info(str(path)).duration for path in files) / 3600
    starts = [datetime.fromisoformat(e["start"].replace("Z", "+00:00")).timestamp() for e in logged]
    print("## Compact events on the Iridium SBD link\n")
    print(
        f"Measured by `python bench/sbd_link.py` on {len(files)} real recording(s) "
        f"({audio_h:.2f} h of audio, the shipped model, balanced preset): {len(logged)} "
        f"events, replayed with `--sbd-port` at the tests' scripted 9602 (a pty), one daemon "
        f"run per file with `--sbd-delay 3600`: full messages, and each run's exit flushing a "
        f"part-full one.\n"
    )
    rows = [
        ["JSON event (the log's line)", f"{statistics.mean(json_sizes):.0f}",
         f"{min(json_sizes)}-{max(json_sizes)}"],
        ["compact event record", str(EVENT_SIZE), "fixed"],
        ["compact, as sent (headers and summaries shared out)", f"{sent / len(logged):.1f}",
         f"{len(modem.delivered)} message(s), {sent} bytes"],
        ["one event alone in a message (12 + 35 + 29)",
         str(HEADER_SIZE + STATUS_SIZE + EVENT_SIZE), "the worst case"],
    ]  # fmt: skip
    print("\n".join(md_table(["bytes per event", "bytes", "note"], rows)) + "\n")
    print(
        f"A JSON event is {statistics.mean(json_sizes) / EVENT_SIZE:.0f}x the compact record and "
        f"does not fit a 340-byte SBD message at all; ten compact events and a "
        f"status summary fit one ({HEADER_SIZE + STATUS_SIZE + MAX_EVENTS * EVENT_SIZE} bytes).\n"
    )
    rate = len(logged) / audio_h
    own = [messages_for(starts, d) / audio_h for d in DELAYS_S]
    rows = [[f"these recordings ({rate:.0f} events/h)", *[f"{m:.0f}" for m in own]]]
    for r in RATES_PER_H:
        per_h = [f"{poisson_per_hour(r, d):.1f}" for d in DELAYS_S]
        rows.append([f"random (Poisson) calls, {r} an hour", *per_h])
    header = ["messages per hour", *[f"`--sbd-delay {d}`" for d in DELAYS_S]]
    print("\n".join(md_table(header, rows)) + "\n")
    print(
        "The delay saves messages only where calls come close together (a chorus, as in these "
        "recordings); at a few calls an hour each call is its own message whatever the delay, "
        "and the delay is only latency. Providers bill per message and by size (some count "
        f"50-byte credits: one event alone is {HEADER_SIZE + STATUS_SIZE + EVENT_SIZE} bytes "
        f"with its summary, {HEADER_SIZE + EVENT_SIZE} without)."
    )


if __name__ == "__main__":
    names = [Path(a) for a in sys.argv[1:]]
    if not names:
        names = sorted((DATA_DIR / "dclde2013").glob("*.wav"))
    if not names:
        sys.exit(f"no recordings: give files or put the DCLDE data in {DATA_DIR} ({REPO})")
    main(names)
