"""Model cost: parameters, FLOPs per window, ONNX size; the same replay on CUDA when there is one.

Parameters and FLOPs come from the model card (written by train/export.py); the parameters are
cross-checked against the ONNX graph's initializers.
"""

import json

import numpy as np

from bench.common import Context, Figure, Section, md_table, median
from detector.model import card_path

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
    ]
    return section


def _mflops(flops: int | None) -> str:
    return f"{flops / 1e6:,.1f}" if flops else "-"
