"""The Iridium SBD output through a pseudo-terminal: pyserial on a real tty, a scripted 9602 on
the other end (tests/iridium.py), the queue a real SQLite file."""

import os
import sys
import time
import tty
from datetime import UTC, datetime
from pathlib import Path

import pytest

from detector.compact import MAX_EVENTS, MAX_MESSAGE, decode_message
from detector.events import RawEvent
from detector.records import build_event
from detector.sbd_modem import Modem, ModemError, checksum, parse_sbdix
from detector.sbd_output import SbdOutput
from detector.sbd_queue import SbdQueue
from tests.iridium import ScriptedModem, sbd_checksum

serial = pytest.importorskip("serial", reason="pyserial (the sbd extra) not installed")
STATION = 4242
RUN = "0c8f2b7e-2d1a-4c55-a0a4-6f7e3d2b9c10"
SHA = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


def events(first: int, count: int) -> list[dict]:
    """Events as the daemon logs them, with scores and times that are not round numbers."""
    start = datetime(2009, 3, 28, 0, 15, tzinfo=UTC)
    out = []
    for seq in range(first, first + count):
        at = 3001 + 1777 * seq  # samples: odd offsets give odd milliseconds (0.5 ms each)
        raw = RawEvent(at, at + 3000 + 17 * seq, 0.5 + 0.4987 * (seq % 7) / 7, at + 1000, 3)
        event = build_event(
            raw, seq=seq, run=RUN, stream_start=start, sample_rate=2000, station="buoy-7",
            source="f.wav", model={"name": "upcall", "sha256": SHA}, threshold=0.91,
            gap_samples=4000 if seq % 5 == 0 else 0,
        )  # fmt: skip
        out.append(event.to_dict())
    return out


def wait_until(condition, timeout: float = 20.0) -> None:
    """Poll a condition the worker thread will make true (generous: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the SBD worker"
        time.sleep(0.02)


@pytest.fixture
def modem():
    peer = ScriptedModem()
    yield peer
    peer.close()


def open_sbd(modem: ScriptedModem, queue: Path, delay: float = 0.0, linger: float = 10.0,
             max_events: int = 1000) -> SbdOutput:  # fmt: skip
    def open_port():
        return serial.Serial(modem.path, 19200, timeout=0.05, write_timeout=5)

    return SbdOutput(
        SbdQueue(queue, max_events), open_port, modem.path, STATION, delay_s=delay,
        retry_max_s=0.2, linger_s=linger, retry_min_s=0.02,
    )  # fmt: skip


def decoded(modem: ScriptedModem) -> tuple[list[dict], list[dict]]:
    """(summaries, events) of every message the gateway took."""
    items = [item for message in modem.delivered for item in decode_message(message)]
    summaries = [i for i in items if i["type"] == "sbd_status"]
    return summaries, [i for i in items if i["type"] == "upcall"]


def assert_same(sent: list[dict], got: list[dict], station: int = STATION) -> None:
    """The round trip's promise: times to the millisecond, scores to 1/255."""
    assert [e["seq"] for e in got] == [e["seq"] for e in sent]
    for original, back in zip(sent, got, strict=True):
        assert back["start"] == original["start"] and back["end"] == original["end"]
        assert abs(back["score"] - original["score"]) <= 1 / 510 + 1e-4
        assert abs(back["threshold"] - original["threshold"]) <= 1 / 510 + 1e-4
        assert back["windows"] == original["windows"]
        assert back["run_prefix"] == original["run"][:8]
        assert back["model_sha256_prefix"] == original["model"]["sha256"][:8]
        assert back["gap_before"] == ("gap_before_s" in original)
        assert back["station_id"] == station


def test_the_round_trip_events_to_the_modem_and_back(tmp_path, modem):
    """Thirteen events waiting for a long delay: a full message of ten goes at once, the other
    three at exit (the delay no longer holds); every message within 340 bytes."""
    sbd = open_sbd(modem, tmp_path / "q", delay=3600)
    sent = events(1, 13)
    sbd.on_status({"last_seq": 13, "level_dbfs": -41.7, "lag_s": 0.3, "source_state": "up"})
    for event in sent:
        sbd.on_event(event)
    wait_until(lambda: len(modem.delivered) == 1 and len(sbd.queue) == 3)
    assert len(modem.delivered) == 1  # the last three wait for the delay
    sbd.close()
    assert len(modem.delivered) == 2 and all(len(m) <= MAX_MESSAGE for m in modem.delivered)
    summaries, got = decoded(modem)
    assert [len(decode_message(m)) - 1 for m in modem.delivered] == [MAX_EVENTS, 3]
    assert_same(sent, got)
    assert summaries[0]["last_seq"] == 13 and summaries[0]["level_dbfs"] == -42
    assert summaries[0]["station_id"] == STATION and 10 <= summaries[0]["queued_events"] <= 13
    assert modem.commands.count("AT+SBDD0") == 2 and modem.checksum_errors == 0
    assert SbdQueue(tmp_path / "q", 10).head(10) == []  # nothing left on disk


def test_failed_sessions_are_retried_with_a_fresh_summary_until_one_succeeds(tmp_path):
    modem = ScriptedModem([32, 18, 35])
    try:
        sbd = open_sbd(modem, tmp_path / "q")
        sent = events(1, 2)
        for event in sent:
            sbd.on_event(event)
        wait_until(lambda: len(decoded(modem)[1]) == 2)
        counters = sbd.counters()
        sbd.close()
    finally:
        modem.close()
    assert modem.sessions[:3] == [32, 18, 35] and modem.sessions[3] == 0
    assert counters["failed_sessions"] == 3 and counters["last_mo_status"] == 0
    assert counters["sent_events"] == 2 and counters["queued_events"] == 0
    assert_same(sent, decoded(modem)[1])


def test_a_corrupted_write_is_caught_by_the_checksum_and_sent_again(tmp_path, modem):
    modem.corrupt_next = True
    sbd = open_sbd(modem, tmp_path / "q")
    sent = events(1, 1)
    sbd.on_event(sent[0])
    wait_until(lambda: len(modem.delivered) == 1)
    counters = sbd.counters()
    sbd.close()
    assert modem.checksum_errors == 1 and counters["modem_errors"] == 1
    assert_same(sent, decoded(modem)[1])


def test_a_link_down_grows_the_queue_on_disk_across_a_restart_and_loses_nothing(tmp_path, modem):
    queue = tmp_path / "q"
    modem.down = True
    first = open_sbd(modem, queue, linger=0.1)
    try:
        for event in events(1, 5):
            first.on_event(event)
        # failing, and retrying (the output counts a session after the modem has answered it)
        wait_until(lambda: first.counters()["failed_sessions"] >= 3)
        assert first.counters()["queued_events"] == 5
    finally:
        first.close()  # the daemon stops while the link is down (a worker left running would
        # reopen the next test's pty, which takes the same /dev/pts name)
    assert len(SbdQueue(queue, 1000)) == 5 and modem.delivered == []

    tried = len(modem.sessions)
    second = open_sbd(modem, queue)  # the next start finds them on disk
    for event in events(6, 3):
        second.on_event(event)
    assert len(second.queue) == 8
    wait_until(lambda: len(modem.sessions) > tried)  # still down: the queue waits
    modem.down = False
    wait_until(lambda: len(second.queue) == 0)
    second.close()
    assert_same(events(1, 8), decoded(modem)[1])  # each once, in order


def test_a_full_queue_drops_its_oldest_and_counts_them(tmp_path, modem):
    """Eight events into a queue of five (held by a long delay, as by a link that is down)."""
    sbd = open_sbd(modem, tmp_path / "q", delay=3600, max_events=5)
    sbd.on_status({"last_seq": 8, "source_state": "up"})
    for event in events(1, 8):
        sbd.on_event(event)
    counters = sbd.counters()
    assert counters["queued_events"] == 5 and counters["evicted_events"] == 3
    sbd.close()  # at exit the delay no longer holds them
    summaries, got = decoded(modem)
    assert_same(events(4, 5), got)  # the newest five; 1-3 are in the event log only
    assert summaries[0]["evicted_events"] == 3 and summaries[0]["last_seq"] == 8


def test_a_queue_that_fills_while_the_link_is_down_sends_the_newest_once_it_is_up(tmp_path, modem):
    modem.down = True
    sbd = open_sbd(modem, tmp_path / "q", max_events=5)
    sbd.on_status({"last_seq": 8, "source_state": "up"})
    for event in events(1, 8):
        sbd.on_event(event)
    tried = len(modem.sessions)
    # two more failed sessions: the one then in flight was packed after the last put
    wait_until(lambda: len(modem.sessions) >= tried + 2)
    modem.down = False
    wait_until(lambda: len(sbd.queue) == 0)
    counters = sbd.counters()
    sbd.close()
    summaries, got = decoded(modem)
    assert_same(events(4, 5), got)
    assert summaries[-1]["evicted_events"] == 3 and counters["failed_sessions"] >= 2


def test_a_port_that_is_not_there_blocks_nothing_and_keeps_the_events(tmp_path):
    def open_port():
        return serial.Serial(str(tmp_path / "no-such-tty"), 19200, timeout=0.05)

    sbd = SbdOutput(SbdQueue(tmp_path / "q", 100), open_port, "nowhere", 1, 0.0, 0.2, 0.1, 0.02)
    for event in events(1, 3):
        sbd.on_event(event)  # returns at once: the worker alone meets the missing port
    wait_until(lambda: sbd.counters()["modem_errors"] >= 2)
    assert sbd.counters()["queued_events"] == 3 and sbd.counters()["port_open"] is False
    sbd.close()
    assert len(SbdQueue(tmp_path / "q", 100)) == 3


# -- the AT protocol and the queue on their own ----------------------------------------------------
def test_checksum_and_sbdix_parsing_follow_the_manual():
    assert checksum(b"hello") == sbd_checksum(b"hello") == b"\x02\x14"  # 532, the manual's example
    assert checksum(bytes([0xFF]) * 340) == ((0xFF * 340) & 0xFFFF).to_bytes(2, "big")
    session = parse_sbdix("+SBDIX: 1, 12, 0, 0, 0, 0")
    assert session.delivered and session.momsn == 12
    assert not parse_sbdix("+SBDIX: 32, 12, 2, 0, 0, 0").delivered
    with pytest.raises(ModemError, match="unexpected"):
        parse_sbdix("+SBDIX: 0, 1")


def test_a_silent_modem_is_an_error_not_a_hang():
    master, slave = os.openpty()  # a tty with nobody on the other end
    tty.setraw(slave)
    try:
        port = serial.Serial(os.ttyname(slave), 19200, timeout=0.05)
        with pytest.raises(ModemError, match="no answer"):
            Modem(port).command("AT", timeout_s=0.3)
        port.close()
    finally:
        os.close(master)
        os.close(slave)


def test_the_queue_survives_reopening_and_refuses_another_layout(tmp_path):
    path = tmp_path / "q"
    queue = SbdQueue(path, 10)
    queue.put(b"a" * 29, now=100.0)
    queue.put(b"b" * 29, now=101.0)
    queue.close()
    again = SbdQueue(path, 10)
    assert [r for _, r in again.head(5)] == [b"a" * 29, b"b" * 29] and again.oldest_at() == 100.0
    again.remove([again.head(1)[0][0]])
    assert len(again) == 1
    again.db.execute("PRAGMA user_version=99")
    again.close()
    from detector.errors import WhaleError

    with pytest.raises(WhaleError, match="layout version 99"):
        SbdQueue(path, 10)
    (tmp_path / "junk").write_bytes(b"not sqlite" * 100)
    with pytest.raises(WhaleError, match="cannot open SBD queue"):
        SbdQueue(tmp_path / "junk", 10)


def test_times_before_1970_come_back_to_the_millisecond(tmp_path, modem):
    sent = events(1, 2)
    sent[1] = {**sent[1], "start": "1901-01-01T00:00:00.001Z", "end": "1901-01-01T00:00:02.999Z"}
    sbd = open_sbd(modem, tmp_path / "q")
    for event in sent:
        sbd.on_event(event)
    wait_until(lambda: len(sbd.queue) == 0 and modem.delivered)
    sbd.close()
    assert_same(sent, decoded(modem)[1])


# -- the daemon ------------------------------------------------------------------------------------
def test_a_replay_sends_every_logged_event_over_the_modem(tmp_path, modem):
    """`whale-listen --replay` of the example recording with `--sbd-port` at the pty: what the
    gateway got, decoded, is the event log (times to the ms, scores to 1/255)."""
    from detector.eventlog import read_events
    from detector.model import DEFAULT_MODEL
    from tests.test_cli import invoke, replay_args

    if not DEFAULT_MODEL.exists():
        pytest.skip(f"no shipped model at {DEFAULT_MODEL}")
    recording = Path(__file__).resolve().parents[1] / "examples"
    recording = recording / "synthetic_upcalls_20261126_120000.flac"
    log = tmp_path / "events.jsonl"
    result = invoke(
        *replay_args(recording, DEFAULT_MODEL, log), "--sbd-port", modem.path,
        "--sbd-delay", "3600", "--sbd-station-id", STATION, "--linger", "20",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    logged = read_events(log)
    assert logged, "the example recording holds calls"
    summaries, got = decoded(modem)
    assert_same(logged, got)
    assert len(modem.delivered) == -(-len(logged) // MAX_EVENTS)  # full messages: the delay held
    assert Path(f"{log}.sbd-queue").exists() and len(SbdQueue(Path(f"{log}.sbd-queue"), 1)) == 0
    assert "SBD modem on" in result.stderr


def test_a_heartbeat_sends_the_summary_alone_when_no_event_has_gone(tmp_path, modem):
    queue = SbdQueue(tmp_path / "q", 100)
    sbd = SbdOutput(queue, lambda: serial.Serial(modem.path, 19200, timeout=0.05), modem.path,
                    STATION, 0.0, 0.2, 1.0, 0.02, heartbeat_s=0.05)  # fmt: skip
    sbd.on_status({"last_seq": 41, "source_state": "down", "silent_s": 12.5})
    wait_until(lambda: len(modem.delivered) >= 2)
    sbd.close()
    for message in modem.delivered[:2]:
        (summary,) = decode_message(message)  # no events: the summary alone, 47 bytes
        assert len(message) == 47 and summary["last_seq"] == 41 and summary["silent_s"] == 12
        assert summary["source_state"] == "down"


def test_a_queue_that_cannot_be_made_or_no_pyserial_is_one_line_before_any_audio(
    tmp_path, monkeypatch
):
    from detector.model import DEFAULT_MODEL
    from tests.test_cli import invoke, replay_args

    if not DEFAULT_MODEL.exists():
        pytest.skip(f"no shipped model at {DEFAULT_MODEL}")
    recording = Path(__file__).resolve().parents[1] / "examples"
    args = replay_args(recording / "synthetic_upcalls_20261126_120000.flac", DEFAULT_MODEL,
                       tmp_path / "events.jsonl", "--sbd-port", "/dev/null")  # fmt: skip
    result = invoke(*args, "--sbd-queue", tmp_path / "no" / "such" / "dir" / "q")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "cannot open SBD queue" in result.stderr and "Traceback" not in result.stderr
    monkeypatch.setitem(sys.modules, "serial", None)  # as if the sbd extra were not installed
    result = invoke(*args)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "pip install 'whale-listen[sbd]'" in result.stderr
