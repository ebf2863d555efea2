"""Replay scorers side by side for a pcen-stream model: `python bench/stream_map.py MODEL.onnx`.

`bench/run.py` measures the shipped model, which has no stream half. This puts a pcen-stream
model's map scorer (detector/stream_map.py) beside the shipped model's screen and beside the
same model's frames + head, on the benchmark hour's first 900 s, in the replay loop's 64,000-
sample pushes, best of 3, one onnxruntime thread. Run it under
`taskset -c 1` for one core. Prints a Markdown table.
"""

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python bench/...` from anywhere

from bench.common import load_average, md_table, prepare_hour  # noqa: E402
from bench.scorers import SECONDS, best_x  # noqa: E402
from detector.constants import SAMPLE_RATE  # noqa: E402
from detector.model import DEFAULT_MODEL, load_model  # noqa: E402
from detector.scoring import FrameScorer, make_scorer  # noqa: E402

HOP = SAMPLE_RATE // 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a pcen-stream model (with its card)")
    parser.add_argument("--repeats", type=int, default=3, help="best of N [3]")
    args = parser.parse_args(argv)
    import soundfile as sf

    with tempfile.TemporaryDirectory() as scratch:
        hour, note = prepare_hour(Path(scratch))
        audio, _ = sf.read(hour, dtype="float32", frames=SECONDS * SAMPLE_RATE)
    stream, shipped = load_model(args.model, "cpu", 1), load_model(DEFAULT_MODEL, "cpu", 1)
    rows = []
    for name, model, make in (
        ("map scorer (this model)", stream, lambda m: make_scorer(m, HOP, 64, m.threshold)),
        ("frames + head (this model)", stream, lambda m: FrameScorer(m, HOP)),
        ("screen (the shipped model)", shipped, lambda m: make_scorer(m, HOP, 64, m.threshold)),
    ):
        x, scorer = best_x(lambda m=model, f=make: f(m), audio, args.repeats)
        again = getattr(scorer, "rescored", None)
        share = f"{100 * again / max(1, scorer.windows):.1f}%" if again is not None else "-"
        rows.append([name, type(scorer).__name__, f"{x:,.0f}", share])
    print(f"{SECONDS} s of {note}; load average {load_average()}\n")
    print("\n".join(md_table(["scorer", "class", "x real time", "windows rescored"], rows)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
