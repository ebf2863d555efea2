"""Times in events and status: a recording's start from its file name, and the one ISO format.

Archive recordings (e.g. NOPP6_EST_20090328_001500.wav) carry their start time only in the name;
every time whale-listen writes is UTC with milliseconds and `Z`, so readers parse one format.
"""

import re
from datetime import UTC, datetime, timedelta
from pathlib import PurePath

_STAMP = re.compile(r"(?<!\d)(\d{8})_(\d{6})(?!\d)")


def parse_start_time(name: str) -> datetime | None:
    """The UTC start time stamped in a recording's file name as YYYYMMDD_HHMMSS, else None.

    Without it events can only be placed relative to the file.
    """
    for match in _STAMP.finditer(PurePath(name).name):
        try:
            stamp = datetime.strptime(match.group(1) + match.group(2), "%Y%m%d%H%M%S")
        except ValueError:
            continue
        return stamp.replace(tzinfo=UTC)
    return None


def iso_utc(dt: datetime) -> str:
    """ISO-8601 UTC with milliseconds and Z (a naive datetime is taken to be UTC)."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    dt = dt.astimezone(UTC)
    dt = dt.replace(microsecond=0) + timedelta(milliseconds=round(dt.microsecond / 1000))
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{dt.microsecond // 1000:03d}Z"


def sample_time(stream_start: datetime, sample: int, sample_rate: int) -> str:
    """Wall time of a stream sample, from the sample count (immune to clock jumps and lag)."""
    return iso_utc(stream_start + timedelta(microseconds=round(sample * 1_000_000 / sample_rate)))
