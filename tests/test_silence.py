"""Digital silence (an unplugged hydrophone sends exact zeros) is told apart from a quiet sea."""

import numpy as np
import pytest

from detector.silence import SILENT_PEAK, Silence, SilenceWatch

SR = 2000


def noise(n: int, level: float = 1e-3) -> np.ndarray:
    return (np.random.default_rng(n).standard_normal(n) * level + 2 * SILENT_PEAK).astype(
        np.float32
    )


def zeros(n: int) -> np.ndarray:
    return np.zeros(n, dtype=np.float32)


def reports_of(audio: np.ndarray, block: int, warn_after_s: float = 1) -> list[Silence]:
    watch = SilenceWatch(warn_after_s=warn_after_s, sample_rate=SR)
    return [r for i in range(0, len(audio), block) for r in watch.push(audio[i : i + block])]


def test_a_quiet_sea_is_not_silence():
    watch = SilenceWatch(warn_after_s=1, sample_rate=SR)
    one_lsb = np.full(10 * SR, 2.0**-15, dtype=np.float32)  # the faintest a 16-bit card can send
    assert watch.push(one_lsb) == []
    assert watch.heard and watch.run == 0


@pytest.mark.parametrize("block", [1, 7, 300, 4000, 65536])
def test_reports_do_not_depend_on_block_size(block):
    audio = np.concatenate(
        [noise(500), zeros(3000), noise(100), zeros(1999), noise(10), zeros(2000), noise(5)]
    )
    assert reports_of(audio, block) == [
        Silence(500, SR, ended=False),
        Silence(500, 3000, ended=True),
        Silence(5609, SR, ended=False),  # exactly 1 s is enough; 1999 samples were not
        Silence(5609, 2000, ended=True),
    ]


def test_silence_still_going_is_reported_once_and_counted():
    watch = SilenceWatch(warn_after_s=1, sample_rate=SR)
    watch.push(noise(500))
    got = [watch.push(zeros(300)) for _ in range(10)]
    assert [len(r) for r in got] == [0] * 6 + [1] + [0] * 3
    assert got[6] == [Silence(500, SR, ended=False)]
    assert watch.run_s == 1.5 and watch.warned


def test_silent_from_the_start_has_heard_nothing():
    watch = SilenceWatch(warn_after_s=60, sample_rate=SR)
    watch.push(zeros(SR))
    watch.push(np.full(SR, SILENT_PEAK / 2, dtype=np.float32))
    assert not watch.heard
    watch.push(np.full(1, SILENT_PEAK, dtype=np.float32))
    assert watch.heard
