"""The daemon's one voice: every line goes to stderr as `whale-listen: ...` through one logger.

Under systemd (stderr connected to the journal, JOURNAL_STREAM) each line starts with its
sd-daemon(3) priority, `<3>` for errors, so `journalctl -p err` finds them; on a terminal the
lines stay plain. Modules log through `log`; `say` is the common informational line.
Every line is escaped on the way out (`escape`): a file name holding a newline, an ANSI escape or
bytes that are not UTF-8 cannot forge a journal line or repaint a terminal.
"""

import logging
import os
import re
import sys

log = logging.getLogger("whale-listen")

# sd-daemon(3) priorities, by logging level
PRIORITIES = {logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}


def journal_connected(environ: dict | None = None, stderr_fd: int = 2) -> bool:
    """True when stderr is the journal stream systemd named in JOURNAL_STREAM (device:inode)."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    device, _, inode = value.partition(":")
    try:
        st = os.fstat(stderr_fd)
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (OSError, ValueError):
        return False


# C0/C1 controls and DEL, lone surrogates (undecodable bytes of a file name or an argument),
# bidirectional overrides (which reorder what a terminal shows)
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match) -> str:
    char = match.group()
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape: the original byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """`text` with every character that could break or forge a line shown as a backslash
    escape (a newline reads `\\x0a`, an undecodable byte `\\xff`), printable text unchanged."""
    return _UNSAFE.sub(_escaped, text)


class StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (so embedding and test capture work)."""

    def __init__(self) -> None:
        super().__init__()
        self.priorities = False

    def emit(self, record: logging.LogRecord) -> None:
        prefix = f"<{PRIORITIES.get(record.levelno, 6)}>" if self.priorities else ""
        error = "error: " if record.levelno >= logging.ERROR else ""
        try:
            print(
                f"{prefix}whale-listen: {error}{escape(record.getMessage())}",
                file=sys.stderr,
                flush=True,
            )
        except Exception:  # a closed stderr must never stop detection
            self.handleError(record)


HANDLER = StderrHandler()
log.addHandler(HANDLER)
log.setLevel(logging.INFO)
log.propagate = True  # the root logger has no handler unless an embedding program adds one


def configure(priorities: bool | None = None) -> None:
    """At start: `<N>` prefixes when stderr is the journal (or when asked), plain otherwise."""
    HANDLER.priorities = journal_connected() if priorities is None else priorities


def say(message: str) -> None:
    """One informational line (start-up, card lost/back, summary)."""
    log.info(message)
