"""`whale-listen decode FILE|-`: compact SBD messages back to JSON lines, on shore.

Iridium delivers a mobile-originated message's bytes as an e-mail attachment (`.sbd`) or a
DirectIP payload, and some providers as hex text (a RockBLOCK-style web hook's `data`). Either
is read: input that is printable ASCII text is hex, one message a line; anything else is binary
(a message's second byte, its version, is never printable), one message or several back to back
(`cat *.sbd`: each header says how long its message is).
"""

import json
import string
import sys
from collections.abc import Iterator
from pathlib import Path

import click

from detector.compact import decode_message, message_length
from detector.errors import WhaleError
from detector.journal import log

TEXT = set((string.printable).encode())


def messages(data: bytes) -> Iterator[tuple[str, bytes | None]]:
    """(where, message) for each message in the input; message None where it is not hex."""
    if data and set(data) <= TEXT:
        for number, line in enumerate(data.decode("ascii").splitlines(), 1):
            if line.strip():
                try:
                    yield f"line {number}", bytes.fromhex(line.strip())
                except ValueError:
                    yield f"line {number}", None
        return
    at = 0
    while at < len(data):
        try:
            length = message_length(data[at:])
        except ValueError:
            yield f"byte {at}", data[at:]  # decode says why, once, for the rest
            return
        yield f"byte {at}", data[at : at + length]
        at += length


def read_input(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as e:
        raise WhaleError(f"cannot read {source}: {e.strerror or e}") from None


@click.command("decode")
@click.argument("source", metavar="FILE|-")
def decode_cmd(source: str) -> None:
    """Print compact SBD messages (binary, or hex one a line) as JSON lines.

    Each message gives its status summary (`"type": "sbd_status"`), when it has one, then its
    events (`"type": "upcall"`); FILE - reads standard input."""
    from detector.cli import _default_signals, fail

    _default_signals()
    try:
        bad = 0
        for where, message in messages(read_input(source)):
            try:
                if message is None:
                    raise ValueError("not hex")
                for item in decode_message(message):
                    click.echo(json.dumps(item))
            except ValueError as e:
                bad += 1
                log.error(f"{source}: {where}: {e}")  # the journal escapes what it prints
        if bad:
            raise WhaleError(f"{source}: {bad} message(s) could not be decoded")
    except WhaleError as e:
        fail(str(e), e.exit_status)
