"""Settings: defaults < TOML config < command line; every bad key or value names itself."""

import re
from datetime import UTC, datetime
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from detector import cli
from detector.errors import WhaleError
from detector.settings import CHECKS, DEFAULT_ENDPOINT, KEYS, Settings, load_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "deploy" / "config.example.toml"
NOT_SETTINGS = {"list_devices", "config", "version", "help"}  # options that are not settings


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text)
    return path


def settings_from(args: list[str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the command line builds, captured instead of run."""
    captured: list[Settings] = []
    monkeypatch.setattr(cli, "run", lambda s: captured.append(s) or 0)
    result = CliRunner().invoke(cli.main, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr
    (settings,) = captured
    return settings


def test_config_values_apply(tmp_path):
    path = write(
        tmp_path,
        """
        device = 3
        channel = 1
        realtime = true
        quiet = true
        hop = 0.25
        sensitivity = "strict"
        threshold = 0.8
        model = "/opt/models/upcall.onnx"
        provider = "cpu"
        threads = 2
        batch = 16
        station = "cape-cod-1"
        start_time = 2009-03-28T00:15:00Z
        publish = ["tcp://0.0.0.0:5556", "ipc:///run/whale.sock"]
        heartbeat = 5
        events_log = "/var/lib/whale-listen/events.jsonl"
        wait_subscribers = 1
        linger = 0.5
        catchup = "tcp://0.0.0.0:5557"
        curve_secret = "/etc/whale-listen/curve/buoy.key_secret"
        curve_allow = "/etc/whale-listen/curve/allowed"
        clips = "/var/lib/whale-listen/clips"
        mqtt = "mqtts://shore:8883/whales/b7"
        mqtt_auth_file = "/etc/whale-listen/mqtt.auth"
        mqtt_ca_file = "/etc/ca.pem"
        metrics_port = 9108
        metrics_textfile = "/var/lib/node_exporter/textfile_collector/whale-listen.prom"
        min_free_mb = 500
        retry_max = 60
        stall_timeout = 5
        blocksize = 400
        sbd_port = "/dev/ttyUSB0"
        sbd_baud = 9600
        sbd_delay = 30
        sbd_queue = "/var/lib/whale-listen/sbd.queue"
        sbd_queue_max = 500
        sbd_station_id = 7
        sbd_retry_max = 120
        sbd_heartbeat = 86400
        """,
    )
    values = load_config(path)
    assert set(values) == KEYS - {"replay"}
    s = Settings().with_overrides(**values)
    assert s.device == "3" and s.channel == 1 and s.realtime is True and s.quiet is True
    assert s.sensitivity == "strict"
    assert s.hop == 0.25 and s.threshold == 0.8 and s.model == Path("/opt/models/upcall.onnx")
    assert s.provider == "cpu" and s.threads == 2 and s.batch == 16
    assert s.station == "cape-cod-1"
    assert s.start_time == datetime(2009, 3, 28, 0, 15, tzinfo=UTC)
    assert s.publish == ("tcp://0.0.0.0:5556", "ipc:///run/whale.sock")
    assert s.heartbeat == 5.0 and isinstance(s.heartbeat, float)
    assert s.events_log == Path("/var/lib/whale-listen/events.jsonl")
    assert s.wait_subscribers == 1 and s.linger == 0.5
    assert s.clips == Path("/var/lib/whale-listen/clips")
    assert s.mqtt == "mqtts://shore:8883/whales/b7"
    assert s.mqtt_auth_file == Path("/etc/whale-listen/mqtt.auth")
    assert s.mqtt_ca_file == Path("/etc/ca.pem") and s.metrics_port == 9108
    assert s.metrics_textfile == Path("/var/lib/node_exporter/textfile_collector/whale-listen.prom")
    assert s.min_free_mb == 500 and s.retry_max == 60
    assert s.stall_timeout == 5.0 and s.blocksize == 400
    assert s.sbd_port == Path("/dev/ttyUSB0") and s.sbd_baud == 9600 and s.sbd_delay == 30.0
    assert s.sbd_queue == Path("/var/lib/whale-listen/sbd.queue") and s.sbd_queue_max == 500
    assert s.sbd_station_id == 7 and s.sbd_retry_max == 120.0 and s.sbd_heartbeat == 86400.0
    assert s.curve_secret == Path("/etc/whale-listen/curve/buoy.key_secret")
    assert s.curve_allow == Path("/etc/whale-listen/curve/allowed")


def test_defaults():
    s = Settings()
    assert s.replay is None and s.device is None and s.threshold is None
    assert s.publish == (DEFAULT_ENDPOINT,) and s.hop == 0.5 and s.threads == 1


def test_times_without_zone_are_utc_and_a_single_endpoint_is_a_list(tmp_path):
    values = load_config(
        write(tmp_path, 'start_time = "2020-01-02T03:04:05"\npublish = "tcp://*:1"')
    )
    assert values["start_time"] == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert values["publish"] == ("tcp://*:1",)


@pytest.mark.parametrize(
    "line, key",
    [
        ("hop = 0", "hop"),
        ("hop = 2.5", "hop"),
        ('hop = "fast"', "hop"),
        ("threshold = 1.5", "threshold"),
        ("channel = -1", "channel"),
        ("channel = 1.5", "channel"),
        ("batch = 0", "batch"),
        ("threads = true", "threads"),
        ('realtime = "yes"', "realtime"),
        ('provider = "tpu"', "provider"),
        ('station = ""', "station"),
        ("publish = []", "publish"),
        ("publish = [1]", "publish"),
        ('start_time = "tomorrow"', "start_time"),
        ("heartbeat = 0", "heartbeat"),
        ("events_log = 3", "events_log"),
        ("retry_max = 0", "retry_max"),
        ("stall_timeout = 0", "stall_timeout"),
        ("blocksize = -1", "blocksize"),
        ("blocksize = 0.5", "blocksize"),
        ("device = true", "device"),
        ("threshold = nan", "threshold"),  # nan passes every bound: it would never fire
        ("hop = nan", "hop"),
        ("heartbeat = inf", "heartbeat"),
        ("linger = inf", "linger"),
        ("min_free_mb = nan", "min_free_mb"),
        ("stall_timeout = -inf", "stall_timeout"),
        ('sensitivity = "loud"', "sensitivity"),
        ('mqtt = "http://shore/t"', "mqtt"),
        ('mqtt = "mqtt://shore"', "mqtt"),
        ("metrics_port = 70000", "metrics_port"),
        ("sbd_station_id = 65536", "sbd_station_id"),
        ("sbd_queue_max = 0", "sbd_queue_max"),
        ("sbd_delay = -1", "sbd_delay"),
    ],
)
def test_bad_value_names_key_and_file(tmp_path, line, key):
    path = write(tmp_path, line)
    with pytest.raises(WhaleError, match=f"{path}.*bad value for '{key}'"):
        load_config(path)


def test_unknown_key_names_key_and_file(tmp_path):
    path = write(tmp_path, "hop = 0.5\nthreshhold = 0.7")
    with pytest.raises(WhaleError, match=f"{path}.*unknown key 'threshhold'"):
        load_config(path)


def test_unreadable_config(tmp_path):
    with pytest.raises(WhaleError, match="config file not found.*nope.toml"):
        load_config(tmp_path / "nope.toml")
    path = write(tmp_path, "hop = = 1")
    with pytest.raises(WhaleError, match=f"{path} is not valid TOML"):
        load_config(path)


def test_every_setting_is_checked_and_every_check_is_a_setting():
    assert set(CHECKS) == KEYS


def test_every_command_line_option_is_a_setting():
    names = {p.name for p in cli.main.params if isinstance(p, click.Option)}
    assert names - NOT_SETTINGS <= KEYS
    assert "replay" in names and "events_log" in names


def test_command_line_overrides_config(tmp_path, monkeypatch):
    config = write(
        tmp_path,
        'hop = 0.25\nthreshold = 0.8\nstation = "from-config"\nrealtime = true\n'
        'publish = ["tcp://127.0.0.1:7000"]\nstart_time = 2001-01-01T00:00:00Z',
    )
    s = settings_from(["--config", config, "--replay", "x.wav"], monkeypatch)
    assert (s.hop, s.threshold, s.station, s.realtime) == (0.25, 0.8, "from-config", True)
    assert s.publish == ("tcp://127.0.0.1:7000",) and s.replay == Path("x.wav")
    s = settings_from(
        [
            "--config", config, "--replay", "x.wav", "--threshold", "0.6",
            "--station", "typed", "--no-realtime", "--publish", "ipc:///tmp/a",
            "--publish", "tcp://127.0.0.1:7001", "--start-time", "2009-03-28T00:15:00Z",
        ],
        monkeypatch,
    )  # fmt: skip
    assert s.hop == 0.25  # not typed: the config's value stands, not the option's default
    assert (s.threshold, s.station, s.realtime) == (0.6, "typed", False)
    assert s.publish == ("ipc:///tmp/a", "tcp://127.0.0.1:7001")
    assert s.start_time == datetime(2009, 3, 28, 0, 15, tzinfo=UTC)


def test_replay_on_the_command_line_replaces_the_configured_device(tmp_path, monkeypatch):
    """A deployed config names the card; `--replay test.wav` with it must still just work."""
    config = write(tmp_path, 'device = "hw:1"\nstation = "buoy"')
    s = settings_from(["--config", config, "--replay", "test.wav"], monkeypatch)
    assert s.replay == Path("test.wav") and s.device is None and s.station == "buoy"
    config = write(tmp_path, 'replay = "old.wav"')
    s = settings_from(["--config", config, "--device", "hw:2"], monkeypatch)
    assert s.device == "hw:2" and s.replay is None


def test_example_config_matches_settings():
    """Every key set there is a setting, and every setting is there (set or commented out)."""
    if not EXAMPLE.exists():
        pytest.skip(f"{EXAMPLE} not written yet")
    values = load_config(EXAMPLE)  # fails on an unknown key or a bad value
    assert set(values) <= KEYS
    text = EXAMPLE.read_text()
    missing = [k for k in KEYS if not re.search(rf"^[#\s]*{k}\s*=", text, re.MULTILINE)]
    assert not missing, f"settings absent from {EXAMPLE.name}: {missing}"


# what a buoy's config sets on purpose, away from the command line's defaults
DEPLOYMENT_CHOICES = {"device", "events_log", "clips"}


def test_example_config_is_in_step_with_the_defaults(tmp_path):
    """A key the example sets, or shows commented out, holds the default (a commented-out key
    with no default is an example value), except the buoy's own choices: a copied example must
    not quietly change what the daemon does (`threads = 0` took every core against a default
    of one)."""
    from detector.settings import OPTIONS

    text = EXAMPLE.read_text()
    defaults = Settings()
    uncommented = "\n".join(re.sub(r"^# (\w+ =)", r"\1", line) for line in text.splitlines())
    shown = load_config(write(tmp_path, uncommented))
    set_keys = set(load_config(EXAMPLE))
    for option in OPTIONS:
        if option.name in DEPLOYMENT_CHOICES or option.default is None:
            continue
        if option.name == "station":
            continue  # its default is the host name
        assert shown[option.name] == getattr(defaults, option.name), (
            option.name,
            "set" if option.name in set_keys else "commented out",
        )
    assert "python -m sounddevice" not in text and "whale-listen --list-devices" in text


NOT_SETTING_ROWS = {"--list-devices", "--config"}


def _readme_option_rows() -> dict[str, str]:
    """`--option` -> its default column, from the README's option table."""
    text = (REPO / "README.md").read_text()
    table = text[text.index("### Options") : text.index("### Events")]
    rows = {}
    for line in table.splitlines():
        match = re.match(r"^\| `(--[a-z-]+)[^`]*` \|([^|]*)\|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def test_readme_option_table_follows_the_declarations():
    from detector.settings import OPTIONS

    rows = _readme_option_rows()
    assert set(rows) - NOT_SETTING_ROWS == {o.option for o in OPTIONS}
    for option in OPTIONS:
        assert rows[option.option] == (option.shown or ""), option.name
