"""Offline scoring (replay, archive scans) of a pcen-stream model: each frame and conv cell once.

A pcen-stream model (train/frontend.py) normalises each frame by the frames just before it and
convolves valid in time, so a window's logit is a max over cells of one map that every window of
the stream shares. Its third export, `upcall.stream.onnx`, computes that map once over many
windows and returns each window's logit: the per-window model's numbers, up to the rounding of
the same sums taken over a longer input (tests/test_stream_map.py holds it under 1e-5 logits).

Events must not depend on that rounding. So a window whose logit lies within `MARGIN_LOGIT` of
the threshold's, or of the top of its run of windows over the threshold (it could be the event's
peak), is scored again by the whole per-window model (`upcall.onnx`, its raw samples in): the
windows over the threshold and every event's peak score are then exactly the per-window model's,
for a few whole-model windows per event. (The shipped per-window PCEN model cannot be shared
so: `detector.streaming` screens it instead.)
"""

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from detector.constants import WINDOW_SAMPLES
from detector.errors import WhaleError
from detector.model import Model

MARGIN_LOGIT = 1e-3  # thousands of times the rounding measured between the two exports
SLACK = 1e-6  # probability: covers float32 rounding of a score near the threshold or a peak
EMPTY = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))
MAX_WINDOWS = 256  # windows per call of the stream half (about 2 min): a whole file stays bounded


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large logits of either sign


class MapScorer:
    """Every window's logit from the model's stream half; the whole model where rounding could
    change an event. Window i starts at sample i * window_hop, as everywhere; a window is scored
    as soon as its last sample is in (no lookahead), so `flush()` has nothing left to give."""

    def __init__(
        self,
        model: Model,
        window_hop: int,
        threshold: float,
        batch: int = 64,
        margin: float = MARGIN_LOGIT,
    ) -> None:
        if not self.supports(model, window_hop):
            raise ValueError("the model has no stream half for this window hop")
        self.model = model
        self.batch = batch
        self.window_hop = window_hop
        self.threshold = threshold
        self.margin = margin
        self.rescored = 0  # windows the whole model scored
        self.windows = 0
        self.last_logits = np.zeros(0)  # stream logits of the windows last returned (tests)
        self._samples = np.zeros(0, dtype=np.float32)  # from the next window's first sample on
        self._next = 0  # next window

    @staticmethod
    def supports(model: Model, window_hop: int) -> bool:
        spec = getattr(model, "streaming", None)
        if not spec or getattr(model, "stream_session", None) is None:
            return False
        return window_hop == int(spec.get("stream_window_hop", 0))

    def push(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        block = np.asarray(block, dtype=np.float32).reshape(-1)
        self._samples = np.concatenate([self._samples, block])
        count = (len(self._samples) - WINDOW_SAMPLES) // self.window_hop + 1
        if count <= 0:
            self.last_logits = np.zeros(0)
            return EMPTY
        hop, parts = self.window_hop, []
        for first in range(0, count, MAX_WINDOWS):
            n = min(MAX_WINDOWS, count - first)
            chunk = self._samples[first * hop : (first + n - 1) * hop + WINDOW_SAMPLES]
            logits = self.model.stream_logits(chunk)
            if logits.shape != (n,):
                raise WhaleError(
                    f"model {self.model.path}: its stream half gave {len(logits)} logits for "
                    f"{n} windows"
                )
            parts.append(logits)
        logits = np.concatenate(parts).astype(np.float64)
        scores = self._exact(logits)
        self.last_logits = logits
        starts = (self._next + np.arange(count, dtype=np.int64)) * hop
        self._samples = self._samples[count * hop :]
        self._next += count
        self.windows += count
        return starts, scores

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        return EMPTY  # every complete window was scored as it arrived

    def _exact(self, logits: np.ndarray) -> np.ndarray:
        """Scores of the pushed windows: the stream's, and the whole model's where an event
        could depend on rounding (near the threshold, or near the top of a run over it)."""
        scores = _sigmoid(logits).astype(np.float32)
        low = _sigmoid(logits - self.margin) - SLACK
        high = _sigmoid(logits + self.margin) + SLACK
        again = (low <= self.threshold) & (self.threshold <= high)
        self._rescore(again, scores)
        over = scores >= self.threshold
        edges = np.flatnonzero(np.diff(np.concatenate([[0], over.view(np.int8), [0]])))
        peaks = np.zeros_like(again)
        for a, b in zip(edges[::2], edges[1::2], strict=True):
            peaks[a:b] = high[a:b] >= _sigmoid(logits[a:b].max() - self.margin)
        self._rescore(peaks & ~again, scores)
        return scores

    def _rescore(self, which: np.ndarray, scores: np.ndarray) -> None:
        rows = np.flatnonzero(which)
        if not len(rows):
            return
        windows = sliding_window_view(self._samples, WINDOW_SAMPLES)[:: self.window_hop]
        for i in range(0, len(rows), self.batch):
            part = rows[i : i + self.batch]
            scores[part] = self.model.score(windows[part])
        self.rescored += len(rows)
