"""`skincls runs`: a table of the run dirs under a folder, to compare runs without opening JSON."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.markup import escape
from rich.table import Table

from ._common import console, friendly_errors


@click.command()
@click.argument("root", type=click.Path(path_type=Path), default=Path("runs"), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print the summaries as JSON.")
@friendly_errors
def runs(root, as_json):
    """List the training runs under ROOT [runs]: arch, data, epochs, best val and test metrics, size.

    Reads each run's config.json, history.json and best.pt's metadata (weights are not loaded).
    Test metrics appear once `skincls evaluate --save` has stored them in best.pt; another
    dataset's (stored as DATA_DIR_NAME:SPLIT) are named below the table, never shown as test.
    """
    from ..training.runs import list_runs

    summaries = list_runs(root)
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in summaries], indent=2))
        return
    if not summaries:
        console.print(f"no runs under {root} (a run dir is what `skincls train --out DIR` writes)")
        return
    table = Table(title=f"runs under {root}")
    cols = ("run", "arch", "data", "epochs", "best", "val loss", "val acc")
    cols += ("test acc", "test sens", "test spec", "test AUC", "size")
    for col in cols:
        table.add_column(col, justify="left" if col in ("run", "arch", "data") else "right")
    for s in summaries:
        test = s.test or {}
        epochs = "-" if s.epochs_run is None else str(s.epochs_run)
        if s.epochs_planned is not None and s.epochs_run != s.epochs_planned:
            epochs += f"/{s.epochs_planned}"
        name = str(s.path.relative_to(root)) if s.path != Path(root) else str(s.path)
        table.add_row(
            name + (" [red](!)[/]" if s.problems else ""),
            s.arch or "-",
            s.data_dir or "-",
            epochs,
            _fmt(s.best_epoch, "{}"),
            _fmt(s.val_loss, "{:.4f}"),
            _fmt(s.val_accuracy, "{:.3f}"),
            _fmt(test.get("accuracy"), "{:.3f}"),
            _fmt(test.get("sensitivity"), "{:.3f}"),
            _fmt(test.get("specificity"), "{:.3f}"),
            _fmt(test.get("roc_auc"), "{:.3f}"),
            _human_size(s.size_bytes),
        )
    console.print(table)
    console.print(
        "best: the best epoch (by the run's --monitor), val: its val-split metrics; "
        "test: stored by `skincls evaluate --save`; epochs: run/planned when they differ"
    )
    for s in summaries:
        if s.other_data:
            measured = ", ".join(f"{k} (n={n})" for k, n in s.other_data.items())
            console.print(
                escape(f"{s.path}: also measured on other data (not in the table): {measured}")
            )
    for s in summaries:
        for problem in s.problems:
            console.print(f"(!) {s.path}: {problem}")


def _fmt(value, pattern: str) -> str:
    return "-" if value is None else pattern.format(value)


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"  # pragma: no cover
