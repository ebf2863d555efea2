import numpy as np
import pytest

from detector.constants import WINDOW_SAMPLES
from detector.windows import Windower, frame_windows, window_starts


def _stream(audio: np.ndarray, windower: Windower, block: int) -> tuple[np.ndarray, np.ndarray]:
    starts, windows = [], []
    for i in range(0, len(audio), block):
        s, w = windower.push(audio[i : i + block])
        assert w.shape == (len(s), windower.window) and w.dtype == np.float32
        assert s.dtype == np.int64
        starts.append(s)
        windows.append(w)
    return np.concatenate(starts), np.concatenate(windows)


@pytest.mark.parametrize("block", [1, 7, 4000, 65536])
def test_streaming_equals_whole_array_for_any_block_size(block):
    audio = np.random.default_rng(2).uniform(-1, 1, 23_457).astype(np.float32)
    expected_starts, expected = frame_windows(audio, window_hop=1000)
    windower = Windower(window_hop=1000)
    starts, windows = _stream(audio, windower, block)
    assert windower.samples_seen == len(audio)
    np.testing.assert_array_equal(starts, expected_starts)
    np.testing.assert_array_equal(windows, expected)


@pytest.mark.parametrize("hop,window", [(1, 5), (3, 5), (5, 5), (7, 5), (13, 4)])
@pytest.mark.parametrize("block", [1, 2, 6, 11, 1000])
def test_streaming_equals_whole_array_for_odd_hops(hop, window, block):
    audio = np.arange(97, dtype=np.float32)
    expected_starts, expected = frame_windows(audio, hop, window)
    starts, windows = _stream(audio, Windower(hop, window), block)
    np.testing.assert_array_equal(starts, expected_starts)
    np.testing.assert_array_equal(windows, expected)


def test_window_i_starts_at_i_times_hop_and_holds_those_samples():
    audio = np.arange(10_000, dtype=np.float32)
    starts, windows = frame_windows(audio, window_hop=1000)
    np.testing.assert_array_equal(starts, [0, 1000, 2000, 3000, 4000, 5000, 6000])
    assert windows.shape == (7, WINDOW_SAMPLES)
    np.testing.assert_array_equal(windows[3], audio[3000:7000])


def test_window_starts_counts():
    assert len(window_starts(3999, 1000)) == 0
    np.testing.assert_array_equal(window_starts(4000, 1000), [0])
    np.testing.assert_array_equal(window_starts(5999, 1000), [0, 1000])
    np.testing.assert_array_equal(window_starts(6000, 1000), [0, 1000, 2000])


def test_short_stream_yields_nothing():
    starts, windows = frame_windows(np.zeros(10), window_hop=1000)
    assert starts.shape == (0,) and windows.shape == (0, WINDOW_SAMPLES)
    windower = Windower(window_hop=1000)
    s, w = windower.push(np.zeros(3999))
    assert s.shape == (0,) and w.shape == (0, WINDOW_SAMPLES)
    s, w = windower.push(np.zeros(1))
    np.testing.assert_array_equal(s, [0])


def test_windower_keeps_less_than_one_window():
    windower = Windower(window_hop=1000)
    windower.push(np.zeros(100_000, dtype=np.float32))
    assert windower._tail.nbytes == WINDOW_SAMPLES * 4
    assert windower._tail_len < WINDOW_SAMPLES


def test_emitted_windows_do_not_alias_later_input():
    windower = Windower(window_hop=2, window=4)
    block = np.arange(6, dtype=np.float32)
    _, windows = windower.push(block)
    block[:] = -1
    windower.push(np.full(10, 9, dtype=np.float32))
    np.testing.assert_array_equal(windows, [[0, 1, 2, 3], [2, 3, 4, 5]])


def test_invalid_hop_rejected():
    with pytest.raises(ValueError):
        Windower(window_hop=0)
