"""`whale-listen review`: the shore station's review web page, its reviewers and its export.

`--add-user NAME` and `--export FILE` do their one job and exit; otherwise the page is served
(loopback by default) until Ctrl-C or SIGTERM.
"""

import getpass
import ipaddress
import signal
import sys
from pathlib import Path

import click

from detector.errors import UsageError, WhaleError
from detector.journal import configure, say

LISTEN = "127.0.0.1:8080"


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise UsageError(f"--listen {text!r} must be HOST:PORT (e.g. {LISTEN}; port 0: any)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def read_password(name: str) -> str:
    """From the terminal (typed twice, not shown) or one line of stdin (scripts)."""
    if sys.stdin.isatty():
        first = getpass.getpass(f"password for {name}: ")
        if getpass.getpass("again: ") != first:
            raise UsageError("the two passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def existing_db(path: Path) -> Path:
    if not path.is_file():
        raise WhaleError(f"no database {path} (whale-listen gather writes it)")
    return path


@click.command("review")
@click.option(
    "--db",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="The shore station's SQLite database (written by whale-listen gather).",
)
@click.option(
    "--listen",
    default=LISTEN,
    show_default=True,
    help="HOST:PORT to serve the page on (port 0: any free one). Loopback by default: to expose "
    "it, put a TLS reverse proxy in front (README, Review station).",
)
@click.option(
    "--clips",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Folder holding the stations' clips (their --clips folders synced here, e.g. by "
    "rsync); a clip is served only by its event's id.  [default: no audio or spectrograms]",
)
@click.option(
    "--add-user",
    metavar="NAME",
    help="Add a reviewer, or set a new password for one (read from the terminal, or one line "
    "of stdin), and exit.",
)
@click.option(
    "--export",
    "export_path",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write every verdict as an annotation table for whale-train train --data (labels.csv, "
    "or a Raven selection table for a .txt name; needs --clips) and exit.",
)
@click.option(
    "--secure-cookie",
    is_flag=True,
    help="Mark the session cookie Secure (when a TLS reverse proxy serves the page).",
)
def review_cmd(
    db: Path,
    listen: str,
    clips: Path | None,
    add_user: str | None,
    export_path: Path | None,
    secure_cookie: bool,
) -> None:
    """Serve the review page: analysts confirm or reject detections; export their verdicts."""
    from detector.cli import _default_signals, fail

    _default_signals()
    configure()
    try:
        if add_user is not None and export_path is not None:
            raise UsageError("--add-user and --export are separate runs")
        if add_user is not None:
            _add_user(db, add_user)
        elif export_path is not None:
            _export(existing_db(db), export_path, clips)
        else:
            _serve(existing_db(db), listen, clips, secure_cookie)
    except WhaleError as e:
        fail(str(e), e.exit_status)


def _add_user(db: Path, name: str) -> None:
    from detector import reviewdb, shoredb

    password = read_password(name)
    conn = shoredb.connect(db)
    try:
        new = reviewdb.add_user(conn, name, password)
    finally:
        conn.close()
    say(f"{'added reviewer' if new else 'new password for'} {name} in {db}")


def _export(db: Path, out: Path, clips: Path | None) -> None:
    from detector import review_export, reviewdb, shoredb

    conn = shoredb.connect(db)
    try:
        rows = reviewdb.reviewed(conn)
    finally:
        conn.close()
    say(review_export.export(rows, out, clips).describe())


def _serve(db: Path, listen: str, clips: Path | None, secure_cookie: bool) -> None:
    from detector import shoredb
    from detector.review_server import ReviewApp, make_server

    host, port = parse_listen(listen)
    conn = shoredb.connect(db)  # migrates to the review tables before the first page
    try:
        users = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        events = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        conn.close()
    try:
        server = make_server(ReviewApp(db, clips, secure_cookie), host, port)
    except OSError as e:
        raise WhaleError(f"cannot listen on {listen}: {e.strerror or e}") from None
    bound_host, bound_port = server.server_address[:2]
    if not is_loopback(host):
        say(f"listening on {host}, not loopback: serve it through a TLS reverse proxy (README)")
    if users == 0:
        say(f"no reviewers yet: add one with whale-listen review --db {db} --add-user NAME")
    say(f"{events} events in {db}; clips from {clips or 'nowhere (no --clips)'}")
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    say(f"review page at http://{shown}:{bound_port}/")

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    say("review page stopped")
