"""The SBD output's queue on disk: compact event records waiting for the satellite.

A SQLite file (WAL, `synchronous=FULL`: every put and every removal is one committed, fsynced
transaction), so the queue survives a restart, a crash or a power cut, and nothing waits in
memory only while the link is down. Records leave only once the gateway has taken the message
that carried them: a crash between the two sends them again (at least once; the shore keeps one
per station and seq). Bounded: when it holds `max_events`, a new event evicts the oldest one,
counted in `evicted` (the event log still has it), because the newest calls are the ones a shore
can still act on. `user_version` is the record layout's version: another one is refused.
"""

import sqlite3
import threading
import time
from pathlib import Path

from detector.compact import VERSION
from detector.errors import WhaleError

SCHEMA = """
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- put order, never reused
    queued_at REAL NOT NULL,  -- wall clock, seconds since 1970: batching waits from the oldest
    record BLOB NOT NULL  -- one compact event record (detector.compact.EVENT)
)
"""


class SbdQueue:
    """Thread-safe: the scoring loop puts, the SBD worker reads and removes."""

    def __init__(self, path: Path, max_events: int) -> None:
        self.path = Path(path)
        self.max_events = max_events
        self.evicted = 0  # since this queue was opened
        self.lock = threading.Lock()
        try:
            self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = self.db.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
            if tables and version != VERSION:
                self.db.close()
                raise WhaleError(
                    f"SBD queue {self.path} holds layout version {version}, this version writes "
                    f"{VERSION}: move it away (its events are in the event log)"
                )
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute(SCHEMA)
            self.db.execute(f"PRAGMA user_version={VERSION}")
        except sqlite3.Error as e:
            raise WhaleError(f"cannot open SBD queue {self.path}: {e}") from None

    def put(self, record: bytes, now: float | None = None) -> int:
        """Append one record (durable on return); how many old ones it evicted (0 or more)."""
        with self.lock:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                self.db.execute(
                    "INSERT INTO queue (queued_at, record) VALUES (?, ?)",
                    (time.time() if now is None else now, record),
                )
                over = self._count() - self.max_events
                if over > 0:
                    self.db.execute(
                        "DELETE FROM queue WHERE id IN (SELECT id FROM queue ORDER BY id LIMIT ?)",
                        (over,),
                    )
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
            evicted = max(over, 0)
            self.evicted += evicted
            return evicted

    def head(self, n: int) -> list[tuple[int, bytes]]:
        """The oldest `n` records with their ids, oldest first."""
        with self.lock:
            rows = self.db.execute("SELECT id, record FROM queue ORDER BY id LIMIT ?", (n,))
            return [(row[0], bytes(row[1])) for row in rows]

    def remove(self, ids: list[int]) -> None:
        """Drop records the gateway has taken (ids evicted meanwhile are simply gone)."""
        if not ids:
            return
        with self.lock:
            marks = ",".join("?" * len(ids))  # one statement: one transaction
            self.db.execute(f"DELETE FROM queue WHERE id IN ({marks})", ids)

    def oldest_at(self) -> float | None:
        """When the oldest waiting record was put (wall clock), None when empty."""
        with self.lock:
            return self.db.execute("SELECT min(queued_at) FROM queue").fetchone()[0]

    def __len__(self) -> int:
        with self.lock:
            return self._count()

    def _count(self) -> int:
        return self.db.execute("SELECT count(*) FROM queue").fetchone()[0]

    def close(self) -> None:
        with self.lock:
            self.db.close()
