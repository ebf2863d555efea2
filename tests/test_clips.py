import shutil
from collections import namedtuple

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from detector import clips
from detector.clips import ClipWriter, png_bytes, spectrogram_image, write_png
from detector.errors import WhaleError

RATE = 2000
Usage = namedtuple("Usage", "total used free")


def _signal(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.5 * rng.uniform(-1, 1, int(seconds * RATE))).astype(np.float32)


def _feed(writer: ClipWriter, x: np.ndarray, block: int = 1000) -> None:
    for i in range(0, len(x), block):
        writer.feed(x[i : i + block])


def test_clip_holds_the_event_plus_one_second_each_side(tmp_path):
    x = _signal(60)
    writer = ClipWriter(tmp_path / "clips")
    _feed(writer, x, block=777)  # blocks that do not divide the history
    event = {"id": "0b7f6c1e-2d7a-4f7e-9a55-1f3c1d0b9e21"}
    path = writer.save(event, start_sample=100_000, end_sample=103_000)  # closed ~8 s later
    assert path == tmp_path / "clips" / f"{event['id']}.flac"
    audio, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    assert sf.info(str(path)).subtype == "PCM_16"
    np.testing.assert_allclose(audio, x[98_000:105_000], atol=1 / 32767)
    image = np.asarray(Image.open(path.with_suffix(".png")))
    assert image.shape == (65 * clips.ROW_REPEAT, (7000 - 256) // 32 + 1, 3)
    assert writer.saved == 1 and writer.errors == 0
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name, path.stem + ".png"]


def test_clip_is_cut_to_what_the_history_still_holds(tmp_path):
    writer = ClipWriter(tmp_path, history_seconds=5)
    x = _signal(12)
    _feed(writer, x)
    assert writer.samples_fed == 24_000
    path = writer.save({"id": "a"}, start_sample=14_000, end_sample=20_000)
    audio, _ = sf.read(path, dtype="float32")
    np.testing.assert_allclose(audio, x[14_000:22_000], atol=1 / 32767)  # 12_000 fell out
    assert writer.save({"id": "b"}, start_sample=2000, end_sample=6000) is None
    assert writer.errors == 1 and "no longer" in writer.last_error


def test_feed_block_longer_than_history(tmp_path):
    writer = ClipWriter(tmp_path, history_seconds=1)
    x = _signal(3)
    writer.feed(x)
    np.testing.assert_array_equal(writer.audio(0, 6000), x[4000:])


def test_low_disk_skips_and_reports(tmp_path, monkeypatch):
    writer = ClipWriter(tmp_path, min_free_mb=100)
    writer.feed(_signal(10))
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**12, 10**12, 50 * 1024 * 1024))
    assert writer.save({"id": "e1"}, 4000, 6000) is None
    assert writer.disk_low and writer.skipped_low_disk == 1
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(shutil, "disk_usage", lambda _: Usage(10**12, 0, 200 * 1024 * 1024))
    assert writer.save({"id": "e2"}, 4000, 6000) is not None
    assert not writer.disk_low and writer.stats()["skipped_low_disk"] == 1


def test_write_error_is_counted_not_raised(tmp_path, monkeypatch):
    writer = ClipWriter(tmp_path)
    writer.feed(_signal(10))

    def refuse(*args, **kwargs):
        raise sf.LibsndfileError(0, "simulated write failure ")

    monkeypatch.setattr(sf, "write", refuse)
    assert writer.save({"id": "e1"}, 4000, 6000) is None
    assert writer.errors == 1 and "simulated write failure" in writer.last_error
    assert list(tmp_path.iterdir()) == []  # no half-written clip left behind


def test_directory_gone_after_start_is_counted(tmp_path):
    writer = ClipWriter(tmp_path / "clips")
    writer.feed(_signal(10))
    (tmp_path / "clips").rmdir()
    assert writer.save({"id": "e1"}, 4000, 6000) is None
    assert writer.errors == 1


def test_unsafe_event_id_is_refused(tmp_path):
    writer = ClipWriter(tmp_path / "clips")
    writer.feed(_signal(10))
    assert writer.save({"id": "../escape"}, 4000, 6000) is None
    assert writer.errors == 1
    assert not (tmp_path / "escape.flac").exists()


def test_uncreatable_directory_is_a_whale_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(WhaleError, match="clips directory"):
        ClipWriter(tmp_path / "file" / "clips")


def test_spectrogram_puts_a_tone_at_its_frequency_from_the_bottom():
    t = np.arange(4 * RATE) / RATE
    image = spectrogram_image(np.sin(2 * np.pi * 125.0 * t))
    brightness = image.astype(int).sum(axis=2).mean(axis=1)
    row = int(np.argmax(brightness))
    bin_from_bottom = (image.shape[0] - 1 - row) // clips.ROW_REPEAT
    assert bin_from_bottom == 16  # 125 Hz / (2000 Hz / 256)


@pytest.mark.parametrize("shape", [(7, 5), (7, 5, 3)])
def test_write_png_round_trip(tmp_path, shape):
    image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    write_png(tmp_path / "x.png", image)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "x.png")), image)


def test_png_rejects_bad_images():
    with pytest.raises(ValueError):
        png_bytes(np.zeros((4, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        png_bytes(np.zeros((4, 4, 4), dtype=np.uint8))


def test_feed_with_start_sample_holds_a_gap_as_silence(tmp_path):
    writer = ClipWriter(tmp_path, history_seconds=10)
    x = _signal(6)
    writer.feed(x[:4000], start_sample=0)
    writer.feed(x[6000:], start_sample=6000)  # 4000..6000 lost upstream
    writer.feed(x[11_000:], start_sample=11_000)  # overlaps what is held: only the new part
    assert writer.samples_fed == 12_000
    held = writer.audio(0, 12_000)
    np.testing.assert_array_equal(held[:4000], x[:4000])
    np.testing.assert_array_equal(held[4000:6000], 0)
    np.testing.assert_array_equal(held[6000:], x[6000:])
