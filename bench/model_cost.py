"""Model cost: parameters, FLOPs per window, ONNX size; the same replay on CUDA when there is one.

Parameters and FLOPs come from the model card (written by train/export.py); the parameters are
cross-checked against the ONNX graph's initializers. The CNN half is also quantised to int8
(onnxruntime static quantisation, calibrated on the hour's own windows) and timed against the
float graph, because the replay goals need a cheaper CNN and int8 is the usual first try.
"""

import json
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import Context, Figure, Section, md_table, median
from detector.constants import SAMPLE_RATE
from detector.model import card_path, load_model

INT8_WINDOWS = 512  # calibration and timing windows (0.5-s hop: about 4 minutes of audio)
INT8_BATCH = 64

NO_GPU = "not measured: no GPU machine lent to this task"


def onnx_parameters(path) -> int:
    """Values stored in the graph (initializers): batch-norm statistics and DFT kernels too."""
    import onnx

    graph = onnx.load(str(path)).graph
    return int(sum(np.prod(t.dims) for t in graph.initializer))


def cuda_replay(ctx: Context) -> tuple[float | None, str]:
    """In-process replay of the hour on the CUDA provider, if onnxruntime offers it."""
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        return None, NO_GPU
    from bench.throughput import inprocess_replay

    runs = [inprocess_replay(ctx, 1, 0.5, 256, provider="cuda")[0] for _ in range(ctx.repeats)]
    return median(runs), "in-process loop, hop 0.5 s, batch 256, CUDAExecutionProvider"


def head_windows(ctx: Context) -> tuple[Path, np.ndarray] | None:
    """The CNN half's file and log-mel windows cut from the hour with the 0.5-s hop."""
    model = load_model(ctx.model, "cpu", 1)
    stream = model.streaming
    if stream is None:
        return None
    import soundfile as sf

    frames = stream["frames_per_window"]
    step = int(round(0.5 * SAMPLE_RATE / stream["frame_hop"]))
    n = (INT8_WINDOWS - 1) * step + frames
    audio, _ = sf.read(
        ctx.audio, dtype="float32", frames=(n - 1) * stream["frame_hop"] + stream["n_fft"]
    )
    mel = model.log_mel(audio)
    windows = np.stack([mel[:, i : i + frames] for i in range(0, mel.shape[1] - frames + 1, step)])
    return ctx.model.parent / stream["head"], windows[:INT8_WINDOWS]


def int8_head(ctx: Context) -> tuple[list[list[str]], str]:
    """Microseconds per window of the float CNN half and its int8 versions (1 thread)."""
    try:
        import onnxruntime as ort
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )
    except ImportError as e:  # onnx is in the train extra
        return [], f"not measured: {e}"
    cut = head_windows(ctx)
    if cut is None:
        return [], "not measured: the model has no streaming halves"
    head, windows = cut

    class Calibration(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(
                {"logmel": windows[i : i + INT8_BATCH]} for i in range(0, len(windows), INT8_BATCH)
            )

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1

    def per_window_us(path: Path) -> tuple[float, np.ndarray]:
        sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        out = [
            sess.run(None, {"logmel": windows[i : i + INT8_BATCH]})[0]
            for i in range(0, len(windows), INT8_BATCH)
        ]
        runs = []
        for _ in range(ctx.repeats):
            t0 = time.perf_counter()
            for i in range(0, len(windows), INT8_BATCH):
                sess.run(None, {"logmel": windows[i : i + INT8_BATCH]})
            runs.append((time.perf_counter() - t0) / len(windows) * 1e6)
        return median(runs), np.concatenate(out).reshape(-1)

    base_us, base_p = per_window_us(head)
    rows = [["float32", f"{base_us:.0f}", "1.00x", "-"]]
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in (QuantFormat.QDQ, QuantFormat.QOperator):
            out = Path(tmp) / f"head_{fmt.name}.onnx"
            quantize_static(
                str(head),
                str(out),
                Calibration(),
                quant_format=fmt,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
            us, p = per_window_us(out)
            rows.append(
                [
                    f"int8 ({fmt.name})",
                    f"{us:.0f}",
                    f"{base_us / us:.2f}x",
                    f"{np.abs(p - base_p).max():.4f}",
                ]
            )
    best = max(base_us / float(r[1]) for r in rows[1:])
    ctx.results["int8_speedup"] = best
    note = (
        f"{len(windows)} windows of the hour, batch {INT8_BATCH}, 1 thread: "
        f"best {best:.2f}x the float speed"
    )
    return rows, note


def run(ctx: Context) -> Section:
    section = Section("Model cost")
    card_file = card_path(ctx.model)
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    arch = card.get("architecture", {})
    params = arch.get("parameters")
    flops = arch.get("flops_per_window")
    size_kb = ctx.model.stat().st_size / 1e3
    stored = onnx_parameters(ctx.model)
    cuda_x, cuda_note = cuda_replay(ctx)
    int8_rows, int8_note = int8_head(ctx)
    notebook = ctx.results.get("notebook")
    section.figures += [
        Figure("Model parameters (card)", params, "", note=f"{stored:,} values stored in the ONNX"),
        Figure("Model FLOPs per 2-s window (card)", flops / 1e6 if flops else None, "MFLOPs"),
        Figure("ONNX file size", size_kb, "kB"),
        Figure("Replay on the CUDA provider", cuda_x, "x real time", note=cuda_note),
    ]
    rows = [
        ["whale-listen model", f"{params:,}" if params else "-", _mflops(flops), f"{size_kb:.0f}"]
    ]
    if notebook:
        rows.append(
            ["notebook AlexNet", f"{notebook['params']:,}", _mflops(notebook["flops"]), "-"]
        )
    section.body += [
        f"Model: {ctx.model_note}. FLOPs = 2 x multiply-adds of the DFT, mel product, "
        f"convolutions and dense layers (the card's count).",
        "",
        *md_table(["model", "parameters", "MFLOPs per window", "ONNX kB"], rows),
        "",
        f"CUDA: {cuda_note}.",
        "",
        f"Int8 CNN half: {int8_note}. onnxruntime static quantisation (per-channel int8 "
        "weights, uint8 activations calibrated on the same windows); speed-up against the float "
        "CNN half, and the largest change in any window's probability:",
    ]
    if int8_rows:
        section.body += [
            "",
            *md_table(["CNN half", "us per window", "speed", "largest change in p"], int8_rows),
        ]
    return section


def _mflops(flops: int | None) -> str:
    return f"{flops / 1e6:,.1f}" if flops else "-"
