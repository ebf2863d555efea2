"""Leave-one-day-out cross-validation: the one way recipes and thresholds are chosen.

A buoy lives on days the model never saw, and neighbouring windows (even recordings of the same
day) share noise, whales and gain, so a split inside one day flatters every model. Each fold
holds out every annotated recording of one day (the YYYYMMDD stamp in its file name) and one
call-free background file, trains on the rest, and scores the held-out audio exactly as the
daemon does (detector's windows and event merging, through the exported ONNX model). Seeds are
part of the protocol: a recipe change counts only when it beats the spread between seeds.

Pooled figures sum calls, events and hours over folds (and seeds), so a day with 3 calls weighs
3 calls, not a third of the result. "Lenient" precision leaves out events that overlap only a
span a person judged a probable call the annotators missed (the review list): they are neither
hits nor false alarms. Strict figures (by the annotations alone) are the ones that decide.
"""

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detector.errors import WhaleError
from detector.timestamps import parse_start_time
from train.data import Clip, Recording
from train.evaluate import Scored, event_ap, event_row, match, wilson_interval
from train.shapes import SHAPES_LINE

# Thresholds of the operating-point table: dense near 1, where a small CNN's calls sit, and low
# enough that the recall-first preset can be found.
GRID = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.93, 0.95, 0.97) + (
    0.98,
    0.985,
    0.99,
    0.993,
    0.995,
    0.997,
    0.998,
    0.999,
    0.9995,
    0.9998,
)
HIGH_RECALL = 0.9  # preset "high": pooled recall at least this
BALANCED_MAX_FA = 2.0  # preset "balanced": best pooled F1 with background at most this per hour
STRICT_MAX_FA = 0.5  # preset "strict": background at most this per hour
Span = tuple[float, float]


@dataclass
class Fold:
    """One held-out day: its annotated recordings and one background file."""

    day: str
    test_ann: list[Recording]
    test_bg: list[Recording]

    def held_out(self) -> set[str]:
        return {r.path.name for r in self.test_ann + self.test_bg}


def recording_day(rec: Recording) -> str:
    """The UTC day of a recording from its file name (YYYYMMDD_HHMMSS), as YYYY-MM-DD."""
    start = parse_start_time(rec.path.name)
    if start is None:
        raise WhaleError(
            f"{rec.path.name}: no YYYYMMDD_HHMMSS stamp in the name; crossval holds out whole "
            f"days and needs each annotated recording's day"
        )
    return start.date().isoformat()


def make_folds(annotated: list[Recording], background: list[Recording]) -> list[Fold]:
    """One fold per day of annotated recordings; background files taken in turn, one per fold
    (reused in turn when there are fewer files than days)."""
    days: dict[str, list[Recording]] = {}
    for rec in annotated:
        days.setdefault(recording_day(rec), []).append(rec)
    if len(days) < 2:
        raise WhaleError(
            f"crossval needs annotated recordings from at least 2 days, got {len(days)} "
            f"({', '.join(days) or 'none'})"
        )
    bg = sorted(background, key=lambda r: r.path.name)
    return [
        Fold(day, recs, [bg[i % len(bg)]] if bg else [])
        for i, (day, recs) in enumerate(sorted(days.items()))
    ]


def load_review(path: Path) -> dict[str, list[Span]]:
    """The review list of probable unannotated calls: filename,start,end[,judgement]."""
    spans: dict[str, list[Span]] = {}
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise WhaleError(f"--review {path}: cannot read ({e})") from None
    if not rows or [c.strip().lower() for c in rows[0][:3]] != ["filename", "start", "end"]:
        raise WhaleError(f"--review {path}: header must start filename,start,end")
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        try:
            start, end = float(row[1]), float(row[2])
        except (IndexError, ValueError):
            raise WhaleError(f"--review {path}:{line}: start and end must be numbers") from None
        if not (np.isfinite(start) and np.isfinite(end) and end > start >= 0):
            raise WhaleError(f"--review {path}:{line}: need 0 <= start < end")
        spans.setdefault(Path(row[0].strip()).name, []).append((start, end))
    return spans


def lenient_excluded(scored: Scored, threshold: float, review: dict[str, list[Span]]) -> int:
    """Events that hit no annotated call but overlap a reviewed probable call."""
    spans = review.get(scored.rec.path.name, [])
    if not spans:
        return 0
    events = scored.events(threshold)
    hits, _ = match(events, scored.rec.calls)
    reviewed, _ = match(events, spans)
    return sum(1 for h, r in zip(hits, reviewed, strict=True) if r and not h)


def pooled_row(
    annotated: list[Scored],
    background: list[Scored],
    threshold: float,
    review: dict[str, list[Span]] | None = None,
) -> dict:
    """event_row over every fold at once, with lenient precision and Wilson intervals."""
    row = event_row(annotated, background, threshold)
    excluded = sum(lenient_excluded(s, threshold, review or {}) for s in annotated)
    counted = row["events"] - excluded
    row["lenient_precision"] = round(row["hits"] / counted, 4) if counted else 1.0
    row["recall_interval"] = [round(v, 3) for v in wilson_interval(row["found"], row["calls"])]
    row["precision_interval"] = [round(v, 3) for v in wilson_interval(row["hits"], row["events"])]
    return row


def choose_presets(table: list[dict]) -> dict[str, dict]:
    """The card's three named operating points from the pooled table.

    high: recall first, the highest threshold whose pooled recall is >= HIGH_RECALL (else the
    lowest threshold); balanced: best pooled F1 with background <= BALANCED_MAX_FA per hour;
    strict: best pooled F1 with background <= STRICT_MAX_FA per hour (else the highest
    threshold). Background false alarms of None (no background held out) count as 0."""

    def fa(r: dict) -> float:
        return r["background_false_alarms_per_hour"] or 0.0

    def best_f1(rows: list[dict]) -> dict:
        return max(rows, key=lambda r: (r["f1"], r["threshold"]))

    rows = sorted(table, key=lambda r: r["threshold"])
    high = [r for r in rows if r["recall"] >= HIGH_RECALL]
    balanced = [r for r in rows if fa(r) <= BALANCED_MAX_FA]
    strict = [r for r in rows if fa(r) <= STRICT_MAX_FA]
    picks = {
        "high": (high[-1] if high else rows[0], f"pooled recall >= {HIGH_RECALL}"),
        "balanced": (
            best_f1(balanced) if balanced else rows[-1],
            f"best pooled F1 with <= {BALANCED_MAX_FA} false alarms/h on background",
        ),
        "strict": (
            best_f1(strict) if strict else rows[-1],
            f"best pooled F1 with <= {STRICT_MAX_FA} false alarms/h on background",
        ),
    }
    return {name: {**preset_fields(row), "rule": rule} for name, (row, rule) in picks.items()}


def preset_fields(row: dict) -> dict:
    keys = ("threshold", "recall", "precision", "lenient_precision", "f1")
    return {k: row[k] for k in keys if k in row} | {
        "background_false_alarms_per_hour": row["background_false_alarms_per_hour"]
    }


@dataclass
class Job:
    """One model of the protocol: a fold and a seed (pickled into a worker process)."""

    fold: int
    day: str
    seed: int
    train_recs: list[Recording]
    clips: list[Clip]
    test: list[Recording]
    out: Path
    train_options: dict = field(default_factory=dict)


def run_job(job: Job) -> dict:
    """Train one model on one thread, export it, score its held-out recordings with the ONNX
    model as the daemon would. Returns the window scores so that pooling needs no re-scoring."""
    import torch

    from detector.model import load_model
    from train.evaluate import clip_auc, score_audio
    from train.export import export_onnx
    from train.train import train_model

    torch.set_num_threads(1)
    notes: list[str] = []  # what the recipe measured from this fold's training recordings
    model = train_model(
        job.train_recs,
        job.clips,
        seed=job.seed,
        log=lambda line: notes.append(line) if line.startswith(SHAPES_LINE) else None,
        **job.train_options,
    )
    path = job.out / "upcall.onnx"
    export_onnx(model, path)
    onnx = load_model(path, provider="cpu", threads=1)
    scores = {r.path.name: score_audio(onnx.score, r.audio) for r in job.test}
    np.savez(
        job.out / "scores.npz",
        **{f"{name}:starts": s for name, (s, _) in scores.items()},
        **{f"{name}:scores": v for name, (_, v) in scores.items()},
    )
    annotated = [r for r in job.test if r.calls]
    return {
        "fold": job.fold,
        "day": job.day,
        "seed": job.seed,
        "clip_auc": round(clip_auc(onnx.score, annotated), 4),
        "scores": scores,
        "synthetic_shapes": notes[0] if notes else None,
        # probable unannotated calls its training recordings carry (used with --train-review)
        "probable_calls": sum(len(r.probable) for r in job.train_recs),
    }


def figures(
    results: list[dict], folds: list[Fold], review: dict[str, list[Span]], threshold: float
) -> dict:
    """Pooled figures at one threshold over a set of job results (any folds, any seeds)."""
    ann, bg = scored_sets(results, folds)
    return pooled_row(ann, bg, threshold, review)


def scored_sets(results: list[dict], folds: list[Fold]) -> tuple[list[Scored], list[Scored]]:
    """The Scored recordings of the given job results, annotated and background apart."""
    ann, bg = [], []
    for res in results:
        fold = folds[res["fold"]]
        for recs, into in ((fold.test_ann, ann), (fold.test_bg, bg)):
            for rec in recs:
                starts, scores = res["scores"][rec.path.name]
                into.append(Scored(rec, starts, scores))
    return ann, bg


def summarise(results: list[dict], folds: list[Fold], review: dict[str, list[Span]]) -> dict:
    """Per fold and seed, per seed pooled, and all pooled; presets and the threshold check."""
    per_job = []
    for res in sorted(results, key=lambda r: (r["fold"], r["seed"])):
        ann, bg = scored_sets([res], folds)
        per_job.append(
            {
                "day": res["day"],
                "seed": res["seed"],
                "clip_auc": res["clip_auc"],
                "event_ap": round(event_ap(ann, bg), 4),
                "table": [pooled_row(ann, bg, t, review) for t in GRID],
                "probable_calls_in_training": res["probable_calls"],
                **(
                    {"synthetic_shapes": res["synthetic_shapes"]}
                    if res.get("synthetic_shapes")
                    else {}
                ),
            }
        )
    seeds = sorted({r["seed"] for r in results})
    per_seed = []
    for seed in seeds:
        mine = [r for r in results if r["seed"] == seed]
        ann, bg = scored_sets(mine, folds)
        per_seed.append(
            {
                "seed": seed,
                "clip_auc_mean": round(float(np.mean([r["clip_auc"] for r in mine])), 4),
                "event_ap": round(event_ap(ann, bg), 4),
                "table": [pooled_row(ann, bg, t, review) for t in GRID],
            }
        )
    ann, bg = scored_sets(results, folds)
    table = [pooled_row(ann, bg, t, review) for t in GRID]
    presets = choose_presets(table)
    return {
        "folds": [
            {
                "day": f.day,
                "held_out": sorted(f.held_out()),
                "calls": sum(len(r.calls) for r in f.test_ann),
            }
            for f in folds
        ],
        "seeds": seeds,
        "per_job": per_job,
        "per_seed": per_seed,
        "pooled": {"table": table, "presets": presets},
        "transfer": threshold_transfer(results, folds, review),
    }


def threshold_transfer(
    results: list[dict], folds: list[Fold], review: dict[str, list[Span]]
) -> list[dict]:
    """Do thresholds carry over to a model and a day they were not chosen on? For each fold, the
    presets chosen on the other folds' pooled table, applied to this fold's models: the check
    that the shipped model (trained on all days) may use thresholds chosen on the folds."""
    rows = []
    for k, fold in enumerate(folds):
        others = [r for r in results if r["fold"] != k]
        mine = [r for r in results if r["fold"] == k]
        if not others or not mine:
            continue
        ann, bg = scored_sets(others, folds)
        presets = choose_presets([pooled_row(ann, bg, t, review) for t in GRID])
        for name, preset in presets.items():
            got = figures(mine, folds, review, preset["threshold"])
            rows.append(
                {
                    "day": fold.day,
                    "preset": name,
                    "threshold": preset["threshold"],
                    "expected": preset_fields(preset),
                    "got": preset_fields(got),
                }
            )
    return rows


def format_report(summary: dict, title: str) -> str:
    """Markdown: per fold and seed, per seed pooled, presets, and the transfer check."""
    presets = summary["pooled"]["presets"]
    balanced = presets["balanced"]["threshold"]
    pooled = {r["threshold"]: r for r in summary["pooled"]["table"]}
    lines = [f"# {title}", ""]
    net = (summary.get("train_options") or {}).get("net")
    if net:  # what the recipe's rows ran, beside the folds
        widths = ", ".join(map(str, net["channels"]))
        lines += [
            f"CNN: conv blocks of {widths} channels, first time pooling {net['time_pool']}",
            "",
        ]
    lines += ["Folds (held out): "]
    for f in summary["folds"]:
        lines.append(f"- {f['day']}: {', '.join(f['held_out'])} ({f['calls']} calls)")
        shapes = [j.get("synthetic_shapes") for j in summary["per_job"] if j["day"] == f["day"]]
        if shapes and shapes[0]:  # the fold's training days, the same for every seed
            lines.append(f"  - trained with {shapes[0]}")
    lines += ["", f"## Per fold and seed at the pooled balanced threshold {balanced}", ""]
    lines += [
        "| held-out day | seed | clip AUC | event AP | recall | precision (strict) "
        "| precision (lenient) | false alarms/h (background) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for job in summary["per_job"]:
        row = next(r for r in job["table"] if r["threshold"] == balanced)
        lines.append(
            f"| {job['day']} | {job['seed']} | {job['clip_auc']} | {job['event_ap']} | "
            f"{row['recall']:.3f} ({row['found']}/{row['calls']}) | "
            f"{row['precision']:.3f} ({row['hits']}/{row['events']}) | "
            f"{row['lenient_precision']:.3f} | {row['background_false_alarms_per_hour']} |"
        )
    lines += ["", "## Pooled over folds, per seed (at the balanced threshold)", ""]
    lines += [
        "| seed | mean clip AUC | pooled event AP | recall | precision (strict) | "
        "precision (lenient) | F1 | false alarms/h (background) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for s in summary["per_seed"]:
        row = next(r for r in s["table"] if r["threshold"] == balanced)
        lines.append(
            f"| {s['seed']} | {s['clip_auc_mean']} | {s['event_ap']} | {row['recall']:.3f} | "
            f"{row['precision']:.3f} | {row['lenient_precision']:.3f} | {row['f1']:.3f} | "
            f"{row['background_false_alarms_per_hour']} |"
        )
    lines += ["", "## Operating points, pooled over every fold and seed", ""]
    lines += [
        "| threshold | recall (95 % interval) | precision strict (95 % interval) | "
        "precision lenient | F1 | false alarms/h (background) |",
        "|---|---|---|---|---|---|",
    ]
    for t in GRID:
        r = pooled[t]
        lines.append(
            f"| {t} | {r['recall']:.3f} ({r['found']}/{r['calls']}, "
            f"{r['recall_interval'][0]:.2f}-{r['recall_interval'][1]:.2f}) | "
            f"{r['precision']:.3f} ({r['hits']}/{r['events']}, "
            f"{r['precision_interval'][0]:.2f}-{r['precision_interval'][1]:.2f}) | "
            f"{r['lenient_precision']:.3f} | {r['f1']:.3f} | "
            f"{r['background_false_alarms_per_hour']} |"
        )
    lines += ["", "## Presets", ""]
    for name, p in presets.items():
        lines.append(
            f"- **{name}** ({p['rule']}): threshold {p['threshold']}, recall {p['recall']:.3f}, "
            f"precision {p['precision']:.3f} (lenient {p['lenient_precision']:.3f}), "
            f"{p['background_false_alarms_per_hour']} false alarms/h on background"
        )
    lines += [
        "",
        "## Do the thresholds carry over? Presets chosen on the other folds, applied to each",
        "",
        "| held-out day | preset | threshold | expected recall / precision / FA/h "
        "| got recall / precision / FA/h |",
        "|---|---|---|---|---|",
    ]
    for t in summary["transfer"]:
        e, g = t["expected"], t["got"]
        lines.append(
            f"| {t['day']} | {t['preset']} | {t['threshold']} | {e['recall']:.3f} / "
            f"{e['precision']:.3f} / {e['background_false_alarms_per_hour']} | "
            f"{g['recall']:.3f} / {g['precision']:.3f} / {g['background_false_alarms_per_hour']} |"
        )
    return "\n".join(lines) + "\n"


def fold_teachers(folder: Path, day: str) -> list[str]:
    """A previous crossval's models for this held-out day (OUT/fold_DAY_sSEED/upcall.onnx): a
    distilled fold's teachers never saw its held-out day either."""
    paths = sorted(str(p) for p in Path(folder).glob(f"fold_{day}_s*/upcall.onnx"))
    if not paths:
        raise WhaleError(
            f"--distil-from {folder}: no fold_{day}_s*/upcall.onnx (the teachers of the fold "
            f"that holds out {day}); give the --out folder of a crossval over the same days"
        )
    return paths


def run_crossval(
    annotated: list[Recording],
    background: list[Recording],
    clips: list[Clip],
    seeds: list[int],
    out: Path,
    jobs: int = 2,
    review: dict[str, list[Span]] | None = None,
    train_options: dict | None = None,
    log: Callable[[str], None] = print,
    command: str | None = None,
) -> dict:
    """Train and score every (fold, seed) model in `jobs` worker processes (one thread each, so
    the weights do not depend on the core count), then pool. Writes OUT/fold_DAY_sSEED/ (model and
    window scores), OUT/crossval.json (with `command`, what made it) and OUT/report.md.
    With train_options["distil"] = {"from": a previous crossval's OUT, "weight": w}, each fold's
    model learns from the mean logit of that crossval's models of the same fold."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    folds = make_folds(annotated, background)
    options = dict(train_options or {})
    distil = options.pop("distil", None)
    teachers = {f.day: fold_teachers(Path(distil["from"]), f.day) for f in folds} if distil else {}
    work = []
    for k, fold in enumerate(folds):
        job_options = dict(options)
        if distil:
            job_options["distil"] = {"teachers": teachers[fold.day], "weight": distil["weight"]}
        held = fold.held_out()
        train_recs = [r for r in annotated + background if r.path.name not in held]
        for seed in seeds:
            folder = out / f"fold_{fold.day}_s{seed}"
            folder.mkdir(parents=True, exist_ok=True)
            work.append(
                Job(
                    k,
                    fold.day,
                    seed,
                    train_recs,
                    clips,
                    fold.test_ann + fold.test_bg,
                    folder,
                    job_options,
                )
            )
    log(f"crossval: {len(folds)} folds x {len(seeds)} seeds = {len(work)} models, {jobs} at a time")
    results = []
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max(1, jobs), mp_context=ctx) as pool:
        futures = {pool.submit(run_job, job): job for job in work}
        for future in as_completed(futures):
            res = future.result()
            results.append(res)
            log(
                f"fold {res['day']} seed {res['seed']}: clip AUC {res['clip_auc']} "
                f"({len(results)}/{len(work)} done)"
            )
    summary = summarise(results, folds, review or {})
    summary["train_options"] = train_options or {}
    summary["command"] = command
    (out / "crossval.json").write_text(json.dumps(summary, indent=1) + "\n")
    (out / "report.md").write_text(format_report(summary, "Leave-one-day-out cross-validation"))
    write_reviews(results, folds, summary["pooled"]["presets"]["balanced"]["threshold"], out)
    return summary


def write_reviews(results: list[dict], folds: list[Fold], threshold: float, out: Path) -> None:
    """Every miss and false alarm of each fold's first seed at the balanced threshold, as
    spectrogram galleries and Raven selection tables: labels are incomplete (faint calls go
    unmarked), so a person looks at them before a recipe is tuned to make them go away."""
    from train.report import mistakes, plot_gallery, write_review_selections

    first = min(r["seed"] for r in results)
    for res in results:
        if res["seed"] != first:
            continue
        day = res["day"]
        ann, bg = scored_sets([res], folds)
        false_alarms, misses = mistakes(ann + bg, threshold)
        for name, items in (("misses", misses), ("false_alarms", false_alarms)):
            title = f"{name.replace('_', ' ').capitalize()} on {day} (seed {first}) at {threshold}"
            plot_gallery(items, title, out / f"gallery_{name}_{day}.png")
            write_review_selections(items, out / f"{name}_{day}.selections.txt")
