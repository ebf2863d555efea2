"""Turn a 2 kHz sample stream into (window start, probability) pairs, whatever the block sizes.

Two ways, same numbers: `WindowScorer` cuts 2-s windows and runs the whole model on each;
`FrameScorer` computes each STFT frame of the stream once and runs only the CNN per window.
A third, for offline work (replay, archive scans), gives the same events rather than the same
numbers: `detector.streaming.StreamScorer` screens windows from one shared conv map and scores
only those near the threshold with the whole model; for a pcen-stream model, whose windows share
one map exactly, `detector.stream_map.MapScorer` reads every window's logit off that map.
Every scorer has `push(block)` and `flush()` (the end of the stream: windows still held back for
lookahead).
At a 0.5-s window hop every frame belongs to four windows, so sharing frames removes most of the
front end's cost. It needs the model's streaming halves and a window hop that is a whole number of
frame hops (`window_hop`: samples between windows; `frame_hop`: samples between STFT frames).
"""

import numpy as np

from detector.constants import WINDOW_SAMPLES
from detector.model import Model
from detector.stream_map import MapScorer
from detector.streaming import StreamScorer, load_screen, shares_frames
from detector.windows import Windower

NOTHING = (np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32))


class WindowScorer:
    """Raw windows through the full model (the contract every model supports)."""

    def __init__(self, model: Model, window_hop: int, batch: int = 64) -> None:
        self.model = model
        self.batch = batch
        self.windower = Windower(window_hop, WINDOW_SAMPLES)

    def push(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts, windows = self.windower.push(block)
        scores = [
            self.model.score(windows[i : i + self.batch]) for i in range(0, len(starts), self.batch)
        ]
        return starts, np.concatenate(scores) if scores else np.zeros(0, dtype=np.float32)

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        return NOTHING  # every complete window was scored as it arrived


class FrameScorer:
    """Shared log-mel frames: frame k covers samples [k*frame_hop, k*frame_hop + n_fft)."""

    def __init__(self, model: Model, window_hop: int, batch: int = 64) -> None:
        if not self.supports(model, window_hop):
            raise ValueError("model has no streaming halves, or the window hop is not whole frames")
        spec = model.streaming
        self.model = model
        self.batch = batch
        self.window_hop = window_hop
        self.frame_hop = int(spec["frame_hop"])
        self.n_fft = int(spec["n_fft"])
        self.per_window = int(spec["frames_per_window"])
        self.step = window_hop // self.frame_hop  # frames between window starts
        self.pending: list[np.ndarray] = []  # samples not yet in a complete frame
        self.seen = 0  # samples pushed
        self.frames: np.ndarray | None = None  # [n_mels, k]: frames still needed by windows
        self.first_frame = 0  # stream index of frames[:, 0]
        self.next_window = 0

    @staticmethod
    def supports(model: Model, window_hop: int) -> bool:
        return shares_frames(model, window_hop)

    def _add_frames(self) -> None:
        samples = np.concatenate(self.pending)
        self.pending = [samples]
        if len(samples) < self.n_fft:
            return
        n_new = 1 + (len(samples) - self.n_fft) // self.frame_hop
        new = self.model.log_mel(samples[: (n_new - 1) * self.frame_hop + self.n_fft])
        self.pending = [samples[n_new * self.frame_hop :]]
        self.frames = new if self.frames is None else np.concatenate([self.frames, new], axis=1)

    def push(self, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.seen += len(block)
        self.pending.append(block.astype(np.float32, copy=False))
        # Live blocks are small (tens of ms): run the model only once the next window's last
        # sample has arrived, one frames call and one head call per window hop instead of per block.
        if self.seen < self.next_window * self.window_hop + WINDOW_SAMPLES:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        self._add_frames()
        if self.frames is None:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
        have = self.first_frame + self.frames.shape[1]  # frames [0, have) exist
        last = (have - self.per_window) // self.step  # last window whose frames all exist
        count = max(0, last - self.next_window + 1)
        scores = np.zeros(0, dtype=np.float32)
        if count:
            offset = self.next_window * self.step - self.first_frame
            view = np.lib.stride_tricks.sliding_window_view(self.frames, self.per_window, axis=1)
            images = view[:, offset : offset + (count - 1) * self.step + 1 : self.step]
            images = images.transpose(1, 0, 2)  # [count, n_mels, per_window]
            scores = np.concatenate(
                [
                    self.model.score_log_mel(images[i : i + self.batch])
                    for i in range(0, count, self.batch)
                ]
            )
        starts = (self.next_window + np.arange(count, dtype=np.int64)) * self.window_hop
        self.next_window += count
        # frames no window needs again (all of them when windows skip frames: a window hop > 2 s)
        drop = min(self.next_window * self.step - self.first_frame, self.frames.shape[1])
        if drop > 0:
            self.frames = self.frames[:, drop:]
            self.first_frame += drop
        return starts, scores

    def flush(self) -> tuple[np.ndarray, np.ndarray]:
        return NOTHING  # every complete window was scored as it arrived


Scorer = WindowScorer | FrameScorer | StreamScorer | MapScorer


def make_scorer(
    model: Model, window_hop: int, batch: int = 64, threshold: float | None = None
) -> Scorer:
    """Offline (a threshold given): a pcen-stream model's map scorer (exact, shared map), else
    the stream scorer when the model has a screen. Otherwise, and live, where their larger
    calls (and the screen's lookahead) would add latency: the shared-frame scorer when the model
    and the window hop allow it, else whole windows."""
    if threshold is not None and MapScorer.supports(model, window_hop):
        return MapScorer(model, window_hop, threshold, batch)
    if threshold is not None and StreamScorer.supports(model, window_hop):
        screen = load_screen(model)
        if screen is not None:
            return StreamScorer(model, window_hop, threshold, batch, screen)
    if FrameScorer.supports(model, window_hop):
        return FrameScorer(model, window_hop, batch)
    return WindowScorer(model, window_hop, batch)
