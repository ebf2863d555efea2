"""whale-listen as typed: -h, --version, the examples, help (with units) on every option."""

import subprocess
import sys
from pathlib import Path

import click
import pytest

from detector.settings import OPTIONS, Number

SCRIPT = Path(sys.executable).with_name("whale-listen")


def whale_listen(*args: str) -> subprocess.CompletedProcess:
    if not SCRIPT.exists():
        pytest.skip(f"{SCRIPT} not installed (pip install -e '.[test]')")
    env = {"PATH": "/usr/bin:/bin", "COLUMNS": "80"}  # a narrow terminal cut the summaries
    return subprocess.run(
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=120, env=env
    )


def test_version():
    from detector import __version__

    result = whale_listen("--version")
    assert result.returncode == 0 and result.stdout == f"whale-listen, version {__version__}\n"
    assert result.stderr == ""


def test_short_and_long_help_the_examples_and_whole_subcommand_summaries():
    short, long = whale_listen("-h"), whale_listen("--help")
    assert short.returncode == 0 and short.stdout == long.stdout and short.stderr == ""
    text = short.stdout
    assert "-h, --help" in text and "--version" in text
    commands = text.split("Commands:")[1].split("Examples:")[0]
    assert "..." not in commands
    assert "Print what a whale-listen publisher sends, one JSON object per line." in " ".join(
        commands.split()
    )
    examples = text.split("Examples:")[1].splitlines()
    assert any(line.strip().startswith("whale-listen --replay ") for line in examples)
    assert any(line.strip().startswith("whale-listen --device ") for line in examples)
    assert any(line.strip().startswith("whale-listen subscribe ") for line in examples)
    for name in ("subscribe", "export-raven"):
        sub = whale_listen(name, "-h")
        assert sub.returncode == 0 and "-h, --help" in sub.stdout, sub.stderr


def test_every_option_of_every_command_has_help():
    from detector.cli import main

    commands = {"whale-listen": main, **{f"whale-listen {n}": c for n, c in main.commands.items()}}
    for name, command in commands.items():
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.help, f"{name} {param.opts[0]} has no help"


# what each number's help must name: its unit, or that it is a count, an index or a fraction
UNITS = {
    "channel": "index",
    "hop": "seconds",
    "threshold": "0-1",
    "threads": "count",
    "batch": "count",
    "heartbeat": "Seconds",
    "wait_subscribers": "count",
    "linger": "Seconds",
    "metrics_port": "TCP port",
    "min_free_mb": "MiB",
    "stall_timeout": "seconds",
    "retry_max": "seconds",
    "blocksize": "frames",
    "sbd_baud": "baud",
    "sbd_delay": "seconds",
    "sbd_queue_max": "count",
    "sbd_station_id": "0-65535",
    "sbd_retry_max": "seconds",
    "sbd_heartbeat": "seconds",
}


def test_every_number_says_its_unit():
    numbers = {o.name for o in OPTIONS if isinstance(o.check, Number)}
    assert numbers == set(UNITS), "a new number setting: say its unit here and in its help"
    for option in OPTIONS:
        if option.name in UNITS:
            assert UNITS[option.name] in option.help, option.name
    text = " ".join(whale_listen("--help").stdout.split())
    assert "Model CPU threads (count, 0-64; 0 = all cores). [default: 1]" in text
    assert "than this (MiB). [default: 100]" in text
