"""Honest evaluation on held-out recordings, scored the way the daemon scores them.

Windows slide over whole recordings (2 s, 0.5-s hop), consecutive above-threshold windows merge
into events (detector.events, the daemon's own code), and events are matched to annotations as
../shared/data/README.md says: an event is a hit when its span widened by 0.5 s on each side
overlaps an annotated call; recall counts calls overlapped by at least one event; every non-hit
event is a false alarm. Clip AUC: 2-s windows centred on calls vs. windows >= 1 s from any call.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.constants import DEFAULT_HOP_SECONDS, SAMPLE_RATE, WINDOW_SAMPLES
from detector.events import RawEvent, merge_events
from detector.windows import frame_windows
from train.data import Recording

ScoreFn = Callable[[np.ndarray], np.ndarray]
HOP = int(DEFAULT_HOP_SECONDS * SAMPLE_RATE)
MATCH_TOLERANCE_S = 0.5
AP_WINDOWS = 400  # event AP sweeps the distinct scores of this many top-scoring windows
THRESHOLDS = (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.993, 0.995, 0.997, 0.998, 0.999)


def mean_logit_scorer(model_paths: list[Path | str], threads: int = 0) -> ScoreFn:
    """One model's own scores; several models' mean logit (each probability clipped to
    [1e-7, 1 - 1e-7] first, since float32 probabilities saturate at 1): what an ensemble of
    separately trained models gives (`evaluate --model A --model B`), and the teacher a
    distilled model learns from (`crossval --distil-from`)."""
    from detector.model import load_model

    models = [load_model(p, provider="cpu", threads=threads) for p in model_paths]
    if len(models) == 1:
        return models[0].score

    def score(windows: np.ndarray) -> np.ndarray:
        p = np.clip([m.score(windows).astype(np.float64) for m in models], 1e-7, 1 - 1e-7)
        return 1 / (1 + np.exp(-np.log(p / (1 - p)).mean(axis=0)))

    return score


def score_audio(score: ScoreFn, audio: np.ndarray, hop: int = HOP, batch: int = 512):
    """Window starts and scores over a whole recording."""
    starts, windows = frame_windows(audio, hop, WINDOW_SAMPLES)
    scores = np.concatenate(
        [score(windows[i : i + batch]) for i in range(0, len(windows), batch)] or [np.zeros(0)]
    )
    return starts, scores.astype(np.float64)


@dataclass
class Scored:
    """One recording's window scores: the threshold sweep re-merges these, no re-scoring."""

    rec: Recording
    starts: np.ndarray
    scores: np.ndarray

    @property
    def hours(self) -> float:
        return len(self.rec.audio) / SAMPLE_RATE / 3600

    def events(self, threshold: float) -> list[RawEvent]:
        return merge_events(self.starts, self.scores, threshold, HOP, WINDOW_SAMPLES)


def event_span_s(ev: RawEvent) -> tuple[float, float]:
    return ev.start_sample / SAMPLE_RATE, ev.end_sample / SAMPLE_RATE


def match(
    events: list[RawEvent], calls: list[tuple[float, float]]
) -> tuple[list[bool], list[bool]]:
    """(is each event a hit, is each call found) under the README's matching rule."""
    hits, found = [], [False] * len(calls)
    for ev in events:
        s, e = event_span_s(ev)
        s, e = s - MATCH_TOLERANCE_S, e + MATCH_TOLERANCE_S
        overlaps = [j for j, (cs, ce) in enumerate(calls) if s < ce and cs < e]
        hits.append(bool(overlaps))
        for j in overlaps:
            found[j] = True
    return hits, found


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """Probability that a random positive outscores a random negative (ties count half)."""
    if len(pos) == 0 or len(neg) == 0:
        return float("nan")
    allv = np.concatenate([pos, neg])
    order = allv.argsort(kind="mergesort")
    ranks = np.empty(len(allv))
    sorted_v = allv[order]
    # average ranks for ties
    _, first, counts = np.unique(sorted_v, return_index=True, return_counts=True)
    avg = first + (counts - 1) / 2.0 + 1
    ranks[order] = np.repeat(avg, counts)
    r_pos = ranks[: len(pos)].sum()
    return float((r_pos - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def clip_windows(rec: Recording) -> tuple[np.ndarray, np.ndarray]:
    """Positive windows centred on calls; negative windows (1-s grid) >= 1 s from any call."""
    n, half = len(rec.audio), WINDOW_SAMPLES // 2
    pos_starts = [int((s + e) / 2 * SAMPLE_RATE) - half for s, e in rec.calls]
    pos_starts = [min(max(0, p), n - WINDOW_SAMPLES) for p in pos_starts]
    neg_starts = []
    for st in range(0, n - WINDOW_SAMPLES + 1, SAMPLE_RATE):
        a, b = st / SAMPLE_RATE, (st + WINDOW_SAMPLES) / SAMPLE_RATE
        if all(b <= cs - 1.0 or a >= ce + 1.0 for cs, ce in rec.calls):
            neg_starts.append(st)
    view = np.lib.stride_tricks.sliding_window_view(rec.audio, WINDOW_SAMPLES)
    return view[pos_starts], view[neg_starts]


def clip_auc(score: ScoreFn, recordings: list[Recording]) -> float:
    pos, neg = [], []
    for rec in recordings:
        p, n = clip_windows(rec)
        if len(p):
            pos.append(score(p))
        if len(n):
            neg.append(score(n))
    if not pos or not neg:
        return float("nan")
    return auc(np.concatenate(pos), np.concatenate(neg))


def event_row(annotated: list[Scored], background: list[Scored], threshold: float) -> dict:
    """One line of the table: recall, precision, F1, false alarms per hour, at one threshold."""
    n_calls = n_found = n_events = n_hits = 0
    for sc in annotated:
        hits, found = match(sc.events(threshold), sc.rec.calls)
        n_calls += len(found)
        n_found += sum(found)
        n_events += len(hits)
        n_hits += sum(hits)
    ann_hours = sum(sc.hours for sc in annotated)
    bg_events = sum(len(sc.events(threshold)) for sc in background)
    bg_hours = sum(sc.hours for sc in background)
    recall = n_found / n_calls if n_calls else float("nan")
    precision = n_hits / n_events if n_events else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "threshold": threshold,
        "calls": n_calls,
        "found": n_found,
        "recall": round(recall, 4),
        "events": n_events,
        "hits": n_hits,
        "precision": round(precision, 4),
        "f1": round(f1, 4),
        "false_alarms_per_hour": round((n_events - n_hits) / ann_hours, 2) if ann_hours else None,
        "background_false_alarms_per_hour": round(bg_events / bg_hours, 2) if bg_hours else None,
    }


def event_ap(annotated: list[Scored], background: list[Scored]) -> float:
    """Area under the event precision-recall curve, interpolated as in PASCAL VOC: the mean, over
    recall levels 1/N .. N/N, of the best precision reached at that recall or higher (0 where it
    is never reached). One number over every threshold, finer than the best row of the table, for
    comparing recipes on a validation split. Thresholds: each distinct score of the AP_WINDOWS
    highest-scoring windows, where the event set changes, except the lowest score of all (there
    every window fires and a whole file is one event that "finds" every call)."""
    n_calls = sum(len(s.rec.calls) for s in annotated)
    if n_calls == 0:
        return float("nan")
    allv = np.concatenate([s.scores for s in annotated + background])
    best = [0.0] * (n_calls + 1)  # best precision at exactly k calls found
    thresholds = np.unique(np.sort(allv)[-AP_WINDOWS:])
    for t in thresholds[thresholds > allv.min()]:
        row = event_row(annotated, [], float(t))  # recall and precision: annotated files only
        best[row["found"]] = max(best[row["found"]], row["precision"])
    at_least = np.maximum.accumulate(best[::-1])[::-1]  # best precision at k or more found
    return float(np.mean(at_least[1:]))


def evaluate(
    score: ScoreFn,
    annotated: list[Recording],
    background: list[Recording],
    thresholds: tuple[float, ...] | None = THRESHOLDS,
) -> dict:
    """Clip AUC, event AP and the event table over thresholds (None: score quantiles)."""
    scored_ann = [Scored(r, *score_audio(score, r.audio)) for r in annotated]
    scored_bg = [Scored(r, *score_audio(score, r.audio)) for r in background]
    thresholds = thresholds or quantile_thresholds(scored_ann + scored_bg)
    return {
        "clip_auc": round(clip_auc(score, annotated), 4),
        "event_ap": round(event_ap(scored_ann, scored_bg), 4),
        "hours_annotated": round(sum(s.hours for s in scored_ann), 3),
        "hours_background": round(sum(s.hours for s in scored_bg), 3),
        "table": [event_row(scored_ann, scored_bg, t) for t in thresholds],
        "scored": scored_ann + scored_bg,
    }


def wilson_interval(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % score interval of a proportion k/n (Wilson): with a few dozen calls a recall or
    precision is known only to about +-0.1, and the report should say so beside the number."""
    if n == 0:
        return float("nan"), float("nan")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def interval_line(row: dict) -> str:
    """One sentence: the row's recall and precision with their 95 % intervals."""
    hits = row["hits"]
    r_lo, r_hi = wilson_interval(row["found"], row["calls"])
    p_lo, p_hi = wilson_interval(hits, row["events"])
    return (
        f"At {row['threshold']}: recall {row['found']}/{row['calls']} = {row['recall']:.3f} "
        f"(95 % interval {r_lo:.2f}-{r_hi:.2f}), precision {hits}/{row['events']} = "
        f"{row['precision']:.3f} (95 % interval {p_lo:.2f}-{p_hi:.2f})."
    )


def choose_threshold(table: list[dict], bar: float = 0.85, max_bg_fa: float = 5.0) -> dict:
    """The row that meets the bar (recall and precision >= bar, background under max_bg_fa/h) with
    the best F1, ties to the fewest background false alarms; else simply the best F1."""

    def ok(r: dict) -> bool:
        bg = r["background_false_alarms_per_hour"]
        return r["recall"] >= bar and r["precision"] >= bar and (bg is None or bg < max_bg_fa)

    pool = [r for r in table if ok(r)] or table
    return max(pool, key=lambda r: (r["f1"], -(r["background_false_alarms_per_hour"] or 0)))


def quantile_thresholds(scored: list[Scored], n: int = 12) -> tuple[float, ...]:
    """Thresholds for a scorer whose scores are not probabilities (the baseline)."""
    allv = np.concatenate([s.scores for s in scored])
    qs = np.quantile(allv, [0.9, 0.95, 0.98, 0.99, 0.995, 0.997, 0.998, 0.999, 0.9995, 0.9998][:n])
    return tuple(round(float(q), 4) for q in np.unique(qs))


def format_table(table: list[dict]) -> str:
    """Markdown table for the README and the run report."""
    head = (
        "| threshold | recall | precision | F1 "
        "| false alarms/h (annotated) | false alarms/h (background) |"
    )
    lines = [head, "|---|---|---|---|---|---|"]
    for r in table:
        lines.append(
            f"| {r['threshold']} | {r['recall']:.3f} ({r['found']}/{r['calls']}) | "
            f"{r['precision']:.3f} ({r['events']} events) | {r['f1']:.3f} | "
            f"{r['false_alarms_per_hour']} | {r['background_false_alarms_per_hour']} |"
        )
    return "\n".join(lines)
