"""The client side's CURVE options, declared once for every command that connects to a daemon
(`subscribe`, `gather`): this client's certificate and the daemon's public key."""

from collections.abc import Callable
from pathlib import Path

import click


def client_options(server: str, note: str = "") -> Callable[[Callable], Callable]:
    """`--curve-secret FILE --server-key FILE`; `server` says whose public key that is."""

    def decorate(command: Callable) -> Callable:
        command = click.option(
            "--server-key",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help=f"{server} CURVE public key (NAME.key{note}); needs --curve-secret.",
        )(command)
        return click.option(
            "--curve-secret",
            type=click.Path(dir_okay=False, path_type=Path),
            default=None,
            help="This client's CURVE secret certificate (NAME.key_secret from whale-listen "
            "keygen), for daemons with access control; needs --server-key.  [default: plaintext]",
        )(command)

    return decorate
