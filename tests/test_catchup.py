"""Run identity, seq across restarts and catch-up (issue 14): no event is silently lost to a
subscriber that joined late, read slowly, or saw a gap; all over real sockets on 127.0.0.1."""

import json

from detector.eventlog import EventLog, read_events, read_log
from detector.raven import export_raven

from .test_cli import replay, write_synthetic


def test_seq_continues_across_runs_and_the_log_says_where_each_run_starts(tmp_path, tiny_model):
    recording = tmp_path / "calls.wav"
    write_synthetic(recording, seed=11, seconds=40, calls=2, lookalikes=0)
    log = tmp_path / "events.jsonl"
    first = replay(recording, tiny_model, log)
    both = replay(recording, tiny_model, log)
    assert first, "the replay found no event: nothing to number"
    n = len(first)
    assert [e["seq"] for e in both] == list(range(1, 2 * n + 1))  # never restarts at 1
    runs = [e["run"] for e in both]
    assert len(set(runs[:n])) == 1 and len(set(runs[n:])) == 1 and runs[0] != runs[n]
    records = read_log(log)
    starts = [r for r in records if r["type"] == "run"]
    assert [r["after_seq"] for r in starts] == [0, n] and [r["run"] for r in starts] == [
        runs[0],
        runs[n],
    ]
    assert records[0]["type"] == "run" and records[n + 1]["type"] == "run"  # each run's first
    # readers of events skip run lines: the Raven table has one row per event
    table = export_raven(log, tmp_path / "t.txt").read_text().splitlines()
    assert len(table) == 1 + 2 * n


def test_last_seq_reads_the_tail_backwards_across_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr("detector.eventlog.TAIL_CHUNK", 7)  # every line cut across chunks
    path = tmp_path / "ev.jsonl"
    with EventLog(path) as log:
        assert log.last_seq() == 0
        log.start_run({"type": "run", "run": "a", "after_seq": 0})
        for seq in (1, 2, 3):
            log.append({"type": "upcall", "seq": seq, "pad": "x" * 20})
        assert log.last_seq() == 3
        log.start_run({"type": "run", "run": "b", "after_seq": 3})  # a run with no event yet
        assert log.last_seq() == 3
    path.write_bytes(path.read_bytes() + b'{"type": "upcall", "se')  # a torn line after a crash
    assert EventLog(path).last_seq() == 3
    assert [e["seq"] for e in read_events(path)] == [1, 2, 3]


def test_a_listener_continues_from_the_log_and_writes_its_run_line(tmp_path):
    from detector.pipeline import Listener

    log = EventLog(tmp_path / "ev.jsonl")
    log.append({"type": "upcall", "seq": 41})
    listener = Listener(None, 0.5, 1000, log, [], "s")
    assert listener.seq == listener.first_seq == 41 and listener.events == 0
    line = json.loads(log.path.read_text().splitlines()[-1])
    assert line["type"] == "run" and line["after_seq"] == 41 and line["run"] == listener.run_id
    log.close()
