"""The `skincls` command line: each command parses options, makes one library call, renders the result."""

from __future__ import annotations

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
    help="Where images, manifest.csv and dataset.json are written.",
)
@click.option(
    "--synthetic",
    type=click.IntRange(min=4),
    default=None,
    help="Generate N synthetic lesion images instead of downloading (offline).",
)
@click.option(
    "--source-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Use an existing folder in split/class/*.jpg layout.",
)
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
@_friendly
def fetch(data_dir, synthetic, source_dir, val_fraction, test_fraction, seed):
    """Prepare a dataset: images plus a manifest that every later step reads."""
    from .fetch import fetch as run_fetch

    report = run_fetch(
        data_dir,
        source_dir=source_dir,
        synthetic=synthetic,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    _print_counts(report.manifest)
    for path, reason in report.skipped:
        console.print(f"[yellow]skipped[/] {path}: {reason}")
    console.print(f"manifest: {data_dir / 'manifest.csv'}")


def _print_counts(manifest) -> None:
    table = Table(title=f"dataset in {manifest.root}")
    table.add_column("split")
    for c in manifest.classes:
        table.add_column(c, justify="right")
    table.add_column("total", justify="right")
    for split, row in manifest.counts().items():
        table.add_row(split, *map(str, row.values()), str(sum(row.values())))
    console.print(table)


@main.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML or JSON config; options given here override it.",
)
@click.option(
    "--data-dir", type=click.Path(path_type=Path), default=None, help="Prepared data dir [data]."
)
@click.option("--arch", default=None, help="Backbone name (see `skincls models`) [vgg16].")
@click.option("--weights", default=None, help="imagenet, none, or a state-dict file [imagenet].")
@click.option("--freeze", default=None, help="backbone (frozen conv base) or none [backbone].")
@click.option("--epochs", type=click.IntRange(min=1), default=None, help="Epochs [10].")
@click.option("--batch-size", type=click.IntRange(min=1), default=None, help="Batch size [20].")
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=None, help="Learning rate [1e-3]."
)
@click.option(
    "--image-size",
    type=click.IntRange(16, 1024),
    default=None,
    help="Crop size in pixels [the weights' own, 224 for VGG16].",
)
@click.option(
    "--augment/--no-augment", default=None, help="Flips, 90° turns, affine, colour jitter."
)
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N or mps [auto].")
@click.option("--seed", type=int, default=None, help="Seed [0]; same seed on CPU → same history.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run directory for best.pt, last.pt, history and config [runs/latest].",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@_friendly
def train(
    config_file,
    data_dir,
    arch,
    weights,
    freeze,
    epochs,
    batch_size,
    lr,
    image_size,
    augment,
    device,
    seed,
    out,
    quiet,
):
    """Train a classifier; writes RUNDIR/best.pt, last.pt, history.json/csv and config.json."""
    from .config import load_config
    from .pipeline import train_from_config

    if freeze is not None and freeze.lstrip("-").isdigit():
        freeze = int(freeze)
    config = load_config(
        config_file,
        {
            "data.data_dir": data_dir,
            "data.image_size": image_size,
            "data.augment": augment,
            "model.arch": arch,
            "model.weights": weights,
            "model.freeze": freeze,
            "train.epochs": epochs,
            "train.batch_size": batch_size,
            "train.lr": lr,
            "train.device": device,
            "train.seed": seed,
            "out": out,
        },
    )
    result = train_from_config(config, progress=not quiet)
    _print_history(result.history)
    console.print(f"best checkpoint: {result.best_checkpoint} (epoch {result.history.best_epoch})")
    console.print(f"run directory:   {result.run_dir}")


def _print_history(history) -> None:
    table = Table(title="training history (train and val splits)")
    for col in ("epoch", "train loss", "train acc", "val loss", "val acc", "seconds"):
        table.add_column(col, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for e in history.epochs:
        mark = " *" if e.epoch == history.best_epoch else ""
        table.add_row(
            f"{e.epoch}{mark}",
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
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@_friendly
def evaluate(checkpoint, data_dir, split, device, as_json):
    """Measure CHECKPOINT on one split: loss, overall and per-class accuracy."""
    from .evaluate import Evaluator

    report = Evaluator(checkpoint, device=device).evaluate(data_dir, split=split)
    if as_json:
        click.echo(report.model_dump_json(indent=2))
    else:
        for line in report.lines():
            console.print(line)


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@click.option("--json", "as_json", is_flag=True, help="Print predictions as JSON.")
@_friendly
def predict(checkpoint, paths, device, as_json):
    """Predict the label and malignant probability of image files PATHS."""
    from .predict import Predictor

    preds = Predictor.from_checkpoint(checkpoint, device=device).predict(paths)
    if as_json:
        click.echo(json.dumps([vars(p) for p in preds], indent=2))
    else:
        table = Table(title=f"predictions ({checkpoint})")
        for col in ("image", "label", "P(positive)"):
            table.add_column(col)
        for p in preds:
            if p.error:
                table.add_row(p.path, "[red]error[/]", p.error)
            else:
                table.add_row(p.path, p.label, f"{p.probability:.3f}")
        console.print(table)
    if any(p.error for p in preds):
        sys.exit(1)


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


if __name__ == "__main__":  # pragma: no cover
    main()
