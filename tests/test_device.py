"""Live input: device lookup on a fake device list, capture through PortAudio from ALSA `file` PCMs.

The ALSA tests run sounddevice in a subprocess whose HOME holds an .asoundrc (see tests/alsa.py):
PortAudio reads the ALSA configuration only when it starts.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from detector import device
from detector.audio import resample
from detector.device import (
    DeviceSource,
    choose_samplerate,
    format_device_list,
    list_input_devices,
    resolve_device,
)
from detector.errors import WhaleError
from detector.ring import RingBuffer
from tests.alsa import (
    FifoFeeder,
    make_alsa_home,
    make_fifo,
    portaudio_problem,
    read_blocks,
    run_python,
    to_int16,
    write_raw_int16,
)

# ---------------------------------------------------------------- fake PortAudio device list

FAKE_DEVICES = [
    {"name": "HDA Intel PCH: ALC892 Analog (hw:0,0)", "in": 2, "out": 2, "rate": 44100.0},
    {"name": "HDA Intel PCH: HDMI 0 (hw:0,3)", "in": 0, "out": 8, "rate": 44100.0},
    {"name": "USB Hydrophone: Audio (hw:1,0)", "in": 1, "out": 0, "rate": 48000.0},
    {"name": "USB Hydrophone: Audio #2 (hw:1,2)", "in": 1, "out": 0, "rate": 48000.0},
    {"name": "hydrophone", "in": 1, "out": 1, "rate": 44100.0},
    {"name": "hydrophone backup", "in": 1, "out": 1, "rate": 44100.0},
    {"name": "USB Recorder (hw:2,0)", "in": 2, "out": 0, "rate": 96000.0},
    {"name": "USB Recorder (hw:2,0)", "in": 2, "out": 0, "rate": 96000.0},
]


class FakePortAudioError(Exception):
    pass


def fake_sounddevice(accepts_2k: bool = True, open_error: str | None = None) -> SimpleNamespace:
    devices = [
        {
            "name": d["name"],
            "index": i,
            "hostapi": 0,
            "max_input_channels": d["in"],
            "max_output_channels": d["out"],
            "default_samplerate": d["rate"],
        }
        for i, d in enumerate(FAKE_DEVICES)
    ]

    def query_devices(device: int | None = None, kind: str | None = None):
        return devices if device is None else devices[device]

    def check_input_settings(device, samplerate, channels, dtype):
        if samplerate == 2000 and not accepts_2k:
            raise FakePortAudioError("Invalid sample rate [PaErrorCode -9997]")

    class InputStream:
        def __init__(self, **kwargs):
            if open_error:
                raise FakePortAudioError(open_error)

    return SimpleNamespace(
        query_devices=query_devices,
        query_hostapis=lambda: [{"name": "ALSA"}],
        check_input_settings=check_input_settings,
        InputStream=InputStream,
        PortAudioError=FakePortAudioError,
        CallbackAbort=RuntimeError,
    )


@pytest.fixture
def fake_sd(monkeypatch):
    fake = fake_sounddevice()
    monkeypatch.setattr(device, "_sounddevice", lambda: fake)
    return fake


def test_list_input_devices_keeps_inputs_only(fake_sd):
    inputs = list_input_devices()
    assert [d["index"] for d in inputs] == [0, 2, 3, 4, 5, 6, 7]
    assert inputs[1] == {
        "index": 2,
        "name": "USB Hydrophone: Audio (hw:1,0)",
        "max_input_channels": 1,
        "default_samplerate": 48000.0,
        "hostapi": "ALSA",
    }
    table = format_device_list()
    assert "USB Hydrophone: Audio (hw:1,0)" in table
    assert "HDMI" not in table


@pytest.mark.parametrize(
    "spec, index",
    [
        (2, 2),
        ("3", 3),
        ("hw:1", 2),
        ("hw:1,0", 2),
        ("hw:1,2", 3),
        ("plughw:1", 2),
        ("plughw:0,0", 0),
        ("hydrophone", 4),  # the exact name wins over "hydrophone backup"
        ("BACKUP", 5),
        ("alc892", 0),
    ],
)
def test_resolve_device(fake_sd, spec, index):
    assert resolve_device(spec) == index


def test_unknown_device_lists_inputs_on_one_line(fake_sd):
    with pytest.raises(WhaleError) as info:
        resolve_device("foo")
    message = str(info.value)
    assert message.startswith("unknown input device 'foo'; inputs: 0 'HDA Intel PCH: ALC892")
    assert "4 'hydrophone', 5 'hydrophone backup'" in message
    assert "HDMI" not in message and "\n" not in message


@pytest.mark.parametrize("spec", ["usb", "hw:2", "USB Recorder (hw:2,0)"])
def test_ambiguous_device_lists_matches(fake_sd, spec):
    with pytest.raises(WhaleError, match=r"ambiguous input device .*; matches: \d+ '"):
        resolve_device(spec)


@pytest.mark.parametrize("spec", [1, "1", 99, "hw:7"])
def test_output_only_or_missing_device_is_rejected(fake_sd, spec):
    with pytest.raises(WhaleError, match="inputs: 0 'HDA"):
        resolve_device(spec)


def test_choose_samplerate_prefers_2k_else_device_default(monkeypatch):
    monkeypatch.setattr(device, "_sounddevice", lambda: fake_sounddevice(accepts_2k=True))
    assert choose_samplerate(2) == 2000
    monkeypatch.setattr(device, "_sounddevice", lambda: fake_sounddevice(accepts_2k=False))
    rate = choose_samplerate(2)
    assert rate == 48000 and isinstance(rate, int)


def test_open_failure_names_the_device(monkeypatch):
    fake = fake_sounddevice(open_error="Device unavailable [PaErrorCode -9985]")
    monkeypatch.setattr(device, "_sounddevice", lambda: fake)
    with pytest.raises(WhaleError, match=r"'USB Hydrophone: Audio \(hw:1,0\)'.*Device unavailable"):
        DeviceSource("hw:1", RingBuffer(100))


def test_channel_beyond_the_device_is_rejected(fake_sd):
    with pytest.raises(WhaleError, match="has 1 channel.*channel 1 does not exist"):
        DeviceSource("hw:1", RingBuffer(100), channel=1)


def test_missing_portaudio_is_a_whale_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import now raises ImportError
    with pytest.raises(WhaleError, match="PortAudio"):
        list_input_devices()


# ---------------------------------------------------------------- read_blocks (consumer side)


def stub_source(samplerate: int, capacity: int = 100_000) -> SimpleNamespace:
    return SimpleNamespace(
        ring=RingBuffer(capacity), samplerate=samplerate, name="stub card", error=None
    )


def test_read_blocks_passes_2k_through_until_closed():
    source = stub_source(2000)
    x = np.random.default_rng(0).uniform(-1, 1, 2500).astype(np.float32)
    source.ring.write(x)
    source.ring.close()
    blocks = list(read_blocks(source, timeout=1, block_samples=1000))
    assert [len(b) for b in blocks] == [1000, 1000, 500]
    np.testing.assert_array_equal(np.concatenate(blocks), x)


def test_read_blocks_resamples_other_rates_like_the_file_path():
    source = stub_source(8000)
    t = np.arange(8000 * 3) / 8000
    x = (0.5 * np.sin(2 * np.pi * 150 * t)).astype(np.float32)
    for piece in np.array_split(x, 7):
        source.ring.write(piece)
    source.ring.close()
    got = np.concatenate(list(read_blocks(source, timeout=1)))
    np.testing.assert_allclose(got, resample(x, 8000), atol=1e-6)


def test_read_blocks_raises_the_stream_error_after_draining():
    source = stub_source(2000)
    source.ring.write(np.ones(300, dtype=np.float32))
    source.error = OSError("USB device unplugged")
    source.ring.close()
    blocks = read_blocks(source, timeout=1)
    assert len(next(blocks)) == 300
    with pytest.raises(WhaleError, match="'stub card' failed: USB device unplugged"):
        next(blocks)


def test_read_blocks_reports_a_silent_device():
    source = stub_source(2000)
    with pytest.raises(WhaleError, match="'stub card' delivered no audio for 0.05 s"):
        next(read_blocks(source, timeout=0.05))


# ---------------------------------------------------------------- through PortAudio (ALSA file PCM)

CAPTURE = """
import json, sys
import numpy as np
from detector.device import DeviceSource
from tests.alsa import read_blocks
from detector.ring import RingBuffer

want, channel, blocksize, capacity, out = sys.argv[1:6]
ring = RingBuffer(int(capacity))
source = DeviceSource("hydrophone", ring, channel=int(channel), blocksize=int(blocksize))
got, n = [], 0
with source:
    for block in read_blocks(source, timeout=20):
        got.append(block)
        n += len(block)
        if n >= int(want):
            break
np.save(out, np.concatenate(got)[: int(want)])
error = None if source.error is None else str(source.error)
print(json.dumps({"samplerate": source.samplerate, "name": source.name, "error": error}))
"""


def capture(env, tmp_path, want, channel=0, blocksize=0, capacity=1_000_000):
    """Capture `want` 2 kHz samples from device `hydrophone` in a subprocess."""
    out = tmp_path / "captured.npy"
    result = run_python(
        CAPTURE, env, str(want), str(channel), str(blocksize), str(capacity), str(out)
    )
    assert result.returncode == 0, result.stderr
    return np.load(out), json.loads(result.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def portaudio():
    problem = portaudio_problem()
    if problem:
        pytest.skip(problem)


def sine(n: int, rate: int = 2000, freq: float = 97.0, amplitude: float = 0.6) -> np.ndarray:
    return amplitude * np.sin(2 * np.pi * freq * np.arange(n) / rate)


def test_alsa_device_is_listed_and_resolved(portaudio, tmp_path):
    env = make_alsa_home(tmp_path, write_raw_int16(tmp_path / "in.raw", sine(100)))
    code = """
import json
from detector.device import list_input_devices, resolve_device, choose_samplerate
from detector.errors import WhaleError
index = resolve_device("hydrophone")
try:
    resolve_device("foo")
except WhaleError as exc:
    error = str(exc)
print(json.dumps({"inputs": list_input_devices(), "index": index,
                  "upper": resolve_device("HYDRO"), "rate": choose_samplerate(index),
                  "error": error}))
"""
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    named = [d for d in report["inputs"] if d["name"] == "hydrophone"]
    assert len(named) == 1 and named[0]["index"] == report["index"] == report["upper"]
    assert report["rate"] == 2000  # the file PCM takes any rate: no resampling needed
    assert report["error"].startswith("unknown input device 'foo'; inputs: ")
    assert f"{report['index']} 'hydrophone'" in report["error"]


def test_capture_from_raw_file_delivers_the_file_at_2k(portaudio, tmp_path):
    signal = sine(4000)
    env = make_alsa_home(tmp_path, write_raw_int16(tmp_path / "in.raw", signal))
    got, info = capture(env, tmp_path, want=len(signal))
    assert info == {"samplerate": 2000, "name": "hydrophone", "error": None}
    # from the very first sample: the device adds no preroll or leading zeros
    np.testing.assert_array_equal(got, to_int16(signal) / np.float32(32768))


def test_capture_takes_the_requested_channel(portaudio, tmp_path):
    left, right = sine(3000, freq=50), sine(3000, freq=130, amplitude=0.3)
    stereo = np.stack([left, right], axis=1)
    env = make_alsa_home(tmp_path, write_raw_int16(tmp_path / "in.raw", stereo))
    got, _ = capture(env, tmp_path, want=3000, channel=1)
    np.testing.assert_array_equal(got, to_int16(right) / np.float32(32768))


def test_device_without_2k_is_resampled(portaudio, tmp_path):
    rate = 8000
    signal = sine(rate * 2, rate=rate, freq=180)
    env = make_alsa_home(tmp_path, write_raw_int16(tmp_path / "in.raw", signal), rate=rate)
    expected = resample(to_int16(signal) / 32768.0, rate)
    # outputs near the end also see what the device sends after EOF (stale data): skip them
    usable = len(expected) - 100
    got, info = capture(env, tmp_path, want=usable)
    assert info["samplerate"] == rate
    np.testing.assert_allclose(got, expected[:usable], atol=1e-6)


def test_fifo_paced_capture_gets_the_signal_then_waits(portaudio, tmp_path):
    n = 2000  # one second at real time
    ramp = (np.arange(n) % 4000 - 2000) / 32768.0  # every value distinct: order is checked
    fifo = make_fifo(tmp_path / "hydrophone.fifo")
    env = make_alsa_home(tmp_path, fifo)
    with FifoFeeder(fifo, ramp, chunk_frames=200) as feeder:
        got, info = capture(env, tmp_path, want=n + 600, blocksize=100)
    assert feeder.finished.is_set()
    assert info["samplerate"] == 2000
    np.testing.assert_array_equal(got[:n], to_int16(ramp) / np.float32(32768))
    # after the signal the feeder writes silence: no stale data, no repeats
    np.testing.assert_array_equal(got[n:], np.zeros(600, dtype=np.float32))
