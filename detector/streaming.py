"""Offline scoring (replay, archive scans) that runs the convolutions once per stream, same events.

The shipped model normalises each 2-s window on its own: PCEN's smoother restarts at the
window's first frame, so past the log-mel frames no feature is shared exactly by the four
windows that overlap at a 0.5-s hop, and the model cannot be cut further without changing it.
But events need only the windows at or above the threshold (which ones, and their exact scores
for the peak), so `StreamScorer` scores in two passes:

1. A screen: the head's own weights run once over the whole stream (the smoother run across
   the stream instead of restarting per window, the convolutions on one pooling grid), and each
   window's logit is read off that shared map: about a quarter of the per-window CNN's work.
2. Every window whose screen logit comes within `MARGIN_LOGIT` of the threshold's logit is
   scored again by the full per-window model (`upcall.onnx`, its raw samples in); the others are
   reported as 0.0 (below the threshold, which is all the event merger asks of them).

The events are then exactly the per-window model's, provided that no window at or above the
threshold has a screen logit more than the margin below it. That is measured, not proven:
tests/test_streaming.py holds it on every file of ../shared/data and on long synthetic streams
(the largest shortfall seen is 3.5 logits, against a margin of 6). A re-exported model must pass
that test again before it ships.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detector import onnxproto
from detector.constants import WINDOW_SAMPLES
from detector.model import Model

MARGIN_LOGIT = 4.5
EMPTY = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
MAX_PUSH = 1 << 17  # samples scored at a time (65 s): a whole file pushed at once stays bounded
PCEN_TAIL = ["Add", "Pow", "Div", "Add", "Pow", "Sub", "Unsqueeze"]  # after the smoother


@dataclass
class Screen:
    """The shipped halves' weights, rearranged to score a whole stream approximately."""

    dft: np.ndarray  # [n_fft, 2 * bins]: the frames half's windowed DFT kernels, as columns
    mel: np.ndarray  # [n_mels, bins]
    scale: float  # PCEN: mel power brought to the scale it was trained on
    smooth: float  # the smoother's weight on the newest frame
    eps: float
    alpha: float
    delta: float
    root: float
    offset: float
    front: object  # onnxruntime: frames [n, n_fft] -> PCEN-scaled mel power [n_mels, n]
    session: object  # onnxruntime: PCEN image [1, 1, n_mels, frames] -> conv map [1, C, F, cells]
    stride: int  # frames per cell of the conv map
    cells: int  # cells one window's max runs over (floor pooling drops the window's last frames)
    context: int  # frames each side that a cell depends on, rounded up to whole cells
    hidden: tuple[np.ndarray, np.ndarray]  # head: [hidden, C * F] weights, bias
    out: tuple[np.ndarray, np.ndarray]  # [1, hidden], [1]
    conv_flops_per_frame: float  # 2 x multiply-adds of the conv stack per stream frame

    def frames_power(self, samples: np.ndarray, hop: int) -> np.ndarray:
        """Mel power [n_mels, frames] of every whole frame of `samples`, PCEN-scaled."""
        frames = np.ascontiguousarray(sliding_window_view(samples, self.dft.shape[0])[::hop])
        return self.front.run(None, {"frames": frames})[0]

    def pcen(self, power: np.ndarray, state: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The per-window PCEN with its smoother run on across the stream from `state` (the
        smoothed level before these frames): (image [n_mels, frames], state after them)."""
        level = smooth(power, state, self.smooth)
        gain = np.exp(np.float32(self.alpha) * np.log(level + np.float32(self.eps)))
        x = power / gain + np.float32(self.delta)
        x = np.sqrt(x) if self.root == 0.5 else np.power(x, np.float32(self.root))
        return (x - np.float32(self.offset)).astype(np.float32), level[:, -1].copy()

    def logits(self, image: np.ndarray, first_cell: np.ndarray, full: np.ndarray) -> np.ndarray:
        """Screen logits of windows whose cells start at `first_cell` (indices into the conv map
        of `image`); `full` marks windows that span `cells` cells, the others one fewer."""
        fmap = self.session.run(None, {"image": image[None, None]})[0][0]  # [C, F, cells]
        fmap = fmap.reshape(-1, fmap.shape[-1])
        last = fmap.shape[1] - 1  # at the end of a stream the last window may lack a cell
        pooled = fmap[:, first_cell]
        for j in range(1, self.cells):
            cell = fmap[:, np.minimum(first_cell + j, last)]
            np.maximum(pooled, cell if j < self.cells - 1 else np.where(full, cell, 0), out=pooled)
        w1, b1 = self.hidden
        w2, b2 = self.out
        hidden = np.maximum(w1 @ pooled + b1[:, None], 0)
        return (w2 @ hidden + b2[:, None])[0].astype(np.float64)


def smooth(x: np.ndarray, state: np.ndarray, s: float, chunk: int = 32) -> np.ndarray:
    """The first-order low-pass y[t] = (1 - s) y[t-1] + s x[t] along the last axis of x
    [bands, n], from y[-1] = state [bands]. In numpy as two products (within each chunk of
    frames from a zero start, then each chunk's carry from the ones before it): scipy's lfilter
    would cost the daemon's start-up a slow import, and a loop per frame is slower still."""
    bands, n = x.shape
    chunks = -(-n // chunk)
    padded = np.zeros((bands, chunks * chunk), dtype=np.float32)
    padded[:, :n] = x
    keep = np.float64(1 - s)
    lag = np.arange(chunk)
    within = np.tril(s * keep ** (lag[:, None] - lag[None, :]).clip(0))  # [t, j]
    local = (padded.reshape(-1, chunk) @ within.T.astype(np.float32)).reshape(bands, chunks, chunk)
    k = np.arange(chunks)
    across = np.tril(keep ** (chunk * (k[:, None] - k[None, :])).clip(0))  # chunk i -> after k
    after = local[:, :, -1] @ across.T.astype(np.float32)
    after += state[:, None] * (keep ** (chunk * (k + 1))).astype(np.float32)
    before = np.concatenate([state[:, None], after[:, :-1]], axis=1)
    level = local + before[:, :, None] * (keep ** (lag + 1)).astype(np.float32)
    return level.reshape(bands, -1)[:, :n]


def load_screen(model: Model) -> Screen | None:
    """The screen for a model whose halves have the shipped layout (a PCEN head over
    conv/ReLU/max-pool blocks, a max over time and two dense layers); None for any other."""
    spec = model.streaming
    if not spec:
        return None
    try:
        dft, mel = _frames_weights(Path(model.path.parent, spec["frames"]).read_bytes())
        nodes, w = onnxproto.read_graph(Path(model.path.parent, spec["head"]).read_bytes())
        nodes = [n for n in nodes if n.op != "Constant"]
        pcen = _pcen_constants(nodes, w)
        convs = _conv_stack(nodes, w, ops_start=[n.op for n in nodes].index("Conv") + 8)
    except (StopIteration, KeyError, IndexError, ValueError, TypeError):
        return None
    if pcen is None or convs is None:
        return None
    graph, weights, output, stride, blocks, radius, dense = convs
    cells, bands, flops, per = int(spec["frames_per_window"]), mel.shape[0], 0.0, 1
    for size, (pool_f, pool_t) in blocks:  # cost per frame: each block at its own resolution
        flops += 2 * size * bands / per
        cells, bands, per = cells // pool_t, bands // pool_f, per * pool_t
    import onnxruntime as ort

    data = onnxproto.model(
        graph,
        weights,
        [onnxproto.value_info("image", [1, 1, mel.shape[0], "frames"])],
        [onnxproto.value_info(output, None)],
    )
    options = model.session.get_session_options()
    try:
        session = ort.InferenceSession(data, options, providers=model.session.get_providers())
        front = ort.InferenceSession(
            _front_graph(dft, mel, pcen["scale"]), options, providers=["CPUExecutionProvider"]
        )
    except Exception:  # onnxruntime's own exception types: score without the screen
        return None
    return Screen(
        dft=dft,
        mel=mel,
        **pcen,
        front=front,
        session=session,
        stride=stride,
        cells=cells,
        context=-(-radius // stride) * stride,
        hidden=dense[0],
        out=dense[1],
        conv_flops_per_frame=flops,
    )


def _front_graph(dft: np.ndarray, mel: np.ndarray, scale: float) -> bytes:
    """Frames [n, n_fft] -> mel power [n_mels, n], scaled as PCEN wants it, in onnxruntime: its
    products keep to the session's threads (numpy's BLAS would take every core whatever
    --threads says) and run a little faster on one core. The squared real and imaginary parts
    go through the mel matrix side by side, so no slicing is needed: [mel, mel] @ [re^2; im^2]."""
    both = (np.concatenate([mel, mel], axis=1) * np.float32(scale)).astype(np.float32)
    nodes = [
        onnxproto.node("MatMul", ["frames", "dft"], ["spec"]),
        onnxproto.node("Mul", ["spec", "spec"], ["square"]),
        onnxproto.node("Gemm", ["mel", "square"], ["power"], transB=1),
    ]
    weights = [onnxproto.tensor("dft", dft), onnxproto.tensor("mel", both)]
    return onnxproto.model(
        nodes,
        weights,
        [onnxproto.value_info("frames", ["n", dft.shape[0]])],
        [onnxproto.value_info("power", None)],
    )


def _frames_weights(data: bytes) -> tuple[np.ndarray, np.ndarray]:
    """The frames half's DFT kernels as columns [n_fft, 2 * bins], its mel matrix [n_mels, bins]."""
    nodes, w = onnxproto.read_graph(data)
    dft = next(w[n.inputs[1]] for n in nodes if n.op == "Conv")[:, 0, :]
    mel = next(w[i] for n in nodes if n.op == "MatMul" for i in n.inputs if i in w)
    return np.ascontiguousarray(dft.T), np.ascontiguousarray(mel)


def _pcen_constants(nodes: list[onnxproto.Node], w: dict) -> dict | None:
    """PCEN's constants from the head's first nodes (train/frontend.py's pcen), or None."""
    at = [n.op for n in nodes].index("Conv")
    smoother = nodes[at]
    if smoother.ints.get("group", 1) == 1 or [n.op for n in nodes[at + 1 : at + 8]] != PCEN_TAIL:
        return None  # not a PCEN head
    scale = next(float(w[n.inputs[1]]) for n in nodes[:at] if n.op == "Mul" and n.inputs[1] in w)
    eps, alpha, _, delta, root, offset = (
        float(w[n.inputs[1]]) if n.inputs[1] in w else None for n in nodes[at + 1 : at + 7]
    )
    kernel = w[smoother.inputs[1]]  # the newest frame's tap is the smoother's weight
    smooth = float(kernel[0, 0, -1])
    return dict(
        scale=scale, smooth=smooth, eps=eps, alpha=alpha, delta=delta, root=root, offset=offset
    )


def _conv_stack(nodes: list[onnxproto.Node], w: dict, ops_start: int) -> tuple | None:
    """The head's conv/ReLU/max-pool blocks as a new graph, from node `ops_start` on:
    (nodes, weights, output name, frames per cell, (kernel size, (frequency pool, time pool))
    per block, receptive radius in frames, the two dense layers), or None when the head is laid
    out otherwise."""
    ops = [n.op for n in nodes]
    graph, weights, name, stride, blocks, radius, i = [], [], "image", 1, [], 0, ops_start
    while ops[i] == "Conv" and ops[i + 1] == "Relu":
        conv, k = nodes[i], len(weights) // 2
        weights += [
            onnxproto.tensor(f"w{k}", w[conv.inputs[1]]),
            onnxproto.tensor(f"b{k}", w[conv.inputs[2]]),
        ]
        graph.append(onnxproto.node("Conv", [name, f"w{k}", f"b{k}"], [f"c{k}"], **conv.ints))
        graph.append(onnxproto.node("Relu", [f"c{k}"], [f"r{k}"]))
        radius += (conv.ints["kernel_shape"][1] // 2) * stride
        name, i = f"r{k}", i + 2
        blocks.append((w[conv.inputs[1]].size, (1, 1)))
        if ops[i] == "MaxPool":
            pool = nodes[i].ints
            if pool["kernel_shape"] != pool["strides"] or any(pool.get("pads", [0])):
                return None
            graph.append(onnxproto.node("MaxPool", [name], [f"p{k}"], **pool))
            name, i = f"p{k}", i + 1
            stride *= pool["strides"][1]
            blocks[-1] = (blocks[-1][0], tuple(pool["strides"]))
    if ops[i : i + 6] != ["ReduceMax", "Flatten", "Gemm", "Relu", "Gemm", "Squeeze"]:
        return None
    if nodes[i].ints.get("axes") != [3] or not graph:
        return None
    dense = [(w[n.inputs[1]], w[n.inputs[2]]) for n in (nodes[i + 2], nodes[i + 4])]
    return graph, weights, name, stride, blocks, radius, dense


def shares_frames(model: Model, window_hop: int) -> bool:
    """The model has streaming halves and the hop is a whole number of their frames: what both
    the frame scorer and the stream scorer need."""
    spec = getattr(model, "streaming", None)  # stand-ins for the model may lack it
    return bool(spec) and window_hop % int(spec["frame_hop"]) == 0


def threshold_logit(threshold: float) -> float:
    """The threshold as a logit; -inf when every window is above it (threshold <= 0)."""
    if threshold <= 0:
        return -math.inf
    p = min(threshold, 1 - 1e-7)
    return math.log(p / (1 - p))


class StreamScorer:
    """Screen every window from one shared conv map, rescore the near ones with the full model.

    Window i starts at sample i * window_hop as everywhere; a window is scored once the frames
    its screen needs are in (its own plus `context` frames of lookahead, under 0.2 s), so call
    `flush()` at the end of the stream for the last ones.
    """

    def __init__(
        self,
        model: Model,
        window_hop: int,
        threshold: float,
        batch: int = 64,
        screen: Screen | None = None,
        margin: float = MARGIN_LOGIT,
    ) -> None:
        self.screen = screen or load_screen(model)
        if self.screen is None or not self.supports(model, window_hop):
            raise ValueError("the model has no screen, or the window hop is not whole frames")
        spec = model.streaming
        self.model = model
        self.batch = batch
        self.window_hop = window_hop
        self.frame_hop = int(spec["frame_hop"])
        self.n_fft = int(spec["n_fft"])
        self.step = window_hop // self.frame_hop  # frames between window starts
        self.cut = threshold_logit(threshold) - margin
        self.span = self.screen.cells * self.screen.stride  # frames a window's max covers
        self.rescored = 0  # windows the full model scored
        self.windows = 0
        self._pending: list[np.ndarray] = []
        self._samples = np.zeros(0, dtype=np.float32)  # stream samples from _sample0 on
        self._sample0 = 0
        self._seen = 0
        self._image = np.zeros((self.screen.mel.shape[0], 0), dtype=np.float32)
        self._image0 = 0  # stream frame of _image[:, 0]
        self._frames = 0  # frames computed so far
        self._level: np.ndarray | None = None  # the smoother's state after the last frame
        self._next = 0  # next window
        self.last_logits = np.zeros(0)  # screen logits of the windows last returned (tests)

    @staticmethod
    def supports(model: Model, window_hop: int) -> bool:
        return shares_frames(model, window_hop)

    def _needs(self, window: int) -> int:
        """Frames the screen of `window` reads: its cells plus the context after them."""
        last_cell = (window * self.step + self.span) // self.screen.stride
        return last_cell * self.screen.stride + self.screen.context

    def push(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        if len(block) > MAX_PUSH:
            parts, logits = [], []
            for i in range(0, len(block), MAX_PUSH):
                parts.append(self.push(block[i : i + MAX_PUSH]))
                logits.append(self.last_logits[: len(parts[-1][0])])
            self.last_logits = np.concatenate(logits)
            return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        self._seen += len(block)
        self._pending.append(block)
        need = (self._needs(self._next) - 1) * self.frame_hop + self.n_fft
        if self._seen < max(need, self._next * self.window_hop + WINDOW_SAMPLES):
            self.last_logits = np.zeros(0)
            return EMPTY
        return self._score(final=False)

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        """The complete windows still waiting for lookahead: the end of the stream."""
        return self._score(final=True)

    def _add_frames(self) -> None:
        self._samples = np.concatenate([self._samples, *self._pending])
        self._pending = []
        have = 1 + (self._seen - self.n_fft) // self.frame_hop if self._seen >= self.n_fft else 0
        if have <= self._frames:
            return
        first = self._frames * self.frame_hop - self._sample0
        last = (have - 1) * self.frame_hop + self.n_fft - self._sample0
        power = self.screen.frames_power(self._samples[first:last], self.frame_hop)
        if self._level is None:  # the stream's first frame stands for the level before it
            self._level = power[:, 0].copy()
        image, self._level = self.screen.pcen(power, self._level)
        self._image = np.concatenate([self._image, image], axis=1)
        self._frames = have

    def _score(self, final: bool) -> tuple[np.ndarray, np.ndarray]:
        self.last_logits = np.zeros(0)
        self._add_frames()
        last = (self._seen - WINDOW_SAMPLES) // self.window_hop  # last complete window
        while not final and last >= self._next and self._needs(last) > self._frames:
            last -= 1
        count = last - self._next + 1
        if count <= 0:
            return EMPTY
        windows = np.arange(self._next, last + 1, dtype=np.int64)
        stride, first_frame = self.screen.stride, windows * self.step
        first_cell = -(-first_frame // stride)
        full = (first_frame + self.span) // stride - first_cell == self.screen.cells
        f0 = max(0, int(first_cell[0]) * stride - self.screen.context)
        f1 = min(self._frames, self._needs(last))
        image = self._image[:, f0 - self._image0 : f1 - self._image0]
        logits = self.screen.logits(image, first_cell - f0 // stride, full)
        self.last_logits = logits
        scores = np.zeros(count, dtype=np.float32)
        near = np.nonzero(logits >= self.cut)[0]
        if len(near):
            offsets = windows[near] * self.window_hop - self._sample0
            cut = sliding_window_view(self._samples, WINDOW_SAMPLES)
            for i in range(0, len(near), self.batch):
                rows = near[i : i + self.batch]
                scores[rows] = self.model.score(cut[offsets[i : i + self.batch]])
        self.rescored += len(near)
        self.windows += count
        self._next = last + 1
        self._trim()
        return windows * self.window_hop, scores

    def _trim(self) -> None:
        """Drop samples and image frames that no later window or frame needs."""
        keep = min(self._next * self.window_hop, self._frames * self.frame_hop)
        if keep > self._sample0:
            self._samples = self._samples[keep - self._sample0 :]
            self._sample0 = keep
        first_cell = -(-self._next * self.step // self.screen.stride)
        keep = max(0, first_cell * self.screen.stride - self.screen.context)
        keep = min(keep, self._frames)
        if keep > self._image0:
            self._image = self._image[:, keep - self._image0 :]
            self._image0 = keep
