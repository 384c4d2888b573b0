"""`skincls cv`: K-fold cross-validation of a training recipe, its out-of-fold report and its ensemble."""

from __future__ import annotations

from pathlib import Path

import click
from rich.console import Console
from rich.table import Table

from ._common import by_options, console, friendly_errors
from .train import _recipe_options, _train_options, load_run_config, print_config


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML or JSON config (as for train); options given here override it.",
)
@click.option(
    "--folds", type=click.IntRange(min=2), default=5, show_default=True, help="Number of folds K."
)
@_recipe_options
@_train_options
@click.option(
    "--calibrate/--no-calibrate",
    default=True,
    show_default=True,
    help="Fit one temperature on the out-of-fold predictions.",
)
@click.option(
    "--target-sensitivity",
    type=click.FloatRange(0, 1, min_open=True),
    default=None,
    help="Choose the largest threshold reaching this sensitivity on the out-of-fold predictions.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Use this fixed threshold on P(malignant) instead.",
)
@click.option("--tta", is_flag=True, help="Out-of-fold predictions over the 8 flips and 90° turns.")
@click.option(
    "--refit/--no-refit",
    default=False,
    show_default=True,
    help="Also train one model on all non-test images for the folds' median best epoch.",
)
@click.option(
    "--bootstrap",
    type=click.IntRange(min=0),
    default=1000,
    show_default=True,
    help="Bootstrap resamples for the out-of-fold confidence intervals (0: none).",
)
@by_options
@click.option(
    "--group-by",
    default=None,
    metavar="COLUMN",
    help="Hold out whole values of this manifest column per fold (lesions and patients still "
    "joined): source (where the image was taken: HAM10000's dataset, ISIC's attribution; "
    "leave-hospital-out), site (anatomical site), patient, lesion, or any manifest column. "
    "With --folds equal to its number of values, one value per fold.",
)
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the CV in --out: finished folds are kept, the fold in progress continues.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option(
    "--compare",
    type=click.Choice(["metadata"]),
    default=None,
    help="metadata: cross-validate image-only, metadata-only and fused models on the same folds "
    "(into --out/image, /metadata, /fused) and report each with its CI and the paired "
    "differences.",
)
@friendly_errors
def cv(
    config_file,
    recipe,
    print_config_,
    folds,
    calibrate,
    target_sensitivity,
    threshold,
    tta,
    refit,
    bootstrap,
    by,
    min_group_n,
    group_by,
    quiet,
    resume,
    as_json,
    compare,
    **options,
):
    """Cross-validate the `train` recipe over the non-test images: K grouped, stratified folds.

    Writes into --out: foldK/ (one run dir per fold), oof.csv (every non-test image predicted once by
    the model that did not train on it), cv_report.json, and ensemble.pt: the K fold models as one
    checkpoint that evaluate, predict and export take like any other. Temperature and threshold are
    chosen on the out-of-fold predictions, never on test.
    """
    from ..config import RunConfig
    from ..experiments.cv import cross_validate

    err = Console(stderr=True)  # progress lines: stdout stays the report (pure JSON with --json)

    if target_sensitivity is not None and threshold is not None:
        raise click.UsageError("give --target-sensitivity or --threshold, not both")
    out = options["out"]
    if resume and config_file is None and out is not None and (out / "config.json").is_file():
        config_file = out / "config.json"
    config = load_run_config(config_file, recipe, options)
    if print_config_:
        print_config(config)
        return
    if out is None and config.out == RunConfig.model_fields["out"].default:
        config.out = Path("runs/cv")  # not train's default run dir
    cv_options = dict(
        resume=resume,
        refit=refit,
        calibrate=calibrate,
        target_sensitivity=target_sensitivity,
        threshold=threshold,
        tta=tta,
        by=by,
        min_group_n=min_group_n,
        group_by=group_by,
        progress=not quiet,
        log=(lambda line: None) if quiet else (lambda line: err.print(f"[dim]{line}[/]")),
    )
    if compare == "metadata":
        _compare(config, folds, bootstrap, cv_options, as_json)
        return
    result = cross_validate(config, folds, n_bootstrap=bootstrap, **cv_options)
    report = result.report
    if as_json:  # stdout holds the JSON only; progress went to stderr
        click.echo(report.model_dump_json(indent=2))
        return
    _print_folds(report)
    oof = report.oof
    if oof.calibration is not None:
        c = oof.calibration
        console.print(
            f"calibration on {c.split} (n={c.n_images}): temperature {c.temperature:.3f}, "
            f"NLL {c.nll_before:.4f} → {c.nll_after:.4f}, ECE {c.ece_before:.4f} → {c.ece_after:.4f}"
        )
    for line in oof.lines() + oof.metric_lines():
        console.print(line)
    for path in oof.plots:
        console.print(f"plot: {path}")
    console.print(f"out-of-fold predictions: {result.oof_csv}")
    if result.ensemble is not None:
        console.print(f"ensemble of {report.folds} fold models: {result.ensemble}")
    else:
        console.print("no ensemble: the fold models take metadata, each with its own encoding")
    if result.refit is not None:
        console.print(
            f"refit on all non-test images ({report.refit_epochs} epochs): {result.refit}"
        )
    console.print(f"report: {result.cv_dir / 'cv_report.json'}")


def _compare(config, folds: int, bootstrap: int, cv_options: dict, as_json: bool) -> None:
    from ..experiments.compare import compare_metadata

    result = compare_metadata(config, folds, n_bootstrap=bootstrap, **cv_options)
    if as_json:
        click.echo((result.out / "compare_report.json").read_text())
        return
    name = {"roc_auc": "ROC-AUC", "balanced_accuracy": "balanced accuracy"}[result.metric]
    table = Table(title=f"out-of-fold {name}, {folds} folds, the same for every model")
    for col in ("model", name, "95% CI", "fused − this", "95% CI of the difference"):
        table.add_column(col, justify="right")
    for arm, cv_result in result.arms.items():
        ci = cv_result.report.oof.ci.get(result.metric)
        pair = result.paired.get(f"fused-{arm}")
        table.add_row(
            arm,
            f"{result.values[arm]:.3f}",
            "-" if not ci else f"{ci[0]:.3f}–{ci[1]:.3f}",
            "-" if pair is None else f"{pair['diff']:+.3f}",
            "-" if pair is None or pair["ci"][0] is None else
            f"{pair['ci'][0]:+.3f} to {pair['ci'][1]:+.3f}",
        )  # fmt: skip
    console.print(table)
    console.print(f"report: {result.out / 'compare_report.json'}")


def _print_folds(report) -> None:
    keys = [k for k in ("accuracy", "sensitivity", "specificity", "roc_auc", "nll", "ece")]
    keys = [k for k in keys if report.mean.get(k) is not None]
    table = Table(
        title=f"{report.folds}-fold cross-validation ({report.n_images} images, "
        f"{report.n_groups} groups: {report.grouping})"
    )
    for col in ("fold", "train", "held out", "best epoch", *keys):
        table.add_column(col, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for f in report.fold_results:
        table.add_row(
            str(f.fold), str(f.n_train), str(f.n_heldout), str(f.best_epoch),
            *(fmt(f.metrics.get(k)) for k in keys),
        )  # fmt: skip
    table.add_row(
        "mean ± std", "", "", "",
        *(f"{fmt(report.mean[k])} ± {fmt(report.std.get(k))}" for k in keys),
    )  # fmt: skip
    console.print(table)


for _param in cv.params:  # train's --out help names train's default run dir
    if _param.name == "out":
        _param.help = "CV directory (fold runs, oof.csv, ensemble.pt, cv_report.json). [runs/cv]"
