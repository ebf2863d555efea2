"""The shore station's database: one SQLite file that `gather` writes and `review` reads.

Events are kept exactly once by their id (a uuid4 the daemon gives each event, the same in its log,
its live message and its catch-up reply), so a message heard live and again through catch-up is
one row. Stations keep their last status (health: last seen, lag, dropped samples, silence).
WAL mode lets the review page read while `gather`, the one writer of events, appends.

The schema is versioned: `MIGRATIONS[i]` takes a database from version i to i + 1, applied in
order by `connect`, inside one transaction each; a database newer than this code is refused.
"""

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

from detector.errors import WhaleError

MIGRATIONS: list[str] = [
    # 0 -> 1: events and station health
    """
    CREATE TABLE events (
        id TEXT PRIMARY KEY,          -- the event's uuid4
        station TEXT NOT NULL,
        run TEXT NOT NULL,
        seq INTEGER NOT NULL,
        start TEXT NOT NULL,          -- ISO-8601 UTC, as in the event
        "end" TEXT NOT NULL,
        score REAL NOT NULL,
        clip TEXT,                    -- the daemon's clip path, when it wrote one
        received TEXT NOT NULL,       -- when gather stored it (UTC)
        record TEXT NOT NULL          -- the event's JSON, whole
    );
    CREATE INDEX events_station_seq ON events (station, seq);
    CREATE INDEX events_start ON events (start);
    CREATE TABLE stations (
        station TEXT PRIMARY KEY,
        endpoint TEXT,                -- where gather hears it
        last_seen TEXT,               -- UTC, when its last status arrived
        run TEXT,
        last_seq INTEGER,
        lag_s REAL,
        dropped_samples INTEGER,
        silent_s REAL,
        source_state TEXT,
        status TEXT                   -- the last status JSON, whole
    );
    """,  # 1 -> 2: the review station's analysts and their verdicts (detector/reviewdb.py)
    """
    CREATE TABLE users (
        name TEXT PRIMARY KEY,
        salt BLOB NOT NULL,           -- per user, random
        hash BLOB NOT NULL,           -- the key derived from the password and salt
        kdf TEXT NOT NULL,            -- how: scrypt and its parameters
        created TEXT NOT NULL
    );
    CREATE TABLE verdicts (           -- the current verdict of each reviewed event
        event_id TEXT PRIMARY KEY REFERENCES events (id),
        verdict TEXT NOT NULL CHECK (verdict IN ('upcall', 'not', 'unsure')),
        reviewer TEXT NOT NULL REFERENCES users (name),
        at TEXT NOT NULL              -- UTC, when it was given
    );
    CREATE TABLE verdict_history (    -- every verdict and re-opening, never changed
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        event_id TEXT NOT NULL REFERENCES events (id),
        action TEXT NOT NULL CHECK (action IN ('verdict', 'reopen')),
        verdict TEXT,
        reviewer TEXT NOT NULL,
        at TEXT NOT NULL
    );
    CREATE INDEX verdict_history_event ON verdict_history (event_id, id);
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)


def now() -> str:
    """UTC now as the events write it (milliseconds, Z)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def connect(path: Path | str) -> sqlite3.Connection:
    """Open (creating or migrating) the database; rows come back as `sqlite3.Row`."""
    try:
        conn = sqlite3.connect(path, timeout=10.0, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")  # a stored event survives a power cut
        conn.execute("PRAGMA foreign_keys=ON")
        _migrate(conn, Path(path))
    except sqlite3.DatabaseError as e:
        raise WhaleError(f"cannot open database {path}: {e}") from None
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise WhaleError(
            f"database {path} has schema {version}, newer than this whale-listen's "
            f"{SCHEMA_VERSION}: upgrade whale-listen"
        )
    for target in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[target - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version={target}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


def add_event(conn: sqlite3.Connection, event: dict, received: str | None = None) -> bool:
    """Store one event unless its id is already there; True if it was new."""
    cursor = conn.execute(
        'INSERT OR IGNORE INTO events (id, station, run, seq, start, "end", score, clip, '
        "received, record) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            event["id"],
            event["station"],
            event["run"],
            int(event["seq"]),
            event["start"],
            event["end"],
            float(event["score"]),
            event.get("clip"),
            received or now(),
            json.dumps(event, separators=(",", ":")),
        ),
    )
    return cursor.rowcount == 1


def update_station(
    conn: sqlite3.Connection, status: dict, endpoint: str | None = None, seen: str | None = None
) -> None:
    """Keep a station's latest status (its health) in its row."""
    conn.execute(
        "INSERT INTO stations (station, endpoint, last_seen, run, last_seq, lag_s, "
        "dropped_samples, silent_s, source_state, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (station) DO UPDATE SET endpoint = coalesce(excluded.endpoint, endpoint), "
        "last_seen = excluded.last_seen, run = excluded.run, last_seq = excluded.last_seq, "
        "lag_s = excluded.lag_s, dropped_samples = excluded.dropped_samples, "
        "silent_s = excluded.silent_s, source_state = excluded.source_state, "
        "status = excluded.status",
        (
            status["station"],
            endpoint,
            seen or now(),
            status.get("run"),
            status.get("last_seq"),
            status.get("lag_s"),
            status.get("dropped_samples"),
            status.get("silent_s"),
            status.get("source_state"),
            json.dumps(status, separators=(",", ":")),
        ),
    )


def max_seq(conn: sqlite3.Connection, station: str) -> int | None:
    """The highest seq stored for a station (seq continues across a daemon's runs): where a
    catch-up request after an outage starts."""
    row = conn.execute("SELECT max(seq) FROM events WHERE station = ?", (station,)).fetchone()
    return row[0]


def events(conn: sqlite3.Connection) -> list[dict]:
    """Every stored event, by station then seq."""
    rows = conn.execute("SELECT record FROM events ORDER BY station, seq").fetchall()
    return [json.loads(row["record"]) for row in rows]


def note_station(conn: sqlite3.Connection, station: str, endpoint: str) -> None:
    """Say where a station is heard before its first status arrives (its health columns stay
    empty until then), so a restarted gather knows which station an endpoint's events are."""
    conn.execute(
        "INSERT INTO stations (station, endpoint) VALUES (?, ?) "
        "ON CONFLICT (station) DO UPDATE SET endpoint = excluded.endpoint",
        (station, endpoint),
    )


def station_at(conn: sqlite3.Connection, endpoint: str) -> str | None:
    """The station last heard on an endpoint, if any."""
    row = conn.execute("SELECT station FROM stations WHERE endpoint = ?", (endpoint,)).fetchone()
    return None if row is None else row[0]


def resume_seq(conn: sqlite3.Connection, station: str) -> int:
    """Where catch-up for a station starts after gather restarts: the end of its consecutive
    stored seqs from 1 (0: seq 1 is not stored). `max_seq` would skip a hole below the highest
    stored event (one heard live while those before it were still being fetched when gather
    stopped); a hole the daemon's log cannot fill costs a re-fetch from there, duplicates
    dropped."""
    row = conn.execute(
        "SELECT CASE WHEN NOT EXISTS (SELECT 1 FROM events WHERE station = ?1 AND seq = 1) "
        "THEN 0 ELSE (SELECT seq FROM events AS e WHERE station = ?1 AND seq >= 1 AND "
        "NOT EXISTS (SELECT 1 FROM events WHERE station = ?1 AND seq = e.seq + 1) "
        "ORDER BY seq LIMIT 1) END",  # in index order: it stops at the first hole
        (station,),
    ).fetchone()
    return row[0]


def stored(conn: sqlite3.Connection, stations: list[str] | None = None) -> list[tuple[dict, str]]:
    """(event, when gather stored it) for every stored event, or those of some stations, by
    station then seq (`events` without the receipt times)."""
    query = "SELECT record, received FROM events"
    if stations:
        query += f" WHERE station IN ({', '.join('?' * len(stations))})"
    rows = conn.execute(query + " ORDER BY station, seq", stations or ()).fetchall()
    return [(json.loads(row["record"]), row["received"]) for row in rows]
