"""Every data layout loads, and every broken input is a WhaleError naming the file."""

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from detector.audio import resample
from detector.constants import SAMPLE_RATE
from detector.errors import WhaleError
from train.data import (
    detect_layout,
    load_annotations,
    load_background,
    load_folders,
    load_kaggle_csv,
    load_recordings,
)
from train.synth import noise, synthetic_recording, upcall

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
FORMATS = {".aiff": "AIFF", ".aif": "AIFF", ".wav": "WAV", ".flac": "FLAC"}


def write(path: Path, audio_2k: np.ndarray, rate: int = SAMPLE_RATE, stereo: bool = False) -> Path:
    """Write 2 kHz audio as a file at `rate` (stereo: the signal on channel 0, silence on 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    audio = resample(audio_2k, SAMPLE_RATE, rate) if rate != SAMPLE_RATE else audio_2k
    if stereo:
        audio = np.stack([audio, np.zeros_like(audio)], axis=1)
    sf.write(path, audio, rate, format=FORMATS[path.suffix], subtype="PCM_16")
    return path


def clip_audio(rng: np.random.Generator, with_call: bool) -> np.ndarray:
    """A 2-s clip: noise, plus an up-call in the middle when asked."""
    clip = 0.05 * noise(rng, 2 * SAMPLE_RATE)
    if with_call:
        call = upcall(rng)
        at = (len(clip) - len(call)) // 2
        clip[at : at + len(call)] += 0.3 * call
    return clip.astype(np.float32)


@pytest.fixture
def kaggle(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    rows = ["clip_name,label"]
    for i, label in enumerate([1, 0, 1, 0]):
        write(tmp_path / "train" / f"train{i}.aiff", clip_audio(rng, bool(label)))
        rows.append(f"train{i}.aiff,{label}")
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    return tmp_path


@pytest.fixture
def folders(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    for ext in (".aiff", ".wav", ".flac"):
        write(tmp_path / "right_whale" / f"call{ext}", clip_audio(rng, True))
    write(tmp_path / "no_right_whale" / "quiet.wav", clip_audio(rng, False), 44100, stereo=True)
    write(tmp_path / "no_right_whale" / "quiet.aif", clip_audio(rng, False))
    (tmp_path / "no_right_whale" / "notes.txt").write_text("not audio")
    return tmp_path


@pytest.fixture
def annotated(tmp_path: Path) -> tuple[Path, dict[str, list[tuple[float, float]]]]:
    """Two recordings (2 kHz WAV; 44.1 kHz stereo FLAC) and an annotations.csv with labels."""
    truth = {}
    rows = ["filename,start,end,label"]
    for seed, (name, rate, stereo) in enumerate(
        [("a.wav", SAMPLE_RATE, False), ("b.flac", 44100, True)]
    ):
        audio, calls = synthetic_recording(np.random.default_rng(seed), 40, 3)
        write(tmp_path / name, audio, rate, stereo)
        truth[name] = calls
        rows += [f"{name},{start:.4f},{end:.4f},upcall" for start, end in calls]
    rows.append("a.wav,1.0,2.0,0")  # a negative example row: skipped
    (tmp_path / "annotations.csv").write_text("\n".join(rows) + "\n")
    return tmp_path / "annotations.csv", truth


def test_kaggle_layout(kaggle: Path) -> None:
    clips = load_kaggle_csv(kaggle)
    assert [c.label for c in clips] == [1, 0, 1, 0]
    assert all(len(c.audio) == 2 * SAMPLE_RATE and c.audio.dtype == np.float32 for c in clips)
    assert clips[0].source.endswith("train0.aiff")
    assert detect_layout(kaggle) == "kaggle"
    assert detect_layout(kaggle / "train.csv") == "kaggle"
    assert len(load_kaggle_csv(kaggle / "train.csv")) == 4


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("name,label\ntrain0.aiff,1\n", "header"),
        ("clip_name,label\ntrain0.aiff,2\n", "line 2.*label '2'"),
        ("clip_name,label\ntrain0.aiff,1\nmissing.aiff,0\n", "line 3.*missing.aiff"),
        ("clip_name,label\n", "no clips"),
    ],
)
def test_kaggle_errors(kaggle: Path, csv_text: str, message: str) -> None:
    (kaggle / "train.csv").write_text(csv_text)
    with pytest.raises(WhaleError, match=f"train.csv.*{message}"):
        load_kaggle_csv(kaggle)


def test_kaggle_missing_csv(tmp_path: Path) -> None:
    with pytest.raises(WhaleError, match="train.csv: no such file"):
        load_kaggle_csv(tmp_path)


def test_folders_layout(folders: Path) -> None:
    clips = load_folders(folders)
    assert sorted(c.label for c in clips) == [0, 0, 1, 1, 1]
    assert {Path(c.source).suffix for c in clips} == {".aiff", ".wav", ".flac", ".aif"}
    assert all(len(c.audio) == 2 * SAMPLE_RATE for c in clips)  # 44.1 kHz clip resampled
    positives = [c.audio for c in clips if c.label == 1]
    negatives = [c.audio for c in clips if c.label == 0]
    assert min(np.std(a) for a in positives) > max(np.std(a) for a in negatives)
    assert detect_layout(folders) == "folders"


def test_folders_errors(folders: Path) -> None:
    for path in (folders / "right_whale").iterdir():
        path.unlink()
    with pytest.raises(WhaleError, match="right_whale: no audio files"):
        load_folders(folders)
    (folders / "right_whale").rmdir()
    with pytest.raises(WhaleError, match="right_whale: missing"):
        load_folders(folders)


def test_annotated_recordings(annotated: tuple[Path, dict]) -> None:
    csv_path, truth = annotated
    assert load_annotations(csv_path) == {name: sorted(c) for name, c in truth.items()}
    recordings = load_recordings(csv_path)
    assert [r.path.name for r in recordings] == ["a.wav", "b.flac"]
    for recording in recordings:
        assert len(recording.audio) == 40 * SAMPLE_RATE
        expected = truth[recording.path.name]
        assert len(recording.calls) == len(expected)
        for got, want in zip(recording.calls, expected, strict=True):
            assert got == pytest.approx(want, abs=1e-4)
    assert detect_layout(csv_path) == "annotations"
    assert detect_layout(csv_path.parent) == "annotations"
    assert [r.path.name for r in load_recordings(csv_path.parent)] == ["a.wav", "b.flac"]


def test_annotations_with_separate_audio_dir(annotated: tuple[Path, dict], tmp_path: Path) -> None:
    csv_path, _ = annotated
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    csv_path.rename(moved / "annotations.csv")
    with pytest.raises(WhaleError, match="annotations.csv.*a.wav is missing"):
        load_recordings(moved / "annotations.csv")
    assert len(load_recordings(moved / "annotations.csv", audio_dir=tmp_path)) == 2


def test_call_past_end_of_file(annotated: tuple[Path, dict]) -> None:
    csv_path, _ = annotated
    with csv_path.open("a") as handle:
        handle.write("a.wav,39.5,41.0,1\n")
    with pytest.raises(WhaleError, match=r"39\.500-41\.000 s runs past the end of .*a\.wav"):
        load_recordings(csv_path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("a.wav,abc,2.0,1", "line 2: start 'abc' is not a number"),
        ("a.wav,3.0,2.0,1", "line 2: end 2.0 is not after start 3.0"),
        ("a.wav,nan,2.0,1", "line 2: start 'nan' must be a finite"),
        ("a.wav,1.0,2.0,humpback", "line 2: unknown label 'humpback'"),
        ("a.wav,1.0", "line 2: expected 4 columns"),
    ],
)
def test_annotation_errors(tmp_path: Path, row: str, message: str) -> None:
    path = tmp_path / "calls.csv"
    path.write_text("filename,start,end,label\n" + row + "\n")
    with pytest.raises(WhaleError, match=f"calls.csv {message}"):
        load_annotations(path)


def test_annotation_file_missing_or_bad_header(tmp_path: Path) -> None:
    with pytest.raises(WhaleError, match="nope.csv: no such"):
        load_annotations(tmp_path / "nope.csv")
    (tmp_path / "x.csv").write_text("file,begin,finish\na.wav,1,2\n")
    with pytest.raises(WhaleError, match="x.csv: header"):
        load_annotations(tmp_path / "x.csv")


def test_label_column_is_optional(tmp_path: Path) -> None:
    (tmp_path / "calls.csv").write_text("filename,start,end\nr.wav, 2.5 ,3.5\nr.wav,1,2\n")
    assert load_annotations(tmp_path / "calls.csv") == {"r.wav": [(1.0, 2.0), (2.5, 3.5)]}


RAVEN_HEADER = (
    "Selection\tView\tChannel\tBegin Time (s)\tEnd Time (s)\tLow Freq (Hz)\tHigh Freq (Hz)"
)


def test_raven_table_named_after_its_recording(tmp_path: Path) -> None:
    audio, calls = synthetic_recording(np.random.default_rng(5), 30, 2)
    write(tmp_path / "buoy.aiff", audio)
    lines = [RAVEN_HEADER]
    for i, (start, end) in enumerate(calls, start=1):
        for view in ("Waveform 1", "Spectrogram 1"):  # Raven lists each selection per view
            lines.append(f"{i}\t{view}\t1\t{start:.4f}\t{end:.4f}\t50\t250")
    table = tmp_path / "buoy.Table.1.selections.txt"
    table.write_text("\n".join(lines) + "\n")
    expected = [(round(s, 4), round(e, 4)) for s, e in calls]
    assert load_annotations(table) == {"buoy.aiff": expected}
    assert detect_layout(table) == "annotations"
    (recording,) = load_recordings(table)
    assert recording.path.name == "buoy.aiff" and recording.calls == expected


def test_raven_table_with_begin_file(tmp_path: Path) -> None:
    header = "Selection\tBegin Time (s)\tEnd Time (s)\tBegin File\tFile Offset (s)"
    table = tmp_path / "all.selections.txt"
    table.write_text(f"{header}\n1\t905.0\t906.5\tday2.wav\t5.0\n2\t10.0\t11.0\tday1.wav\t10.0\n")
    assert load_annotations(table) == {"day2.wav": [(5.0, 6.5)], "day1.wav": [(10.0, 11.0)]}


def test_raven_errors(tmp_path: Path) -> None:
    table = tmp_path / "lonely.selections.txt"
    table.write_text(RAVEN_HEADER + "\n1\tWaveform 1\t1\t1.0\t2.0\t50\t250\n")
    with pytest.raises(WhaleError, match="lonely.selections.txt: no 'Begin File'.*lonely"):
        load_annotations(table)
    write(tmp_path / "lonely.wav", np.zeros(SAMPLE_RATE, dtype=np.float32))
    table.write_text(RAVEN_HEADER + "\n1\tWaveform 1\t1\t1.0\tx\t50\t250\n")
    with pytest.raises(WhaleError, match="lonely.selections.txt line 2: end 'x'"):
        load_annotations(table)
    table.write_text("Selection\tBegin\tEnd\n1\t1.0\t2.0\n")
    with pytest.raises(WhaleError, match="not a Raven selection table"):
        load_annotations(table)


def test_background(tmp_path: Path) -> None:
    rng = np.random.default_rng(9)
    first = write(tmp_path / "bg" / "one.wav", 0.1 * noise(rng, 5 * SAMPLE_RATE))
    write(tmp_path / "bg" / "two.flac", 0.1 * noise(rng, 3 * SAMPLE_RATE), 48000)
    recordings = load_background(tmp_path / "bg")
    assert [(r.path.name, len(r.audio), r.calls) for r in recordings] == [
        ("one.wav", 5 * SAMPLE_RATE, []),
        ("two.flac", 3 * SAMPLE_RATE, []),
    ]
    assert len(load_background([first])) == 1
    assert len(load_background(first)) == 1
    assert detect_layout(tmp_path / "bg") == "background"
    assert detect_layout(first) == "background"
    with pytest.raises(WhaleError, match="ghost.wav"):
        load_background([tmp_path / "ghost.wav"])


def test_detect_layout_rejects_unknown(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(WhaleError, match="empty: no recognised data"):
        detect_layout(tmp_path / "empty")
    with pytest.raises(WhaleError, match="missing: no such"):
        detect_layout(tmp_path / "missing")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(WhaleError, match="other.csv: CSV header"):
        detect_layout(tmp_path / "other.csv")
    with pytest.raises(WhaleError, match="empty: no audio files"):
        load_background(tmp_path / "empty")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"real data not present at {SHARED_DATA}")
def test_shared_data_counts() -> None:
    clips = load_folders(SHARED_DATA / "kaggle-sample")
    assert len(clips) == 10 and sum(c.label for c in clips) == 5
    assert detect_layout(SHARED_DATA / "kaggle-sample") == "folders"
    recordings = load_recordings(SHARED_DATA / "dclde2013" / "annotations.csv")
    assert len(recordings) == 6
    assert sum(len(r.calls) for r in recordings) == 91
    assert len({r.path.name.split("_")[2] for r in recordings}) == 3  # three days
    assert all(len(r.audio) == 900 * SAMPLE_RATE for r in recordings)  # 15-min files
    assert detect_layout(SHARED_DATA / "dclde2013") == "annotations"
    assert detect_layout(SHARED_DATA / "background") == "background"
