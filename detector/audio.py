"""Audio input: open sound files safely and bring any sample rate to SAMPLE_RATE.

The daemon (live cards at 44.1/48 kHz, file replays) and the training code share this module, so a
model sees exactly the same 2 kHz signal in training and in service. Files are read in blocks so a
day-long recording costs constant memory.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf

from detector.constants import MIN_INPUT_RATE, SAMPLE_RATE
from detector.errors import WhaleError

STOPBAND_DB = 80.0  # alias rejection of the resampling filter
TRANSITION_FRACTION = 0.2  # transition band as a fraction of the lower Nyquist rate
DEFAULT_BLOCK_FRAMES = 65536
MAX_RATIO_TERM = 4096  # largest up or down factor: a filter of at most ~200,000 taps
HALVE_ABOVE_HZ = 1_000_000  # rates above this are halved first (15-tap stages)
EMIT_CHUNK_VALUES = 1 << 21  # float64 values gathered per filter product (16 MB)

# libsndfile silently shortens a file whose header promises more data than it holds, and only
# says so in its log: "data : 40000 (should be 24999)" (WAV) or "SSND : ... (should be ...)" (AIFF).
_SHORT_CHUNK = re.compile(r"^\s*(?:data|SSND)\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_UNFINISHED_SIZES = {0, 0xFFFFFFFF, 0x7FFFFFFF}  # streaming writers that never patched the header
_MAX_CHUNKS = 64  # RIFF chunks looked through for "data": a corrupt header cannot make it loop
_FLAC_TAIL_BYTES = 1 << 18  # bytes of a FLAC's end searched for its last frame header
FLAC_TOTAL_OFFSET = 18  # STREAMINFO's 64-bit word holding rate, channels, bits, total_samples
_SF_COUNT_MAX = 2**63 - 1  # libsndfile's frame count for a length it does not know


def _design_filter(up: int, down: int) -> np.ndarray:
    """Kaiser low-pass at the up-sampled rate, odd length (integer delay), DC gain `up`."""
    from scipy import signal  # 1-3 s to import: only a file or card not at 2 kHz pays it

    nyquist_low = 0.5 / max(up, down)  # lower Nyquist, in cycles per up-sampled sample
    width = TRANSITION_FRACTION * nyquist_low
    numtaps, beta = signal.kaiserord(STOPBAND_DB, width / 0.5)
    numtaps |= 1
    cutoff = nyquist_low - width / 2  # full rejection is reached at the lower Nyquist rate
    taps = signal.firwin(numtaps, cutoff, window=("kaiser", beta), fs=1.0)
    return taps * up


def _halving_filter() -> np.ndarray:
    """Low-pass for one decimation by 2 at a rate of at least HALVE_ABOVE_HZ.

    It only has to keep 0-1 kHz and stop what would fold onto it (rate/2 - 1 kHz and up), so
    the transition is nearly the whole band: 15 taps, whatever the rate."""
    from scipy import signal

    pass_edge, stop_edge = 0.05, 0.45  # cycles per sample; 1 kHz is under 0.001 here
    numtaps, beta = signal.kaiserord(STOPBAND_DB, (stop_edge - pass_edge) / 0.5)
    return signal.firwin(numtaps | 1, 0.25, window=("kaiser", beta), fs=1.0)


def _plan(in_rate: int, out_rate: int) -> tuple[int, int, int]:
    """(halvings, up, down): halve very high rates first, then one rational stage.

    The rational stage's filter has about 50 * max(up, down) taps, so its terms are bounded:
    a ratio that needs more (96,001 Hz -> 2 kHz is 2000/96001) is approximated by the
    nearest fraction with terms <= MAX_RATIO_TERM (1/48: the output is 10 ppm fast)."""
    halvings = 0
    while in_rate / 2**halvings > HALVE_ABOVE_HZ:
        halvings += 1
    ratio = Fraction(out_rate * 2**halvings, in_rate)
    if max(ratio.numerator, ratio.denominator) > MAX_RATIO_TERM:
        if ratio < 1:
            ratio = ratio.limit_denominator(MAX_RATIO_TERM)
        else:
            ratio = 1 / (1 / ratio).limit_denominator(MAX_RATIO_TERM)
    return halvings, ratio.numerator, ratio.denominator


class _Stage:
    """One polyphase FIR stage (up, down, taps) that keeps its state across blocks.

    Output sample k lies at time k / (in_rate * up / down) (the filter's delay is
    compensated); after `flush()` the total output length is ceil(n_in * up / down)."""

    def __init__(self, up: int, down: int, taps: np.ndarray) -> None:
        self.up, self.down, self.n_taps = up, down, len(taps)
        self.delay = (len(taps) - 1) // 2
        self.taps_per_phase = -(-len(taps) // up)
        padded = np.zeros(self.taps_per_phase * up)
        padded[: len(taps)] = taps
        # bank[p, j] = taps[p + j*up], reversed so it lines up with x[i-K+1 .. i]
        self.bank = padded.reshape(self.taps_per_phase, up).T[:, ::-1].copy()
        # outputs computed at once: bounds the (outputs x taps_per_phase) gather to 16 MB
        self.chunk = max(1, EMIT_CHUNK_VALUES // self.taps_per_phase)
        self._reset()

    def _reset(self) -> None:
        self.n_in = 0  # input samples received
        self.n_out = 0  # output samples emitted
        self.buffer = np.zeros(self.taps_per_phase - 1)  # zeros before the first sample
        self.buffer_start = -(self.taps_per_phase - 1)  # input index of buffer[0]

    def process(self, block: np.ndarray) -> np.ndarray:
        """The outputs that the next block of the stream completes (float64)."""
        self.buffer = np.concatenate([self.buffer, block.astype(np.float64)])
        self.n_in += len(block)
        # output m needs inputs up to (m*down + delay) // up
        n_ready = (self.n_in * self.up - self.delay - 1) // self.down + 1
        return self._emit(max(n_ready, self.n_out))

    def flush(self) -> np.ndarray:
        """End of stream: emit the tail (inputs past the end count as zeros), then reset."""
        n_total = -(-self.n_in * self.up // self.down)
        last_needed = (max(n_total - 1, 0) * self.down + self.delay) // self.up
        pad = max(0, last_needed + 1 - (self.buffer_start + len(self.buffer)))
        self.buffer = np.concatenate([self.buffer, np.zeros(pad)])
        tail = self._emit(max(n_total, self.n_out))
        self._reset()
        return tail

    def _emit(self, n_until: int) -> np.ndarray:
        pieces = [np.zeros(0)]
        for start in range(self.n_out, n_until, self.chunk):
            pieces.append(self._emit_range(start, min(start + self.chunk, n_until)))
        self.n_out = max(self.n_out, n_until)
        oldest_needed = (self.n_out * self.down + self.delay) // self.up - self.taps_per_phase + 1
        drop = max(0, min(oldest_needed - self.buffer_start, len(self.buffer)))
        self.buffer = self.buffer[drop:]
        self.buffer_start += drop
        return np.concatenate(pieces)

    def _emit_range(self, first: int, stop: int) -> np.ndarray:
        m = np.arange(first, stop, dtype=np.int64)
        t = m * self.down + self.delay
        newest = t // self.up - self.buffer_start  # buffer index of each output's newest input
        phase = t % self.up
        windows = np.lib.stride_tricks.sliding_window_view(self.buffer, self.taps_per_phase)
        out = np.empty(len(m))
        for p in np.unique(phase):
            rows = phase == p
            out[rows] = windows[newest[rows] - self.taps_per_phase + 1] @ self.bank[p]
        return out


class StreamingResampler:
    """Resampler that keeps its state, so output never depends on block sizes.

    Output sample k lies at time k / out_rate (each stage compensates its filter's delay);
    for a ratio with small terms (44.1, 48, 96, 192 kHz, any rate up to 2 kHz) the total
    output length after `flush()` is ceil(n_in * out_rate / in_rate). Memory is bounded for
    any rate: rates over HALVE_ABOVE_HZ are halved by 15-tap stages first, and a ratio with
    large terms is approximated (see _plan)."""

    def __init__(self, in_rate: int, out_rate: int = SAMPLE_RATE) -> None:
        if in_rate <= 0 or out_rate <= 0:
            raise WhaleError(f"sample rates must be positive, got {in_rate} -> {out_rate} Hz")
        self.in_rate, self.out_rate = int(in_rate), int(out_rate)
        halvings, self.up, self.down = _plan(self.in_rate, self.out_rate)
        self.stages = [_Stage(1, 2, _halving_filter()) for _ in range(halvings)]
        if self.up != self.down:
            self.stages.append(_Stage(self.up, self.down, _design_filter(self.up, self.down)))
        self.passthrough = not self.stages

    @property
    def filter_taps(self) -> int:
        """Filter coefficients held, all stages together: what bounds its memory."""
        return sum(stage.n_taps for stage in self.stages)

    def process(self, block: np.ndarray) -> np.ndarray:
        """Resample the next block of a stream; returns the outputs it completes."""
        block = np.asarray(block, dtype=np.float32)
        if block.ndim != 1:
            raise ValueError(f"expected a 1-D block of samples, got shape {block.shape}")
        if self.passthrough:
            return block.copy()
        out = block
        for stage in self.stages:
            out = stage.process(out)
        return out.astype(np.float32)

    def flush(self) -> np.ndarray:
        """End of stream: emit the tail (inputs past the end count as zeros), then reset."""
        tail = np.zeros(0)
        for stage in self.stages:
            tail = np.concatenate([stage.process(tail), stage.flush()])
        return tail.astype(np.float32)


def resample(x: np.ndarray, in_rate: int, out_rate: int = SAMPLE_RATE) -> np.ndarray:
    """One-shot resampling, by definition identical to streaming the whole signal at once."""
    resampler = StreamingResampler(in_rate, out_rate)
    return np.concatenate([resampler.process(x), resampler.flush()])


@dataclass(frozen=True)
class AudioInfo:
    path: Path
    samplerate: int
    channels: int
    frames: int
    duration_s: float
    truncation: WhaleError | None = None  # only with keep_truncated: what the header promised
    header_note: str | None = None  # a header that understated the length, read past it


class _Patched:
    """A file as libsndfile should have seen it: a few header bytes replaced, nothing copied.

    Only read/seek/tell, for soundfile's virtual I/O (an io.RawIOBase's readinto would be
    taken instead of read, and bypass the patches)."""

    def __init__(self, path: Path, patches: dict[int, bytes]) -> None:
        self._file = open(path, "rb")  # noqa: SIM115 (closed with the SoundFile, in _Opened)
        self._patches = patches

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        return self._file.seek(offset, whence)

    def tell(self) -> int:
        return self._file.tell()

    def read(self, size: int = -1) -> bytes:
        start = self._file.tell()
        data = bytearray(self._file.read(size))
        for at, patch in self._patches.items():
            lo, hi = max(at, start), min(at + len(patch), start + len(data))
            if lo < hi:
                data[lo - start : hi - start] = patch[lo - at : hi - at]
        return bytes(data)

    def close(self) -> None:
        self._file.close()


def _chunks(f: BinaryIO, order: str) -> Iterator[tuple[int, bytes, int]]:
    """(offset, id, size) of each chunk after a RIFF/FORM file's 12-byte header, in the byte
    order `order` ("<" RIFF, ">" AIFF), up to _MAX_CHUNKS and the first short header; the file
    is at the chunk's body when one is given."""
    pos = 12
    for _ in range(_MAX_CHUNKS):
        f.seek(pos)
        header = f.read(8)
        if len(header) < 8:
            return
        size = struct.unpack(order + "I", header[4:8])[0]
        yield pos, header[:4], size
        pos += 8 + size + (size & 1)


def _plausible_chunk(header: bytes, end: int, file_size: int, order: str = "<") -> bool:
    """Whether 8 bytes are a chunk header (ASCII id, a size that fits in the file): RIFF's
    sizes are little-endian ("<"), AIFF's big-endian (">")."""
    if len(header) < 8:
        return False
    chunk_id, size = header[:4], struct.unpack(order + "I", header[4:8])[0]
    return (
        all(0x20 <= c < 0x7F for c in chunk_id)
        and chunk_id[0] != 0x20
        and (end + 8 + size <= file_size)
    )


def _wav_fix(f: BinaryIO, file_size: int) -> tuple[dict[int, bytes], str | None]:
    """A WAV whose data chunk claims less than the file holds after it: the real size.

    Writers that die before patching the header leave 0 (or a stale size) there; libsndfile
    believes it and stops early. Bytes past the declared end that are not another chunk's
    header are audio, so data runs to the end of the file."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return {}, None
    for pos, kind, size in _chunks(f, "<"):
        if kind == b"data":
            start, end = pos + 8, pos + 8 + size + (size & 1)
            if end >= file_size or size in _UNFINISHED_SIZES - {0}:
                return {}, None
            f.seek(end)
            if _plausible_chunk(f.read(8), end, file_size):
                return {}, None
            real = min(file_size - start, 0xFFFFFFFE)
            note = f"WAV header declares {size} data bytes, the file holds {real}: read them all"
            return {pos + 4: struct.pack("<I", real)}, note
    return {}, None


# bytes per sample of an AIFF-C compression type whose samples are stored plainly
_AIFC_SAMPLE_BYTES = {b"fl32": 4, b"FL32": 4, b"fl64": 8, b"FL64": 8, b"ulaw": 1, b"ULAW": 1,
                      b"alaw": 1, b"ALAW": 1}  # fmt: skip
_AIFC_PCM = {b"NONE", b"twos", b"sowt", b"raw ", b"in24", b"in32", b"42ni", b"23ni"}


def _aiff_frame_bytes(comm: bytes, aifc: bool) -> int | None:
    """Bytes per frame from a COMM chunk's body, or None for a compressed encoding."""
    if len(comm) < 18 or (aifc and len(comm) < 22):
        return None
    channels, bits = struct.unpack(">H", comm[0:2])[0], struct.unpack(">H", comm[6:8])[0]
    kind = comm[18:22] if aifc else b"NONE"
    sample = -(-bits // 8) if kind in _AIFC_PCM else _AIFC_SAMPLE_BYTES.get(kind)
    return channels * sample if sample and channels else None


def _aiff_fix(f: BinaryIO, file_size: int) -> tuple[dict[int, bytes], str | None]:
    """An AIFF whose SSND chunk (and COMM's frame count) claims less than the file holds.

    A recorder that writes its header first and dies before patching it leaves the sizes of
    its first block there; libsndfile believes the SSND size and stops early (it already
    reads on when only COMM understates). As for WAV: bytes past the declared end that are
    not another chunk's header are audio, up to the last whole frame in the file."""
    head = f.read(12)
    if len(head) < 12 or head[:4] != b"FORM" or head[8:12] not in (b"AIFF", b"AIFC"):
        return {}, None
    comm_at, comm = None, b""
    for pos, kind, size in _chunks(f, ">"):
        if kind == b"COMM":
            comm_at, comm = pos, f.read(min(size, 64))
        elif kind == b"SSND":
            start, end = pos + 8, pos + 8 + size + (size & 1)
            frame_bytes = _aiff_frame_bytes(comm, head[8:12] == b"AIFC")
            if end >= file_size or size in _UNFINISHED_SIZES - {0} or frame_bytes is None:
                return {}, None
            f.seek(end)
            if _plausible_chunk(f.read(8), end, file_size, ">"):
                return {}, None
            f.seek(start)
            skip = f.read(4)
            offset = struct.unpack(">I", skip)[0] if len(skip) == 4 else 0
            real = min(file_size - start, 0xFFFFFFFE)
            frames = max(0, real - 8 - offset) // frame_bytes
            note = (
                f"AIFF header declares {max(0, size - 8 - offset) // frame_bytes} frames, the "
                f"file holds {frames}: read them all"
            )
            patches = {pos + 4: struct.pack(">I", real)}
            if comm_at is not None:
                patches[comm_at + 10] = struct.pack(">I", frames)  # COMM's numSampleFrames
            return patches, note
    return {}, None


def _crc8(data: bytes) -> int:
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def _flac_frame(tail: bytes, i: int, stream: tuple[int, int, int, int]) -> tuple[int, int] | None:
    """(first sample, block size) of a FLAC frame header at tail[i], or None if it is not one.

    Checked as libFLAC does: sync code, reserved bits, CRC-8, and fields matching STREAMINFO."""
    block_size, channels, bits, _ = stream
    if i + 5 > len(tail) or tail[i] != 0xFF or tail[i + 1] not in (0xF8, 0xF9):
        return None
    variable = tail[i + 1] & 1
    size_code, rate_code = tail[i + 2] >> 4, tail[i + 2] & 15
    channel_code, bits_code = tail[i + 3] >> 4, (tail[i + 3] >> 1) & 7
    if size_code == 0 or rate_code == 15 or tail[i + 3] & 1 or channel_code > 10:
        return None
    if (channel_code + 1 if channel_code < 8 else 2) != channels:
        return None
    if bits_code and {1: 8, 2: 12, 4: 16, 5: 20, 6: 24, 7: 32}.get(bits_code) != bits:
        return None
    first, j = tail[i + 4], i + 5  # UTF-8-like coded frame or sample number
    ones = 8 - (~first & 0xFF).bit_length()  # leading 1 bits: the length of the code
    extra = 0 if ones == 0 else ones - 1
    if ones == 1 or ones == 8 or j + extra + 3 > len(tail):
        return None
    number = first & (0x7F >> ones)
    for byte in tail[j : j + extra]:
        if byte & 0xC0 != 0x80:
            return None
        number = (number << 6) | (byte & 0x3F)
    j += extra
    if size_code in (6, 7):  # block size - 1 stored after the number, in 8 or 16 bits
        samples = int.from_bytes(tail[j : j + size_code - 5], "big") + 1
        j += size_code - 5
    else:
        samples = 192 if size_code == 1 else 576 << (size_code - 2) if size_code < 6 else 0
        samples = samples or 256 << (size_code - 8)
    j += {12: 1, 13: 2, 14: 2}.get(rate_code, 0)
    if j >= len(tail) or _crc8(tail[i:j]) != tail[j]:
        return None
    return (number if variable else number * block_size), samples


def _flac_fix(f: BinaryIO, file_size: int) -> tuple[dict[int, bytes], int | None, str | None]:
    """A FLAC whose STREAMINFO understates (or omits) the length: patches, real length, note.

    libsndfile stops at total_samples; the last frame header near the end of the file tells
    the real length, and total_samples 0 ("unknown") lets libsndfile decode to the end."""
    head = f.read(42)
    if len(head) < 42 or head[:4] != b"fLaC" or head[4] & 0x7F != 0:
        return {}, None, None
    (word,) = struct.unpack(">Q", head[18:26])
    declared = word & ((1 << 36) - 1)
    max_frame = int.from_bytes(head[15:18], "big")
    stream = (
        struct.unpack(">H", head[8:10])[0],  # min block size: every frame but the last
        ((word >> 41) & 7) + 1,
        ((word >> 36) & 31) + 1,
        word >> 44,
    )
    span = min(file_size - 42, max(_FLAC_TAIL_BYTES, 2 * max_frame))
    f.seek(file_size - span)
    tail = f.read(span)
    real = None
    for i in range(len(tail) - 2, -1, -1):
        if tail[i] == 0xFF and (frame := _flac_frame(tail, i, stream)) is not None:
            real = frame[0] + frame[1]
            break
    if real is None or (declared and real <= declared):
        return {}, None, None
    note = f"FLAC header declares {declared} frames, the last frame ends at {real}: read them all"
    if declared == 0:
        return {}, real, None  # libsndfile already reads on; only the length was missing
    return {FLAC_TOTAL_OFFSET: struct.pack(">Q", word & ~((1 << 36) - 1))}, real, note


def _header_fix(path: Path) -> tuple[dict[int, bytes], int | None, str | None]:
    """Header bytes to correct before libsndfile parses them, the real frame count if known."""
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        magic = f.read(4)
        f.seek(0)
        if magic == b"RIFF":
            patches, note = _wav_fix(f, file_size)
            return patches, None, note
        if magic == b"fLaC":
            return _flac_fix(f, file_size)
        if magic == b"FORM":
            patches, note = _aiff_fix(f, file_size)
            return patches, None, note
    return {}, None, None


class _Opened:
    """An open SoundFile plus what the reader must know beyond libsndfile's view of it."""

    def __init__(self, handle: sf.SoundFile, raw: _Patched | None, frames: int) -> None:
        self.handle, self._raw, self.frames = handle, raw, frames
        self.truncation: WhaleError | None = None
        self.note: str | None = None
        # libsndfile knows the end (it stops there) unless the length was unknown to it
        self.length_known = handle.frames < _SF_COUNT_MAX

    def close(self) -> None:
        self.handle.close()
        if self._raw is not None:
            self._raw.close()

    def __enter__(self) -> _Opened:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _open(path: str | Path, keep_truncated: bool = False) -> _Opened:
    """Open a sound file, turning every way it can be unusable into a WhaleError naming it.

    With keep_truncated, a file whose header promises more than it holds still opens (its
    `truncation` attribute holds the error), so a replay can score what is there first.
    A header that promises less than the file holds is corrected, so nothing goes unread."""
    path = Path(path)
    if not path.exists():
        raise WhaleError(f"{path}: no such audio file")
    if not path.is_file():
        raise WhaleError(f"{path}: not a file")
    raw = None
    try:
        patches, real_frames, note = _header_fix(path)
        raw = _Patched(path, patches) if patches else None
        handle = sf.SoundFile(raw if raw is not None else str(path))
    except (sf.LibsndfileError, RuntimeError, OSError, struct.error) as error:
        if raw is not None:
            raw.close()
        raise WhaleError(f"{path}: unreadable or corrupt audio file ({error})") from None
    opened = _Opened(handle, raw, real_frames or handle.frames)
    opened.note = note
    if opened.frames <= 0:
        opened.close()
        raise WhaleError(f"{path}: empty audio file (0 frames)")
    if handle.samplerate < MIN_INPUT_RATE:
        rate = handle.samplerate
        opened.close()
        raise WhaleError(
            f"{path}: sampled at {rate} Hz, too low to hold up-calls (the models look at "
            f"30-400 Hz; at least {MIN_INPUT_RATE} Hz is needed)"
        )
    for declared, present in _SHORT_CHUNK.findall(handle.extra_info):
        if int(present) < int(declared) and int(declared) not in _UNFINISHED_SIZES:
            opened.truncation = WhaleError(
                f"{path}: truncated audio file (header promises {declared} data bytes, "
                f"only {present} present)"
            )
            if not keep_truncated:
                opened.close()
                raise opened.truncation
    return opened


def audio_info(path: str | Path, keep_truncated: bool = False) -> AudioInfo:
    """Rate, channels and length of a file, without reading its samples."""
    with _open(path, keep_truncated) as opened:
        handle = opened.handle
        return AudioInfo(
            path=Path(path),
            samplerate=handle.samplerate,
            channels=handle.channels,
            frames=opened.frames,
            duration_s=opened.frames / handle.samplerate,
            truncation=opened.truncation,
            header_note=opened.note,
        )


def _read_into(handle: sf.SoundFile, out: np.ndarray) -> tuple[int, str | None]:
    """Decode up to len(out) frames into `out`: (frames decoded, libsndfile's error or None).

    soundfile's read() throws the whole block away when the decoder fails part-way, and its
    seek after every read fails on a FLAC cut just past the read: a truncated FLAC lost up to
    a block. The C call returns every frame decoded before the failure."""
    pointer = sf._ffi.cast("float *", out.ctypes.data)  # noqa: SLF001 (see docstring)
    frames = int(sf._snd.sf_readf_float(handle._file, pointer, len(out)))  # noqa: SLF001
    code = int(sf._snd.sf_error(handle._file))  # noqa: SLF001
    if code == 0:
        return max(frames, 0), None
    message = sf._ffi.string(sf._snd.sf_error_number(code)).decode("utf-8", "replace")  # noqa: SLF001
    return max(frames, 0), message or f"libsndfile error {code}"


def iter_file_blocks(
    path: str | Path,
    channel: int = 0,
    block_frames: int = DEFAULT_BLOCK_FRAMES,
    keep_truncated: bool = False,
) -> Iterator[np.ndarray]:
    """Yield one channel of a file as float32 blocks at SAMPLE_RATE, in constant memory.

    A truncated file is an error before any audio, or with keep_truncated (the daemon: never
    lose what can be detected) after every frame it holds that can be decoded. A NaN or
    infinite sample ends the stream with an error after every sample before it."""
    with _open(path, keep_truncated) as opened:
        handle = opened.handle
        if not 0 <= channel < handle.channels:
            raise WhaleError(
                f"{path}: channel {channel} requested but the file has {handle.channels} "
                f"channel(s) (0-based)"
            )
        resampler = StreamingResampler(handle.samplerate, SAMPLE_RATE)
        buffer = np.empty((max(1, block_frames), handle.channels), dtype=np.float32)
        failure = opened.truncation
        frames_read = 0
        while True:
            want = len(buffer)
            if opened.length_known:
                want = min(want, handle.frames - frames_read)
                if want <= 0:
                    break
            got, error = _read_into(handle, buffer[:want])
            samples = buffer[:got, channel]
            finite = np.isfinite(samples)
            first_bad = None if finite.all() else int(np.argmin(finite))
            if first_bad is not None:  # the block's samples before it are scored all the same
                samples = samples[:first_bad]
            frames_read += len(samples)
            out = resampler.process(samples)
            if len(out):
                yield out
            if first_bad is not None:
                failure = WhaleError(f"{path}: NaN or infinite sample at frame {frames_read}")
                break
            if error is not None:
                failure = WhaleError(
                    f"{path}: truncated or corrupt after frame {frames_read} ({error})"
                )
                break
            if got < want:
                if opened.length_known and failure is None:
                    failure = WhaleError(
                        f"{path}: truncated audio file ({frames_read} of {handle.frames} frames)"
                    )
                break
        tail = resampler.flush()  # the filter's last outputs, also before reporting a failure
        if len(tail):
            yield tail
        if failure is not None:
            raise failure


def read_audio(path: str | Path, channel: int = 0) -> np.ndarray:
    """A whole file at SAMPLE_RATE as float32 mono: for training and tests, not the daemon."""
    blocks = list(iter_file_blocks(path, channel))
    return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)
