"""The training loop: balanced augmented batches, BCE on logits, AdamW with a cosine schedule,
and hard-negative mining over every call-free window of the training recordings; and an
ensemble: several such runs from consecutive seeds, in parallel processes, averaged into one model.

Deterministic for a given --seed on the CPU (torch and numpy seeded, one sampler RNG; ensemble
members each on one thread, so the machine's core count does not change their weights).
"""

import copy
import math
import multiprocessing
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from queue import Empty, Queue

import numpy as np
import torch
from torch import nn

from detector.constants import WINDOW_SAMPLES
from train.data import Clip, Recording
from train.evaluate import mean_logit_scorer
from train.frontend import FrontEndConfig
from train.net import CHANNELS, TIME_POOL, UpcallDetector, combine
from train.sampler import Mix, WindowSampler


@dataclass
class TrainConfig:
    steps: int = 3600
    batch_size: int = 96
    lr: float = 3e-3
    weight_decay: float = 1e-3
    warmup: int = 100
    mine_every: int = 400  # steps between hard-negative mining passes (0: never)
    mine_keep: int = 1500  # hardest call-free windows kept for sampling
    spec_mask: float = 0.5  # probability of one time and one frequency mask per example
    ema: float = 0.995  # exported weights: a moving average of the trained ones (0: off)
    seed: int = 0
    device: str = "cpu"


def pick_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def learning_rate(step: int, cfg: TrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))


def spec_augment(image: torch.Tensor, prob: float, gen: torch.Generator) -> torch.Tensor:
    """Blank one random band and one random stretch of frames in a share of the examples."""
    b, _, n_freq, n_time = image.shape
    image = image.clone()
    for i in range(b):
        if torch.rand(1, generator=gen).item() < prob:
            f = int(torch.randint(1, 5, (1,), generator=gen))
            f0 = int(torch.randint(0, n_freq - f, (1,), generator=gen))
            image[i, :, f0 : f0 + f, :] = 0
            t = int(torch.randint(1, 12, (1,), generator=gen))
            t0 = int(torch.randint(0, n_time - t, (1,), generator=gen))
            image[i, :, :, t0 : t0 + t] = 0
    return image


@torch.no_grad()
def update_average(averaged: nn.Module, model: nn.Module, decay: float) -> None:
    """Exponential moving average of weights (and BatchNorm statistics): a smoother model that
    generalises better to recordings it never saw than the last noisy step does."""
    for a, m in zip(averaged.state_dict().values(), model.state_dict().values(), strict=True):
        if a.dtype.is_floating_point:
            a.mul_(decay).add_(m, alpha=1 - decay)
        else:
            a.copy_(m)


@torch.no_grad()
def score_windows(
    model: UpcallDetector, windows: np.ndarray, device: str, batch: int = 512
) -> np.ndarray:
    model.eval()
    out = []
    for i in range(0, len(windows), batch):
        x = torch.from_numpy(np.ascontiguousarray(windows[i : i + batch], dtype=np.float32))
        out.append(torch.sigmoid(model(x.to(device))).cpu().numpy())
    model.train()
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def mine_hard_negatives(
    model: UpcallDetector, sampler: WindowSampler, keep: int, device: str
) -> tuple[list[tuple[int, int]], float]:
    """Score every call-free window the sampler draws from (0.25-s hop); keep the highest
    scoring ones."""
    if not sampler.negatives:
        return [], 0.0
    candidates = np.array(sampler.negatives, dtype=np.int64)  # [N, (recording, start)], in order
    scores: list[np.ndarray] = []
    for i, rec in enumerate(sampler.recordings):
        starts = candidates[candidates[:, 0] == i, 1]
        if len(starts) == 0:
            continue
        view = np.lib.stride_tricks.sliding_window_view(rec.audio, WINDOW_SAMPLES)
        scores.append(score_windows(model, view[starts], device))
    all_scores = np.concatenate(scores)
    order = np.argsort(all_scores)[::-1][:keep]
    return [(int(i), int(st)) for i, st in candidates[order]], float(np.mean(all_scores > 0.5))


Teacher = Callable[[np.ndarray], np.ndarray]  # windows [n, samples] -> probabilities [n]


def soft_targets(labels: np.ndarray, teacher: np.ndarray, weight: float) -> np.ndarray:
    """Distillation targets: each label pulled toward the teacher's probability. Binary cross-
    entropy is linear in its target, so this is (1 - weight) x the label's loss plus weight x
    the teacher's."""
    return ((1.0 - weight) * labels + weight * teacher).astype(np.float32)


def train(
    sampler: WindowSampler,
    cfg: TrainConfig,
    frontend: FrontEndConfig | None = None,
    time_pool: int = TIME_POOL,
    log: Callable[[str], None] = print,
    progress: Callable[[int, float], None] | None = None,
    init: UpcallDetector | None = None,
    freeze: Callable[[nn.Module], None] | None = None,
    channels: tuple[int, ...] = CHANNELS,
    teacher: Teacher | None = None,
    distil_weight: float = 0.5,
) -> UpcallDetector:
    """Train a new detector (conv widths `channels`, first time pooling `time_pool`), or
    fine-tune a copy of `init` (then `freeze` fixes what must not move, e.g. folded batch
    norms). With a teacher, the targets are soft: see soft_targets."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    device = pick_device(cfg.device)
    if init is not None:
        model = copy.deepcopy(init).to(device).train()
    else:
        model = UpcallDetector(frontend, channels, time_pool).to(device)
    if freeze is not None:
        freeze(model)
    sampler.unseen = model.frontend.cfg.unseen_samples  # calls go where this model can see them
    params = [p for p in model.net.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    averaged = copy.deepcopy(model).eval() if cfg.ema else model
    t0, running = time.time(), None
    for step in range(cfg.steps):
        if cfg.mine_every and step > 0 and step % cfg.mine_every == 0:
            sampler.hard, fa_share = mine_hard_negatives(averaged, sampler, cfg.mine_keep, device)
            log(f"step {step}: mined {len(sampler.hard)} hard negatives ({fa_share:.4f} > 0.5)")
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step, cfg)
        x, y = sampler.batch(cfg.batch_size)
        if teacher is not None:
            y = soft_targets(y, teacher(x), distil_weight)
        x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
        with torch.no_grad():
            image = model.frontend(x)
        image = spec_augment(image, cfg.spec_mask, gen)
        loss = loss_fn(model.net(image), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cfg.ema:
            update_average(averaged, model, cfg.ema if step >= cfg.warmup else 0.0)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if progress is not None:
            progress(step, running)
        if step % 100 == 0 or step == cfg.steps - 1:
            log(
                f"step {step:5d}  loss {running:.4f}  lr {learning_rate(step, cfg):.5f}  "
                f"{time.time() - t0:.0f}s"
            )
    averaged.eval()
    return averaged


def train_model(
    recordings: list[Recording],
    clips: list[Clip],
    seed: int = 0,
    steps: int = 3600,
    batch_size: int = 96,
    frontend: dict | None = None,
    net: dict | None = None,
    mix: dict | None = None,
    distil: dict | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> UpcallDetector:
    """One detector from a recipe given as plain values (JSON-able, for crossval's workers and
    its report): frontend and mix are FrontEndConfig and Mix fields, net the CNN's `channels`
    (a list of widths) and `time_pool`, distil the `teachers` (ONNX paths) and `weight`."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    sampler = WindowSampler(recordings, clips, mix=Mix(**(mix or {})), seed=seed)
    if sampler.shapes is not None:
        log(sampler.shapes.describe())
    cfg = TrainConfig(steps=steps, batch_size=batch_size, seed=seed, device="cpu")
    net = net or {}
    return train(
        sampler,
        cfg,
        FrontEndConfig(**(frontend or {})),
        net.get("time_pool", TIME_POOL),
        log=log,
        channels=tuple(net.get("channels", CHANNELS)),
        teacher=mean_logit_scorer(distil["teachers"], threads=1) if distil else None,
        distil_weight=distil["weight"] if distil else 0.5,
    ).cpu()


@dataclass
class MemberJob:
    """Everything one ensemble member's process needs (pickled into a fresh interpreter)."""

    index: int
    recordings: list[Recording]
    clips: list[Clip]
    cfg: TrainConfig
    frontend: FrontEndConfig | None
    time_pool: int
    mix: Mix | None = None
    channels: tuple[int, ...] = CHANNELS


def _train_member(job: MemberJob, queue: Queue) -> dict:
    """One member on one thread: the same weights whatever the machine or the scheduling.
    Progress (steps done, loss) and mining lines (step -1) go to the parent through `queue`."""
    torch.set_num_threads(1)
    sampler = WindowSampler(job.recordings, job.clips, mix=job.mix, seed=job.cfg.seed)

    def progress(step: int, loss: float) -> None:
        if step % 20 == 0 or step == job.cfg.steps - 1:
            queue.put((job.index, step + 1, loss))

    def log(line: str) -> None:
        if line.startswith("step") and "mined" in line:
            queue.put((job.index, -1, line))

    model = train(
        sampler,
        job.cfg,
        job.frontend,
        job.time_pool,
        log=log,
        progress=progress,
        channels=job.channels,
    )
    return {k: v.cpu() for k, v in model.state_dict().items()}


def train_ensemble(
    recordings: list[Recording],
    clips: list[Clip],
    cfg: TrainConfig,
    members: int,
    frontend: FrontEndConfig | None = None,
    time_pool: int = TIME_POOL,
    mix: Mix | None = None,
    log: Callable[[str], None] = print,
    progress: Callable[[int, float], None] | None = None,
    channels: tuple[int, ...] = CHANNELS,
) -> UpcallDetector:
    """Train `members` detectors with seeds seed, seed+1, ... in parallel processes, each on one
    thread, and combine them into one model that averages their logits. progress gets the total
    of steps done over all members and the mean of their running losses."""
    ctx = multiprocessing.get_context("spawn")
    jobs = [
        MemberJob(
            k,
            recordings,
            clips,
            replace(cfg, seed=cfg.seed + k),
            frontend,
            time_pool,
            mix,
            channels,
        )
        for k in range(members)
    ]
    done_steps, losses = [0] * members, [float("nan")] * members
    with ctx.Manager() as manager, ProcessPoolExecutor(members, mp_context=ctx) as pool:
        queue = manager.Queue()
        futures = [pool.submit(_train_member, job, queue) for job in jobs]
        while True:
            try:
                k, step, value = queue.get(timeout=0.5)
            except Empty:
                if all(f.done() for f in futures):
                    break
                continue
            if step < 0:
                log(f"member {k}: {value}")
                continue
            new_steps = step - done_steps[k]
            done_steps[k], losses[k] = step, value
            if progress is not None:
                progress(new_steps, float(np.nanmean(losses)))
        states = [f.result() for f in futures]
    detectors = []
    for state in states:
        detector = UpcallDetector(frontend, channels, time_pool)
        detector.load_state_dict(state)
        detectors.append(detector.eval())
    log(f"trained {members} members (seeds {cfg.seed}..{cfg.seed + members - 1})")
    return combine(detectors)
