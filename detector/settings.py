"""Every whale-listen setting declared once (`OPTIONS`): name, default, bound, help, config key.

The `Settings` dataclass, the click options, the config file's validation, the example config
and the README's option table all follow (or are tested against) that one declaration.
The command line and the config file name the same settings (`--events-log` = `events_log`);
the command line wins. A bad value or an unknown key is an error naming the key and the file.
"""

import math
import socket
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, make_dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import click

from detector.constants import DEFAULT_HOP_SECONDS, SAMPLE_RATE, WINDOW_SECONDS
from detector.errors import ConfigError, WhaleError
from detector.numbers import number

DEFAULT_CONFIG = Path("/etc/whale-listen/config.toml")
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5556"


def parse_time(text: str) -> datetime:
    """ISO-8601; a time without zone is UTC."""
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"not an ISO-8601 time: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _string(value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value


MAX_NAME = 128


def _name(value: object) -> str:
    """A name that goes into every event and journal line: printable UTF-8, one line, short.
    Bytes that are not UTF-8 (a Latin-1 shell) would make every event unencodable."""
    text = _string(value)
    if len(text) > MAX_NAME:
        raise ValueError(f"longer than {MAX_NAME} characters")
    if not _utf8(text).isprintable():
        raise ValueError(f"'{text}' is not printable text (one line, no control characters)")
    return text


def _utf8(text: str) -> str:
    """Bytes that are not UTF-8 (a name from a Latin-1 shell) arrive as lone surrogates: no
    event, log line or library (soundfile) can encode them, so they are refused up front."""
    if any("\ud800" <= c <= "\udfff" for c in text):
        raise ValueError(f"'{text}' is not valid UTF-8: rename it")
    return text


def _path_or_none(value: object) -> Path | None:
    if not isinstance(value, str):
        raise ValueError(f"expected a path string, got {value!r}")
    return Path(_utf8(value)) if value else None


def _path(value: object) -> Path:
    return Path(_utf8(_string(value)))


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _endpoints(value: object) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    items = list(items) if isinstance(items, tuple) else items  # repeated command-line options
    if not isinstance(items, list) or not items or not all(isinstance(v, str) for v in items):
        raise ValueError(f"expected a list of endpoints, got {value!r}")
    for item in items:
        _check_endpoint(item)
    return tuple(items)


def _check_endpoint(endpoint: str) -> None:
    """tcp://HOST:PORT (PORT 1-65535 or *) or ipc://PATH; libzmq itself would bind
    `tcp://h:-1` as port 65535 and `tcp://h:70000` as 4464 without a word."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return
    if not endpoint.startswith("tcp://"):
        raise ValueError(f"{ascii(endpoint)} is not tcp://HOST:PORT or ipc://PATH")
    host, colon, port = endpoint[len("tcp://") :].rpartition(":")
    if not (host and colon) or not (
        port == "*" or (port.isascii() and port.isdigit() and 1 <= int(port) <= 65535)
    ):
        raise ValueError(f"{ascii(endpoint)}: the port must be 1-65535 or *")


def _catchup(value: object) -> str:
    """auto, off, or an endpoint to bind (checked like --publish's)."""
    text = _string(value)
    if text not in ("auto", "off"):
        _check_endpoint(text)
    return text


def _device(value: object) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return _string(value)


EARLIEST, LATEST = datetime(1900, 1, 1, tzinfo=UTC), datetime(9000, 1, 1, tzinfo=UTC)


def _time(value: object) -> datetime:
    """A stream start from which event times can still be counted: datetime ends at year 9999,
    and a start near it overflows at the first event, after it was detected."""
    if isinstance(value, datetime):
        value = value if value.tzinfo else value.replace(tzinfo=UTC)
    else:
        value = parse_time(_string(value))
    if not EARLIEST <= value < LATEST:
        raise ValueError(f"{value.isoformat()} is outside 1900-01-01 to 9000-01-01")
    return value


def _mqtt_url(value: object) -> str:
    from detector.mqtt import parse_url  # plain string parsing: paho is imported only to publish

    parse_url(_string(value))
    return str(value)


def _choice(*allowed: str) -> Callable[[object], str]:
    def check(value: object) -> str:
        if value not in allowed:
            raise ValueError(f"expected {', '.join(allowed[:-1])} or {allowed[-1]}, got {value!r}")
        return str(value)

    return check


class Number:
    """A number setting's kind and bounds, for both the config check and the click type."""

    def __init__(
        self, kind: type, lo: float | None = None, hi: float | None = None, lo_open: bool = False
    ) -> None:
        self.kind, self.lo, self.hi, self.lo_open = kind, lo, hi, lo_open

    def __call__(self, value: object) -> float | int:
        return number(value, self.kind, self.lo, self.hi, self.lo_open)

    def click_type(self) -> click.ParamType:
        if self.kind is int:
            return click.IntRange(self.lo, self.hi, min_open=self.lo_open)
        return FiniteFloatRange(self.lo, self.hi, min_open=self.lo_open)


class FiniteFloatRange(click.FloatRange):
    """click's FloatRange, also refusing nan and inf: nan passes every bound (comparisons with it
    are false), and a nan threshold would never fire while a nan hop crashes."""

    def convert(self, value: object, param: object, ctx: object) -> float:
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):  # before the range: inf is out of range for another reason
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)


FILE = click.Path(dir_okay=False, path_type=Path)
# a folder given as the recording, model or event log is that setting's own error, as from a
# config file (README: a model or event log 78, a recording 2), not click's usage error
CHECKED_FILE = click.Path(path_type=Path)
DIRECTORY = click.Path(file_okay=False, path_type=Path)
SENSITIVITIES = ("high", "balanced", "strict")


@dataclass(frozen=True)
class Option:
    """One daemon setting, declared once: the dataclass field, the click option, the config key
    (same name), its check, the default shown in --help and the README's option table."""

    name: str
    default: object
    check: Callable[[object], object]  # a config value (or a typed option) -> the setting
    help: str
    shown: str | None = None  # the default as --help and the README table say it
    toml: type | tuple[type, ...] = str  # what a config file writes it as
    click_type: click.ParamType | None = None  # None: the Number's, else a string
    flag: bool = False
    multiple: bool = False
    metavar: str | None = None
    output: str | None = None  # the module whose open_output(settings) this setting turns on

    @property
    def option(self) -> str:
        return "--" + self.name.replace("_", "-")

    def param_type(self) -> click.ParamType | None:
        if self.click_type is not None:
            return self.click_type
        return self.check.click_type() if isinstance(self.check, Number) else None


_hostname = field(default_factory=socket.gethostname)
MAX_THREADS = 64  # onnxruntime makes every thread at start: 1000 of them never finish starting
OPTIONS: tuple[Option, ...] = (
    Option("replay", None, _path_or_none, "Replay an AIFF/WAV/FLAC recording (any sample rate) "
           "instead of a device.", click_type=CHECKED_FILE, metavar="FILE"),
    Option("device", None, _device, "Sound card: index, name, or ALSA card such as hw:1.",
           toml=(str, int), metavar="NAME|INDEX"),
    Option("channel", 0, Number(int, 0, 255), "Input channel of a multi-channel file or card "
           "(index, from 0).", "0", int, metavar="N"),
    Option("realtime", False, _bool, "Pace a replay at 1x like a live device, instead of as fast "
           "as possible.", "off", bool, flag=True),
    Option("quiet", False, _bool, "No progress line on a terminal (audio done, x real time, "
           "events, a replay's ETA); systemd's STATUS carries the figures either way.", "off",
           bool, flag=True),
    Option("hop", DEFAULT_HOP_SECONDS, Number(float, 0, WINDOW_SECONDS, lo_open=True),
           "Window hop: seconds between the starts of 2-s windows (0 < S <= 2).",
           str(DEFAULT_HOP_SECONDS), float, metavar="SECONDS"),
    Option("sensitivity", "balanced", _choice(*SENSITIVITIES), "Operating point from the model "
           "card's presets: high (more calls, more false alarms), balanced or strict.",
           "balanced", click_type=click.Choice(SENSITIVITIES)),
    Option("threshold", None, Number(float, 0, 1), "Event threshold on the up-call probability "
           "(0-1); overrides --sensitivity.", "the preset's", float, metavar="P"),
    Option("model", None, _path_or_none, "ONNX model file (NAME.onnx, its card NAME.json beside "
           "it).", "shipped model", click_type=CHECKED_FILE, metavar="FILE"),
    Option("provider", "auto", _choice("auto", "cpu", "cuda"), "onnxruntime execution provider.",
           "auto", click_type=click.Choice(["auto", "cpu", "cuda"])),
    Option("threads", 1, Number(int, 0, MAX_THREADS), "Model CPU threads (count, 0-64; 0 = all "
           "cores).", "1", int, metavar="N"),
    Option("batch", 64, Number(int, 1, 4096), "Windows (2 s each) per model call (count, "
           "1-4096).", "64", int, metavar="N"),
    Option("station", _hostname, _name, "Station name written into every event (text, at most "
           "128 characters).", "host name", metavar="NAME"),
    Option("start_time", None, _time, "Replay: UTC time of its first sample (ISO-8601, e.g. "
           "2009-03-28T00:15:00Z).", metavar="ISO-8601"),
    Option("publish", (DEFAULT_ENDPOINT,), _endpoints, "ZeroMQ endpoint to bind "
           "(tcp://HOST:PORT or ipc://PATH); repeatable.",
           f"`{DEFAULT_ENDPOINT}`", list, multiple=True,
           output="detector.zmq_output", metavar="ENDPOINT"),
    Option("heartbeat", 10.0, Number(float, 0, 86400, lo_open=True),
           "Seconds between status messages (heartbeats).", "10", float, metavar="SECONDS"),
    Option("events_log", Path("whale-listen-events.jsonl"), _path,
           "Durable JSON-lines log of every event (file, "
           "appended and fsynced).", "`whale-listen-events.jsonl`",
           click_type=CHECKED_FILE, metavar="FILE"),
    Option("wait_subscribers", 0, Number(int, 0, 10000), "Replay: wait for this many subscribers "
           "(count) before starting.", "0", int, metavar="N"),
    Option("linger", 2.0, Number(float, 0, 3600), "Seconds to deliver the last events "
           "before exit.",
           "2", float, metavar="SECONDS"),
    Option("catchup", "auto", _catchup, "ZeroMQ catch-up endpoint serving missed events from the "
           "log (ROUTER): auto = the first --publish port + 1 (ipc: PATH.catchup), or off.",
           "auto", metavar="ENDPOINT"),
    Option("curve_secret", None, _path_or_none, "This daemon's CURVE secret certificate "
           "(NAME.key_secret from whale-listen keygen): publish and serve catch-up encrypted, "
           "only to the clients in --curve-allow.", "off", click_type=FILE, metavar="FILE"),
    Option("curve_allow", None, _path_or_none, "Folder of the client public keys (NAME.key) "
           "allowed to subscribe and catch up, read at start; needs --curve-secret.", "off",
           click_type=DIRECTORY, metavar="DIR"),
    Option("mqtt", None, _mqtt_url, "Also publish to an MQTT broker: mqtt[s]://host[:port]/topic "
           "(events at QoS 1, retained online/offline state).", "off",
           output="detector.mqtt", metavar="URL"),
    Option("mqtt_auth_file", None, _path_or_none, "MQTT user name (first line) and password "
           "(second line).", click_type=FILE, metavar="FILE"),
    Option("mqtt_ca_file", None, _path_or_none, "mqtts: CA certificates to trust.",
           "system CAs", click_type=FILE, metavar="FILE"),
    Option("metrics_port", None, Number(int, 1, 65535), "Serve Prometheus metrics of the status "
           "counters on http://127.0.0.1:PORT/metrics (TCP port, 1-65535).", "off", int,
           output="detector.metrics", metavar="PORT"),
    Option("metrics_textfile", None, _path_or_none, "Write the same metrics to this file each "
           "heartbeat (atomically), for node_exporter's textfile collector.", "off",
           click_type=FILE, output="detector.metrics_textfile", metavar="FILE"),
    Option("clips", None, _path_or_none, "Save each event's audio (+- 1 s, FLAC) and spectrogram "
           "(PNG) in this directory.", "off",
           click_type=DIRECTORY, output="detector.clip_output", metavar="DIR"),
    Option("min_free_mb", 100.0, Number(float, 0), "Skip clips when the disk has less free space "
           "than this (MiB).", "100", float, metavar="MIB"),
    Option("sbd_port", None, _path_or_none, "Also send compact events over an Iridium SBD "
           "modem (9602/9603) on this serial port; needs the sbd extra.", "off",
           click_type=FILE, output="detector.sbd_output", metavar="DEVICE"),
    Option("sbd_baud", 19200, Number(int, 1200, 460800), "SBD modem: serial line speed (baud).",
           "19200", int, metavar="BAUD"),
    Option("sbd_delay", 60.0, Number(float, 0, 86400), "SBD: seconds to wait after an event "
           "for more before sending a message (batching; a full message goes at once).", "60",
           float, metavar="SECONDS"),
    Option("sbd_queue", None, _path_or_none, "SBD: the queue file on disk (SQLite) of events "
           "waiting for the satellite.", "`EVENTS_LOG.sbd-queue`", click_type=FILE,
           metavar="FILE"),
    Option("sbd_queue_max", 10000, Number(int, 1, 10_000_000), "SBD: most events the queue "
           "holds (count); a full queue drops its oldest (they stay in the event log).",
           "10000", int, metavar="N"),
    Option("sbd_station_id", None, Number(int, 0, 65535), "SBD: this station's 2-byte id in "
           "compact events (integer, 0-65535).", "from --station", int, metavar="ID"),
    Option("sbd_heartbeat", 0.0, Number(float, 0, 30 * 86400), "SBD: seconds without a "
           "message after which one goes with the status summary alone (0 = never; 86400: one "
           "a day).", "0 (off)", float, metavar="SECONDS"),
    Option("sbd_retry_max", 600.0, Number(float, 1, 86400), "SBD: longest wait, in seconds, "
           "between attempts after failed sessions (from 10 s, doubling).", "600", float,
           metavar="SECONDS"),
    Option("stall_timeout", 10.0, Number(float, 0, 3600, lo_open=True), "Device: seconds "
           "without audio before the card counts as down.", "10", float, metavar="SECONDS"),
    Option("retry_max", 30.0, Number(float, 0, 86400, lo_open=True), "Device: longest wait, in "
           "seconds, between attempts to reopen a lost card.", "30", float, metavar="SECONDS"),
    Option("blocksize", 0, Number(int, 0, 65536), "Device: frames (samples per channel) per "
           "PortAudio callback, 0 = PortAudio's choice.", "0", int, metavar="FRAMES"),
)  # fmt: skip


def _settings_field(option: Option) -> tuple:
    if isinstance(option.default, type(_hostname)):
        return option.name, object, option.default
    return option.name, object, field(default=option.default)


def _with_overrides(self: "Settings", **values: object) -> "Settings":
    return replace(self, **{k: v for k, v in values.items() if v is not None})


Settings = make_dataclass(
    "Settings",
    [_settings_field(o) for o in OPTIONS],
    frozen=True,
    namespace={"with_overrides": _with_overrides, "__module__": __name__},
)
Settings.__doc__ = "Every daemon setting (see OPTIONS): defaults < config file < command line."
KEYS = {o.name for o in OPTIONS}
CHECKS = {o.name: o.check for o in OPTIONS}


def window_hop_samples(seconds: float) -> int:
    """The window hop in 2 kHz samples; under one sample is an error (the bound is open at 0)."""
    samples = int(round(seconds * SAMPLE_RATE))
    if samples < 1:
        raise WhaleError(f"hop {seconds} s is under one sample at {SAMPLE_RATE} Hz")
    return samples


def load_config(path: Path) -> dict:
    """Validated settings from a TOML file, as a dict of the keys it sets; any problem is a
    ConfigError (exit 78): restarting the service cannot fix the file."""
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"config {path} is not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or table
        raise ConfigError(f"config {path} is not valid TOML: nested too deeply") from None
    except ValueError as e:  # an integer of over 4,300 digits (Python's int parsing limit)
        why = str(e).split(";")[0]  # not Python's advice to raise the limit
        raise ConfigError(f"config {path} is not usable TOML: {why}") from None
    values = {}
    for key, value in raw.items():
        if key not in CHECKS:
            raise ConfigError(f"config {path}: unknown key {ascii(key)}")
        try:
            values[key] = CHECKS[key](value)
        except ValueError as e:
            raise ConfigError(f"config {path}: bad value for {key!r}: {e}") from None
    return values
