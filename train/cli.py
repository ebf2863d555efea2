"""`whale-train`: load data, train, evaluate on held-out recordings, export model.onnx + card."""

import json
import shlex
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
import numpy as np

from detector import __version__
from detector.cli import FiniteFloatRange
from detector.errors import WhaleError
from detector.model import sha256_file
from train.evaluate import mean_logit_scorer
from train.frontend import STREAM_FRAME_HOP, FrontEndConfig
from train.net import CHANNELS, MAX_BLOCKS, MAX_WIDTH, TIME_POOL

if TYPE_CHECKING:
    from train.sampler import Mix


def fail(message: str) -> None:
    click.echo(f"whale-train: error: {message}", err=True)
    sys.exit(2)


# Options shared by train, crossval and adapt: one declaration, one help text.
CHANNEL_OPTION = click.option(
    "--channel",
    type=click.IntRange(0),
    default=0,
    show_default=True,
    help="Input channel of multi-channel recordings (0 = first).",
)
BATCH_SIZE_OPTION = click.option(
    "--batch-size",
    type=click.IntRange(2),
    default=96,
    show_default=True,
    help="2-s windows per training step (half calls, half not).",
)
REMIX_SCALE_OPTION = click.option(
    "--remix-scale",
    type=(float, float),
    default=(0.2, 1.5),
    show_default=True,
    help="Recipe: other background mixed under a real call at this range times the call "
    "window's level.",
)
SNR_OPTION = click.option(
    "--snr-db",
    type=(float, float),
    default=(-3.0, 15.0),
    show_default=True,
    help="Recipe: broadband SNR range (dB) of the synthetic up-calls mixed into real noise "
    "(the annotated DCLDE calls measure -1 dB and below, most under -5 dB).",
)
SYNTH_SHAPES_OPTION = click.option(
    "--synth-shapes",
    default="fixed",
    show_default=True,
    metavar="fixed|measured",
    help="Recipe: shapes of the synthetic up-calls: 'fixed' draws them from the published "
    "ranges (0.5-1.5 s, 50-100 Hz rising to 150-250 Hz); 'measured' resamples the shapes "
    "(duration, start/end frequency, curvature, 2nd harmonic) measured from the training "
    "recordings' annotated calls, each jittered +-10 %. Their SNR still comes from --snr-db.",
)
REVIEW_OPTION = click.option(
    "--review",
    type=click.Path(path_type=Path),
    multiple=True,
    help="CSV filename,start,end[,judgement] of probable calls the annotators missed: crossval's "
    "lenient precision leaves out events overlapping only these, and --train-review says what "
    "training does with them (repeatable: the lists add).",
)
TRAIN_REVIEW_OPTION = click.option(
    "--train-review",
    default="off",
    show_default=True,
    metavar="off|exclude|calls",
    help="Recipe: what training does with the --review lists' probable calls in its recordings: "
    "'off' nothing (they may be drawn as call-free windows and mined as hard negatives); "
    "'exclude' keeps negatives away from them; 'calls' also trains on them as calls. Scoring "
    "stays by the annotations alone.",
)
WIDTHS_OPTION = click.option(
    "--conv-widths",
    "widths",
    default=",".join(map(str, CHANNELS)),
    show_default=True,
    metavar="W1,W2,...",
    help=f"Recipe: the CNN's channels per conv block, comma-separated (2-{MAX_BLOCKS} blocks of "
    f"1-{MAX_WIDTH}; every block but the last halves the mel bands).",
)
TIME_POOL_OPTION = click.option(
    "--time-pool",
    type=click.IntRange(1),
    default=TIME_POOL,
    show_default=True,
    help="Recipe: time step of the CNN's first pooling, in frames (4 halves the later layers' "
    "cost).",
)
NORMALISATION_OPTION = click.option(
    "--normalisation",
    type=click.Choice(["contrast", "pcen", "pcen-stream"]),
    default="contrast",
    show_default=True,
    help="Recipe: per-window normalisation of the log-mel image (band and frame means removed, "
    "or per-channel energy normalisation); pcen-stream: PCEN over the last 0.5 s only and a "
    "CNN valid in time, 25-ms frames (a model whose windows share one map: replay scores "
    "every frame once).",
)


class Datasets:
    """Everything --data named, split into training and held-out parts by recording."""

    def __init__(
        self, paths: list[Path], holdout: set[str] | None, channel: int, flag: str = "--holdout"
    ) -> None:
        """holdout: recording file names to evaluate on; None holds out every recording. flag:
        the option that named them, for the error when one is not loaded."""
        from train import data

        self.train_recs, self.clips, self.eval_ann, self.eval_bg = [], [], [], []
        self.files: list[Path] = []
        for path in paths:
            layout = data.detect_layout(path)
            if layout == "kaggle":
                self.clips += data.load_kaggle_csv(path, channel=channel)
            elif layout == "folders":
                self.clips += data.load_folders(path, channel=channel)
            else:
                if layout == "annotations":
                    recs = data.load_recordings(path, channel=channel)
                    self.files.append(path)
                else:
                    recs = data.load_background(path, channel=channel)
                for rec in recs:
                    if holdout is None or rec.path.name in holdout:
                        (self.eval_ann if layout == "annotations" else self.eval_bg).append(rec)
                    else:
                        self.train_recs.append(rec)
        self.files += [r.path for r in self.train_recs] + [Path(c.source) for c in self.clips]
        missing = (holdout or set()) - {r.path.name for r in self.eval_ann + self.eval_bg}
        if missing:
            raise WhaleError(f"{flag} names no loaded recording: {', '.join(sorted(missing))}")

    def describe(self) -> str:
        calls = sum(len(r.calls) for r in self.train_recs)
        text = (
            f"training: {len(self.train_recs)} recordings ({calls} calls), "
            f"{len(self.clips)} clips; "
            f"held out: {len(self.eval_ann)} annotated, {len(self.eval_bg)} background"
        )
        reviewed = [r for r in self.train_recs if r.reviewed]
        if reviewed:
            confirmed = sum(len(r.calls) for r in reviewed)
            rejected = sum(len(r.rejected) for r in reviewed)
            text += (
                f"\nfrom review: {confirmed + rejected} examples in {len(reviewed)} event clips: "
                f"{confirmed} confirmed calls (positives), {rejected} rejected detections "
                f"(hard negatives)"
            )
        return text


EXAMPLES = """
\b
Examples:
  whale-train train --data ../shared/data/dclde2013/annotations.csv \\
      --data ../shared/data/background --holdout NOPP6_EST_20090331_220000_CH10.wav \\
      --out runs/split --steps 3600
  whale-train evaluate --model runs/split/upcall.onnx \\
      --data ../shared/data/dclde2013/annotations.csv --only NOPP6_EST_20090331_220000_CH10.wav
  whale-train demo calls.flac --seconds 120 --calls 6
"""

# -h as well as --help, on the group and (inherited) on every subcommand; wide enough that
# the subcommand summaries are not cut short.
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


@click.group(context_settings=CONTEXT, epilog=EXAMPLES)
@click.version_option(__version__, "--version", prog_name="whale-train")
def main() -> None:
    """Train and evaluate the whale-listen up-call model (needs the train extra: torch)."""


@main.command("train", short_help="Train, export and evaluate a model.")
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Annotation CSV/Raven table, kaggle folder, right_whale/no_right_whale folder, "
    "or folder of call-free recordings. Repeatable.",
)
@click.option(
    "--holdout",
    multiple=True,
    help="Recording file name (no folder) to hold out of training and evaluate on. Repeatable.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/latest"),
    show_default=True,
    help="Folder for NAME.onnx, its streaming halves, its card and the held-out report "
    "(made if missing).",
)
@click.option(
    "--steps",
    type=click.IntRange(1),
    default=3600,
    show_default=True,
    help="Training steps (optimizer updates, one batch each); 3600 take about 10 min on 2 cores.",
)
@BATCH_SIZE_OPTION
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed (weights and sampling)."
)
@click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where torch trains: auto takes CUDA when torch has it.",
)
@CHANNEL_OPTION
@click.option(
    "--threshold",
    type=FiniteFloatRange(0, 1),
    default=None,
    help="Fix the card's threshold (e.g. the one chosen on a held-out run).",
)
@click.option(
    "--metrics-from",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Copy held-out metrics from this model card into the new card.",
)
@REMIX_SCALE_OPTION
@SNR_OPTION
@SYNTH_SHAPES_OPTION
@REVIEW_OPTION
@TRAIN_REVIEW_OPTION
@NORMALISATION_OPTION
@click.option(
    "--operating-points",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="crossval.json of a `whale-train crossval` run of this recipe: its pooled table and "
    "presets go into the card, and the balanced preset is the card's threshold.",
)
@click.option(
    "--name",
    default="upcall",
    show_default=True,
    help="Model file name stem: OUT/NAME.onnx and its card OUT/NAME.json.",
)
@click.option(
    "--n-fft",
    type=click.IntRange(32),
    default=FrontEndConfig.n_fft,
    show_default=True,
    help="STFT frame length in samples at 2 kHz (256 = 128 ms, 7.8 Hz bins).",
)
@click.option(
    "--frame-hop",
    type=click.IntRange(1),
    default=None,
    help=f"STFT frame hop in samples at 2 kHz [default: {FrontEndConfig.hop_length} = 20 ms; "
    f"{STREAM_FRAME_HOP} = 25 ms with --normalisation pcen-stream].",
)
@click.option(
    "--n-mels",
    type=click.IntRange(8),
    default=FrontEndConfig.n_mels,
    show_default=True,
    help="Mel bands over 30-400 Hz (each must span at least two FFT bins).",
)
@WIDTHS_OPTION
@TIME_POOL_OPTION
@click.option(
    "--members",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Train this many CNNs (seeds SEED, SEED+1, ...; in parallel, one thread each) and "
    "export one model that averages their logits.",
)
def train_cmd(
    data_paths,
    holdout,
    out,
    steps,
    batch_size,
    seed,
    device,
    channel,
    threshold,
    metrics_from,
    remix_scale,
    snr_db,
    synth_shapes,
    review,
    train_review,
    normalisation,
    operating_points,
    name,
    n_fft,
    frame_hop,
    n_mels,
    widths,
    time_pool,
    members,
) -> None:
    """Train the CNN, export OUT/NAME.onnx + card, evaluate on held-out recordings."""
    try:
        import torch

        from train.export import export_onnx, write_card
        from train.sampler import WindowSampler
        from train.shapes import recipe_shapes
        from train.train import TrainConfig, train, train_ensemble

        torch.set_num_threads(max(1, torch.get_num_threads()))
        # everything that can fail without training fails now, not after the training run
        writable_folder(out, "--out")
        frontend = recipe_frontend(normalisation, frame_hop, n_fft=n_fft, n_mels=n_mels)
        channels = tuple(recipe_net(widths, time_pool, frontend)["channels"])
        old_card = read_card(metrics_from) if metrics_from else None
        points = read_operating_points(operating_points) if operating_points else None
        mix = recipe_mix(remix_scale, snr_db, synth_shapes, train_review, review)
        spans = read_reviews(review)
        sets = Datasets(list(data_paths), set(holdout), channel)
        click.echo(sets.describe())
        attach_reviews(sets.train_recs, spans, mix.review)
        np.random.seed(seed)
        cfg = TrainConfig(steps=steps, batch_size=batch_size, seed=seed, device=device)
        # one model: its sampler, built now, measures the shapes; an ensemble's members build
        # theirs in their own processes, so they are measured here too, to fail before training
        if members == 1:
            sampler = WindowSampler(sets.train_recs, sets.clips, mix=mix, seed=seed)
            shapes = sampler.shapes
        else:
            shapes = recipe_shapes(mix.synth_shapes, sets.train_recs)
        if shapes is not None:
            click.echo(shapes.describe())
        with click.progressbar(
            length=steps * members, label="training", file=sys.stderr, item_show_func=lambda x: x
        ) as bar:
            if members > 1:
                model = train_ensemble(
                    sets.train_recs,
                    sets.clips,
                    cfg,
                    members,
                    frontend,
                    time_pool,
                    mix=mix,
                    log=click.echo,
                    progress=lambda n, loss: bar.update(n, f"loss {loss:.4f}"),
                    channels=channels,
                )
            else:
                model = train(
                    sampler,
                    cfg,
                    frontend,
                    time_pool,
                    log=click.echo,
                    progress=lambda step, loss: bar.update(1, f"loss {loss:.4f}"),
                    channels=channels,
                ).cpu()
        model_path = out / f"{name}.onnx"
        export_onnx(model, model_path)
        fields: dict = {
            "command": "whale-train " + shlex.join(sys.argv[1:]),
            "seed": seed,
            "steps": steps,
            "training_data": [{"file": p.name, "sha256": sha256_file(p)} for p in sets.files],
            "held_out": [r.path.name for r in sets.eval_ann + sets.eval_bg],
        }
        if old_card is not None:
            fields["metrics"] = old_card.get("metrics")
            fields["threshold_chosen_on"] = old_card.get("held_out")
        if sets.eval_ann or sets.eval_bg:
            fields["metrics"] = evaluate_and_report([model_path], sets, out)
            fields["threshold_chosen_on"] = fields["held_out"]
        chosen = (fields.get("metrics") or {}).get("chosen", {}).get("threshold", 0.5)
        if points is not None:
            fields.update(points)
            chosen = points["presets"]["balanced"]["threshold"]
        fields["threshold"] = threshold if threshold is not None else chosen
        card = write_card(model_path, model, name=name, **fields)
        click.echo(f"wrote {model_path} and its card (threshold {card['threshold']})")
    except WhaleError as e:
        fail(str(e))


def recipe_mix(
    remix_scale: tuple[float, float],
    snr_db: tuple[float, float] = (-3.0, 15.0),
    synth_shapes: str = "fixed",
    train_review: str = "off",
    review: tuple[Path, ...] = (),
) -> "Mix":
    """The sampler's mix for the recipe options, checked."""
    from train.sampler import REVIEW_USES, Mix
    from train.shapes import SYNTH_SHAPES

    lo, hi = remix_scale
    if not (np.isfinite(lo) and np.isfinite(hi) and 0 <= lo <= hi):
        raise WhaleError(f"--remix-scale {lo} {hi}: need 0 <= LOW <= HIGH")
    quiet, loud = snr_db
    if not (np.isfinite(quiet) and np.isfinite(loud) and -60 <= quiet <= loud <= 60):
        raise WhaleError(f"--snr-db {quiet} {loud}: need -60 <= LOW <= HIGH <= 60")
    if synth_shapes not in SYNTH_SHAPES:
        raise WhaleError(f"--synth-shapes {synth_shapes!r}: choose {' or '.join(SYNTH_SHAPES)}")
    if train_review not in REVIEW_USES:
        raise WhaleError(f"--train-review {train_review!r}: choose {', '.join(REVIEW_USES)}")
    if train_review != "off" and not review:
        raise WhaleError(f"--train-review {train_review} needs a --review list")
    return Mix(
        remix_scale=(lo, hi), snr_db=(quiet, loud), synth_shapes=synth_shapes, review=train_review
    )


def read_reviews(paths: tuple[Path, ...]) -> dict[str, list[tuple[float, float]]]:
    """The --review lists, added together: probable unannotated calls by recording file name."""
    from train.crossval import load_review

    spans: dict[str, list[tuple[float, float]]] = {}
    for path in paths:
        for name, found in load_review(path).items():
            spans.setdefault(name, []).extend(found)
    return spans


def attach_reviews(recordings: list, spans: dict[str, list[tuple[float, float]]], use: str) -> None:
    """Give each recording its probable calls (which the sampler uses as `use` says), and say
    how many training sees."""
    for rec in recordings:
        rec.probable = sorted(spans.get(rec.path.name, []))
    if use != "off":
        seen = sum(len(r.probable) for r in recordings)
        click.echo(f"--train-review {use}: {seen} probable calls in the training recordings")


def recipe_frontend(
    normalisation: str, frame_hop: int | None = None, **fields: int
) -> FrontEndConfig:
    """The front end for the recipe options: a pcen-stream model's frames default to 25 ms,
    the others' to 20 ms (a window hop must be whole cells of the streaming net's map)."""
    if frame_hop is None:
        stream = normalisation == "pcen-stream"
        frame_hop = STREAM_FRAME_HOP if stream else FrontEndConfig.hop_length
    return FrontEndConfig(hop_length=frame_hop, normalisation=normalisation, **fields)


def recipe_net(widths: str, time_pool: int, frontend: FrontEndConfig) -> dict:
    """The CNN's shape for the recipe options, checked against the front end's image (every
    pooled block must keep at least one band and one frame): {"channels": [...], "time_pool"}."""
    from train.net import pooled_size

    try:
        channels = [int(w) for w in widths.split(",")]
    except ValueError:
        raise WhaleError(
            f"--conv-widths {widths!r}: need whole numbers separated by commas, one width per conv "
            f"block (e.g. {','.join(map(str, CHANNELS))})"
        ) from None
    shown, blocks = ",".join(map(str, channels)), len(channels)
    if not 2 <= blocks <= MAX_BLOCKS:
        raise WhaleError(f"--conv-widths {shown}: need 2 to {MAX_BLOCKS} conv blocks, got {blocks}")
    if not all(1 <= w <= MAX_WIDTH for w in channels):
        raise WhaleError(f"--conv-widths {shown}: each width must be 1 to {MAX_WIDTH}")
    stream = frontend.stream
    bands, frames = pooled_size(blocks, time_pool, frontend.n_mels, frontend.image_frames, stream)
    if bands < 1:
        raise WhaleError(
            f"--conv-widths {shown}: {blocks} blocks halve the {frontend.n_mels} mel bands "
            f"{blocks - 1} times, to none; {frontend.n_mels} bands take at most "
            f"{frontend.n_mels.bit_length()} blocks"
        )
    if frames < 1:
        raise WhaleError(
            f"--time-pool {time_pool}: with {blocks} conv blocks it pools the "
            f"{frontend.image_frames} frames of a window to none; give a smaller --time-pool or "
            f"fewer blocks"
        )
    if stream:
        from train.export import STREAM_HOP
        from train.net import cell_samples

        cell = cell_samples(frontend, blocks, time_pool)
        if STREAM_HOP % cell:
            raise WhaleError(
                f"--normalisation pcen-stream: the {STREAM_HOP}-sample window hop is not whole "
                f"cells of {cell} samples (--frame-hop {frontend.hop_length} x time pooling)"
            )
    return {"channels": channels, "time_pool": time_pool}


def writable_folder(folder: Path, flag: str) -> None:
    """Make the folder and prove a file can be written there."""
    probe = folder / ".whale-train-write-test"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise WhaleError(f"{flag} {folder}: cannot write there ({e.strerror or e})") from None


def read_card(path: Path) -> dict:
    """A model card (JSON object) to take held-out metrics from."""
    try:
        card = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise WhaleError(f"--metrics-from {path}: not a readable model card ({e})") from None
    if not isinstance(card, dict):
        raise WhaleError(f"--metrics-from {path}: not a model card (no JSON object)")
    return card


def read_operating_points(path: Path) -> dict:
    """The card's operating-point table and presets from a crossval.json."""
    from train.crossval import preset_fields

    try:
        summary = json.loads(path.read_text())
        pooled = summary["pooled"]
        table = [preset_fields(row) for row in pooled["table"]]
        presets = pooled["presets"]
        for name in ("high", "balanced", "strict"):
            float(presets[name]["threshold"])
    except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as e:
        raise WhaleError(f"--operating-points {path}: not a crossval.json ({e!r})") from None
    folds = ", ".join(f["day"] for f in summary.get("folds", []))
    return {
        "operating_points": {
            "source": f"leave-one-day-out cross-validation (held-out days {folds}; seeds "
            f"{summary.get('seeds')}), pooled over every fold and seed: {path.name}",
            "command": summary.get("command"),
            "table": table,
        },
        "presets": presets,
    }


def evaluate_and_report(model_paths: list[Path], sets: Datasets, out: Path) -> dict:
    """CNN (through onnxruntime, as deployed; several models: their mean logit) and the classical
    baseline on the held-out split."""
    from train.baseline import TemplateBaseline
    from train.evaluate import choose_threshold, evaluate, format_table, interval_line
    from train.report import (
        mistakes,
        plot_gallery,
        plot_pr,
        review_table,
        write_review_selections,
    )

    cnn = evaluate(mean_logit_scorer(model_paths), sets.eval_ann, sets.eval_bg)
    base = evaluate(TemplateBaseline().score, sets.eval_ann, sets.eval_bg, thresholds=None)
    chosen, base_chosen = choose_threshold(cnn["table"]), choose_threshold(base["table"])
    plot_pr({"CNN": cnn["table"], "template baseline": base["table"]}, out / "pr.png")
    false_alarms, misses = mistakes(cnn["scored"], chosen["threshold"])
    plot_gallery(
        false_alarms,
        f"Worst false alarms at {chosen['threshold']}",
        out / "gallery_false_alarms.png",
    )
    plot_gallery(misses, f"Misses at {chosen['threshold']}", out / "gallery_misses.png")
    write_review_selections(false_alarms, out / "false_alarms.selections.txt")
    write_review_selections(misses, out / "misses.selections.txt")
    report = [
        f"# Held-out evaluation of {model_names(model_paths)}",
        "",
        f"Held out: {', '.join(r.path.name for r in sets.eval_ann + sets.eval_bg)} "
        f"({cnn['hours_annotated']} h annotated, {cnn['hours_background']} h background).",
        "",
        f"## CNN: clip AUC {cnn['clip_auc']}; event AP {cnn['event_ap']}; "
        f"chosen threshold {chosen['threshold']}",
        "",
        format_table(cnn["table"]),
        "",
        interval_line(chosen),
        "",
        f"## Template-correlation baseline: clip AUC {base['clip_auc']}; "
        f"event AP {base['event_ap']}; best threshold {base_chosen['threshold']}",
        "",
        format_table(base["table"]),
        "",
        f"## Every CNN mistake at {chosen['threshold']}",
        "",
        "Annotators miss faint calls: look before tuning a false alarm away (spectrograms in "
        "gallery_*.png; the same rows as Raven selection tables in *.selections.txt).",
        "",
        review_table(false_alarms, misses),
        "",
    ]
    (out / "report.md").write_text("\n".join(report))
    click.echo("\n".join(report))
    strip = {k: v for k, v in cnn.items() if k != "scored"}
    return {
        "held_out": [r.path.name for r in sets.eval_ann + sets.eval_bg],
        "cnn": strip,
        "chosen": chosen,
        "baseline": {
            "clip_auc": base["clip_auc"],
            "event_ap": base["event_ap"],
            "chosen": base_chosen,
            "table": base["table"],
        },
    }


def model_names(model_paths: list[Path]) -> str:
    """File names, or the paths where names repeat (every run writes upcall.onnx)."""
    names = [p.name for p in model_paths]
    if len(set(names)) < len(names):
        names = [str(p) for p in model_paths]
    return " + ".join(names) + (" (mean logit)" if len(names) > 1 else "")


@main.command("evaluate", short_help="Evaluate models and the baseline on recordings.")
@click.option(
    "--model",
    "model_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="ONNX model (default: the shipped one); repeat it to score the models' mean logit.",
)
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Annotation file(s) and/or folders of call-free recordings to evaluate on.",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/eval"),
    show_default=True,
    help="Folder for report.md, pr.png, the galleries and the review tables (made if missing).",
)
@click.option(
    "--only",
    multiple=True,
    help="Evaluate on this recording file name only (repeatable; default: every recording), "
    "e.g. a validation split's files out of the full annotation table.",
)
@CHANNEL_OPTION
def evaluate_cmd(model_paths, data_paths, out, only, channel) -> None:
    """Evaluate a model and the baseline on recordings (all of them held out)."""
    try:
        sets = Datasets(list(data_paths), set(only) or None, channel, flag="--only")
        writable_folder(out, "--out")
        from detector.model import DEFAULT_MODEL

        evaluate_and_report(list(model_paths) or [DEFAULT_MODEL], sets, out)
    except WhaleError as e:
        fail(str(e))


@main.command("demo", short_help="Write a synthetic recording with planted up-calls.")
@click.argument("path", type=click.Path(path_type=Path))
@click.option(
    "--seconds",
    type=FiniteFloatRange(10),
    default=120.0,
    show_default=True,
    help="Length of the recording in seconds (2 kHz).",
)
@click.option(
    "--calls", type=click.IntRange(0), default=6, show_default=True, help="Up-calls to plant."
)
@click.option(
    "--lookalikes",
    type=click.IntRange(0),
    default=4,
    show_default=True,
    help="Sounds in the up-call band that are not up-calls (down-sweeps, tones, moans, ...).",
)
@click.option(
    "--seed", type=int, default=2026, show_default=True, help="Random seed of the recording."
)
def demo_cmd(path, seconds, calls, lookalikes, seed) -> None:
    """Write a synthetic recording (FLAC/WAV/AIFF by extension) with planted up-calls, and a
    CSV of where they are beside it."""
    import soundfile as sf

    from train.synth import synthetic_recording

    rng = np.random.default_rng(seed)
    try:
        audio, planted = synthetic_recording(rng, seconds, calls, n_lookalikes=lookalikes)
    except ValueError:
        fail(
            f"{path}: {calls} calls and {lookalikes} look-alikes do not fit in {seconds:g} s "
            f"with room between them: give more --seconds or fewer --calls/--lookalikes"
        )
    rows = ["filename,start,end,label"] + [
        f"{path.name},{s:.3f},{e:.3f},upcall" for s, e in planted
    ]
    try:
        sf.write(path, audio, 2000, subtype="PCM_16")
        path.with_suffix(".csv").write_text("\n".join(rows) + "\n")
    except (sf.LibsndfileError, TypeError, ValueError, OSError) as e:
        fail(f"cannot write {path}: {e} (use a .flac, .wav or .aiff name in a writable folder)")
    click.echo(f"wrote {path} ({seconds:.0f} s, {len(planted)} up-calls) and its annotations")


@main.command("crossval", short_help="Leave-one-day-out cross-validation and operating points.")
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="Annotation CSV/Raven table (recordings named YYYYMMDD_HHMMSS: one fold per day), "
    "folder of call-free recordings (one held out per fold), clip folders (always trained on). "
    "Repeatable.",
)
@REVIEW_OPTION
@click.option(
    "--seeds",
    type=click.IntRange(1, 16),
    default=2,
    show_default=True,
    help="Models per fold (seeds SEED, SEED+1, ...): a change must beat their spread.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="First seed.")
@click.option(
    "--steps",
    type=click.IntRange(1),
    default=1200,
    show_default=True,
    help="Training steps per model (batches of --batch-size windows).",
)
@BATCH_SIZE_OPTION
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=2,
    show_default=True,
    help="Models trained at once (processes of one thread each; use the core count).",
)
@REMIX_SCALE_OPTION
@SNR_OPTION
@SYNTH_SHAPES_OPTION
@TRAIN_REVIEW_OPTION
@NORMALISATION_OPTION
@WIDTHS_OPTION
@TIME_POOL_OPTION
@click.option(
    "--distil-from",
    type=click.Path(path_type=Path),
    default=None,
    help="Recipe: a previous crossval's --out folder; each fold's model is distilled from the "
    "mean logit of that run's models of the same fold (its teachers never saw the held-out day "
    "either), on its own training windows.",
)
@click.option(
    "--distil-weight",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="Recipe: with --distil-from, the share of each training target taken from the "
    "teachers' probability (the rest from the label).  [default: 0.5]",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=Path("runs/crossval"),
    show_default=True,
    help="Folder for the fold models, crossval.json and report.md.",
)
@CHANNEL_OPTION
def crossval_cmd(
    data_paths,
    review,
    seeds,
    seed,
    steps,
    batch_size,
    jobs,
    remix_scale,
    snr_db,
    synth_shapes,
    train_review,
    normalisation,
    widths,
    time_pool,
    distil_from,
    distil_weight,
    out,
    channel,
) -> None:
    """Leave-one-day-out cross-validation: per fold and seed, train on the other days, score
    the held-out day and background as the daemon does; report per fold and pooled, and the
    operating points a model card can carry (whale-train train --operating-points)."""
    try:
        from train.crossval import run_crossval

        mix = recipe_mix(remix_scale, snr_db, synth_shapes, train_review, review)
        frontend = recipe_frontend(normalisation)
        net = recipe_net(widths, time_pool, frontend)
        if distil_weight is not None and distil_from is None:
            raise WhaleError("--distil-weight weighs the teachers of --distil-from: give both")
        writable_folder(out, "--out")
        spans = read_reviews(review)
        sets = Datasets(list(data_paths), None, channel)
        if not sets.eval_ann:
            raise WhaleError("crossval needs an annotation table among --data")
        # a fold trains on its training days' probable calls only: the held-out day's are
        # used for its lenient figures, never for its model
        attach_reviews(sets.eval_ann, spans, mix.review)
        click.echo(
            f"{len(sets.eval_ann)} annotated recordings, {len(sets.eval_bg)} background, "
            f"{len(sets.clips)} clips"
        )
        options = {
            "steps": steps,
            "batch_size": batch_size,
            "mix": {
                "remix_scale": mix.remix_scale,
                "snr_db": mix.snr_db,
                "synth_shapes": mix.synth_shapes,
                "review": mix.review,
            },
            "frontend": {"normalisation": normalisation, "hop_length": frontend.hop_length},
            "net": net,
        }
        if distil_from is not None:
            weight = 0.5 if distil_weight is None else distil_weight
            options["distil"] = {"from": str(distil_from), "weight": weight}
        run_crossval(
            sets.eval_ann,
            sets.eval_bg,
            sets.clips,
            list(range(seed, seed + seeds)),
            out,
            jobs=jobs,
            review=spans,
            train_options=options,
            log=click.echo,
            command="whale-train " + shlex.join(sys.argv[1:]),
        )
        click.echo((out / "report.md").read_text())
    except WhaleError as e:
        fail(str(e))


@main.command("adapt", short_help="Fine-tune a model to a new site's call-free noise.")
@click.option(
    "--model",
    "model_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Single-network ONNX model with presets in its card (default: the shipped one).",
)
@click.option(
    "--background",
    "site_paths",
    multiple=True,
    required=True,
    type=click.Path(path_type=Path),
    help="The new site's call-free recordings (a folder or files). Repeatable.",
)
@click.option(
    "--data",
    "data_paths",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Known calls to mix into the site's noise: annotation tables or clip folders "
    "(synthetic calls are always added). Repeatable.",
)
@click.option(
    "--holdout",
    multiple=True,
    help="Recording file name (site or annotated) kept out of adaptation to measure it before "
    "and after. Repeatable.",
)
@click.option(
    "--steps",
    type=click.IntRange(1),
    default=300,
    show_default=True,
    help="Fine-tuning steps (batches of 96 windows) at a tenth of the training rate.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Random seed (sampling and fine-tuning)."
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder for the adapted model, its streaming halves and card.",
)
@CHANNEL_OPTION
def adapt_cmd(model_path, site_paths, data_paths, holdout, steps, seed, out, channel) -> None:
    """Fine-tune a model to a new site's noise (no labels needed) and re-choose its presets'
    thresholds so their false-alarm rates hold there."""
    try:
        import torch

        from detector.model import DEFAULT_MODEL, load_card, load_model
        from train import adapt
        from train.data import load_background
        from train.export import export_onnx, write_card

        torch.set_num_threads(max(1, torch.get_num_threads()))
        model_path = Path(model_path or DEFAULT_MODEL)
        writable_folder(out, "--out")
        card = load_card(model_path)
        presets = card.get("presets")
        if not isinstance(presets, dict) or not presets:
            raise WhaleError(f"{model_path}: its card has no presets to re-choose")
        held = set(holdout)
        site = [r for p in site_paths for r in load_background(p, channel=channel)]
        site_held = [r for r in site if r.path.name in held]
        site_tune = [r for r in site if r.path.name not in held]
        if not site_tune:
            raise WhaleError("--background: every site file is held out; none left to adapt on")
        known = Datasets(list(data_paths), held - {r.path.name for r in site}, channel)
        tune, calibrate = adapt.split_site(site_tune)
        click.echo(
            f"site: {len(site_tune)} files to adapt on (last third of each for thresholds), "
            f"{len(site_held)} held out; known calls: {known.describe()}"
        )
        detector = adapt.detector_from_onnx(model_path, card)
        before = load_model(model_path, provider="cpu").score
        tuned = adapt.fine_tune(
            detector, tune, known.train_recs, known.clips, steps, seed=seed, log=click.echo
        )
        adapted_path = out / f"{card.get('name', 'upcall')}.onnx"
        export_onnx(tuned, adapted_path)
        after = load_model(adapted_path, provider="cpu").score
        new_presets = adapt.rechoose_presets(presets, adapt.site_rows(after, calibrate))
        old_rows = adapt.site_rows(before, calibrate)
        report = adaptation_report(
            presets, new_presets, old_rows, before, after, known.eval_ann, site_held
        )
        click.echo(report["text"])
        write_card(
            adapted_path,
            tuned,
            name=card.get("name", "upcall"),
            command="whale-train " + shlex.join(sys.argv[1:]),
            adapted_from={"model": model_path.name, "sha256": card.get("sha256")},
            site={
                "adapted_on": [r.path.name for r in site_tune],
                "held_out": sorted(held),
                "calibration_hours": round(sum(len(r.audio) for r in calibrate) / 7.2e6, 3),
            },
            training_data=card.get("training_data"),
            operating_points=card.get("operating_points"),
            presets=new_presets,
            adaptation=report["rows"],
            threshold=new_presets.get("balanced", next(iter(new_presets.values())))["threshold"],
        )
        (out / "adapt.md").write_text(report["text"] + "\n")
        click.echo(f"wrote {adapted_path} and its card")
    except WhaleError as e:
        fail(str(e))


def adaptation_report(presets, new_presets, old_rows, before, after, ann, site_held) -> dict:
    """Before and after, per preset: thresholds, site false alarms on the calibration part, and
    held-out recall and false alarms when recordings were held out."""
    from train.adapt import held_out, heldout_figures

    if ann or site_held:  # each model scores the held-out audio once, for every preset
        held_before, held_after = held_out(before, ann, site_held), held_out(after, ann, site_held)
    old_fa = {r["threshold"]: r["background_false_alarms_per_hour"] for r in old_rows}
    rows, lines = (
        [],
        [
            "| preset | threshold before → after | calibration FA/h before | held-out recall "
            "before → after | held-out site FA/h before → after |",
            "|---|---|---|---|---|",
        ],
    )
    for name, old in presets.items():
        new = new_presets[name]
        row = {
            "preset": name,
            "threshold_before": old["threshold"],
            "threshold_after": new["threshold"],
            "calibration_fa_before": old_fa.get(old["threshold"]),
            "calibration_fa_after": new["site_false_alarms_per_hour"],
        }
        if ann or site_held:
            row["held_out_before"] = heldout_figures(held_before, old["threshold"])
            row["held_out_after"] = heldout_figures(held_after, new["threshold"])
        rows.append(row)
        hb, ha = row.get("held_out_before", {}), row.get("held_out_after", {})
        lines.append(
            f"| {name} | {old['threshold']} → {new['threshold']} | "
            f"{row['calibration_fa_before']} → {row['calibration_fa_after']} | "
            f"{hb.get('recall', '-')} → {ha.get('recall', '-')} | "
            f"{hb.get('background_false_alarms_per_hour', '-')} → "
            f"{ha.get('background_false_alarms_per_hour', '-')} |"
        )
    return {"rows": rows, "text": "\n".join(lines)}
