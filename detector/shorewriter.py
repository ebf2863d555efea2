"""The one thread that writes the shore database for `gather` (`detector.shoredb`).

The links (`detector.gather`) hand it events, statuses and station names through a queue; it
stores whatever has arrived in one transaction (one fsync for many events under a burst, so the
network side never waits on the disk), each event once by its id. A write that fails stops it
with the reason in `error`: what it had not committed is still in the daemons' logs, and the
next gather fetches it from there.
"""

import queue
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path

from detector import shoredb
from detector.errors import WhaleError
from detector.gather import CATCHUP, Item

BATCH = 5000  # items in one transaction at most
_STOP = object()


@dataclass
class Counts:
    """One station's tally for the summary line."""

    stored: int = 0  # new events written
    fetched: int = 0  # of those, how many came through catch-up
    duplicates: int = 0  # events already in the database, dropped
    statuses: int = 0


class ShoreWriter:
    """Opens the database in its own thread (a sqlite3 connection stays in its thread)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.counts: dict[str, Counts] = {}
        self.error: str | None = None
        self._open_error: WhaleError | None = None
        self._opened = threading.Event()
        self._seen: dict[str, str] = {}  # endpoint -> station, noted in the database
        self._thread = threading.Thread(target=self._run, name="shore-writer", daemon=True)
        self._thread.start()
        self._opened.wait()
        if self._open_error is not None:
            self._thread.join()
            raise self._open_error

    def put(self, item: Item) -> None:
        self.queue.put(item)

    def _run(self) -> None:
        try:
            conn = shoredb.connect(self.path)
        except WhaleError as e:
            self._open_error = e
            self._opened.set()
            return
        self._opened.set()
        try:
            stopping = False
            while not stopping:
                batch = [self.queue.get()]
                while len(batch) < BATCH:
                    try:
                        batch.append(self.queue.get_nowait())
                    except queue.Empty:
                        break
                stopping = _STOP in batch
                self._write(conn, [item for item in batch if item is not _STOP])
        except Exception as e:  # sqlite3.Error mostly (disk full, I/O error): stop, and say so
            self.error = f"cannot write database {self.path}: {e}"
        finally:
            conn.close()

    def _write(self, conn: sqlite3.Connection, items: list[Item]) -> None:
        if not items:
            return
        conn.execute("BEGIN IMMEDIATE")
        try:
            tally: list[tuple[str, str, bool, bool]] = []  # kind, station, new, fetched
            for item in items:
                if item.kind == "event":
                    event = item.record
                    assert isinstance(event, dict)
                    new = shoredb.add_event(conn, event)
                    tally.append(("event", event["station"], new, item.via == CATCHUP))
                elif item.kind == "status":
                    assert isinstance(item.record, dict)
                    shoredb.update_station(conn, item.record, endpoint=item.endpoint)
                    tally.append(("status", item.record["station"], False, False))
                elif item.kind == "station" and self._seen.get(item.endpoint) != item.record:
                    assert isinstance(item.record, str)
                    shoredb.note_station(conn, item.record, item.endpoint)
                    self._seen[item.endpoint] = item.record
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        for kind, station, new, fetched in tally:
            counts = self.counts.setdefault(station, Counts())
            if kind == "status":
                counts.statuses += 1
            elif new:
                counts.stored += 1
                counts.fetched += fetched
            else:
                counts.duplicates += 1

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def close(self) -> None:
        """Write what is queued, then stop."""
        self.queue.put(_STOP)
        self._thread.join()
