"""What `whale-listen scan` reads: the files that PATH arguments name, and their start times.

An archive is given as files, folders (walked recursively, audio files only) and shell globs
(for shells that pass `*` through, and for patterns too long for the command line). Every file
is named by its absolute path, once, in sorted order: that path is its identity in the resume
state and in every output row, and the sorted order is the file sequence a Raven table counts
its times over. Start times come from the file's name (the daemon's `YYYYMMDD_HHMMSS` stamp) or
from a `--start-time` strptime pattern, searched for in the name (or in the path, when the
pattern holds a `/`, for archives that keep the date in their folders).
"""

import glob
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from detector.errors import UsageError
from detector.timestamps import parse_start_time

AUDIO_SUFFIXES = (".wav", ".wave", ".aif", ".aiff", ".aifc", ".flac")  # what the replay reads
_GLOB_CHARS = re.compile(r"[*?\[]")


def is_audio_name(path: str) -> bool:
    """A folder's files are scanned only if their suffix is one the replay reads."""
    return path.lower().endswith(AUDIO_SUFFIXES)


def discover(paths: Iterable[str]) -> list[str]:
    """The absolute paths of the files the arguments name, sorted, each once.

    A file given by name (or matched by a glob) is taken whatever its suffix: the user chose
    it, and a file that is not audio becomes one error line of the scan. A folder gives its
    audio files, recursively. An argument that names nothing is a usage error.
    """
    found: set[str] = set()
    for arg in paths:
        matches = sorted(glob.glob(arg, recursive=True)) if _GLOB_CHARS.search(arg) else [arg]
        if not matches or not any(os.path.exists(m) for m in matches):
            raise UsageError(f"{arg}: no such file or folder")
        for match in matches:
            if os.path.isdir(match):
                found.update(_walk(match))
            elif os.path.exists(match):
                found.add(os.path.abspath(match))
    return sorted(found)


def _walk(folder: str) -> Iterable[str]:
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            if is_audio_name(name):
                yield os.path.abspath(os.path.join(root, name))


@dataclass(frozen=True)
class FileKey:
    """What makes a file "the same file" for resuming: its path, size and modification time."""

    path: str
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, path: str) -> "FileKey":
        st = os.stat(path)
        return cls(path, st.st_size, st.st_mtime_ns)


# strptime directives -> the text each one matches, so a pattern can be found inside a name
_DIRECTIVES = {
    "Y": r"\d{4}",
    "y": r"\d{2}",
    "m": r"\d{2}",
    "d": r"\d{2}",
    "j": r"\d{3}",
    "H": r"\d{2}",
    "M": r"\d{2}",
    "S": r"\d{2}",
    "f": r"\d{1,6}",
    "%": "%",
}


class StartTimePattern:
    """A strptime pattern (e.g. `%Y%m%d_%H%M%S`, `%y%j%H%M%S`), searched for in a file name.

    strptime itself only matches a whole string; archive names carry a prefix (station, unit)
    and a suffix, so the pattern is turned into a regular expression, found, then parsed.
    The time is UTC (a `%z` pattern is not supported: archive stamps carry no zone).
    """

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        parts, i = [], 0
        while i < len(pattern):
            char = pattern[i]
            if char == "%":
                directive = pattern[i + 1 : i + 2]
                if directive not in _DIRECTIVES:
                    raise UsageError(
                        f"--start-time {ascii(pattern)}: %{directive} is not supported (use "
                        f"%Y %y %m %d %j %H %M %S %f %%)"
                    )
                parts.append(f"({_DIRECTIVES[directive]})" if directive != "%" else "%")
                i += 2
            else:
                parts.append(re.escape(char))
                i += 1
        if "(" not in "".join(parts):
            raise UsageError(f"--start-time {ascii(pattern)} has no date or time directive")
        self._regex = re.compile(r"(?<!\d)" + "".join(parts) + r"(?!\d)")

    def find(self, path: str) -> datetime | None:
        """The UTC time the pattern finds in the name (or path, for a pattern with `/`)."""
        text = Path(path).as_posix() if "/" in self.pattern else Path(path).name
        for match in self._regex.finditer(text):
            try:
                return datetime.strptime(match.group(0), self.pattern).replace(tzinfo=UTC)
            except ValueError:  # digits in the right places but not a date (month 13)
                continue
        return None


def start_time(path: str, pattern: StartTimePattern | None) -> datetime | None:
    """A file's start: the pattern's time when given, else the daemon's stamp in the name."""
    return pattern.find(path) if pattern is not None else parse_start_time(path)
