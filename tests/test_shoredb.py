"""The shore database: events once by id, station health kept, schema versioned (a real file)."""

import sqlite3

import pytest

from detector import shoredb
from detector.errors import WhaleError


def _event(seq: int, id_: str = "", station: str = "buoy-a") -> dict:
    return {
        "id": id_ or f"id-{station}-{seq}",
        "station": station,
        "run": "r1",
        "seq": seq,
        "start": "2009-03-28T00:00:01.000Z",
        "end": "2009-03-28T00:00:03.000Z",
        "score": 0.99,
    }


def test_an_event_heard_twice_is_stored_once(tmp_path):
    conn = shoredb.connect(tmp_path / "shore.db")
    assert shoredb.add_event(conn, _event(1))
    assert not shoredb.add_event(conn, _event(1))  # live, then again through catch-up
    assert shoredb.add_event(conn, _event(2))
    assert [e["seq"] for e in shoredb.events(conn)] == [1, 2]
    assert shoredb.max_seq(conn, "buoy-a") == 2
    assert shoredb.max_seq(conn, "buoy-b") is None


def test_the_database_is_wal_and_versioned_and_a_newer_one_is_refused(tmp_path):
    path = tmp_path / "shore.db"
    conn = shoredb.connect(path)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA user_version").fetchone()[0] == shoredb.SCHEMA_VERSION
    conn.execute(f"PRAGMA user_version={shoredb.SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(WhaleError, match="newer than this"):
        shoredb.connect(path)


def test_a_station_keeps_its_latest_status(tmp_path):
    conn = shoredb.connect(tmp_path / "shore.db")
    status = {"station": "buoy-a", "run": "r1", "last_seq": 3, "lag_s": 0.1,
              "dropped_samples": 0, "silent_s": 0.0, "source_state": "up"}  # fmt: skip
    shoredb.update_station(conn, status, endpoint="tcp://127.0.0.1:5556")
    shoredb.update_station(conn, {**status, "last_seq": 5, "source_state": "down"})
    row = conn.execute("SELECT * FROM stations").fetchone()
    assert (row["last_seq"], row["source_state"]) == (5, "down")
    assert row["endpoint"] == "tcp://127.0.0.1:5556"  # kept when a later status names none


def test_a_file_that_is_not_a_database_is_one_error(tmp_path):
    path = tmp_path / "shore.db"
    path.write_bytes(b"not sqlite" * 100)
    with pytest.raises(WhaleError, match="cannot open database"):
        shoredb.connect(path)
    assert sqlite3.sqlite_version_info >= (3, 24)  # upsert
