import shutil
from collections import namedtuple

import numpy as np
import pytest
import soundfile as sf
from PIL import Image

from detector import clips
from detector.clips import (
    BACKGROUND,
    FREQ_TICKS_HZ,
    HEIGHT,
    INK,
    LEFT,
    PLOT_H,
    PLOT_W,
    SPAN,
    TICK,
    TOP,
    WIDTH,
    ClipWriter,
    event_title,
    plot_col,
    plot_row,
    png_bytes,
    review_image,
    spectrogram_image,
    spectrogram_levels,
    write_png,
)
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
    event = {"id": "0b7f6c1e-2d7a-4f7e-9a55-1f3c1d0b9e21", "score": 0.99, "threshold": 0.9}
    path = writer.save(event, start_sample=100_000, end_sample=103_000)  # closed ~8 s later
    assert path == tmp_path / "clips" / f"{event['id']}.flac"
    audio, rate = sf.read(path, dtype="float32")
    assert rate == RATE
    assert sf.info(str(path)).subtype == "PCM_16"
    np.testing.assert_allclose(audio, x[98_000:105_000], atol=1 / 32767)
    image = np.asarray(Image.open(path.with_suffix(".png")))
    assert image.shape == (HEIGHT, WIDTH, 3) and WIDTH >= 640
    # the event (samples 100_000..103_000) starts 1 s into the 3.5-s clip: bracketed there
    c0, c1 = plot_col(1.0, 3.5), plot_col(2.5, 3.5)
    assert (image[TOP - 5, c0 : c1 + 1] == SPAN).all()
    assert (image[TOP - 5, c0 - 3] == BACKGROUND).all() and (image[TOP - 5, c1 + 3] != SPAN).any()
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
    x = 0.01 * np.random.default_rng(0).standard_normal(len(t))
    x[RATE : 2 * RATE] += np.sin(2 * np.pi * 125.0 * t[RATE : 2 * RATE])  # a 1-s tone burst
    image = spectrogram_image(x)
    assert image.shape == (PLOT_H, PLOT_W, 3)
    brightness = image.astype(int).sum(axis=2).mean(axis=1)
    hz = clips.MAX_FREQ_HZ * (1 - int(np.argmax(brightness)) / (PLOT_H - 1))
    assert abs(hz - 125.0) < 2000 / 256  # within a bin; 0 Hz is the bottom row


def _faint_call_over_rumble(seed: int = 3) -> tuple[np.ndarray, int, int]:
    from train import synth  # numpy and scipy only

    rng = np.random.default_rng(seed)
    t = np.arange(6 * RATE) / RATE
    x = 0.05 * synth.noise(rng, len(t)) + 0.3 * np.sin(2 * np.pi * 12.0 * t)  # 12 Hz rumble
    call = synth.upcall(rng)
    at = 2 * RATE
    x[at : at + len(call)] += 0.03 * call  # about -20 dB under the rumble
    return x, at, at + len(call)


def test_a_faint_call_shows_and_the_rumble_under_30_hz_does_not_saturate():
    x, start, end = _faint_call_over_rumble()
    levels = spectrogram_levels(x)  # [bins, frames], 7.8 Hz bins, 8-ms frames
    frames = slice((start - 256) // clips.FRAME_HOP, end // clips.FRAME_HOP)
    call_band = levels[6:33, frames]  # 50-250 Hz while the call lasts
    assert call_band.max() == 1.0
    assert np.percentile(call_band, 95) > 2 * np.percentile(levels[6:33], 50) + 0.3
    assert levels[:4].mean() < 0.4  # the band under 30 Hz is scaled to its own level


def test_review_png_has_axis_ticks_labels_title_and_span():
    x, start, end = _faint_call_over_rumble()
    span = (1.0, 2.0)  # event from 1 s to 2 s into the 6-s clip
    image = review_image(x, span=span, title=("UP-CALL  SCORE 0.9731", "EST  2009-03-28"))
    assert image.shape == (HEIGHT, WIDTH, 3) and WIDTH >= 640
    ink = (image == INK).all(axis=2)
    # frequency ticks: a mark left of the axis at each tick, blank halfway between them
    for hz in FREQ_TICKS_HZ:
        row = plot_row(hz)
        assert ink[row, LEFT - 1 - TICK : LEFT - 1].all(), hz
        assert ink[row - 4 : row + 5, : LEFT - 1 - TICK].any(), f"no label at {hz} Hz"
    for low, high in zip(FREQ_TICKS_HZ, FREQ_TICKS_HZ[1:], strict=False):
        assert not ink[plot_row((low + high) / 2), LEFT - 1 - TICK : LEFT - 1].any()
    assert plot_row(0) == TOP + PLOT_H - 1 and plot_row(500) == TOP
    # time ticks every 0.5 s from -1 s to 5 s after the event start, each with a label below
    bottom = TOP + PLOT_H
    for k in range(-2, 11):
        col = plot_col(1.0 + 0.5 * k, 6.0)
        assert ink[bottom + 1 : bottom + 1 + TICK, col].all(), k
        assert ink[bottom + TICK + 4 : bottom + TICK + 4 + 7, col - 8 : col + 9].any(), k
        assert not ink[bottom + 1 : bottom + 1 + TICK, col + 5 : col + 10].any()
    # the span: bracket above the plot from start to end, dashed lines through the plot
    c0, c1 = plot_col(1.0, 6.0), plot_col(2.0, 6.0)
    spanned = (image[TOP - 5] == SPAN).all(axis=1)
    assert spanned[c0 : c1 + 1].all() and spanned.sum() == c1 - c0 + 1
    assert (image[TOP : TOP + 4, c0] == SPAN).all() and (image[TOP + 4 : TOP + 8, c0] != SPAN).any()
    assert ink[4:44, 8:200].sum() > 200  # the title lines
    # the plot is the spectrogram
    plot = image[TOP : TOP + PLOT_H, LEFT : LEFT + PLOT_W]
    clean = spectrogram_image(x)
    off_lines = np.ones(PLOT_W, dtype=bool)
    off_lines[[c0 - LEFT, c1 - LEFT]] = False
    np.testing.assert_array_equal(plot[:, off_lines], clean[:, off_lines])


def test_event_title_says_what_fired_how_sure_where_and_when():
    event = {
        "score": 0.99934,
        "threshold": 0.998,
        "station": "EST-07",
        "start": "2009-03-28T00:19:55.500Z",
    }
    assert event_title(event) == (
        "UP-CALL  SCORE 0.9993  THRESHOLD 0.998",
        "EST-07  2009-03-28 00:19:55.500Z",
    )
    assert event_title({}) == ("UP-CALL", "")


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


def test_every_event_of_a_fast_replay_gets_its_clip(tmp_path, real_model):
    """A replay scores up to batch x hop (32 s) of audio per read, all fed to the history
    first: a call that ends as a read ends closes its event only in the next read, by when a
    30-s history had lost it (3 of 23 clips on a DCLDE file)."""
    from detector import cli
    from detector.eventlog import read_events
    from detector.settings import Settings
    from train import synth

    rng = np.random.default_rng(11)
    audio = synth.noise(rng, 140 * clips.SAMPLE_RATE)
    for read_end_s in (32, 64, 96, 128):
        call = synth.upcall(rng)
        at = int((read_end_s - 0.1) * clips.SAMPLE_RATE) - len(call)
        audio[at : at + len(call)] += 3 * call
    recording = tmp_path / "early_in_each_read.wav"
    sf.write(recording, 0.3 * audio / np.abs(audio).max(), clips.SAMPLE_RATE, subtype="PCM_16")
    log = tmp_path / "events.jsonl"
    settings = Settings(replay=recording, model=real_model, events_log=log, clips=tmp_path / "c",
                        publish=("tcp://127.0.0.1:*",), linger=0.0)  # fmt: skip
    assert cli.run(settings) == 0
    events = read_events(log)
    assert len(events) >= 3
    assert all("clip" in e for e in events), [
        e["offset_start_s"] for e in events if "clip" not in e
    ]
    for event in events:  # the whole event and its margins, not what was left of it
        seconds = sf.info(event["clip"]).duration
        assert seconds == pytest.approx(
            event["offset_end_s"] - event["offset_start_s"] + 2, abs=0.01
        )
