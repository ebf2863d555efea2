"""The daemon's one voice: every line goes to stderr as `whale-listen: ...` through one logger.

Under systemd (stderr connected to the journal, JOURNAL_STREAM) each line starts with its
sd-daemon(3) priority, `<3>` for errors, so `journalctl -p err` finds them; on a terminal the
lines stay plain. Modules log through `log`; `say` is the common informational line. A progress
line on a terminal (`TERMINAL_LINE`) is cleared before each line and drawn again after it.
Every line is escaped on the way out (`escape`): a file name holding a newline, an ANSI escape or
bytes that are not UTF-8 cannot forge a journal line or repaint a terminal.
"""

import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

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


class TerminalLine:
    """The one transient line a terminal shows (the progress line), redrawn over itself with
    `\r`. Every log line clears it first and draws it again after, so a log line never lands in
    the middle of it; `clear()` ends it for good (before the summary)."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.text: str | None = None  # what is on the screen now

    def show(self, text: str) -> None:
        with self.lock:
            self.text = escape(text)
            self._write(f"\r{self.text}\x1b[K")

    def clear(self) -> None:
        with self.lock:
            if self.text is not None:
                self.text = None
                self._write("\r\x1b[K")

    @contextmanager
    def above(self) -> Iterator[None]:
        """Write a whole line while the progress line is out of the way."""
        with self.lock:
            text = self.text
            if text is not None:
                self._write("\r\x1b[K")
            try:
                yield
            finally:
                if text is not None:
                    self._write(f"\r{text}\x1b[K")

    @staticmethod
    def _write(chars: str) -> None:
        try:
            sys.stderr.write(chars)
            sys.stderr.flush()
        except Exception:  # a closed stderr must never stop detection
            pass


TERMINAL_LINE = TerminalLine()


class StderrHandler(logging.Handler):
    """Writes to whatever sys.stderr is at the time (so embedding and test capture work)."""

    def __init__(self) -> None:
        super().__init__()
        self.priorities = False

    def emit(self, record: logging.LogRecord) -> None:
        prefix = f"<{PRIORITIES.get(record.levelno, 6)}>" if self.priorities else ""
        error = "error: " if record.levelno >= logging.ERROR else ""
        try:
            with TERMINAL_LINE.above():
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
