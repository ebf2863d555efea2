"""A shore database for the review tests, filled the way gather fills it: real replays.

Two stations each replay a synthetic recording (planted up-calls and look-alikes, the start time
in the file name) through the real daemon with --clips and --events-log; their logged events go
in through shoredb.add_event and each station's health through shoredb.update_station, and the
clips folder stands for the stations' synced --clips folders.
"""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from detector import cli, shoredb
from detector.eventlog import read_events
from detector.records import Status
from detector.settings import Settings
from train import synth

SR = 2000
STATIONS = (("buoy-a", "buoyA_20090328_001500.wav", 4), ("buoy-b", "buoyB_20090329_120000.wav", 5))


@dataclass
class Shore:
    db: Path
    clips: Path
    events: list[dict]


def replay_into(tmp: Path, model: Path, station: str, name: str, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    audio, _ = synth.synthetic_recording(rng, 80, 5, n_lookalikes=3)
    recording = tmp / name
    sf.write(recording, audio, SR, subtype="PCM_16")
    log = tmp / f"{station}.jsonl"
    settings = Settings(
        replay=recording,
        model=model,
        events_log=log,
        clips=tmp / "clips",
        publish=("tcp://127.0.0.1:*",),
        catchup="off",
        linger=0.0,
        station=station,
    )
    assert cli.run(settings) == 0
    return read_events(log)


def status_of(station: str, events: list[dict]) -> dict:
    return Status(
        run=events[-1]["run"], station=station, time=events[-1]["end"], source="replay",
        source_state="up", model=events[-1]["model"], uptime_s=80.0, samples_in=80 * SR,
        windows_scored=157, events=len(events), last_seq=events[-1]["seq"], unlogged_events=0,
        dropped_samples=12 if station == "buoy-b" else 0, outages=0, input_overflows=0,
        level_dbfs=-20.0, silent_s=0.0, lag_s=0.25, realtime_factor=100.0,
    ).to_dict()  # fmt: skip


def make_shore(tmp: Path, model: Path) -> Shore:
    tmp.mkdir(parents=True, exist_ok=True)
    db = tmp / "shore.db"
    conn = shoredb.connect(db)
    everything = []
    for station, name, seed in STATIONS:
        events = replay_into(tmp, model, station, name, seed)
        assert len(events) >= 3, f"{station}: the replay found only {len(events)} events"
        for event in events:
            assert shoredb.add_event(conn, event)
        shoredb.update_station(conn, status_of(station, events), endpoint="tcp://127.0.0.1:5556")
        everything += events
    conn.close()
    return Shore(db, tmp / "clips", everything)
