"""`whale-listen gather ENDPOINT... --db FILE`: the shore station's command.

It listens to many stations' PUB endpoints at once and keeps every event once, with each
station's health, in one SQLite file (`detector.gather` the network side, `detector.shorewriter`
the one writer, `detector.shoredb` the schema); `--export FILE` writes what the file holds.
SIGINT/SIGTERM stop it cleanly, with one summary line.
"""

import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import click

from detector.curve_options import client_options
from detector.errors import UsageError, WhaleError
from detector.journal import configure, say

if TYPE_CHECKING:
    from detector.curve import ClientKeys
    from detector.gather import Gather, Target
    from detector.shorewriter import ShoreWriter

TARGET_HELP = (
    "ENDPOINT is a daemon's --publish endpoint (tcp://HOST:PORT or ipc://PATH); its catch-up "
    "endpoint is derived as `subscribe` does (port + 1, ipc: PATH.catchup, then the one its "
    "status messages name), or given as ENDPOINT=CATCHUP, or ENDPOINT=off for none."
)


@click.command("gather", epilog=TARGET_HELP)
@click.argument("endpoints", nargs=-1, metavar="ENDPOINT...")
@click.option(
    "--db",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The shore database, SQLite (created if absent; a restart resumes from it).",
)
@click.option(
    "--export",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the database's events to this file and exit, no ENDPOINT: .csv, or .txt for a "
    "Raven Pro selection table.",
)
@click.option(
    "--station",
    "stations",
    multiple=True,
    help="With --export: only this station's events; repeatable.  [default: all]",
)
@client_options("The stations'", ": one certificate for the fleet, or one gather per key")
def gather_cmd(
    endpoints: tuple[str, ...],
    db: Path,
    export: Path | None,
    stations: tuple[str, ...],
    curve_secret: Path | None,
    server_key: Path | None,
) -> None:
    """Store every event of many stations once, with their health, in one SQLite file.

    Gaps (a daemon or gather restarted, a lost message) are fetched from each daemon's catch-up
    endpoint; --export writes what the database holds as CSV or a Raven table."""
    from detector.cli import fail

    configure()
    try:
        if export is not None:
            if endpoints:
                raise UsageError("--export writes the database and exits: give no ENDPOINT")
            from detector.shore_export import export as export_db

            written = export_db(db, export, list(stations) or None)
            say(f"gather: {written} event(s) from {db} written to {export}")
            return
        if stations:
            raise UsageError("--station goes with --export")
        if not endpoints:
            raise UsageError("give at least one ENDPOINT to gather from (or --export FILE)")
        from detector.curve import client_keys

        sys.exit(run(endpoints, db, client_keys(curve_secret, server_key)))
    except WhaleError as e:
        fail(str(e), e.exit_status)


class _StopSignals:
    """SIGINT/SIGTERM set a flag the loop reads, so the writer commits what it holds; the
    previous handlers come back after."""

    def __init__(self) -> None:
        self.name: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]

    def _on_signal(self, signum: int, frame: object) -> None:
        self.name = signal.Signals(signum).name

    def __call__(self) -> bool:
        return self.name is not None


def run(endpoints: tuple[str, ...], db: Path, curve: "ClientKeys | None" = None) -> int:
    """Gather until a signal; the exit status."""
    from detector import shoredb
    from detector.gather import parse_target
    from detector.shorewriter import ShoreWriter

    targets = [parse_target(text) for text in endpoints]
    if len({t.endpoint for t in targets}) < len(targets):
        raise UsageError("an ENDPOINT is given twice")
    conn = shoredb.connect(db)
    try:
        positions = {}
        for target in targets:
            station = shoredb.station_at(conn, target.endpoint)
            positions[target.endpoint] = (
                station,
                shoredb.resume_seq(conn, station) if station else 0,
            )
    finally:
        conn.close()
    with _StopSignals() as stop:
        writer = ShoreWriter(db)
        gather = _gather(targets, writer, positions, db, stop, curve)
    if writer.error is not None:
        raise WhaleError(writer.error)
    say(summary(writer, gather, stop.name))
    return 0


def _gather(
    targets: list["Target"],
    writer: "ShoreWriter",
    positions: dict[str, tuple[str | None, int]],
    db: Path,
    stop: _StopSignals,
    curve: "ClientKeys | None" = None,
) -> "Gather":
    from detector.gather import Gather

    gather = None
    try:
        gather = Gather(targets, writer.put, positions, curve)
        say(
            f"gather: {len(targets)} station(s) into {db}: "
            + ", ".join(f"{s or e} after seq {n}" for e, (s, n) in positions.items())
        )
        gather.run(lambda: stop() or not writer.alive)
    finally:
        if gather is not None:
            gather.close()
        writer.close()
    return gather


def summary(writer: "ShoreWriter", gather: "Gather", stopped_by: str | None) -> str:
    """One line: per station the events stored, how many came via catch-up, duplicates."""
    parts = []
    for station, c in sorted(writer.counts.items()):
        parts.append(
            f"{station} {c.stored} stored ({c.fetched} via catch-up, {c.duplicates} duplicate(s) "
            f"dropped)"
        )
    silent = [link.target.endpoint for link in gather.links if link.station is None]
    if silent:
        parts.append(f"nothing heard from {', '.join(silent)}")
    malformed = sum(link.malformed for link in gather.links)
    if malformed:
        parts.append(f"{malformed} malformed message(s) skipped")
    cause = f" by {stopped_by}" if stopped_by else ""
    return f"gather: stopped{cause}: " + ("; ".join(parts) or "no station heard")
