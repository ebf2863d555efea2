"""Hostile inputs for the real command line, drawn from a seed, and what every run must do.

Shared by the suite's fuzz test (tests/test_fuzz.py: a few dozen runs) and bench/fuzz.py (a
thousand or more, in parallel). Case `i` of seed `s` is drawn from its own generator
(`default_rng([s, i])`), so any failure is reproduced by its seed and index alone, whatever ran
before it or beside it. Every case is one `whale-listen` process, and what it must do comes from
the README's "Bad input and exit statuses": an exit status of the documented kind, at most one
`whale-listen: error:` line (the last), nothing on stderr that is not the daemon's own escaped
line, no traceback, no hang, and no event lost: every event published is in the log, the summary
counts what the log holds, and a file cut short (or holding a NaN) keeps the events the intact
file has before the cut.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import zmq

from train import synth

DAEMON = [sys.executable, "-c", "from detector.cli import main; main(prog_name='whale-listen')"]
REPO = Path(__file__).resolve().parents[1]
RATE = synth.SR
BASE_SECONDS = 60  # the intact recording every truncation, flip and NaN starts from
MARGIN_S = 3.0  # events ending this close to a cut may differ (one window and a hop)
TIMEOUT_S = 60.0  # a run longer than this is a hang (the slowest case takes a few seconds)
START_TIME = "2024-01-01T00:00:00"

RUNTIME, USAGE, CONFIG = 2, 64, 78  # README's table (detector.errors), written out on purpose
CLEAN, CLEAN_OR_INTERRUPTED = frozenset({0}), frozenset({0, 130})


# -- cases and outcomes -------------------------------------------------------------------------
@dataclass
class Case:
    """One hostile run: arguments after the model, what the README says it must exit with."""

    seed: int
    index: int
    kind: str
    what: str  # a short description for the report
    args: list[str | bytes]
    expect: frozenset[int]
    folder: Path
    log: Path
    intact: list[tuple] | None = None  # event keys of the intact file, for a cut file
    before_s: float | None = None  # audio intact up to here: its events must all be there
    send: tuple[int, float] | None = None  # (signal, seconds after start)

    @property
    def name(self) -> str:
        return f"seed {self.seed} case {self.index} ({self.kind}: {self.what})"


@dataclass
class Outcome:
    case: Case
    status: int | None
    stderr: str
    wall_s: float
    peak_rss_kb: int
    hung: bool = False
    logged: int = 0
    published: int = 0
    events_lost: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.stderr


def event_key(event: dict) -> tuple:
    """What the same audio must give in any run (not id, run, time or source)."""
    return (
        event["offset_start_s"],
        event["offset_end_s"],
        event["peak_offset_s"],
        event["windows"],
    )


# -- the recordings -----------------------------------------------------------------------------
def _write(path: Path, audio: np.ndarray, rate: int, fmt: str, subtype: str) -> Path:
    sf.write(path, audio, rate, format=fmt, subtype=subtype)
    return path


FORMATS = {"wav": "WAV", "flac": "FLAC", "aiff": "AIFF"}
SUBTYPES = {
    "wav": ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"],
    "aiff": ["PCM_S8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE", "ULAW", "ALAW"],
    "flac": ["PCM_S8", "PCM_16", "PCM_24"],
}
FLAC_MAX_RATE = 655350


@dataclass
class Base:
    """An intact recording, where its audio starts, and (FLAC) where each of its frames ends."""

    path: Path
    data: bytes
    audio_start: int  # byte offset of the first sample (WAV, AIFF)
    frame_ends: list[tuple[int, int]]  # FLAC: (byte offset, frames decodable) of each frame end
    intact: list[tuple] = field(default_factory=list)

    def seconds_before(self, cut: int) -> float:
        """Audio wholly before byte `cut`, known from the encoding, not from the reader under test:
        PCM frames are fixed-size; FLAC frames are encoded independently, so the file of the
        first k frames is a byte prefix of the whole one (checked when the frame ends are found)."""
        if not self.frame_ends:
            return max(0, cut - self.audio_start) // 2 / RATE  # 16-bit mono
        whole = [frames for end, frames in self.frame_ends if end <= cut]
        return (whole[-1] if whole else 0) / RATE


def _flac_frame_ends(audio: np.ndarray, data: bytes) -> list[tuple[int, int]]:
    block = struct.unpack(">H", data[8:10])[0]  # STREAMINFO's minimum block size
    ends = []
    for frames in range(block, len(audio) + block, block):
        frames = min(frames, len(audio))
        prefix = _flac_bytes(audio[:frames])
        if data[42 : len(prefix)] != prefix[42:]:
            raise AssertionError("FLAC frames are not a byte prefix: cannot place cuts")
        ends.append((len(prefix), frames))
    return ends


def _flac_bytes(audio: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    sf.write(buffer, audio, RATE, format="FLAC", subtype="PCM_16")
    return buffer.getvalue()


def base_recordings(folder: Path) -> tuple[dict[str, Base], np.ndarray]:
    """The 60-s recording (3 up-calls, 2 look-alikes) as 16-bit WAV, FLAC and AIFF, and as a
    float WAV (for NaN and inf samples); and its samples."""
    audio, _ = synth.synthetic_recording(np.random.default_rng(21), BASE_SECONDS, 3, n_lookalikes=2)
    audio = sf.read(_write(folder / "q.wav", audio, RATE, "WAV", "PCM_16"), dtype="float32")[0]
    bases = {}
    for name, fmt, subtype in [
        ("wav", "WAV", "PCM_16"),
        ("flac", "FLAC", "PCM_16"),
        ("aiff", "AIFF", "PCM_16"),
        ("float", "WAV", "FLOAT"),
    ]:
        path = _write(folder / f"calls_{name}.{fmt.lower()}", audio, RATE, fmt, subtype)
        data = path.read_bytes()
        if fmt == "WAV":
            start = data.index(b"data", 12) + 8
        elif fmt == "AIFF":
            start = data.index(b"SSND", 12) + 16
        else:
            start = 0
        ends = _flac_frame_ends(audio, data) if fmt == "FLAC" else []
        bases[name] = Base(path, data, start, ends)
    return bases, audio


# -- the generator ------------------------------------------------------------------------------
NAME_TRAPS = [
    "evil\nwhale-listen: error: forged",
    "red\x1b[31mtext\x1b[0m",
    "carriage\rreturn",
    "tab\there",
    "bell\x07",
    "rtl\u202eevaw.",
    "nul-free but DEL\x7f",
]
ODD_RATES = [1, 799, 800, 1000, 1999, 2001, 7999, 44100, 96001, 192000, 4_000_037]


class Fuzzer:
    """Draws hostile cases around one intact recording and one model folder."""

    WEIGHTS = {
        "truncated": 3.0,
        "flipped": 2.0,
        "corrupted": 1.5,
        "odd_rate": 1.5,
        "subtype": 1.5,
        "nonfinite": 1.0,
        "silence": 0.5,
        "name": 1.0,
        "card": 1.5,
        "config": 1.5,
        "option": 1.0,
        "signal": 0.5,
        "documented": 1.0,
    }

    def __init__(self, workdir: Path, model: Path, seed: int) -> None:
        self.workdir, self.model, self.seed = workdir.resolve(), model.resolve(), seed
        (workdir / "base").mkdir(parents=True, exist_ok=True)
        self.bases, self.audio = base_recordings(workdir / "base")

    def prepare(self) -> None:
        """The intact recordings' events, through the same CLI and checks as every case."""
        for name, base in self.bases.items():
            case = self._case(-1, "intact", name, [], CLEAN, base.path, folder=f"intact-{name}")
            outcome = run_case(case)
            if outcome.problems or outcome.status != 0:
                raise AssertionError(f"intact {name} failed: {outcome.problems} {outcome.stderr}")
            base.intact = read_keys(case.log)
            if not base.intact:
                raise AssertionError(f"no event in the intact {name} recording: nothing to compare")
        keys = {tuple(b.intact) for b in self.bases.values()}
        if len(keys) != 1:
            raise AssertionError("the same audio gave different events in WAV, FLAC and AIFF")

    def case(self, index: int, kind: str | None = None) -> Case:
        """Case `index` of this seed: of the given kind, else one drawn by WEIGHTS."""
        rng = np.random.default_rng([self.seed, index])
        kinds = list(self.WEIGHTS)
        weights = np.array([self.WEIGHTS[k] for k in kinds])
        drawn = kinds[rng.choice(len(kinds), p=weights / weights.sum())]
        return getattr(self, f"_{kind or drawn}")(rng, index)

    def _case(self, index: int, kind: str, what: str, args: list, expect: frozenset,
              replay: Path | bytes | None = None, folder: str | None = None,
              **extra: object) -> Case:  # fmt: skip
        folder = self.workdir / (folder or f"case-{index:05d}")
        folder.mkdir(parents=True, exist_ok=True)
        sock = f"ipc://{folder}/pub.sock"
        common = [
            "--model", self.model, "--events-log", folder / "events.jsonl", "--publish", sock,
            "--catchup", "off", "--linger", "2", "--station", "fuzz", "--threads", "1",
            "--wait-subscribers", "1", "--start-time", START_TIME,
        ]  # fmt: skip
        if replay is not None:
            common = ["--replay", replay, *common]
        log = folder / "events.jsonl"
        return Case(self.seed, index, kind, what, [*common, *args], expect, folder, log, **extra)

    def _recording(self, rng: np.random.Generator, seconds: float, rate: int = RATE,
                   channels: int = 1) -> np.ndarray:  # fmt: skip
        """Synthetic calls and noise at any rate (linear interpolation: aliasing is no matter)."""
        n2k = max(1, int(seconds * RATE))
        calls = int(seconds // 10)
        if calls and seconds >= 7 * calls + 2:
            audio, _ = synth.synthetic_recording(rng, n2k / RATE, calls, min_gap_s=3.0)
        else:
            audio = 0.3 * synth.noise(rng, n2k) if n2k > 1 else np.zeros(1, np.float32)
        n = max(1, int(seconds * rate))
        # the synthetic recording may be a sample short of n2k (its length is int(seconds * SR))
        audio = np.interp(np.arange(n) * RATE / rate, np.arange(len(audio)), audio)
        audio = audio.astype(np.float32)
        if channels > 1:
            audio = np.stack([np.roll(audio, 37 * c) for c in range(channels)], axis=1)
        return audio

    # each kind: (rng, index) -> Case
    def _truncated(self, rng: np.random.Generator, index: int) -> Case:
        name = str(rng.choice(["wav", "flac", "aiff"]))
        base = self.bases[name]
        if rng.random() < 0.15:
            cut = int(rng.integers(1, 64))  # inside the header
        else:
            cut = int(rng.integers(64, len(base.data)))
        case = self._case(index, "truncated", f"{name} cut at byte {cut} of {len(base.data)}",
                          [], frozenset({RUNTIME}), None,
                          intact=base.intact, before_s=base.seconds_before(cut))  # fmt: skip
        path = case.folder / f"cut.{base.path.suffix[1:]}"
        path.write_bytes(base.data[:cut])
        case.args = ["--replay", path, *case.args]
        return case

    def _flipped(self, rng: np.random.Generator, index: int) -> Case:
        name = str(rng.choice(["wav", "flac", "aiff"]))
        data = bytearray(self.bases[name].data)
        flips = []
        for _ in range(int(rng.integers(1, 5))):
            at, value = int(rng.integers(0, 96)), int(rng.integers(0, 256))
            data[at] = value
            flips.append(f"{at}={value}")
        case = self._case(index, "flipped", f"{name} header bytes {', '.join(flips)}", [],
                          frozenset({0, RUNTIME}))  # fmt: skip
        path = case.folder / f"flipped.{name}"
        path.write_bytes(bytes(data))
        case.args = ["--replay", path, *case.args]
        return case

    def _corrupted(self, rng: np.random.Generator, index: int) -> Case:
        """Bytes flipped inside the audio: PCM reads them as samples (exit 0), a FLAC frame fails
        its CRC (exit 0 or 2); either way the events before the first damaged frame stay."""
        name = str(rng.choice(["wav", "flac", "aiff"]))
        base = self.bases[name]
        data = bytearray(base.data)
        spots = sorted(int(a) for a in rng.integers(len(data) // 10, len(data), rng.integers(1, 9)))
        for at in spots:
            data[at] ^= int(rng.integers(1, 256))
        expect = frozenset({0, RUNTIME}) if name == "flac" else CLEAN
        what = f"{name} bytes {', '.join(map(str, spots))} of {len(data)} flipped"
        case = self._case(index, "corrupted", what, [], expect, intact=base.intact,
                          before_s=base.seconds_before(spots[0]))  # fmt: skip
        path = case.folder / f"corrupt.{name}"
        path.write_bytes(bytes(data))
        case.args = ["--replay", path, *case.args]
        return case

    def _odd_rate(self, rng: np.random.Generator, index: int) -> Case:
        rate = int(rng.choice(ODD_RATES))
        seconds = float(rng.choice([1.5, 2.0, 2.5])) if rate > 10**6 else float(rng.uniform(1, 25))
        if rate < 10:
            seconds = float(rng.integers(1, 50))
        ext = "flac" if rate <= FLAC_MAX_RATE and rng.random() < 0.3 else "wav"
        expect = frozenset({RUNTIME}) if rate < 800 else CLEAN  # too low; else scored or a note
        case = self._case(index, "odd_rate", f"{rate} Hz, {seconds:.1f} s, {ext}", [], expect)
        audio = self._recording(rng, seconds, rate)
        path = case.folder / f"rate_{rate}.{ext}"
        try:
            _write(path, audio, rate, FORMATS[ext], "PCM_16")
        except sf.LibsndfileError:  # libFLAC encodes only some rates (not 96,001 Hz)
            path.unlink(missing_ok=True)
            path = _write(path.with_suffix(".wav"), audio, rate, "WAV", "PCM_16")
            case.what = case.what.replace(ext, "wav (FLAC refused the rate)")
        case.args = ["--replay", path, *case.args]
        return case

    def _subtype(self, rng: np.random.Generator, index: int) -> Case:
        ext = str(rng.choice(list(SUBTYPES)))
        subtype = str(rng.choice(SUBTYPES[ext]))
        channels = int(rng.choice([1, 2, 3, 8]))
        channel = int(rng.integers(0, channels + 1))  # channels itself: one the file lacks
        rate = int(rng.choice([RATE, 8000, 44100, 48000]))
        seconds = float(rng.uniform(2.5, 12))
        what = f"{ext} {subtype}, {channels} ch (--channel {channel}), {rate} Hz, {seconds:.1f} s"
        expect = CLEAN if channel < channels else frozenset({RUNTIME})
        case = self._case(index, "subtype", what, ["--channel", channel], expect)
        path = case.folder / f"sub.{ext}"
        audio = self._recording(rng, seconds, rate, channels)
        _write(path, audio, rate, FORMATS[ext], subtype)
        case.args = ["--replay", path, *case.args]
        return case

    def _nonfinite(self, rng: np.random.Generator, index: int) -> Case:
        value = float(rng.choice([np.nan, np.inf, -np.inf]))
        at = int(rng.integers(0, len(self.audio)))
        ext, subtype = [("wav", "FLOAT"), ("wav", "DOUBLE"), ("aiff", "FLOAT")][rng.integers(3)]
        base = self.bases["float"]
        case = self._case(index, "nonfinite", f"{value} at sample {at}, {ext} {subtype}", [],
                          frozenset({RUNTIME}), intact=base.intact, before_s=at / RATE)  # fmt: skip
        audio = self.audio.copy()
        audio[at : at + int(rng.integers(1, 100))] = value
        path = _write(case.folder / f"nan.{ext}", audio, RATE, FORMATS[ext], subtype)
        case.args = ["--replay", path, *case.args]
        return case

    def _silence(self, rng: np.random.Generator, index: int) -> Case:
        ext = str(rng.choice(list(FORMATS)))
        audio = self.audio.copy()
        if rng.random() < 0.5:
            audio[:] = 0.0
            what, expect = "all zeros", frozenset({RUNTIME})  # digital silence from start to end
        else:
            a, b = sorted(rng.integers(0, len(audio), 2))
            audio[a:b] = 0.0
            what, expect = f"zeros {a / RATE:.1f}-{b / RATE:.1f} s", CLEAN
        case = self._case(index, "silence", f"{ext} {what}", [], expect)
        path = _write(case.folder / f"quiet.{ext}", audio, RATE, FORMATS[ext], "PCM_16")
        case.args = ["--replay", path, *case.args]
        return case

    def _name(self, rng: np.random.Generator, index: int) -> Case:
        where = str(rng.choice(["replay", "events-log", "station", "model"]))
        if rng.random() < 0.4:
            # a continuation byte first: never valid UTF-8, whatever follows
            tail = rng.integers(0x80, 0x100, int(rng.integers(0, 3)), np.uint8)
            raw = b"rec-" + bytes([int(rng.integers(0x80, 0xC0)), *tail])
            what, expect = f"{where} with bytes {raw[4:].hex()} (not UTF-8)", frozenset({USAGE})
        else:
            trap = NAME_TRAPS[rng.integers(len(NAME_TRAPS))]
            raw = os.fsencode(trap)
            expect = frozenset({USAGE}) if where == "station" else CLEAN  # not printable
            what = f"{where} named {trap!r}"
        case = self._case(index, "name", what, [], expect)
        short = self.audio[: 8 * RATE]
        if where == "replay":
            path = os.fsencode(case.folder) + b"/" + raw + b".wav"
            plain = _write(case.folder / "plain.wav", short, RATE, "WAV", "PCM_16")
            os.rename(plain, path)  # soundfile cannot open a name that is not UTF-8
            case.args = ["--replay", path, *case.args]
        else:
            recording = _write(case.folder / "short.wav", short, RATE, "WAV", "PCM_16")
            case.args = ["--replay", recording, *case.args]
            if where == "events-log":
                log = os.fsencode(case.folder) + b"/" + raw + b".jsonl"
                case.args += ["--events-log", log]
                case.log = Path(os.fsdecode(log))
            elif where == "station":
                case.args += ["--station", raw]
            else:
                folder = os.fsencode(case.folder) + b"/" + raw
                shutil.copytree(self.model.parent, os.fsdecode(folder))
                case.args += ["--model", folder + b"/" + os.fsencode(self.model.name)]
        return case

    def _card(self, rng: np.random.Generator, index: int) -> Case:
        folder = self.workdir / f"case-{index:05d}" / "model"
        shutil.copytree(self.model.parent, folder)
        card_file = folder / (self.model.stem + ".json")
        card = json.loads(card_file.read_text())
        what, text = _hostile_card(rng, card)
        card_file.write_bytes(text)
        case = self._case(index, "card", what, [], frozenset({CONFIG}), self._short(index))
        case.args += ["--model", folder / self.model.name]
        return case

    def _config(self, rng: np.random.Generator, index: int) -> Case:
        what, text = _hostile_toml(rng)
        case = self._case(index, "config", what, [], frozenset({CONFIG}), self._short(index))
        (case.folder / "config.toml").write_bytes(text)
        case.args += ["--config", case.folder / "config.toml"]
        return case

    def _option(self, rng: np.random.Generator, index: int) -> Case:
        option, value = BAD_OPTIONS[rng.integers(len(BAD_OPTIONS))]
        args = [option] if value is None else [option, value]
        case = self._case(index, "option", " ".join(map(str, args)), args, frozenset({USAGE}),
                          self._short(index))  # fmt: skip
        return case

    def _signal(self, rng: np.random.Generator, index: int) -> Case:
        signum = signal.SIGINT if rng.random() < 0.5 else signal.SIGTERM
        delay = float(rng.uniform(0, 1.5))
        expect = CLEAN_OR_INTERRUPTED if signum == signal.SIGINT else CLEAN
        what = f"{signum.name} after {delay:.2f} s of a --realtime replay"
        return self._case(index, "signal", what, ["--realtime"], expect,
                          self.bases["wav"].path, send=(signum, delay))  # fmt: skip

    def _documented(self, rng: np.random.Generator, index: int) -> Case:
        """One of the README table's examples that the other kinds do not draw."""
        what, status, build = DOCUMENTED[rng.integers(len(DOCUMENTED))]
        case = self._case(index, "documented", what, [], frozenset({status}))
        case.args += build(case.folder, self.model, self.bases["wav"].path)  # it has events
        at = max(i for i, arg in enumerate(case.args) if arg == "--events-log")  # the last wins
        case.log = Path(case.args[at + 1])
        return case

    def _short(self, index: int) -> Path:
        path = self.workdir / f"case-{index:05d}" / "short.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        return _write(path, self.audio[: 6 * RATE], RATE, "WAV", "PCM_16")


def _set(card: dict, dotted: str, value: object) -> None:
    *parents, last = dotted.split(".")
    target = card
    for key in parents:
        target = target.setdefault(key, {}) if isinstance(target.get(key), dict) else target
    target[last] = value


# card fields the README bounds, with values outside those bounds (or of the wrong type)
CARD_FIELDS = {
    "threshold": ["abc", [], True, float("nan"), float("inf"), -1, 5, 1e300],  # null: absent
    "sample_rate": [4000, 0, -2000, "2000", 1e9, None],
    "window_samples": [0, 3999, "4000", 10**12],
    "name": [5, None, [], "line\nbreak", "esc\x1b[2J"],
    "sha256": ["abc", 5, "g" * 64, "A" * 63],
    "streaming": [None, [], "frames.onnx", 5],
    "streaming.frame_hop": [0, -1, 4001, 1.5, "50", None, float("nan"), 10**30],
    "streaming.n_fft": [0, -256, 10**9, 4001, "256", 2.5],
    "streaming.frames_per_window": [0, -1, 4001, 10**6, "x"],
    "streaming.frames": [None, 5, "../../etc/passwd", "frames.txt", "/abs/path.onnx", ""],
    "streaming.head": [None, 5, "a/b.onnx", "head"],
    "streaming.frames_sha256": ["abc", 5, [], "0" * 65],
    "presets": [[], "balanced", 5],
    "presets.balanced": [None, 5, {"threshold": 2}, {"threshold": "x"}, {}],
    "presets.high": [{"threshold": 0.5, "recall": 3}, {"threshold": float("nan")}],
}


def _hostile_card(rng: np.random.Generator, card: dict) -> tuple[str, bytes]:
    """A broken card (what it is, its bytes): a field out of its documented range or type,
    swapped or identical halves, or not a JSON object at all."""
    roll = rng.random()
    text = json.dumps(card)
    if roll < 0.65:
        dotted = list(CARD_FIELDS)[rng.integers(len(CARD_FIELDS))]
        value = CARD_FIELDS[dotted][rng.integers(len(CARD_FIELDS[dotted]))]
        if dotted.startswith("streaming.") and not isinstance(card.get("streaming"), dict):
            dotted, value = "threshold", "abc"  # a card without halves: break what it has
        if dotted.startswith("presets.") and not isinstance(card.get("presets"), dict):
            card["presets"] = {}
        _set(card, dotted, value)
        return f"{dotted} = {value!r}", json.dumps(card).encode()
    if roll < 0.75 and isinstance(card.get("streaming"), dict):
        s = card["streaming"]
        if rng.random() < 0.5:
            s["frames"], s["head"] = s["head"], s["frames"]
            s["frames_sha256"], s["head_sha256"] = s.get("head_sha256"), s.get("frames_sha256")
            return "streaming halves swapped", json.dumps(card).encode()
        s["head"], s["head_sha256"] = s["frames"], s.get("frames_sha256")
        return "streaming halves the same file", json.dumps(card).encode()
    choices = [
        ("cut short", text[: int(rng.integers(1, len(text)))].encode()),
        ("a JSON list", b"[1, 2, 3]"),
        ("a JSON number", b"5"),
        ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000),
        ("not UTF-8", b'{"name": "\xe9\xff"}'),
        ("a 5,000-digit threshold", b'{"threshold": 1' + b"0" * 5000 + b"}"),
        ("empty", b""),
        ("NUL bytes", b"\x00" * 64),
    ]
    what, data = choices[rng.integers(len(choices))]
    return what, data


NUMERIC_KEYS = ["hop", "threshold", "threads", "batch", "heartbeat", "linger", "wait_subscribers",
                "channel", "stall_timeout", "retry_max", "blocksize", "metrics_port"]  # fmt: skip
TEXT_KEYS = ["station", "events_log", "model", "publish", "catchup", "mqtt", "sensitivity",
             "provider", "start_time", "clips", "metrics_textfile", "device"]  # fmt: skip
TOML_WRONG = ['"ten"', "true", "[1, 2]", "{a = 1}", "nan", "inf", "-inf", "1e400", "-1",
              "1" + "0" * 30, "1" + "0" * 5000, "1979-05-27T07:32:00Z"]  # fmt: skip
TOML_TEXT_WRONG = ["5", "true", "[1, [2]]", "{a = 1}", "1.5", '""', "nan", "1979-05-27"]


def _hostile_toml(rng: np.random.Generator) -> tuple[str, bytes]:
    """A broken config file (what it is, its bytes): deep nesting, a value of the wrong type or
    out of range, an unknown key, bytes that are not TOML or not UTF-8."""
    roll = rng.random()
    if roll < 0.4:
        key = NUMERIC_KEYS[rng.integers(len(NUMERIC_KEYS))]
        value = TOML_WRONG[rng.integers(len(TOML_WRONG))]
        if value == "-1" and key in ("threshold",):
            value = "2"
        if value in ("-1",) and key in ("hop",):
            value = "0"
        if value == "1" + "0" * 30 and key == "min_free_mb":
            value = "-1"
        return f"{key} = {value[:20]}", f"{key} = {value}\n".encode()
    if roll < 0.6:
        key = TEXT_KEYS[rng.integers(len(TEXT_KEYS))]
        value = TOML_TEXT_WRONG[rng.integers(len(TOML_TEXT_WRONG))]
        if value == '""' and key in ("model", "clips", "metrics_textfile"):
            value = "5"  # an empty path there means the default (no clips, the shipped model)
        return f"{key} = {value}", f"{key} = {value}\n".encode()
    depth = int(rng.integers(500, 20_000))
    choices = [
        (f"publish nested {depth} deep", ("publish = " + "[" * depth + "]" * depth).encode()),
        (f"inline tables nested {depth} deep",
         ("hop = " + "{a = " * depth + "1" + "}" * depth).encode()),
        (f"{depth} dotted table levels", ("[" + ".".join(["t"] * depth) + "]\n").encode()),
        ("unknown key", b"colour = 'blue'\n"),
        ("not UTF-8", b'station = "\xe9\xff"\n'),
        ("a NUL byte", b"hop = 0.5\x00\n"),
        ("random bytes", rng.bytes(int(rng.integers(1, 200)))),
        ("a key twice", b"hop = 0.5\nhop = 0.25\n"),
        ("a table for a key", b"[hop]\nx = 1\n"),
        ("an array of tables", b"[[publish]]\nx = 1\n"),
    ]  # fmt: skip
    what, data = choices[rng.integers(len(choices))]
    if what == "random bytes" and _valid_empty_toml(data):
        data = b"= " + data
    return what, data


def _valid_empty_toml(data: bytes) -> bool:
    """Random bytes that happen to be valid TOML setting nothing (blank lines, a comment)."""
    import tomllib

    try:
        return tomllib.loads(data.decode()) == {}
    except (UnicodeDecodeError, tomllib.TOMLDecodeError, ValueError, RecursionError):
        return False


BAD_OPTIONS: list[tuple[str, str | None]] = [
    ("--threads", "2147483648"), ("--threads", "65"), ("--threads", "-1"),
    ("--linger", "3e6"), ("--linger", "nan"), ("--hop", "0"), ("--hop", "inf"), ("--hop", "2.5"),
    ("--batch", "0"), ("--batch", "4097"), ("--heartbeat", "86401"), ("--heartbeat", "-inf"),
    ("--threshold", "1.5"), ("--threshold", "nan"), ("--channel", "-1"), ("--channel", "256"),
    ("--start-time", "9999-12-31T23:59:59Z"), ("--start-time", "0001-01-01"),
    ("--start-time", "yesterday"), ("--publish", "tcp://127.0.0.1:-1"),
    ("--publish", "tcp://127.0.0.1:70000"), ("--publish", "udp://x:1"), ("--publish", "ipc://"),
    ("--catchup", "tcp://127.0.0.1:0"), ("--station", "x" * 129), ("--station", "a\nb"),
    ("--mqtt", "http://example.org/x"), ("--sensitivity", "loud"), ("--provider", "tpu"),
    ("--metrics-port", "0"), ("--metrics-port", "65536"), ("--no-such-option", None),
    ("--wait-subscribers", "10001"), ("--blocksize", "65537"),
]  # fmt: skip


def _fifo(folder: Path) -> list:
    os.mkfifo(folder / "events.fifo")
    return ["--events-log", folder / "events.fifo"]


def _unix_socket(folder: Path) -> list:
    import socket

    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(folder / "events.sock"))
    return ["--events-log", folder / "events.sock"]


def _model_copy(folder: Path, model: Path, edit: Callable[[Path, Path], None]) -> list:
    copy = folder / "model"
    shutil.copytree(model.parent, copy)
    edit(copy / model.name, copy / (model.stem + ".json"))
    return ["--model", copy / model.name, "--sensitivity", "balanced"]


def _without_threshold(onnx: Path, card: Path) -> None:
    data = json.loads(card.read_text())
    data.pop("threshold", None)
    data.pop("presets", None)
    card.write_text(json.dumps(data))


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


# the README's "Bad input and exit statuses" examples: (what, status, builder of the arguments
# after the common ones, given the case's folder, the model and the intact recording)
DOCUMENTED: list[tuple[str, int, Callable[[Path, Path, Path], list]]] = [
    ("a missing recording", RUNTIME, lambda f, m, r: ["--replay", f / "none.wav"]),
    ("an empty recording", RUNTIME,
     lambda f, m, r: ["--replay", (f / "e.wav").write_bytes(b"") or f / "e.wav"]),
    ("a channel the file lacks", RUNTIME, lambda f, m, r: ["--replay", r, "--channel", "1"]),
    ("an unknown device", RUNTIME, lambda f, m, r: ["--device", "no-such-card"]),
    ("a clips folder that cannot be made", RUNTIME, lambda f, m, r: [
        "--replay", r, "--clips", (f / "file").write_bytes(b"") or f / "file" / "clips"]),
    ("an event log on a full disk", RUNTIME,
     lambda f, m, r: ["--replay", r, "--events-log", "/dev/full"]),
    ("neither --replay nor --device", USAGE, lambda f, m, r: []),
    ("both --replay and --device", USAGE, lambda f, m, r: ["--replay", r, "--device", "hw:9"]),
    ("a bad --mqtt URL", USAGE, lambda f, m, r: ["--replay", r, "--mqtt", "mqtt://"]),
    ("--start-time before 1900", USAGE,
     lambda f, m, r: ["--replay", r, "--start-time", "1899-12-31T23:59:59Z"]),
    ("a missing config file", CONFIG, lambda f, m, r: ["--replay", r, "--config", f / "no.toml"]),
    ("a config file that is a folder", CONFIG,
     lambda f, m, r: ["--replay", r, "--config", _mkdir(f / "c")]),
    ("an event log that is a FIFO", CONFIG, lambda f, m, r: ["--replay", r, *_fifo(f)]),
    ("an event log that is a socket", CONFIG, lambda f, m, r: ["--replay", r, *_unix_socket(f)]),
    ("an event log that is a folder", CONFIG,
     lambda f, m, r: ["--replay", r, "--events-log", _mkdir(f / "l")]),
    ("a missing model", CONFIG, lambda f, m, r: ["--replay", r, "--model", f / "none.onnx"]),
    ("a corrupt model (no card)", CONFIG, lambda f, m, r: ["--replay", r, "--threshold", "0.5",
        *_model_copy(f, m, lambda onnx, card: card.unlink() or onnx.write_bytes(b"\x08" * 999))]),
    ("a model that is not the file its card describes", CONFIG, lambda f, m, r: [
        "--replay", r, *_model_copy(
            f, m, lambda onnx, card: onnx.write_bytes(onnx.read_bytes() + b"\0"))]),
    ("a card without a threshold and no --threshold", CONFIG,
     lambda f, m, r: ["--replay", r, *_model_copy(f, m, _without_threshold)]),
]  # fmt: skip


# -- running one case ---------------------------------------------------------------------------
_CONTEXT = zmq.Context()
# this checkout's daemon, whatever the case's working folder; no terminal, no journal
_ENV = {k: v for k, v in os.environ.items() if k not in ("JOURNAL_STREAM", "NOTIFY_SOCKET")}
_ENV["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


class Collector(threading.Thread):
    """A SUB socket on the case's endpoint: every upcall the daemon publishes."""

    def __init__(self, endpoint: str) -> None:
        super().__init__(daemon=True)
        self.endpoint = endpoint
        self.events: list[dict] = []
        self.bad: list[str] = []
        self.done = threading.Event()
        self.ready = threading.Event()

    def run(self) -> None:
        sock = _CONTEXT.socket(zmq.SUB)
        sock.setsockopt(zmq.SUBSCRIBE, b"upcall")
        sock.connect(self.endpoint)
        self.ready.set()
        try:
            quiet_since = None
            while True:
                if sock.poll(50):
                    quiet_since = None
                    parts = sock.recv_multipart()
                    try:
                        self.events.append(json.loads(parts[1]))
                    except (IndexError, ValueError) as e:
                        self.bad.append(f"unreadable message {parts!r:.80}: {e}")
                elif self.done.is_set():
                    quiet_since = quiet_since or time.monotonic()
                    if time.monotonic() - quiet_since > 0.3:
                        break
        finally:
            sock.close(linger=0)


def run_case(case: Case, timeout: float = TIMEOUT_S) -> Outcome:
    """Run the case's daemon (killed after `timeout`: a hang), then check what it did."""
    endpoint = next(str(a) for a in case.args if isinstance(a, str) and a.startswith("ipc://"))
    collector = Collector(endpoint)
    collector.start()
    collector.ready.wait(5)
    argv = [a if isinstance(a, bytes) else os.fsencode(str(a)) for a in (*DAEMON, *case.args)]
    started = time.monotonic()
    with open(case.folder / "stdout", "wb") as out, open(case.folder / "stderr", "wb") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                cwd=case.folder, env=_ENV)  # fmt: skip
        status, peak_kb, hung = _wait(proc, started, timeout, case.send)
    wall = time.monotonic() - started
    collector.done.set()
    collector.join(10)
    stderr_bytes = (case.folder / "stderr").read_bytes()
    outcome = Outcome(case, status, stderr_bytes.decode("utf-8", "replace"), wall, peak_kb, hung)
    check(outcome, stderr_bytes, (case.folder / "stdout").read_bytes(), collector)
    return outcome


def _wait(proc: subprocess.Popen, started: float, timeout: float,
          send: tuple[int, float] | None) -> tuple[int | None, int, bool]:  # fmt: skip
    """Wait for the process, sending the case's signal on time and killing a hang; returns
    (exit status or None if hung, peak RSS in kB, hung).

    The peak is the new image's VmHWM, polled from /proc, plus each of its children's (the
    publisher process) once it has exec'd: their sum bounds what the unit's cgroup holds at
    once. wait4's ru_maxrss
    would count the forking parent's memory too (the kernel keeps the pre-exec high-water
    mark). A signal's
    delay counts from when the daemon's own handlers are in (SIGTERM caught): before that the
    interpreter itself is still starting, which no program can make print one line."""
    hung, sent, handled_at, peaks = False, send is None, None, {proc.pid: 0}
    while True:
        try:
            fields = _status(proc.pid)
            if handled_at is None and int(fields.get("SigCgt", "0"), 16) & (1 << 14):
                handled_at = time.monotonic()
            peaks[proc.pid] = max(peaks[proc.pid], int(fields.get("VmHWM", "0 kB").split()[0]))
            own = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
            for pid in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                if Path(f"/proc/{pid}/cmdline").read_bytes() == own:
                    continue  # between fork and exec it still shows the daemon's own memory
                hwm = int(_status(int(pid)).get("VmHWM", "0 kB").split()[0])
                peaks[int(pid)] = max(peaks.get(int(pid), 0), hwm)
        except (OSError, ValueError):
            pass
        peak_kb = sum(peaks.values())
        if proc.poll() is not None:
            return proc.returncode, peak_kb, hung
        now = time.monotonic()
        if not sent and handled_at is not None and now - handled_at >= send[1]:
            proc.send_signal(send[0])
            sent = True
        if now - started > timeout:
            proc.kill()
            proc.wait()
            return None, peak_kb, True
        time.sleep(0.005)


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.split(":", 1) for line in f if ":" in line)


SUMMARY = re.compile(r"^whale-listen: done: .*, (\d+) event\(s\), \d+ dropped sample")
# what the daemon's lines may not hold raw: controls, DEL, C1, bidirectional overrides
UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def read_log(path: Path) -> tuple[list[dict], list[str]]:
    """The upcall events of an event log, and what is wrong with its lines."""
    if not path.is_file():  # absent, or /dev/full (which reads as endless zeros)
        return [], []
    return _events(path.read_bytes().splitlines(), f"event log {path.name}")


def _events(lines: list[bytes], where: str) -> tuple[list[dict], list[str]]:
    events, bad = [], []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad.append(f"{where} line {number} is not JSON: {line[:80]!r}")
            continue
        if isinstance(record, dict) and record.get("type") == "upcall":
            events.append(record)
    return events, bad


def read_keys(path: Path) -> list[tuple]:
    return [event_key(e) for e in read_log(path)[0]]


def check(outcome: Outcome, stderr: bytes, stdout: bytes, collector: Collector) -> None:
    """Fill outcome.problems with every way the run broke the README's promises."""
    case, problems = outcome.case, outcome.problems
    if outcome.hung:
        problems.append(f"hung: killed after {outcome.wall_s:.0f} s")
    if outcome.traceback:
        problems.append("traceback on stderr")
    if outcome.status is not None and outcome.status not in case.expect:
        problems.append(f"exit status {outcome.status}, expected one of {sorted(case.expect)}")
    try:
        lines = [line for line in stderr.decode("utf-8").split("\n") if line]
    except UnicodeDecodeError:
        problems.append("stderr is not valid UTF-8 (a name printed unescaped)")
        lines = []
    strangers = [x for x in lines if not x.startswith("whale-listen: ") or UNSAFE.search(x)]
    if strangers:
        problems.append(f"stderr lines not the daemon's own or not escaped: {strangers[:3]!r}")
    errors = [line for line in lines if line.startswith("whale-listen: error:")]
    if len(errors) > 1 or (errors and lines[-1] != errors[0]):
        problems.append(f"{len(errors)} error line(s), the last line not the error: {lines[-3:]!r}")
    if outcome.status not in (None, 0, 130) and not errors:
        problems.append(f"exit status {outcome.status} without an error line")
    logged, bad = read_log(case.log)
    problems += bad
    outcome.logged, outcome.published = len(logged), len(collector.events)
    problems += collector.bad
    # the events the log never took are printed on stdout (README): the last place left
    unlogged, bad = _events(stdout.splitlines(), "stdout")
    problems += bad
    if unlogged and str(case.log) != "/dev/full":
        problems.append(f"{len(unlogged)} event(s) the log did not take, on a disk with room")
    kept = {e.get("id") for e in logged + unlogged}
    lost = [e for e in collector.events if e.get("id") not in kept]  # published, never saved
    summary = [int(m.group(1)) for line in lines if (m := SUMMARY.match(line))]
    counted = summary[0] - len(kept) if summary and summary[0] > len(kept) else 0
    outcome.events_lost = len(lost) + counted
    if outcome.events_lost:
        problems.append(
            f"events lost: {len(lost)} published but neither logged nor printed, summary "
            f"{summary[:1]} against {len(logged)} logged and {len(unlogged)} printed"
        )
    if len(collector.events) < len(logged) and not outcome.hung:
        problems.append(f"{len(logged)} events logged, only {len(collector.events)} published")
    if case.before_s is not None and case.intact is not None:
        expected = [k for k in case.intact if k[1] < case.before_s - MARGIN_S]
        got = [event_key(e) for e in logged][: len(expected)]
        if got != expected:
            outcome.events_lost += max(1, len(set(expected) - set(got)))  # missing, or moved
            problems.append(
                f"events before the cut at {case.before_s:.2f} s differ from the intact file's: "
                f"{got} against {expected}"
            )


def run_many(
    fuzzer: Fuzzer,
    indices: list[int],
    workers: int,
    every_kind: bool = False,
    on_outcome: Callable[[Outcome], None] | None = None,
    keep: Callable[[Outcome], bool] = lambda o: bool(o.problems),
    timeout: float = TIMEOUT_S,
) -> list[Outcome]:
    """Draw and run the cases in `workers` threads; each case's folder is removed unless kept.
    every_kind: case i is of kind i modulo the kinds (a short run still tries them all)."""
    from concurrent.futures import ThreadPoolExecutor

    kinds = list(Fuzzer.WEIGHTS)

    def one(index: int) -> Outcome:
        kind = kinds[index % len(kinds)] if every_kind else None
        try:
            case = fuzzer.case(index, kind)
        except Exception as e:  # the generator's own bug: reported, and the run goes on
            folder = fuzzer.workdir / f"case-{index:05d}"
            case = Case(fuzzer.seed, index, "generator", repr(e), [], CLEAN, folder, folder)
            failed = Outcome(case, None, "", 0.0, 0, problems=[f"the generator failed: {e!r}"])
            if on_outcome is not None:
                on_outcome(failed)
            return failed
        outcome = run_case(case, timeout)
        if on_outcome is not None:
            on_outcome(outcome)
        if not keep(outcome):
            shutil.rmtree(case.folder, ignore_errors=True)
        return outcome

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, indices))
