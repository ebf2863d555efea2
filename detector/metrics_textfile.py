"""The metrics textfile output (`--metrics-textfile PATH`): the `/metrics` text written to a file
each heartbeat, for node_exporter's textfile collector (point it at the file's directory).

No port to open or firewall: node_exporter, already on most buoys, serves it. The file is
replaced atomically (a hidden temporary file beside it, then a rename), so the collector never
reads half a heartbeat; a write that fails is said once, and once more when it works again.
"""

import os
import tempfile
from pathlib import Path

from detector.errors import WhaleError
from detector.journal import log
from detector.metrics import exposition
from detector.outputs import Output
from detector.settings import Settings


def write_atomically(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename; readable by the collector's user (0644)."""
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


class TextfileOutput(Output):
    """Rewrites the metrics file with every heartbeat's status."""

    name = "metrics-textfile"

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise WhaleError(
                f"cannot write metrics to {self.path}: no directory {self.path.parent}"
            )
        self.failing = False

    def on_status(self, status: dict) -> None:
        try:
            write_atomically(self.path, exposition(status))
        except OSError as exc:
            if not self.failing:
                log.warning("cannot write metrics file %s: %s", self.path, exc.strerror or exc)
            self.failing = True
            return
        if self.failing:
            log.info("metrics file %s is written again", self.path)
        self.failing = False

    def describe(self) -> str:
        return f"metrics in {self.path}"


def open_output(settings: Settings) -> TextfileOutput:
    return TextfileOutput(settings.metrics_textfile)
