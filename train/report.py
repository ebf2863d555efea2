"""Pictures a person can check: precision-recall curves and a gallery of the worst mistakes.

Annotators miss faint calls, so the loudest "false alarms" may be real: the gallery shows each
with its spectrogram, time and score, for a person to judge before anyone tunes them away.
"""

from pathlib import Path

import numpy as np

from detector.constants import SAMPLE_RATE
from train.evaluate import Scored, match

GALLERY_SIZE = 12


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pr(curves: dict[str, list[dict]], path: Path) -> None:
    """One precision-recall curve per detector, from its threshold table."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 4.5))
    for name, table in curves.items():
        rows = sorted(table, key=lambda r: r["recall"])
        ax.plot([r["recall"] for r in rows], [r["precision"] for r in rows], "o-", label=name)
    ax.set(xlabel="event recall", ylabel="event precision", xlim=(0, 1.02), ylim=(0, 1.02))
    ax.axhline(0.85, color="grey", lw=0.5)
    ax.axvline(0.85, color="grey", lw=0.5)
    ax.legend()
    ax.set_title("Held-out recording: precision vs recall")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mistakes(scored: list[Scored], threshold: float) -> tuple[list[tuple], list[tuple]]:
    """(false alarms, misses) as (score, Scored, centre seconds), worst first."""
    false_alarms, misses = [], []
    for sc in scored:
        events = sc.events(threshold)
        hits, found = match(events, sc.rec.calls)
        for ev, hit in zip(events, hits, strict=True):
            if not hit:
                false_alarms.append((ev.peak_score, sc, ev.peak_sample / SAMPLE_RATE))
        for (s, e), ok in zip(sc.rec.calls, found, strict=True):
            if not ok:
                centre = (s + e) / 2
                near = np.abs(sc.starts / SAMPLE_RATE + 1.0 - centre) <= 1.0
                best = float(sc.scores[near].max()) if near.any() else 0.0
                misses.append((best, sc, centre))
    false_alarms.sort(key=lambda m: -m[0])
    misses.sort(key=lambda m: m[0])
    return false_alarms, misses


def review_table(false_alarms: list[tuple], misses: list[tuple]) -> str:
    """Markdown list of every false alarm and miss (file, time, score) for the run report."""
    lines = ["| kind | file | time (s) | score |", "|---|---|---|---|"]
    for kind, items in (("false alarm", false_alarms), ("miss", misses)):
        for score, sc, centre in items:
            lines.append(f"| {kind} | {sc.rec.path.name} | {centre:.1f} | {score:.4f} |")
    return "\n".join(lines)


def write_review_selections(items: list[tuple], path: Path) -> None:
    """The same mistakes as a Raven Pro selection table (2 s around each), so that a person can
    open them beside the recording and add the calls the annotators missed."""
    from detector.raven import events_to_raven

    events = [
        {
            "offset_start_s": max(0.0, centre - 1.0),
            "offset_end_s": centre + 1.0,
            "score": score,
            "source": sc.rec.path.name,
        }
        for score, sc, centre in items
    ]
    # several files: Raven counts times over the file sequence, so give it each file's length
    files = {sc.rec.path.name: (sc.rec.path, len(sc.rec.audio) / SAMPLE_RATE) for _, sc, _ in items}
    path.write_text(events_to_raven(events, where=path.name, files=files))


def plot_gallery(items: list[tuple], title: str, path: Path) -> None:
    """Spectrograms of 4 s around the first GALLERY_SIZE items, titled with file, time, score."""
    plt = _pyplot()
    items = items[:GALLERY_SIZE]
    n = max(1, len(items))
    cols = 4
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (score, sc, centre) in zip(axes.flat, items, strict=False):
        a = int(max(0, (centre - 2) * SAMPLE_RATE))
        seg = sc.rec.audio[a : a + 4 * SAMPLE_RATE]
        if len(seg) < 512:
            continue
        ax.axis("on")
        ax.specgram(seg, NFFT=256, Fs=SAMPLE_RATE, noverlap=216, cmap="magma")
        ax.set_ylim(0, 400)
        ax.set_title(f"{sc.rec.path.name}\n{centre:.1f} s  score {score:.3f}", fontsize=7)
        ax.tick_params(labelsize=6)
    if not items:
        axes.flat[0].text(0.5, 0.5, "none", ha="center")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
