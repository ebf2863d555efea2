"""Issue 14's bad inputs, each through the real command line: one `whale-listen: error:` line with
names escaped, exit 64 (usage), 78 (configuration) or 2 (runtime), never a traceback or a hang."""

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import zmq

from detector.errors import EX_CONFIG, EX_USAGE, ConfigError
from detector.eventlog import read_events
from detector.model import card_path, load_card, sha256_file
from detector.publish import Publisher

from .fuzzing import event_key
from .test_audio import understate_aiff
from .test_cli import (
    DAEMON,
    assert_one_error,
    invoke,
    replay,
    replay_args,
    write_call_train,
    write_synthetic,
)


@pytest.fixture
def recording(tmp_path: Path) -> Path:
    path = tmp_path / "calls_20090328_001500.wav"
    write_call_train(path, seconds=8)
    return path


def daemon(*args: object, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess:
    """The daemon in its own process, argv as bytes (so they may be any bytes, as from a shell)."""
    argv = [os.fsencode(a) if not isinstance(a, bytes) else a for a in (*DAEMON, *args)]
    return subprocess.run(argv, capture_output=True, timeout=timeout, cwd=cwd)


# -- bad option values: EX_USAGE ----------------------------------------------------------------
BAD_OPTIONS = {
    "start time at the end of datetime": (["--start-time", "9999-12-31T23:59:59Z"], "--start-time"),
    "linger 3e6 s": (["--linger", "3e6"], "--linger"),
    "threads over int32": (["--threads", "2147483648"], "--threads"),
    "threads 1000": (["--threads", "1000"], "--threads"),
    "tcp port -1": (["--publish", "tcp://127.0.0.1:-1"], "--publish"),
    "tcp port 70000": (["--publish", "tcp://127.0.0.1:70000"], "--publish"),
    "station with a newline": (["--station", "buoy\n07"], "--station"),
    "unknown option": (["--no-such-option"], "--no-such-option"),
}


@pytest.mark.parametrize("case", list(BAD_OPTIONS))
def test_a_bad_option_value_is_one_line_and_ex_usage(tmp_path, tiny_model, recording, case):
    extra, name = BAD_OPTIONS[case]
    log = tmp_path / "e.jsonl"
    result = invoke(*replay_args(recording, tiny_model, log), *extra, cwd=tmp_path)
    assert result.exit_code == EX_USAGE, result.stderr
    assert_one_error(result.stderr, name)
    assert not log.exists()


@pytest.mark.parametrize("what", ["station", "replay"])
def test_bytes_that_are_not_utf8_are_refused_escaped(tmp_path, tiny_model, recording, what):
    """Before: a Latin-1 --station lost every event (none could be encoded), a Latin-1 replay
    path was a UnicodeEncodeError traceback."""
    args = replay_args(recording, tiny_model, tmp_path / "e.jsonl")
    if what == "station":
        args[args.index("--station") + 1] = b"buoy-\xe9"
    else:
        latin1 = os.fsencode(tmp_path) + b"/calls_20090328_001500_\xe9.wav"
        os.rename(os.fsencode(recording), latin1)
        args[1] = latin1
    proc = daemon(*args, cwd=tmp_path)
    stderr = proc.stderr.decode("utf-8")  # escaped: always valid UTF-8
    assert proc.returncode == EX_USAGE, stderr
    assert_one_error(stderr, f"--{what}", "\\xe9", "not valid UTF-8")


def test_a_name_with_a_newline_and_an_ansi_escape_stays_on_one_escaped_line(tmp_path, tiny_model):
    missing = tmp_path / "evil\nwhale-listen: error: forged\x1b[31m.wav"
    result = invoke(*replay_args(missing, tiny_model, tmp_path / "e.jsonl"))
    assert result.exit_code == 2
    line = assert_one_error(result.stderr, "evil\\x0awhale-listen: error: forged\\x1b[31m.wav")
    assert "\x1b" not in result.stderr and result.stderr.count("\n") == 1, line


# -- bad configuration: EX_CONFIG ---------------------------------------------------------------
@pytest.mark.parametrize(
    "text, name",
    [
        ("publish = " + "[" * 5000 + "]" * 5000 + "\n", "nested too deeply"),
        ("linger = 3e6\n", "'linger'"),
        ("threads = 1000\n", "'threads'"),
        ('start_time = "9999-12-31T23:59:59Z"\n', "'start_time'"),
        ('publish = ["tcp://127.0.0.1:-1"]\n', "'publish'"),
        ("[\x00]\n", "not valid TOML"),
        ("threads = 1" + "0" * 5000 + "\n", "4300 digits"),
    ],
    ids=["5000 nested [", "linger", "threads", "start_time", "port -1", "NUL", "5001 digits"],
)
def test_a_bad_config_file_is_one_line_and_ex_config(tmp_path, tiny_model, recording, text, name):
    config = tmp_path / "config.toml"
    config.write_text(text)
    result = invoke(*replay_args(recording, tiny_model, tmp_path / "e.jsonl"), "--config", config)
    assert result.exit_code == EX_CONFIG, result.stderr
    assert_one_error(result.stderr, str(config), name)


@pytest.mark.parametrize(
    "option, status, words",
    [
        ("--events-log", EX_CONFIG, "is a directory, not a file"),
        ("--config", EX_CONFIG, "cannot read config"),
        ("--model", EX_CONFIG, "model is a directory"),
        ("--replay", 2, "not a file"),
    ],
)
def test_a_folder_where_a_file_belongs_exits_as_the_readme_says(
    tmp_path, tiny_model, recording, option, status, words
):
    """Before: click refused the folder first, as a usage error (64), while the README (and the
    same folder in a config file) said 78 for an event log, a config file or a model."""
    folder = tmp_path / "a-folder"
    folder.mkdir()
    args = replay_args(recording, tiny_model, tmp_path / "e.jsonl", option, folder)
    result = invoke(*args, cwd=tmp_path)
    assert result.exit_code == status, result.stderr
    assert_one_error(result.stderr, str(folder), words)


def test_an_events_log_that_is_a_fifo_is_refused_not_waited_on(tmp_path, tiny_model, recording):
    fifo = tmp_path / "events.fifo"
    os.mkfifo(fifo)
    proc = daemon(*replay_args(recording, tiny_model, fifo), cwd=tmp_path, timeout=60)
    assert proc.returncode == EX_CONFIG
    assert_one_error(proc.stderr.decode(), str(fifo), "FIFO")


# -- bad model cards and models: EX_CONFIG --------------------------------------------------------
def _model_copy(tmp_path: Path, tiny_model: Path, edit) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(tiny_model.parent, folder, dirs_exist_ok=True)
    model = folder / tiny_model.name
    card = load_card(tiny_model)
    edit(card)
    card_path(model).write_text(json.dumps(card))
    return model


def _swap_halves(card: dict) -> None:
    s = card["streaming"]
    s["frames"], s["head"] = s["head"], s["frames"]
    s["frames_sha256"], s["head_sha256"] = s["head_sha256"], s["frames_sha256"]


CARDS = {
    "threshold abc": (lambda c: c.update(threshold="abc"), "threshold 'abc'"),
    "threshold 5": (lambda c: c.update(threshold=5), "threshold 5"),
    "threshold NaN": (lambda c: c.update(threshold=float("nan")), "threshold nan"),
    "threshold -1": (lambda c: c.update(threshold=-1), "threshold -1"),
    "frame_hop 0": (lambda c: c["streaming"].update(frame_hop=0), "streaming.frame_hop 0"),
    "n_fft 1e9": (lambda c: c["streaming"].update(n_fft=10**9), "streaming.n_fft"),
    "swapped halves": (_swap_halves, "not the frames half"),
    "sample rate": (lambda c: c.update(sample_rate=4000), "sample_rate 4000"),
}


@pytest.mark.parametrize("case", list(CARDS))
def test_a_bad_model_card_is_one_line_and_ex_config(tmp_path, tiny_model, recording, case):
    edit, message = CARDS[case]
    model = _model_copy(tmp_path, tiny_model, edit)
    log = tmp_path / "e.jsonl"
    args = replay_args(recording, model, log)
    result = invoke(*[a for a in args if a != "--threshold"])
    assert result.exit_code == EX_CONFIG, result.stderr
    assert_one_error(result.stderr, message)
    assert not log.exists() or read_events(log) == []


STREAM_CARDS = {
    "stream hop 0": (
        lambda c: c["streaming"].update(stream_window_hop=0),
        "streaming.stream_window_hop 0",
    ),
    "stream is the head": (
        lambda c: c["streaming"].update(stream=c["streaming"]["head"]),
        "is also another half",
    ),
    "stream sha256": (
        lambda c: c["streaming"].update(stream_sha256="0" * 64),
        "does not match its card",
    ),
    "stream missing": (lambda c: c["streaming"].update(stream="gone.onnx"), "gone.onnx"),
}


@pytest.mark.parametrize("case", list(STREAM_CARDS))
def test_a_bad_stream_half_is_one_line_and_ex_config(tmp_path, tiny_stream_model, recording, case):
    """A pcen-stream model's third export: its card entries and file are checked at start."""
    edit, message = STREAM_CARDS[case]
    model = _model_copy(tmp_path, tiny_stream_model, edit)
    result = invoke(*replay_args(recording, model, tmp_path / "e.jsonl"))
    assert result.exit_code == EX_CONFIG, result.stderr
    assert_one_error(result.stderr, message)


def _fixed_batch_model(path: Path, batch: int) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("ReduceMean", ["samples"], ["probability"], axes=[1], keepdims=0)],
        "fixed",
        [helper.make_tensor_value_info("samples", TensorProto.FLOAT, [batch, 4000])],
        [helper.make_tensor_value_info("probability", TensorProto.FLOAT, [batch])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_a_fixed_batch_model_is_refused_at_start_not_on_the_first_full_batch(tmp_path, recording):
    model = _fixed_batch_model(tmp_path / "fixed.onnx", 2)
    result = invoke(*replay_args(recording, model, tmp_path / "e.jsonl"), "--threshold", "0.5")
    assert result.exit_code == EX_CONFIG, result.stderr
    assert_one_error(result.stderr, "fixed.onnx", "fixed batch of 2")


def test_an_unreadable_model_file_is_a_config_error(tmp_path):
    """As root chmod cannot make a file unreadable; a directory fails to read the same way."""
    with pytest.raises(ConfigError, match="cannot read model file"):
        sha256_file(tmp_path)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a mode-000 file anyway")
def test_an_unreadable_head_half_is_one_line(tmp_path, tiny_model, recording):
    model = _model_copy(tmp_path, tiny_model, lambda card: None)
    head = model.parent / load_card(model)["streaming"]["head"]
    head.chmod(0)
    result = invoke(*replay_args(recording, model, tmp_path / "e.jsonl"))
    assert result.exit_code == EX_CONFIG
    assert_one_error(result.stderr, head.name)


# -- headers that understate the length ------------------------------------------------------
def test_an_aiff_whose_header_understates_its_length_is_scored_to_the_end(tmp_path, tiny_model):
    """Before: COMM and SSND left at one frame (a recorder that never patched its header) read as
    "shorter than one 2-s window: nothing to score", exit 0, and 130 s holding 10 calls went
    unscored."""
    path = tmp_path / "calls_20090328_001500.aiff"
    write_synthetic(path, seed=21, seconds=130, calls=10, lookalikes=2)
    expected = [event_key(e) for e in replay(path, tiny_model, tmp_path / "intact.jsonl")]
    assert expected, "the tiny model found nothing in the intact recording"
    understate_aiff(path, 1, 2)
    log = tmp_path / "e.jsonl"
    result = invoke(*replay_args(path, tiny_model, log), cwd=tmp_path)
    assert result.exit_code == 0, result.stderr
    assert "shorter than one" not in result.stderr
    assert "AIFF header declares 1 frames, the file holds 260000: read them all" in result.stderr
    assert [event_key(e) for e in read_events(log)] == expected


# -- signals during start-up ------------------------------------------------------------------
@pytest.mark.parametrize(
    "signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 0)], ids=["SIGINT", "SIGTERM"]
)
@pytest.mark.parametrize("delay", [0.0, 0.15])
def test_a_signal_during_start_up_exits_in_one_line(tmp_path, tiny_model, recording, signum,
                                                     status, delay):  # fmt: skip
    """A timer in the daemon's own process sends it the signal while it imports onnxruntime and
    loads the model: before, SIGINT was a KeyboardInterrupt traceback or silent, SIGTERM a death
    by signal with no line at all."""
    code = (
        "import os, threading; from detector.cli import main; "
        f"threading.Timer({delay}, os.kill, (os.getpid(), {int(signum)})).start(); "
        "main(prog_name='whale-listen')"
    )
    args = replay_args(recording, tiny_model, tmp_path / "e.jsonl")
    proc = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
        timeout=60, cwd=tmp_path,
    )  # fmt: skip
    assert "Traceback" not in proc.stderr
    assert proc.returncode == status, proc.stderr
    assert (
        proc.stderr == f"whale-listen: stopped by {signal.Signals(signum).name} during start-up\n"
    )


# -- sockets ---------------------------------------------------------------------------------
def test_an_ipc_endpoint_a_live_process_holds_is_refused(tmp_path, tiny_model, recording):
    endpoint = f"ipc://{tmp_path}/taken.sock"
    context = zmq.Context()
    taken = context.socket(zmq.PUB)
    taken.bind(endpoint)
    try:
        args = replay_args(recording, tiny_model, tmp_path / "e.jsonl", "--publish", endpoint)
        result = invoke(*args)
        assert result.exit_code == 2
        assert_one_error(result.stderr, endpoint, "in use")
        assert stat.S_ISSOCK(os.stat(tmp_path / "taken.sock").st_mode)  # not stolen
    finally:
        taken.close(linger=0)
        context.term()


def test_a_stale_ipc_socket_file_is_reused(tmp_path, tiny_model, recording):
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as dead:  # bound, never listened: a crashed daemon's
        dead.bind(str(path))
    args = replay_args(recording, tiny_model, tmp_path / "e.jsonl", "--publish", f"ipc://{path}")
    result = invoke(*args)
    assert result.exit_code == 0, result.stderr


HUGE_SUBSCRIBER = """
import sys, time, zmq
sock = zmq.Context().socket(zmq.SUB)
sock.connect(sys.argv[1])
sock.setsockopt(zmq.SUBSCRIBE, b"u" * (10 << 20))
print("subscribed", flush=True)
time.sleep(60)
"""  # its own process: libzmq crashes in term() on a socket its peer keeps dropping


def test_a_huge_subscription_drops_its_client_not_the_memory():
    """Before: a 10 MiB topic was taken (and the daemon grew by 550 MB for one client)."""
    publisher = Publisher(["tcp://127.0.0.1:*"])
    context = zmq.Context()
    fine = context.socket(zmq.SUB)
    huge = subprocess.Popen(
        [sys.executable, "-c", HUGE_SUBSCRIBER, publisher.endpoints[0]],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert huge.stdout.readline() == "subscribed\n"
        fine.connect(publisher.endpoints[0])
        fine.setsockopt(zmq.SUBSCRIBE, b"upcall")
        assert publisher.wait_subscribers(1, timeout=10) == 1
        publisher.wait_subscribers(2, timeout=2)  # the huge one has had time to arrive
        assert publisher.subscriptions == 1
        publisher.send("upcall", {"seq": 1})
        assert fine.poll(5000) and json.loads(fine.recv_multipart()[1]) == {"seq": 1}
    finally:
        huge.kill()
        huge.wait()
        fine.close(linger=0)
        context.term()
        publisher.close(linger_ms=0)


# -- file permissions ------------------------------------------------------------------------
def test_events_and_clips_are_not_world_readable(tmp_path, tiny_model, recording):
    pytest.importorskip("matplotlib", reason="clips draw their PNG with matplotlib")
    old = os.umask(0o022)  # a typical login umask: before, the log was 0644, clips 0644/0755
    try:
        log, clips = tmp_path / "e.jsonl", tmp_path / "clips"
        result = invoke(*replay_args(recording, tiny_model, log), "--clips", clips)
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.stderr
    assert read_events(log), "no event: nothing to check the clips of"
    assert stat.S_IMODE(log.stat().st_mode) == 0o640
    assert stat.S_IMODE(clips.stat().st_mode) == 0o750
    made = list(clips.iterdir())
    assert made and {stat.S_IMODE(p.stat().st_mode) for p in made} == {0o640}
