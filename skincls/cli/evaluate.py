"""`skincls evaluate`, `skincls predict` and `skincls export`: use a trained checkpoint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.table import Table

from ..data.cells import printable, safe_path, safe_text
from ._common import (
    by_options,
    console,
    err_console,
    friendly_errors,
    precision_option,
    progress_bar,
)

# skincls.inference.export's FORMATS, written out: importing it loads torch, which `--help` must not
# wait for (tests/cli/test_lazy_imports.py checks that the two agree).
EXPORT_FORMATS = ("onnx", "torchscript", "safetensors")
# skincls.evaluation.challenge's CHALLENGES, written out for the same reason (checked in its tests).
CHALLENGES = ("isic2018", "isic2019", "isic2020", "isic2024")


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Prepared data dir. Default: the one CHECKPOINT was trained on (recorded in it), if it "
    "is still there, else ./data.",
)
@click.option(
    "--split",
    type=click.Choice(["train", "val", "test", "all"]),
    default="test",
    show_default=True,
    help="Which split to measure; all: every image (an external dataset used whole).",
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
    default=False,
    show_default=True,
    help="Write the fitted threshold/temperature and this report's metrics into CHECKPOINT "
    "(announced; refused if the file changed since it was read). Another dataset's metrics are "
    "kept as DATA_DIR_NAME:SPLIT, apart from the model's own.",
)
@click.option(
    "--keep-worse-calibration",
    is_flag=True,
    help="Keep a --calibrate temperature even when it makes val NLL or ECE worse.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@precision_option
@click.option(
    "--num-workers",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Worker processes decoding images while the model runs.",
)
@click.option(
    "--challenge",
    type=click.Choice(CHALLENGES),
    default=None,
    help="Also report what this ISIC challenge ranked by (2018/2019: balanced multiclass accuracy; "
    "2020: ROC-AUC; 2024: partial AUC above 80% sensitivity), and sensitivity at 90/95% specificity.",
)
@by_options
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--model-card",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a Markdown model card (model, data, metrics, threshold, calibration, limits).",
)
@friendly_errors
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
    keep_worse_calibration,
    device,
    precision,
    num_workers,
    challenge,
    by,
    min_group_n,
    as_json,
    model_card,
    quiet,
):
    """Measure CHECKPOINT on one split: accuracy, sensitivity, specificity, AUC, calibration, CIs.

    Threshold and temperature are fitted on the val split only (never on test, never on images
    the model was trained on), then the requested split is measured at them. Without
    --threshold/--target-sensitivity the checkpoint's stored threshold is used, or argmax when it
    has none. CHECKPOINT is only changed with --save. A split with images the model saw in
    training is measured, with a warning.

    CHECKPOINT is a checkpoint file or a run directory (its best.pt).
    """
    from ..evaluation.run import evaluate_checkpoint
    from ..models.checkpoint import load_checkpoint
    from ..runtime import describe_device, plan_precision, resolve_device

    if target_sensitivity is not None and threshold is not None:
        raise click.UsageError("give --target-sensitivity or --threshold, not both")
    # Read once: evaluate, store and the model card share it (hashed when it may be written back).
    ckpt = load_checkpoint(checkpoint, for_update=save)
    if data_dir is None:
        data_dir = _default_data_dir(ckpt)
    fitted = calibrate or target_sensitivity is not None or threshold is not None
    with progress_bar(not quiet) as progress:
        report = evaluate_checkpoint(
            ckpt,
            data_dir,
            split,
            calibrate=calibrate,
            target_sensitivity=target_sensitivity,
            threshold=threshold,
            tta=tta,
            plots_dir=plots_dir,
            device=device,
            save=save,
            keep_worse_calibration=keep_worse_calibration,
            n_bootstrap=bootstrap,
            seed=seed,
            challenge=challenge,
            by=by,
            min_group_n=min_group_n,
            precision=precision,
            num_workers=num_workers,
            progress=progress,
        )
    _notices(report, ckpt.path, save=save, fitted=fitted, as_json=as_json)
    # Said once the work succeeded, so a failure prints only its one-line error; --json output
    # stays the JSON alone, on either stream.
    if not as_json:
        dev = resolve_device(device)
        err_console.print(describe_device(dev, plan_precision(precision, dev).inference))
    if model_card is not None:
        from ..evaluation.modelcard import write_model_card

        write_model_card(ckpt, report, model_card, dataset=data_dir)
        click.echo(f"model card: {model_card}", err=True)  # stderr: keeps --json output pure
    if as_json:
        click.echo(report.model_dump_json(indent=2))
        return
    if report.calibration is not None:
        c = report.calibration
        console.print(
            f"calibration on {c.where} (n={c.n_images}): temperature {c.temperature:.3f}, "
            f"NLL {c.nll_before:.4f} → {c.nll_after:.4f}, ECE {c.ece_before:.4f} → {c.ece_after:.4f}"
        )
    for line in report.lines() + report.metric_lines():
        console.print(line)
    _print_confusion(report)
    for path in report.plots:
        console.print(f"plot: {path}")


def _default_data_dir(ckpt) -> Path:
    """The data dir the checkpoint was trained on, when it is still there (said on stderr); else
    ./data."""
    from ..data.splits import MANIFEST_NAME
    from ..training.rundir import recorded_data_dir

    recorded = recorded_data_dir(ckpt)
    if recorded is None or not (recorded / MANIFEST_NAME).is_file():
        return Path("data")
    click.echo(f"data dir: {printable(str(recorded))} (the one it was trained on)", err=True)
    return recorded


def _notices(report, path: Path, *, save: bool, fitted: bool, as_json: bool) -> None:
    """One stderr line each: a worse calibration, a split seen in training, nothing stored."""
    c = report.calibration
    if c is not None and c.worse:
        click.echo(c.worse_notice(report.temperature, "--keep-worse-calibration"), err=True)
    overlap = report.training_overlap
    if as_json and overlap is not None and overlap.message:  # text output has it in the report
        click.echo(f"WARNING: {overlap.message}", err=True)
    if as_json and report.missing_inputs:  # text output has it in the report
        click.echo(report.missing_note(), err=True)
    if fitted and not save:
        click.echo(
            f"not stored: {path} is unchanged; give --save to store this threshold/temperature",
            err=True,
        )


def _print_confusion(report) -> None:
    of = "" if report.data is None else f" of {report.data}"
    table = Table(title=f"confusion matrix ({report.split} split{of}, n={report.n_images})")
    table.add_column("true \\ predicted")
    for c in report.classes:
        table.add_column(c, justify="right")
    for c, row in zip(report.classes, report.confusion_matrix):
        table.add_row(c, *map(str, row))
    console.print(table)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("paths", nargs=-1, required=True)
@click.option("--tta", is_flag=True, help="Average over the 8 flips and 90° turns of each image.")
@click.option(
    "--cam",
    "cam_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write a Grad-CAM figure per image into this folder (PNG: the image, its heat map with a "
    "colour scale, label and probability).",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Call an image malignant when P(malignant) >= this, instead of the checkpoint's stored "
    "threshold (two-class checkpoints).",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@precision_option
@click.option(
    "--top-k",
    type=click.IntRange(min=0),
    default=None,
    help="List the K most probable classes per image [default: 3 with more than two classes, "
    "0 with two].",
)
@click.option("--json", "as_json", is_flag=True, help="Print predictions as JSON.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--csv",
    "csv_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write predictions to this CSV file.",
)
@click.option(
    "--metadata",
    "metadata_csv",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="For a model trained with metadata: a CSV with an image column (file name or id) and the "
    "model's columns (age, sex, site...). Missing columns or images are unknown (said once).",
)
@friendly_errors
def predict(
    checkpoint,
    paths,
    tta,
    cam_dir,
    threshold,
    device,
    precision,
    top_k,
    as_json,
    quiet,
    csv_file,
    metadata_csv,
):
    """Predict label and (calibrated) probability of images: P(malignant) for a benign/malignant
    model, P(label) and the top-k classes for one with more classes.

    CHECKPOINT is a checkpoint file or a run directory (its best.pt). PATHS are image files, folders
    (searched recursively) or glob patterns such as 'lesions/*.jpg'. Unreadable files get an error
    row; the exit code is 1 if any failed.
    """
    from ..inference.predict import Predictor
    from ..runtime import describe_device

    predictor = Predictor.from_checkpoint(
        checkpoint,
        device=device,
        tta=tta,
        precision=precision,
        threshold=threshold,
        top_k=top_k,
    )
    table = _metadata_table(predictor, metadata_csv)
    with progress_bar(not quiet) as progress:
        preds = predictor.predict(paths, cam_dir=cam_dir, progress=progress, metadata=table)
    _say_missing(predictor, table, metadata_csv, preds)
    if not as_json:  # after the work: a failure prints only its one-line error
        err_console.print(describe_device(predictor.device, predictor.precision))
    if csv_file is not None:
        _write_predictions_csv(preds, csv_file)
    if as_json:
        click.echo(json.dumps([p.to_dict() for p in preds], indent=2))
    else:
        binary = len(predictor.classes) == 2
        shown = f"P({predictor.classes[predictor.positive]})" if binary else "P(label)"
        threshold = "argmax" if predictor.threshold is None else f"{predictor.threshold:.4f}"
        source = predictor.checkpoint.path
        table = Table(title=f"predictions ({source}; threshold {threshold}; {predictor.precision})")
        top = [f"top {predictor.top_k}"] if predictor.top_k else []
        missing = ["missing inputs"] if predictor.encoder is not None else []
        for col in ("image", "label", shown, *top, *missing, *(["Grad-CAM"] if cam_dir else [])):
            table.add_column(col, overflow="fold")
        for p in preds:
            if p.error:
                table.add_row(printable(p.path), "[red]error[/]", printable(p.error))
            else:
                table.add_row(
                    printable(p.path),
                    p.label,
                    f"{p.probability:.3f}",
                    *([_top(p.top)] if top else []),
                    *([", ".join(p.missing_inputs or []) or "-"] if missing else []),
                    *([p.cam] if cam_dir else []),
                )
        console.print(table)
    if csv_file is not None and not as_json:
        console.print(f"csv: {csv_file}")
    if any(p.error for p in preds):
        sys.exit(1)


def _metadata_table(predictor, metadata_csv: Path | None):
    """The `--metadata` CSV read for the model's columns; None without one (or for an image-only
    model, which is told once)."""
    from ..inference.metadata import read_metadata_csv

    if predictor.encoder is None:
        if metadata_csv is not None:
            err_console.print(
                f"note: {predictor.checkpoint.path} takes images only; --metadata is not used"
            )
        return None
    return read_metadata_csv(metadata_csv, predictor.encoder) if metadata_csv else None


def _say_missing(predictor, table, metadata_csv: Path | None, preds) -> None:
    """Once, what the model's metadata lacked: no CSV, its absent columns, images without a row."""
    if predictor.encoder is None:
        return
    columns = ", ".join(predictor.encoder.names)
    if table is None:
        err_console.print(
            f"note: the model also takes metadata ({columns}); without --metadata CSV every "
            "image's is unknown"
        )
        return
    if table.absent_columns:
        err_console.print(
            f"note: {metadata_csv} has no {', '.join(table.absent_columns)} column: unknown for "
            "every image"
        )
    names = [p.path for p in preds if not p.error and table.row(p.path) is None]
    if names:
        err_console.print(
            f"note: {len(names)} image(s) have no row in {metadata_csv} (e.g. {names[0]}): "
            f"their {columns} are unknown"
        )


def _top(top) -> str:
    return ", ".join(f"{c} {v:.3f}" for c, v in top or [])


def _write_predictions_csv(preds, path: Path) -> None:
    import csv

    path.parent.mkdir(parents=True, exist_ok=True)
    cols = ["path", "label", "probability", "positive_class", "threshold", "top", "cam", "error"]
    cols += ["missing_inputs"] if any(p.missing_inputs is not None for p in preds) else []
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        writer.writeheader()
        for p in preds:
            row = p.to_dict()
            row["top"] = "; ".join(f"{c}:{v:.6f}" for c, v in p.top or [])
            row["missing_inputs"] = ";".join(p.missing_inputs or [])
            # A spreadsheet runs no cell as a formula; an undecodable file name shows its bytes.
            for col in ("path", "cam"):
                row[col] = row[col] and safe_path(row[col])
            for col in ("label", "positive_class", "top", "error"):
                row[col] = row[col] and safe_text(row[col])
            writer.writerow(row)


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(EXPORT_FORMATS),
    default="onnx",
    show_default=True,
    help="ONNX (checked with ONNX Runtime), TorchScript (checked with torch.jit.load), or "
    "safetensors: the checkpoint itself, its weights as safetensors and its metadata as JSON (no "
    "pickle), for sharing a model skincls loads as it loads the .pt.",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="File to write, e.g. model.onnx, model.pt or model.safetensors.",
)
@click.option(
    "--tolerance",
    type=click.FloatRange(min=0),
    default=1e-4,
    show_default=True,
    help="Largest max-abs probability difference from PyTorch that passes the parity check.",
)
@friendly_errors
def export(checkpoint, fmt, out, tolerance):
    """Export CHECKPOINT with normalisation and calibrated softmax built in, checked for parity.

    The exported model takes float32 RGB images, NCHW, values in [0, 1], at the checkpoint's crop size,
    and returns class probabilities. With --format safetensors the checkpoint is written again
    without pickles (every field, not the resume state); evaluate, predict and serve read it.

    CHECKPOINT is a checkpoint file or a run directory (its best.pt).
    """
    from ..inference.export import export_model

    result = export_model(checkpoint, out, format=fmt, tolerance=tolerance)
    batches = ", ".join(map(str, result.batch_sizes))
    console.print(f"wrote {result.path} ({result.format})")
    if result.format == "safetensors":
        console.print(
            "a skincls checkpoint: weights as safetensors, metadata as JSON in its header, no "
            "pickle; evaluate, predict and serve read it as they read the .pt"
        )
    else:
        console.print(
            f"input:  float32 RGB NCHW in [0, 1], shape {tuple(result.input_shape)}; output: "
            f"probabilities of {', '.join(result.classes)} (temperature {result.temperature:g})"
        )
        if "metadata_input" in result.metadata:  # a fused model's second input
            console.print(f"input 2 (metadata): {result.metadata['metadata_input']}")
    how = f"batches of {batches}" if batches else "every field and tensor read back bit for bit"
    console.print(
        f"parity: max abs difference {result.max_abs_diff:.3g} <= tolerance {result.tolerance:g} "
        f"({how})"
    )
