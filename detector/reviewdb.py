"""The review station's part of the shore database: analysts, their verdicts, the queue.

Its tables are schema 2 of detector/shoredb.py (one version number for the whole file). A
verdict is one row per event (the current one) plus an append-only history, so re-opening a
detection or changing one's mind never loses who said what, and when. Passwords are kept as
scrypt keys with a random salt per user: a copy of the database does not give them away.
"""

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime

from detector.errors import UsageError
from detector.shoredb import now

VERDICTS = ("upcall", "not", "unsure")
VERDICT_NAMES = {"upcall": "up-call", "not": "not an up-call", "unsure": "unsure"}
MIN_PASSWORD = 8
# scrypt with n=2**14, r=8, p=1: 16 MiB and about 50 ms a check, the parameters RFC 7914 suggests
# for interactive logins.
SCRYPT_N, SCRYPT_R, SCRYPT_P, KEY_BYTES = 2**14, 8, 1, 32
KDF = f"scrypt:n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}"
_DUMMY_SALT = secrets.token_bytes(16)


def _derive(password: str, salt: bytes) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        maxmem=64 * 1024 * 1024,
        dklen=KEY_BYTES,
    )


def add_user(conn: sqlite3.Connection, name: str, password: str) -> bool:
    """Create a user, or set a new password for one; True if the user is new."""
    if not name or len(name) > 64 or not name.isprintable() or name.strip() != name:
        raise UsageError(f"user name {name!r} must be 1-64 printable characters, no edge spaces")
    if len(password) < MIN_PASSWORD:
        raise UsageError(f"the password must have at least {MIN_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    key = _derive(password, salt)
    existed = conn.execute("SELECT 1 FROM users WHERE name = ?", (name,)).fetchone()
    conn.execute(
        "INSERT INTO users (name, salt, hash, kdf, created) VALUES (?, ?, ?, ?, ?) "
        "ON CONFLICT (name) DO UPDATE SET salt = excluded.salt, hash = excluded.hash, "
        "kdf = excluded.kdf",
        (name, salt, key, KDF, now()),
    )
    return existed is None


def check_password(conn: sqlite3.Connection, name: str, password: str) -> bool:
    """Whether the password is the user's; an unknown user costs the same scrypt work."""
    row = conn.execute("SELECT salt, hash, kdf FROM users WHERE name = ?", (name,)).fetchone()
    if row is None or row["kdf"] != KDF:
        _derive(password, _DUMMY_SALT)
        return False
    return hmac.compare_digest(_derive(password, row["salt"]), row["hash"])


def set_verdict(conn: sqlite3.Connection, event_id: str, verdict: str, reviewer: str) -> str:
    """Record a verdict (replacing an earlier one) and its history line; returns its time."""
    if verdict not in VERDICTS:
        raise UsageError(f"verdict {verdict!r} must be one of {', '.join(VERDICTS)}")
    at = now()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(
            "INSERT INTO verdicts (event_id, verdict, reviewer, at) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (event_id) DO UPDATE SET verdict = excluded.verdict, "
            "reviewer = excluded.reviewer, at = excluded.at",
            (event_id, verdict, reviewer, at),
        )
        conn.execute(
            "INSERT INTO verdict_history (event_id, action, verdict, reviewer, at) "
            "VALUES (?, 'verdict', ?, ?, ?)",
            (event_id, verdict, reviewer, at),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return at


def reopen(conn: sqlite3.Connection, event_id: str, reviewer: str) -> bool:
    """Put a reviewed event back in the queue (its history keeps the old verdict)."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        gone = conn.execute("DELETE FROM verdicts WHERE event_id = ?", (event_id,)).rowcount
        if gone:
            conn.execute(
                "INSERT INTO verdict_history (event_id, action, verdict, reviewer, at) "
                "VALUES (?, 'reopen', NULL, ?, ?)",
                (event_id, reviewer, now()),
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return bool(gone)


def duration_s(row: sqlite3.Row) -> float:
    """An event's length from its start and end columns (every stored event has them)."""
    start = datetime.fromisoformat(row["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(row["end"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def history(conn: sqlite3.Connection, event_id: str) -> list[sqlite3.Row]:
    return conn.execute(
        "SELECT action, verdict, reviewer, at FROM verdict_history WHERE event_id = ? ORDER BY id",
        (event_id,),
    ).fetchall()


@dataclass(frozen=True)
class QueueFilter:
    """What the analyst asked to see: which detections, from where, when, how sure."""

    status: str = "unreviewed"  # unreviewed | reviewed | all
    station: str = ""
    date: str = ""  # YYYY-MM-DD (UTC day of the event's start)
    min_score: float | None = None

    def where(self) -> tuple[str, list]:
        clauses, params = [], []
        if self.status == "unreviewed":
            clauses.append("v.event_id IS NULL")
        elif self.status == "reviewed":
            clauses.append("v.event_id IS NOT NULL")
        if self.station:
            clauses.append("e.station = ?")
            params.append(self.station)
        if self.date:
            clauses.append("substr(e.start, 1, 10) = ?")
            params.append(self.date)
        if self.min_score is not None:
            clauses.append("e.score >= ?")
            params.append(self.min_score)
        return (" AND ".join(clauses) or "1"), params


_SELECT = (
    'SELECT e.id, e.station, e.start, e."end", e.score, e.clip, e.record, '
    "v.verdict, v.reviewer, v.at FROM events e LEFT JOIN verdicts v ON v.event_id = e.id"
)
_NEWEST_FIRST = "ORDER BY e.start DESC, e.id DESC"


def queue(
    conn: sqlite3.Connection, where: QueueFilter, limit: int = 200, offset: int = 0
) -> list[sqlite3.Row]:
    """Detections matching the filter, newest first."""
    clause, params = where.where()
    return conn.execute(
        f"{_SELECT} WHERE {clause} {_NEWEST_FIRST} LIMIT ? OFFSET ?", [*params, limit, offset]
    ).fetchall()


def count(conn: sqlite3.Connection, where: QueueFilter) -> int:
    clause, params = where.where()
    sql = f"SELECT count(*) FROM events e LEFT JOIN verdicts v ON v.event_id = e.id WHERE {clause}"
    return conn.execute(sql, params).fetchone()[0]


def event(conn: sqlite3.Connection, event_id: str) -> sqlite3.Row | None:
    return conn.execute(f"{_SELECT} WHERE e.id = ?", (event_id,)).fetchone()


def neighbour(
    conn: sqlite3.Connection, row: sqlite3.Row, where: QueueFilter, older: bool
) -> str | None:
    """The id of the next detection in the queue's order after (older) or before this one."""
    clause, params = where.where()
    if older:
        step, order = "(e.start < ? OR (e.start = ? AND e.id < ?))", _NEWEST_FIRST
    else:
        step, order = "(e.start > ? OR (e.start = ? AND e.id > ?))", "ORDER BY e.start, e.id"
    found = conn.execute(
        f"{_SELECT} WHERE {clause} AND {step} {order} LIMIT 1",
        [*params, row["start"], row["start"], row["id"]],
    ).fetchone()
    return None if found is None else found["id"]


def stations(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every station heard (health) or with events, with its event and queue counts."""
    return conn.execute(
        "SELECT n.station, s.endpoint, s.last_seen, s.run, s.last_seq, s.lag_s, "
        "s.dropped_samples, s.silent_s, s.source_state, s.status, "
        "(SELECT count(*) FROM events e WHERE e.station = n.station) AS events, "
        "(SELECT count(*) FROM events e LEFT JOIN verdicts v ON v.event_id = e.id "
        " WHERE e.station = n.station AND v.event_id IS NULL) AS unreviewed, "
        "(SELECT max(e.start) FROM events e WHERE e.station = n.station) AS last_event "
        "FROM (SELECT station FROM stations UNION SELECT DISTINCT station FROM events) n "
        "LEFT JOIN stations s ON s.station = n.station ORDER BY n.station"
    ).fetchall()


def reviewed(conn: sqlite3.Connection) -> list[sqlite3.Row]:
    """Every event with a verdict, oldest first: what the export writes."""
    return conn.execute(f"{_SELECT} WHERE v.event_id IS NOT NULL ORDER BY e.start, e.id").fetchall()
