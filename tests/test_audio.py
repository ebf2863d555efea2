"""Resampling exactness and file reading, including every way a file can be unusable."""

import io
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from detector.audio import (
    StreamingResampler,
    audio_info,
    iter_file_blocks,
    read_audio,
    resample,
)
from detector.constants import SAMPLE_RATE
from detector.errors import WhaleError


def sine(freq: float, rate: int, seconds: float, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amplitude * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64))))


@pytest.mark.parametrize(
    ("block", "n_in"), [(1, 3000), (7, 20000), (4000, 100000), (65536, 200000)]
)
@pytest.mark.parametrize("in_rate", [44100, 48000, 1000, 96001, 4_000_037])
def test_blockwise_equals_one_shot(block: int, n_in: int, in_rate: int) -> None:
    x = np.random.default_rng(block).standard_normal(n_in).astype(np.float32)
    one_shot = resample(x, in_rate)
    resampler = StreamingResampler(in_rate)
    pieces = [resampler.process(x[i : i + block]) for i in range(0, n_in, block)]
    streamed = np.concatenate(pieces + [resampler.flush()])
    assert abs(len(one_shot) - n_in * SAMPLE_RATE / in_rate) < 2
    if in_rate in (44100, 48000, 1000):  # exact ratios
        assert len(one_shot) == -(-n_in * SAMPLE_RATE // in_rate)
    assert streamed.shape == one_shot.shape
    np.testing.assert_allclose(streamed, one_shot, atol=1e-6)


def test_uneven_blocks_match_one_shot() -> None:
    x = np.random.default_rng(1).standard_normal(50000).astype(np.float32)
    resampler = StreamingResampler(44100)
    edges = [0, 1, 2, 9, 4000, 4001, 30000, 50000]
    pieces = [resampler.process(x[a:b]) for a, b in zip(edges, edges[1:], strict=False)]
    np.testing.assert_allclose(
        np.concatenate(pieces + [resampler.flush()]), resample(x, 44100), atol=1e-6
    )


def test_same_rate_is_passthrough() -> None:
    x = np.random.default_rng(2).standard_normal(1234).astype(np.float32)
    np.testing.assert_array_equal(resample(x, SAMPLE_RATE), x)


@pytest.mark.parametrize("in_rate", [44100, 48000])
def test_sine_keeps_amplitude_and_timing(in_rate: int) -> None:
    out = resample(sine(100, in_rate, 3.0), in_rate)
    direct = sine(100, SAMPLE_RATE, 3.0)
    assert len(out) == len(direct)
    inner = slice(200, -200)  # away from the zero-padded edges
    assert rms(out[inner]) == pytest.approx(rms(direct[inner]), rel=0.01)
    assert np.max(np.abs(out[inner] - direct[inner])) < 1e-3  # a 1-sample shift would be 0.16


def test_tone_above_nyquist_is_rejected() -> None:
    tone = sine(1500, 44100, 2.0)  # would alias to 500 Hz
    out = resample(tone, 44100)
    attenuation_db = 20 * np.log10(rms(out[200:-200]) / rms(tone))
    assert attenuation_db < -60


def chirp(rate: int, seconds: float) -> np.ndarray:
    """0.3 * a 60 -> 180 Hz linear sweep, sampled directly at `rate`."""
    t = np.arange(int(rate * seconds)) / rate
    return (0.3 * np.sin(2 * np.pi * (60 * t + 15 * t**2))).astype(np.float32)


@pytest.mark.parametrize(("ext", "fmt"), [("wav", "WAV"), ("aiff", "AIFF"), ("flac", "FLAC")])
def test_stereo_44k_file_reads_back_as_2k_mono(tmp_path: Path, ext: str, fmt: str) -> None:
    original = chirp(SAMPLE_RATE, 4.0)
    at_44k = chirp(44100, 4.0)
    other = np.random.default_rng(3).uniform(-0.5, 0.5, len(at_44k)).astype(np.float32)
    path = tmp_path / f"stereo.{ext}"
    sf.write(path, np.stack([at_44k, other], axis=1), 44100, format=fmt, subtype="PCM_16")
    blocks = list(iter_file_blocks(path, channel=0, block_frames=10000))
    assert len(blocks) > 2 and all(b.dtype == np.float32 and b.ndim == 1 for b in blocks)
    out = np.concatenate(blocks)
    assert len(out) == len(original)
    inner = slice(200, -200)
    assert np.max(np.abs(out[inner] - original[inner])) < 0.01
    np.testing.assert_array_equal(read_audio(path), out)
    info = audio_info(path)
    assert (info.samplerate, info.channels, info.frames) == (44100, 2, 4 * 44100)
    assert info.duration_s == pytest.approx(4.0)


@pytest.mark.parametrize(("ext", "fmt"), [("wav", "WAV"), ("aiff", "AIFF"), ("flac", "FLAC")])
def test_2k_file_reads_unchanged(tmp_path: Path, ext: str, fmt: str) -> None:
    x = np.round(sine(150, SAMPLE_RATE, 2.0) * 32767) / 32768
    path = tmp_path / f"clip.{ext}"
    sf.write(path, x, SAMPLE_RATE, format=fmt, subtype="PCM_16")
    np.testing.assert_allclose(read_audio(path), x, atol=1e-6)


def valid_wav(path: Path, frames: int = 8000) -> Path:
    sf.write(path, sine(100, SAMPLE_RATE, frames / SAMPLE_RATE), SAMPLE_RATE, subtype="PCM_16")
    return path


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nothing.wav"
    with pytest.raises(WhaleError, match="nothing.wav.*no such"):
        read_audio(path)
    with pytest.raises(WhaleError, match="nothing.wav"):
        audio_info(path)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "noise.wav"
    path.write_bytes(np.random.default_rng(4).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(WhaleError, match="noise.wav.*corrupt"):
        read_audio(path)


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros(0, dtype=np.float32), SAMPLE_RATE)
    with pytest.raises(WhaleError, match="empty.wav.*empty"):
        read_audio(path)


@pytest.mark.parametrize(("ext", "fmt"), [("wav", "WAV"), ("aiff", "AIFF")])
def test_truncated_file(tmp_path: Path, ext: str, fmt: str) -> None:
    path = tmp_path / f"cut.{ext}"
    sf.write(path, sine(100, SAMPLE_RATE, 4.0), SAMPLE_RATE, format=fmt, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WhaleError, match=f"cut.{ext}.*truncated"):
        read_audio(path)
    with pytest.raises(WhaleError, match="truncated"):
        audio_info(path)


def test_truncated_flac(tmp_path: Path) -> None:
    path = tmp_path / "cut.flac"
    noise = np.random.default_rng(5).uniform(-0.5, 0.5, 40000).astype(np.float32)
    sf.write(path, noise, SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WhaleError, match="cut.flac.*(truncated|corrupt)"):
        read_audio(path)


def test_rate_too_low_to_hold_up_calls(tmp_path: Path) -> None:
    path = tmp_path / "slow.wav"
    sf.write(path, sine(100, 500, 4.0), 500, subtype="PCM_16")
    with pytest.raises(WhaleError, match="slow.wav: sampled at 500 Hz.*800 Hz"):
        read_audio(path)
    with pytest.raises(WhaleError, match="slow.wav"):
        audio_info(path)
    ok = tmp_path / "archive_1k.wav"  # a 1 kHz archive still holds 30-400 Hz
    sf.write(ok, sine(100, 1000, 4.0), 1000, subtype="PCM_16")
    assert len(read_audio(ok)) == 4 * SAMPLE_RATE


def test_nan_samples(tmp_path: Path) -> None:
    x = sine(100, SAMPLE_RATE, 2.0)
    x[1234] = np.nan
    path = tmp_path / "nan.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    with pytest.raises(WhaleError, match="nan.wav.*NaN.*1234"):
        read_audio(path)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("block_frames", [16384, 1000])
def test_every_sample_before_a_nan_is_delivered(
    tmp_path: Path, value: float, block_frames: int
) -> None:
    """Before: the whole block holding the NaN was thrown away (up to 8.2 s of a replay: the
    fuzz test found an up-call 7 s before a NaN missing)."""
    x = np.random.default_rng(4).uniform(-0.5, 0.5, 60000).astype(np.float32)
    at = 24561
    x[at : at + 3] = value
    path = tmp_path / "nan.wav"
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    got, error = read_until_error(path, block_frames)
    assert error is not None and f"NaN or infinite sample at frame {at}" in str(error)
    np.testing.assert_array_equal(got, x[:at])


def test_channel_out_of_range(tmp_path: Path) -> None:
    path = valid_wav(tmp_path / "mono.wav")
    with pytest.raises(WhaleError, match="mono.wav.*channel 1"):
        read_audio(path, channel=1)
    assert len(read_audio(path, channel=0)) == 8000


def test_bad_rate_and_shape() -> None:
    with pytest.raises(WhaleError):
        StreamingResampler(0)
    with pytest.raises(ValueError, match="1-D"):
        StreamingResampler(44100).process(np.zeros((10, 2), dtype=np.float32))


# --- issue 14: no audio lost on bad files, bounded resampling memory ------------------------


def flac_bytes(x: np.ndarray, rate: int = SAMPLE_RATE) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, x, rate, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def read_until_error(path: Path, block_frames: int) -> tuple[np.ndarray, WhaleError | None]:
    """What a replay scores before the reader gives up, and why it gave up."""
    blocks, error = [], None
    try:
        for block in iter_file_blocks(path, block_frames=block_frames, keep_truncated=True):
            blocks.append(block)
    except WhaleError as e:
        error = e
    return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), error


@pytest.mark.parametrize("cut_into_next", [0, 1, 700])
@pytest.mark.parametrize("block_frames", [16384, 65536, 1000])
def test_truncated_flac_delivers_every_complete_frame(
    tmp_path: Path, cut_into_next: int, block_frames: int
) -> None:
    noise = np.random.default_rng(6).uniform(-0.5, 0.5, 60000).astype(np.float32)
    full = flac_bytes(noise)
    # FLAC frames are encoded independently: the file of the first k frames is a byte prefix
    # of the whole file (past STREAMINFO), so cutting there leaves exactly k frames decodable
    kept = 11 * 4096
    prefix = flac_bytes(noise[:kept])
    assert full[42 : len(prefix)] == prefix[42:]
    path = tmp_path / "cut.flac"
    path.write_bytes(full[: len(prefix) + cut_into_next])
    got, error = read_until_error(path, block_frames)
    assert error is not None and "cut.flac" in str(error) and "truncated" in str(error)
    assert "\n" not in str(error)
    (tmp_path / "prefix.flac").write_bytes(prefix)
    np.testing.assert_array_equal(got, read_audio(tmp_path / "prefix.flac"))


def test_truncated_flac_at_random_cuts_loses_under_one_frame(tmp_path: Path) -> None:
    noise = np.random.default_rng(7).uniform(-0.5, 0.5, 100000).astype(np.float32)
    full = flac_bytes(noise)
    path = tmp_path / "cut.flac"
    for cut in np.random.default_rng(8).integers(len(full) // 10, len(full) - 10, 8):
        path.write_bytes(full[:cut])
        got, error = read_until_error(path, 16384)
        assert error is not None
        assert len(got) > cut * 100000 / len(full) - 2 * 4096  # at most the cut frame lost
        np.testing.assert_allclose(got, noise[: len(got)], atol=1 / 32768)


def patched(path: Path, offset: int, fmt: str, value: int) -> Path:
    """Overwrite one header field in place, as a buggy or interrupted writer leaves it."""
    data = bytearray(path.read_bytes())
    struct.pack_into(fmt, data, offset, value)
    path.write_bytes(bytes(data))
    return path


def noise_file(path: Path, seconds: float = 10.0, rate: int = SAMPLE_RATE) -> np.ndarray:
    x = np.random.default_rng(9).uniform(-0.5, 0.5, int(seconds * rate)).astype(np.float32)
    sf.write(path, x, rate, subtype="PCM_16")
    return sf.read(path, dtype="float32")[0]


def wav_data_size_offset(path: Path) -> int:
    data = path.read_bytes()
    assert data[:4] == b"RIFF" and data[8:12] == b"WAVE"
    return data.index(b"data", 12) + 4


@pytest.mark.parametrize("declared", [3, 0, 1000])
def test_wav_with_understated_data_size_is_read_to_the_end(tmp_path: Path, declared: int) -> None:
    path = tmp_path / "under.wav"
    x = noise_file(path)
    patched(path, wav_data_size_offset(path), "<I", declared)
    info = audio_info(path)
    assert info.frames == len(x) and info.duration_s == pytest.approx(10.0)
    assert info.truncation is None
    np.testing.assert_array_equal(read_audio(path), x)
    got, error = read_until_error(path, 16384)
    assert error is None and len(got) == len(x)


def test_wav_data_followed_by_a_chunk_is_not_extended(tmp_path: Path) -> None:
    path = tmp_path / "listed.wav"
    x = noise_file(path, 3.0)
    data = path.read_bytes()
    payload = b"INFOISFT" + struct.pack("<I", 6) + b"test\0\0"
    data += b"LIST" + struct.pack("<I", len(payload)) + payload
    path.write_bytes(data[:4] + struct.pack("<I", len(data) - 8) + data[8:])
    assert audio_info(path).frames == len(x)
    np.testing.assert_array_equal(read_audio(path), x)


FLAC_TOTAL_SAMPLES = 18  # STREAMINFO's 64-bit word: rate (20 bits), channels, bps, total (36)


def set_flac_total(path: Path, total: int) -> Path:
    data = bytearray(path.read_bytes())
    (word,) = struct.unpack_from(">Q", data, FLAC_TOTAL_SAMPLES)
    struct.pack_into(">Q", data, FLAC_TOTAL_SAMPLES, (word & ~((1 << 36) - 1)) | total)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("declared", [1, 4096, 0])
def test_flac_with_understated_total_samples_is_read_to_the_end(
    tmp_path: Path, declared: int
) -> None:
    path = tmp_path / "under.flac"
    x = noise_file(path, 10.3)
    set_flac_total(path, declared)
    assert sf.info(str(path)).frames in (declared, 2**63 - 1)  # libsndfile believes the header
    info = audio_info(path)
    assert info.frames == len(x) and info.duration_s == pytest.approx(10.3)
    np.testing.assert_array_equal(read_audio(path), x)
    got, error = read_until_error(path, 16384)
    assert error is None and len(got) == len(x)


def test_flac_understated_and_truncated_delivers_then_fails(tmp_path: Path) -> None:
    path = tmp_path / "both.flac"
    x = noise_file(path, 20.0)
    set_flac_total(path, 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size * 3 // 4])
    got, error = read_until_error(path, 16384)
    assert error is not None and "both.flac" in str(error)
    assert len(got) > 0.75 * len(x) - 2 * 4096
    np.testing.assert_array_equal(got, x[: len(got)])


def aiff_chunks(data: bytes) -> dict[bytes, int]:
    """Where each chunk of an AIFF/AIFF-C file starts (its 4-byte id)."""
    assert data[:4] == b"FORM" and data[8:12] in (b"AIFF", b"AIFC")
    chunks, pos = {}, 12
    while pos + 8 <= len(data):
        size = struct.unpack_from(">I", data, pos + 4)[0]
        chunks[data[pos : pos + 4]] = pos
        pos += 8 + size + (size & 1)
    return chunks


def understate_aiff(path: Path, frames: int, frame_bytes: int) -> Path:
    """The header of a recorder that wrote its first `frames` and died before patching it: COMM's
    numSampleFrames and SSND's size both say `frames`, the file holds them all."""
    data = bytearray(path.read_bytes())
    chunks = aiff_chunks(bytes(data))
    struct.pack_into(">I", data, chunks[b"COMM"] + 10, frames)
    struct.pack_into(">I", data, chunks[b"SSND"] + 4, 8 + frames * frame_bytes)
    path.write_bytes(bytes(data))
    return path


AIFF_SUBTYPES = {"PCM_16": 2, "PCM_24": 3, "FLOAT": 4, "ULAW": 1, "PCM_S8": 1}


@pytest.mark.parametrize("subtype", list(AIFF_SUBTYPES))
@pytest.mark.parametrize("declared", [1, 3])
def test_aiff_with_understated_header_is_read_to_the_end(
    tmp_path: Path, declared: int, subtype: str
) -> None:
    """Before: libsndfile believed the SSND size and read 1-3 frames of a 10-s file."""
    path = tmp_path / "under.aiff"
    x = np.random.default_rng(9).uniform(-0.5, 0.5, 10 * SAMPLE_RATE).astype(np.float32)
    sf.write(path, x, SAMPLE_RATE, subtype=subtype)
    intact = read_audio(path)
    understate_aiff(path, declared, AIFF_SUBTYPES[subtype])
    assert sf.info(str(path)).frames <= declared  # libsndfile believes the header
    info = audio_info(path)
    assert info.frames == len(x) and info.truncation is None
    assert info.header_note is not None and f"declares {declared} frames" in info.header_note
    np.testing.assert_array_equal(read_audio(path), intact)
    got, error = read_until_error(path, 16384)
    assert error is None and len(got) == len(x)


@pytest.mark.parametrize("declared", [0, 1, 3])
def test_aiff_with_only_comm_understated_is_read_to_the_end(tmp_path: Path, declared: int) -> None:
    """SSND's size right, COMM's frame count low: libsndfile goes by SSND, so the reader leaves
    such a header alone (pinned here: the reader relies on it)."""
    path = tmp_path / "comm.aiff"
    x = np.random.default_rng(9).uniform(-0.5, 0.5, 10 * SAMPLE_RATE).astype(np.float32)
    sf.write(path, x, SAMPLE_RATE, subtype="PCM_16")
    intact = read_audio(path)
    patched(path, aiff_chunks(path.read_bytes())[b"COMM"] + 10, ">I", declared)
    assert audio_info(path).frames == len(x)
    np.testing.assert_array_equal(read_audio(path), intact)


def test_aiff_understated_reads_up_to_the_last_whole_frame(tmp_path: Path) -> None:
    path = tmp_path / "odd.aiff"
    x = np.random.default_rng(9).uniform(-0.5, 0.5, (5000, 2)).astype(np.float32)
    sf.write(path, x, SAMPLE_RATE, subtype="PCM_24")  # 6 bytes a frame
    intact = read_audio(path, channel=1)
    understate_aiff(path, 1, 6)
    path.write_bytes(path.read_bytes() + b"\x01\x02\x03\x04\x05")  # a frame cut short
    assert audio_info(path).frames == 5000
    np.testing.assert_array_equal(read_audio(path, channel=1), intact)


def test_aiff_sound_followed_by_a_chunk_is_not_extended(tmp_path: Path) -> None:
    path = tmp_path / "annotated.aiff"
    x = noise_file(tmp_path / "x.wav", 3.0)
    sf.write(path, x, SAMPLE_RATE, format="AIFF", subtype="PCM_16")
    data = path.read_bytes() + b"ANNO" + struct.pack(">I", 6) + b"whale!"
    path.write_bytes(data[:4] + struct.pack(">I", len(data) - 8) + data[8:])
    assert audio_info(path).frames == len(x) and audio_info(path).header_note is None
    np.testing.assert_array_equal(read_audio(path), x)


ODD_RATES = [44100, 96001, 4_000_037]  # 96,001 Hz built 358 MB of filter, 4,000,037 Hz 9.3 GB


def peak_bytes(work: object) -> tuple[int, object]:
    tracemalloc.start()
    try:
        result = work()
        return tracemalloc.get_traced_memory()[1], result
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("in_rate", ODD_RATES + [192000, 2**31 - 1])
def test_resampler_memory_is_bounded_for_any_rate(in_rate: int) -> None:
    StreamingResampler(48000)  # imports scipy outside the measurement
    peak, resampler = peak_bytes(lambda: StreamingResampler(in_rate))
    assert peak < 16 * 2**20
    assert resampler.filter_taps < 300_000  # all stages together; float64
    block = np.zeros(65536, dtype=np.float32)
    peak, _ = peak_bytes(lambda: [resampler.process(block) for _ in range(3)])
    assert peak < 32 * 2**20  # 16 MB gathers at most, plus the block and filter state


def peak_frequency(x: np.ndarray, rate: int = SAMPLE_RATE) -> float:
    """Frequency of the strongest component, to a small fraction of a Hz (zero-padded FFT)."""
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x)), 1 << 20))
    return float(np.argmax(spectrum)) * rate / (1 << 20)


@pytest.mark.parametrize("in_rate", ODD_RATES)
def test_odd_rates_keep_the_band_and_reject_above_1k(in_rate: int) -> None:
    seconds = 0.5 if in_rate > 10**6 else 2.0
    inner = slice(200, -200)
    for freq in (35.0, 150.0, 390.0):
        out = resample(sine(freq, in_rate, seconds), in_rate)
        assert abs(len(out) - seconds * SAMPLE_RATE) <= 1
        assert rms(out[inner]) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
        assert peak_frequency(out[inner]) == pytest.approx(freq, abs=0.05)
    above = [1100.0, 1500.0, 5000.0, in_rate / 2 - 100, in_rate / 4 + 100]
    above.append(round(in_rate / 6000) * 2000 + 100)  # a 2 kHz harmonic + 100 Hz
    for freq in above:  # each would alias into 0-1 kHz without the filter
        tone = sine(freq, in_rate, seconds)
        attenuation_db = 20 * np.log10(rms(resample(tone, in_rate)[inner]) / rms(tone))
        assert attenuation_db < -60, freq


def test_4mhz_file_reads_as_2k(tmp_path: Path) -> None:
    rate = 4_000_037
    x = sine(150, rate, 0.4, 0.3) + sine(1_000_100, rate, 0.4, 0.3)
    path = tmp_path / "fast.wav"
    sf.write(path, x, rate, subtype="PCM_16")
    out = read_audio(path)
    assert abs(len(out) - 800) <= 1
    direct = sine(150, SAMPLE_RATE, 0.4, 0.3)
    assert np.max(np.abs(out[200:600] - direct[200:600])) < 0.01
