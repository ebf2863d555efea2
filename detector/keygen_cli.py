"""`whale-listen keygen DIR [--name NAME]`: a CURVE key pair for access control.

NAME.key (public, 0644) goes to the other side: into the daemon's `--curve-allow` folder for a
client, or to subscribers as `--server-key` for a daemon. NAME.key_secret (0600) stays where it
was made. An existing key is never overwritten.
"""

import socket
from pathlib import Path

import click

from detector.errors import WhaleError


@click.command("keygen")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--name",
    default=None,
    help="File name of the pair: NAME.key and NAME.key_secret.  [default: this host's name]",
)
def keygen_cmd(folder: Path, name: str | None) -> None:
    """Write a CURVE key pair (NAME.key public, NAME.key_secret secret) into FOLDER."""
    from detector.cli import _default_signals, fail
    from detector.curve import keygen
    from detector.journal import escape

    _default_signals()
    try:
        public, secret = keygen(folder, name or socket.gethostname().split(".")[0])
    except WhaleError as e:
        fail(str(e), e.exit_status)
    click.echo(
        f"public key {escape(str(public))}: give it out (--curve-allow folder or --server-key)"
    )
    click.echo(f"secret key {escape(str(secret))}: keep it here (mode 0600)")
