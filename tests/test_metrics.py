"""--metrics-port: a real HTTP scrape of /metrics from a running daemon."""

import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from detector.model import card_path, sha256_file
from tests.test_cli import DAEMON, assert_one_error, invoke, replay_args, write_call_train
from tests.test_mqtt import free_port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return response.read().decode()


def value(text: str, name: str) -> float:
    match = re.search(rf"^whale_listen_{name}\{{station=\"test-station\"\}} (\S+)$", text, re.M)
    assert match, (name, text)
    return float(match.group(1))


def assert_model_info(text: str, model: Path) -> None:
    name = json.loads(card_path(model).read_text())["name"]
    labels = f'station="test-station",name="{name}",sha256="{sha256_file(model)}"'
    pattern = (
        rf'^whale_listen_model_info\{{{re.escape(labels)},provider="\w+ExecutionProvider"\}} 1$'
    )
    assert re.search(pattern, text, re.M), text


def test_a_running_daemon_serves_its_status_counters(tmp_path, tiny_model):
    recording = tmp_path / "calls_20090328_001500.wav"
    write_call_train(recording, seconds=8)
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = replay_args(recording, tiny_model, tmp_path / "ev.jsonl")
    daemon = subprocess.Popen(
        [*DAEMON, *map(str, args), "--realtime", "--heartbeat", "0.2", "--metrics-port", str(port)],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline, text = time.monotonic() + 30, ""
        while "whale_listen_samples{" not in text or value(text, "samples") < 4000:
            assert daemon.poll() is None and time.monotonic() < deadline, daemon.stderr.read()
            try:
                text = scrape(port)
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.1)
        assert "# TYPE whale_listen_samples counter" in text
        assert value(text, "windows") >= 1 and value(text, "dropped_samples") == 0
        assert value(text, "source_up") == 1 and value(text, "unlogged_events") == 0
        for name in ("events", "lag_seconds", "silent_seconds", "zmq_dropped"):
            value(text, name)
        assert_model_info(text, tiny_model)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2):
            pass
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/other", timeout=2)
            raise AssertionError("only /metrics is served")
        except urllib.error.HTTPError as e:
            assert e.code == 404
        assert daemon.wait(30) == 0
    finally:
        daemon.kill()
        daemon.wait()


def test_metrics_port_in_use_is_one_line(tmp_path, tiny_model):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        recording = tmp_path / "calls_20090328_001500.wav"
        write_call_train(recording, seconds=4)
        result = invoke(
            *replay_args(recording, tiny_model, tmp_path / "ev.jsonl"), "--metrics-port", port
        )
    assert result.exit_code == 2
    assert_one_error(result.stderr, f"127.0.0.1:{port}")


def test_a_running_daemon_writes_its_metrics_textfile_atomically(tmp_path, tiny_model):
    recording = tmp_path / "calls_20090328_001500.wav"
    write_call_train(recording, seconds=8)
    collector = tmp_path / "textfile_collector"
    collector.mkdir()
    textfile = collector / "whale-listen.prom"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = replay_args(recording, tiny_model, tmp_path / "ev.jsonl")
    daemon = subprocess.Popen(
        [*DAEMON, *map(str, args), "--realtime", "--heartbeat", "0.2",
         "--metrics-textfile", str(textfile)],
        env=env, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline, texts = time.monotonic() + 30, []
        while not texts or value(texts[-1], "samples") < 4000:
            assert daemon.poll() is None and time.monotonic() < deadline, daemon.stderr.read()
            if textfile.exists():
                texts.append(textfile.read_text())  # a whole heartbeat, whenever it is read
                assert texts[-1].endswith("\n") and "whale_listen_source_up{" in texts[-1]
            time.sleep(0.05)
        assert daemon.wait(30) == 0
    finally:
        daemon.kill()
        daemon.wait()
    text = texts[-1]
    assert "# TYPE whale_listen_samples counter" in text
    assert value(text, "windows") >= 1 and value(text, "source_up") == 1
    assert_model_info(text, tiny_model)
    samples = [value(t, "samples") for t in texts]
    assert samples == sorted(samples) and len(set(samples)) > 1  # rewritten every heartbeat
    assert [p.name for p in collector.iterdir()] == [textfile.name]  # no temporary file left
    assert textfile.stat().st_mode & 0o777 == 0o644  # node_exporter runs as another user


def test_metrics_textfile_in_a_missing_directory_is_one_line(tmp_path, tiny_model):
    recording = tmp_path / "calls_20090328_001500.wav"
    write_call_train(recording, seconds=4)
    textfile = tmp_path / "absent" / "whale-listen.prom"
    result = invoke(
        *replay_args(recording, tiny_model, tmp_path / "ev.jsonl"), "--metrics-textfile", textfile
    )
    assert result.exit_code == 2
    assert_one_error(result.stderr, str(textfile.parent))
