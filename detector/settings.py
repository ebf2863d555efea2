"""Every whale-listen option in one place: defaults, TOML config keys and their validation.

The command line and the config file name the same settings (`--events-log` = `events_log`);
the command line wins. A bad value or an unknown key is an error naming the key and the file.
"""

import math
import socket
import tomllib
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path

from detector.errors import WhaleError

DEFAULT_CONFIG = Path("/etc/whale-listen/config.toml")
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"


@dataclass(frozen=True)
class Settings:
    replay: Path | None = None
    device: str | None = None
    channel: int = 0
    realtime: bool = False
    hop: float = 0.5
    threshold: float | None = None  # None: the model card's
    model: Path | None = None  # None: the shipped model
    provider: str = "auto"
    threads: int = 1  # a buoy has few watts: one core unless asked
    batch: int = 64  # windows per model call (replays; live blocks hold few)
    station: str = field(default_factory=socket.gethostname)
    start_time: datetime | None = None
    publish: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    heartbeat: float = 10.0
    events_log: Path = Path("whale-listen-events.jsonl")
    wait_subscribers: int = 0
    linger: float = 2.0
    clips: Path | None = None
    min_free_mb: float = 100.0
    retry_max: float = 30.0
    stall_timeout: float = 10.0  # a live card silent this long is down
    blocksize: int = 0  # PortAudio frames per callback; 0 = PortAudio's choice

    def with_overrides(self, **values: object) -> "Settings":
        return replace(self, **{k: v for k, v in values.items() if v is not None})


KEYS = {f.name for f in fields(Settings)}


def parse_time(text: str) -> datetime:
    """ISO-8601; a time without zone is UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO-8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _number(
    value: object,
    kind: type,
    lo: float | None = None,
    hi: float | None = None,
    lo_open: bool = False,
) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    if not math.isfinite(value):  # TOML has nan and inf, and nan passes every bound below
        raise ValueError(f"expected a finite number, got {value}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ValueError(f"must be {'>' if lo_open else '>='} {lo}, got {value}")
    if hi is not None and value > hi:
        raise ValueError(f"must be <= {hi}, got {value}")
    return kind(value)


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


def _path_or_none(value: object) -> Path | None:
    if not isinstance(value, str):
        raise ValueError(f"expected a path string, got {value!r}")
    return Path(value) if value else None


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _provider(value: object) -> str:
    if value not in ("auto", "cpu", "cuda"):
        raise ValueError(f"expected auto, cpu or cuda, got {value!r}")
    return str(value)


def _endpoints(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError(f"expected a list of endpoints, got {value!r}")
    return tuple(items)


def _device(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _string(value)


def _time(value: object) -> datetime:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    return parse_time(_string(value))


CHECKS = {
    "replay": _path_or_none,
    "device": _device,
    "channel": lambda v: _number(v, int, 0),
    "realtime": _bool,
    "hop": lambda v: _number(v, float, 0, 2.0, lo_open=True),
    "threshold": lambda v: _number(v, float, 0, 1),
    "model": _path_or_none,
    "provider": _provider,
    "threads": lambda v: _number(v, int, 0),
    "batch": lambda v: _number(v, int, 1),
    "station": _string,
    "start_time": _time,
    "publish": _endpoints,
    "heartbeat": lambda v: _number(v, float, 0, lo_open=True),
    "events_log": lambda v: Path(_string(v)),
    "wait_subscribers": lambda v: _number(v, int, 0),
    "linger": lambda v: _number(v, float, 0),
    "clips": _path_or_none,
    "min_free_mb": lambda v: _number(v, float, 0),
    "retry_max": lambda v: _number(v, float, 0, lo_open=True),
    "stall_timeout": lambda v: _number(v, float, 0, lo_open=True),
    "blocksize": lambda v: _number(v, int, 0),
}


def load_config(path: Path) -> dict:
    """Validated settings from a TOML file, as a dict of the keys it sets."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise WhaleError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise WhaleError(f"cannot read config {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise WhaleError(f"config {path} is not valid TOML: {e}") from None
    values = {}
    for key, value in raw.items():
        if key not in CHECKS:
            raise WhaleError(f"config {path}: unknown key {key!r}")
        try:
            values[key] = CHECKS[key](value)
        except ValueError as e:
            raise WhaleError(f"config {path}: bad value for {key!r}: {e}") from None
    return values
