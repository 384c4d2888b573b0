"""The `skincls` command line: each command parses options, makes one library call, renders the result."""

from __future__ import annotations

import contextlib
import functools
import json
import sys
from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from . import __version__
from .errors import SkinclsError

console = Console(stderr=False)


def _friendly(fn):
    """Turn library errors into one-line Click errors (no traceback)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SkinclsError as exc:
            raise click.ClickException(str(exc)) from exc
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="skincls")
def main() -> None:
    """Skin-lesion classification (benign vs malignant) by transfer learning.

    Research software, not a medical device. Typical flow: fetch → train → evaluate → predict.
    """


@main.command()
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("data"),
    show_default=True,
    help="Where images/, manifest.csv and dataset.json are written.",
)
@click.option(
    "--dataset",
    default="fanconic/skin-cancer-malignant-vs-benign",
    show_default=True,
    help="Kaggle dataset OWNER/NAME, downloaded when no other source is given.",
)
@click.option(
    "--archive",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Offline: a zip as Kaggle serves it (split/class/*.jpg; a second data/ copy is ignored).",
)
@click.option(
    "--source-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Offline: a folder in split/class/*.jpg (or class/*.jpg) layout.",
)
@click.option(
    "--synthetic",
    type=click.IntRange(min=4),
    default=None,
    help="Generate N synthetic lesion images instead of downloading (offline).",
)
@click.option(
    "--cache-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where Kaggle downloads are kept and reused [~/.cache/skincls/kaggle].",
)
@click.option("--force", is_flag=True, help="Download and prepare again even when up to date.")
@click.option(
    "--val-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.1,
    show_default=True,
    help="Share of training images held out for validation.",
)
@click.option(
    "--test-fraction",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.2,
    show_default=True,
    help="Share held out for test when the source has no test split.",
)
@click.option(
    "--seed", type=int, default=0, show_default=True, help="Seed for splits and synthetic data."
)
@click.option(
    "--near-dup-distance",
    type=click.IntRange(-1, 16),
    default=2,
    show_default=True,
    help="Max pHash Hamming distance (bits) for near duplicates; -1 turns them off.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly
def fetch(
    data_dir,
    dataset,
    archive,
    source_dir,
    synthetic,
    cache_dir,
    force,
    val_fraction,
    test_fraction,
    seed,
    near_dup_distance,
    quiet,
):
    """Prepare a dataset: verified images, leak-free splits and the manifest every later step reads.

    With no source option the Kaggle dataset is downloaded (credentials: KAGGLE_API_TOKEN,
    ~/.kaggle/access_token or ~/.kaggle/kaggle.json). Running it again with the same inputs is a no-op.
    """
    from .fetch import fetch as run_fetch

    with _fetch_progress(quiet) as on_progress:
        report = run_fetch(
            data_dir,
            source_dir=source_dir,
            archive=archive,
            synthetic=synthetic,
            dataset=dataset,
            cache_dir=cache_dir,
            force=force,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            near_dup_distance=near_dup_distance,
            on_progress=on_progress,
        )
    _print_counts(report.manifest)
    _print_fetch_details(report)


@contextlib.contextmanager
def _fetch_progress(quiet: bool):
    """A rich progress bar per fetch stage, fed by the library's (stage, done, total) callback."""
    if quiet:
        yield None
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    labels = {
        "download": "downloading",
        "extract": "extracting",
        "copy": "copying",
        "verify": "verifying + hashing",
    }
    tasks: dict[str, int] = {}
    bars = Progress(
        TextColumn("{task.description:<20}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=console,
    )

    def update(stage: str, done: int, total: int | None) -> None:
        # Downloads count bytes with no known total; the other stages count files.
        detail = f"{done / 2**20:.1f} MiB" if stage == "download" else f"{done}/{total}"
        if stage not in tasks:
            bars.start()  # lazily: a run with nothing to show (up to date, an error) draws nothing
            tasks[stage] = bars.add_task(labels.get(stage, stage), total=total, detail=detail)
        bars.update(tasks[stage], completed=done, total=total, detail=detail)

    try:
        yield update
    finally:
        if tasks:
            bars.stop()


def _print_fetch_details(report) -> None:
    info = report.info
    data_dir = report.manifest.root
    if not report.changed:
        console.print(
            f"[green]already up to date[/]: {data_dir} was prepared from the same inputs and "
            "options; nothing was rewritten"
        )
    skipped = report.skipped
    console.print(
        f"{info.get('n_kept', len(report.manifest.records))} images kept, {len(skipped)} skipped"
        f" ({info.get('n_files', '?')} files in the source's dataset tree)"
    )
    for path, reason in skipped[:20]:
        console.print(f"  [yellow]skipped[/] {path}: {reason}")
    if len(skipped) > 20:
        console.print(f"  … and {len(skipped) - 20} more (see dataset.json)")
    copies = info.get("source", {}).get("ignored_copies") or {}
    for root, n in copies.items():
        console.print(f"ignored a second copy of the dataset under {root}/ ({n} files)")
    d = info.get("duplicates", {})
    if d:
        console.print(
            f"duplicates: {len(d['exact_groups'])} exact-copy groups ({d['exact_images']} images); "
            f"{d['near_pairs']} pairs within {info.get('near_dup_distance')} bits "
            f"({d['near_pairs_exact']} at distance 0, {d['near_pairs_across_source_splits']} across source "
            f"splits) → {len(d['clusters'])} clusters of {d['images_in_clusters']} images, "
            "each kept in one split"
        )
        if d.get("rejected_pairs"):
            console.print(
                f"  {len(d['rejected_pairs'])} pHash look-alike pairs not confirmed by dHash "
                "(different lesions) were left apart"
            )
        for c in d["label_conflicts"]:
            console.print(f"  [red]label conflict[/] cluster {c['id']}: {', '.join(c['paths'])}")
    moved = info.get("moved", [])
    if moved:
        console.print(f"moved {len(moved)} duplicates of held-out images out of train:")
        for m in moved:
            console.print(f"  {m['path']}: {m['from']} → {m['to']} (cluster {m['cluster']})")
    console.print(f"manifest: {data_dir / 'manifest.csv'}\ndetails:  {data_dir / 'dataset.json'}")
    console.print(f"images:   {data_dir / 'images'}")


def _print_counts(manifest) -> None:
    table = Table(title=f"dataset in {manifest.root}")
    table.add_column("split")
    for c in manifest.classes:
        table.add_column(c, justify="right")
    table.add_column("total", justify="right")
    for split, row in manifest.counts().items():
        table.add_row(split, *map(str, row.values()), str(sum(row.values())))
    console.print(table)


def _int_or_word(value: str | None) -> int | str | None:
    """`--freeze 2` is a stage count, `--freeze backbone` a policy name."""
    return int(value) if value is not None and value.lstrip("-").isdigit() else value


# `skincls train` options: (flag, RunConfig key, click settings). Help text and the default shown in
# brackets come from the config's own fields, so `--help`, config files and the docs cannot disagree.
_TRAIN_OPTIONS: tuple[tuple[str, str, dict], ...] = (
    ("--data-dir", "data.data_dir", {"type": click.Path(path_type=Path)}),
    ("--arch", "model.arch", {}),
    ("--weights", "model.weights", {}),
    ("--freeze", "model.freeze", {"callback": lambda c, p, v: _int_or_word(v)}),
    (
        "--head",
        "model.head",
        {
            "callback": lambda c, p, v: _parse_head(v),
            "help": "Hidden widths, e.g. 4096,512; 'none' for a linear head.",
        },
    ),
    ("--dropout", "model.dropout", {"type": click.FloatRange(0, 1, max_open=True)}),
    ("--epochs", "train.epochs", {"type": click.IntRange(min=1)}),
    ("--batch-size", "train.batch_size", {"type": click.IntRange(min=1)}),
    ("--lr", "train.lr", {"type": click.FloatRange(min=0, min_open=True)}),
    ("--image-size", "data.image_size", {"type": click.IntRange(16, 1024)}),
    ("--augment/--no-augment", "data.augment", {}),
    ("--device", "train.device", {}),
    ("--seed", "train.seed", {"type": int}),
    ("--out", "out", {"type": click.Path(file_okay=False, path_type=Path)}),
    ("--finetune-epochs", "train.finetune_epochs", {"type": click.IntRange(min=0)}),
    ("--unfreeze", "train.unfreeze", {"callback": lambda c, p, v: _int_or_word(v)}),
    (
        "--backbone-lr-mult",
        "train.backbone_lr_mult",
        {"type": click.FloatRange(0, 1, min_open=True)},
    ),
    ("--optimizer", "train.optimizer", {"type": click.Choice(["auto", "adam", "adamw", "sgd"])}),
    ("--weight-decay", "train.weight_decay", {"type": click.FloatRange(min=0)}),
    ("--schedule", "train.schedule", {"type": click.Choice(["none", "cosine", "plateau"])}),
    ("--warmup-epochs", "train.warmup_epochs", {"type": click.FloatRange(min=0)}),
    ("--label-smoothing", "train.label_smoothing", {"type": click.FloatRange(0, 1, max_open=True)}),
    ("--class-weights", "train.class_weights", {"type": click.Choice(["none", "balanced"])}),
    ("--sampler", "train.sampler", {"type": click.Choice(["shuffle", "balanced"])}),
    ("--patience", "train.patience", {"type": click.IntRange(min=1)}),
    ("--monitor", "train.monitor", {"type": click.Choice(["val_loss", "val_accuracy"])}),
    (
        "--cache-features",
        "train.cache_features",
        {"type": click.Choice(["auto", "memory", "disk", "off"])},
    ),
    ("--inference-batch-size", "train.inference_batch_size", {"type": click.IntRange(min=1)}),
    ("--num-workers", "data.num_workers", {"type": click.IntRange(min=0)}),
    ("--amp/--no-amp", "train.amp", {}),
)


def _config_field(key: str):
    from .config import RunConfig

    model, *parents, leaf = [RunConfig, *key.split(".")]
    for name in parents:
        model = model.model_fields[name].annotation
    return model.model_fields[leaf]


def _train_options(fn):
    """Add every `_TRAIN_OPTIONS` entry to `fn`; each defaults to None = "not given, keep the config's"."""
    for flag, key, settings in reversed(_TRAIN_OPTIONS):
        field = _config_field(key)
        text = settings.pop("help", None) or (field.description or "").rstrip(".") + "."
        default = field.default
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        settings = {**settings, "help": text if default is None else f"{text} [{shown}]"}
        fn = click.option(flag, default=None, **settings)(fn)
    return fn


def _param_name(flag: str) -> str:
    return flag.split("/")[0].lstrip("-").replace("-", "_")


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML or JSON config; options given here override it.",
)
@_train_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last.pt (its config.json is the base config).",
)
@_friendly
def train(config_file, quiet, resume, **options):
    """Train a classifier; writes RUNDIR/best.pt, last.pt, history.json/csv, config.json and a plot.

    With a frozen backbone and no augmentation, the backbone runs once per image (feature cache) and
    only the head trains. --finetune-epochs adds a phase with the backbone unfrozen.
    """
    from .config import load_config
    from .pipeline import train_from_config

    out = options["out"]
    if resume and config_file is None and out is not None and (out / "config.json").is_file():
        config_file = out / "config.json"
    overrides = {key: options[_param_name(flag)] for flag, key, _ in _TRAIN_OPTIONS}
    config = load_config(config_file, overrides)
    result = train_from_config(config, progress=not quiet, resume=resume)
    if result.history.cache:
        cache = ", ".join(f"{k} {v}" for k, v in result.history.cache.items())
        console.print(f"feature cache (last phase): {cache}; notes in history.json")
    _print_history(result.history)
    console.print(f"best checkpoint: {result.best_checkpoint} (epoch {result.history.best_epoch})")
    console.print(f"run directory:   {result.run_dir}")


def _parse_head(value: str | None) -> list[int] | None:
    if value is None:
        return None
    if value.strip().lower() in ("", "none"):
        return []
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give widths like 4096,512, or none") from None


def _print_history(history) -> None:
    table = Table(title="training history (train and val splits)")
    cols = ("epoch", "phase", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
    for col in cols:
        table.add_column(col, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for e in history.epochs:
        mark = " *" if e.epoch == history.best_epoch else ""
        table.add_row(
            f"{e.epoch}{mark}",
            e.phase,
            fmt(e.train_loss),
            fmt(e.train_accuracy),
            fmt(e.val_loss),
            fmt(e.val_accuracy),
            f"{e.seconds:.1f}",
        )
    console.print(table)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=Path("data"),
    show_default=True,
    help="Prepared data dir.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test"]),
    default="test",
    show_default=True,
    help="Which split to measure.",
)
@click.option(
    "--target-sensitivity",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Choose the largest threshold reaching this sensitivity on the val split; store it.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Use and store this fixed threshold on P(malignant) instead.",
)
@click.option(
    "--calibrate", is_flag=True, help="Fit temperature scaling on the val split and store it."
)
@click.option("--tta", is_flag=True, help="Average over the 8 flips and 90° turns of each image.")
@click.option(
    "--plots",
    "plots_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write ROC, PR, confusion and reliability PNGs into this folder.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Bootstrap resamples for 95% confidence intervals (0: none).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed.")
@click.option(
    "--save/--no-save",
    default=True,
    show_default=True,
    help="Store a fitted threshold/temperature and this report's metrics in the checkpoint.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--model-card",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a Markdown model card (model, data, metrics, threshold, calibration, limits).",
)
@_friendly
def evaluate(
    checkpoint,
    data_dir,
    split,
    target_sensitivity,
    threshold,
    calibrate,
    tta,
    plots_dir,
    bootstrap,
    seed,
    save,
    device,
    as_json,
    model_card,
):
    """Measure CHECKPOINT on one split: accuracy, sensitivity, specificity, AUC, calibration, CIs.

    Threshold and temperature are fitted on the val split only (never on test), then the requested
    split is measured at them. Without --threshold/--target-sensitivity the checkpoint's stored
    threshold is used, or argmax when it has none.
    """
    from .evaluate import evaluate_checkpoint

    if target_sensitivity is not None and threshold is not None:
        raise click.UsageError("give --target-sensitivity or --threshold, not both")
    report = evaluate_checkpoint(
        checkpoint,
        data_dir,
        split,
        calibrate=calibrate,
        target_sensitivity=target_sensitivity,
        threshold=threshold,
        tta=tta,
        plots_dir=plots_dir,
        device=device,
        save=save,
        n_bootstrap=bootstrap,
        seed=seed,
    )
    if model_card is not None:
        from .modelcard import write_model_card

        write_model_card(checkpoint, report, model_card, dataset=data_dir / "dataset.json")
        click.echo(f"model card: {model_card}", err=True)  # stderr: keeps --json output pure
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    if report.calibration is not None:
        c = report.calibration
        console.print(
            f"calibration on {c.split} (n={c.n_images}): temperature {c.temperature:.3f}, "
            f"NLL {c.nll_before:.4f} → {c.nll_after:.4f}, ECE {c.ece_before:.4f} → {c.ece_after:.4f}"
        )
    for line in report.lines() + report.metric_lines():
        console.print(line)
    _print_confusion(report)
    for path in report.plots:
        console.print(f"plot: {path}")


def _print_confusion(report) -> None:
    table = Table(title=f"confusion matrix ({report.split} split, n={report.n_images})")
    table.add_column("true \\ predicted")
    for c in report.classes:
        table.add_column(c, justify="right")
    for c, row in zip(report.classes, report.confusion_matrix):
        table.add_row(c, *map(str, row))
    console.print(table)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True)
@click.option("--tta", is_flag=True, help="Average over the 8 flips and 90° turns of each image.")
@click.option(
    "--cam",
    "cam_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write Grad-CAM overlays (PNG, the input's size) into this folder.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--json", "as_json", is_flag=True, help="Print predictions as JSON.")
@click.option(
    "--csv",
    "csv_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write predictions to this CSV file.",
)
@_friendly
def predict(checkpoint, paths, tta, cam_dir, device, as_json, csv_file):
    """Predict label and (calibrated) malignant probability of images.

    PATHS are image files, folders (searched recursively) or glob patterns such as 'lesions/*.jpg'.
    Unreadable files get an error row; the exit code is 1 if any failed.
    """
    from .predict import Predictor

    preds = Predictor.from_checkpoint(checkpoint, device=device, tta=tta).predict(
        paths, cam_dir=cam_dir
    )
    if csv_file is not None:
        _write_predictions_csv(preds, csv_file)
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in preds], indent=2))
    else:
        ok = next((p for p in preds if not p.error), None)
        positive = ok.positive_class if ok else "positive"
        threshold = "argmax" if ok is None or ok.threshold is None else f"{ok.threshold:.4f}"
        table = Table(title=f"predictions ({checkpoint}; threshold {threshold})")
        for col in ("image", "label", f"P({positive})", *(["Grad-CAM"] if cam_dir else [])):
            table.add_column(col, overflow="fold")
        for p in preds:
            if p.error:
                table.add_row(p.path, "[red]error[/]", p.error)
            else:
                table.add_row(
                    p.path, p.label, f"{p.probability:.3f}", *([p.cam] if cam_dir else [])
                )
        console.print(table)
    if csv_file is not None and not as_json:
        console.print(f"csv: {csv_file}")
    if any(p.error for p in preds):
        sys.exit(1)


def _write_predictions_csv(preds, path: Path) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["path", "label", "probability", "positive_class", "threshold", "cam", "error"]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(p.to_dict() for p in preds)


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@_friendly
def models(as_json):
    """List the backbones `--arch` accepts, with parameter counts and default input size."""
    from .models import describe_models

    rows = describe_models()
    if as_json:
        click.echo(json.dumps([vars(r) for r in rows], indent=2))
        return
    table = Table(
        title="backbones for --arch",
        caption="params/trainable: default head 4096,512, 2 classes, --freeze backbone; "
        "stages: what --freeze N counts; px: default input size; top-1: ImageNet accuracy",
    )
    for col in ("arch", "params", "trainable", "stages", "px", "top-1"):
        table.add_column(col, justify="left" if col == "arch" else "right", no_wrap=True)
    for r in rows:
        acc = "-" if r.imagenet_acc1 is None else f"{r.imagenet_acc1:.1f}%"
        table.add_row(
            r.name, f"{r.params:,}", f"{r.trainable:,}", str(r.stages), str(r.input_size), acc
        )
    console.print(table)


@main.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("skincls-demo"),
    show_default=True,
    help="Where the demo's data and run are written.",
)
@click.option(
    "--images",
    type=click.IntRange(min=40),
    default=800,
    show_default=True,
    help="Synthetic images to generate.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True, help="Epochs.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly
def demo(workdir, images, epochs, quiet):
    """Run the whole pipeline offline on synthetic data: fetch → train → evaluate → predict."""
    from .demo import run_demo

    run_demo(workdir, images=images, epochs=epochs, progress=not quiet, console=console)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "torchscript"]),
    default="onnx",
    show_default=True,
    help="ONNX (checked with ONNX Runtime) or TorchScript (checked with torch.jit.load).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write, e.g. model.onnx or model.pt.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=1e-4,
    show_default=True,
    help="Largest max-abs probability difference from PyTorch that passes the parity check.",
)
@_friendly
def export(checkpoint, fmt, out, tolerance):
    """Export CHECKPOINT with normalisation and calibrated softmax built in, checked for parity.

    The exported model takes float32 RGB images, NCHW, values in [0, 1], at the checkpoint's crop size,
    and returns class probabilities.
    """
    from .export import export_model

    result = export_model(checkpoint, out, format=fmt, tolerance=tolerance)
    batches = ", ".join(map(str, result.batch_sizes))
    console.print(f"wrote {result.path} ({result.format})")
    console.print(
        f"input:  float32 RGB NCHW in [0, 1], shape {tuple(result.input_shape)}; output: probabilities of "
        f"{', '.join(result.classes)} (temperature {result.temperature:g})"
    )
    console.print(
        f"parity: max abs difference {result.max_abs_diff:.3g} <= tolerance {result.tolerance:g} "
        f"(batches of {batches})"
    )


if __name__ == "__main__":  # pragma: no cover
    main()
