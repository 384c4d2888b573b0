"""Plots: PNG figures for people who would rather look than read (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ..figures import integer_ticks, new_figure, save_figure, set_title

if TYPE_CHECKING:
    from .outputs import Outputs
    from .report import EvalReport
    from .subgroups import SubgroupTable

# --- evaluation plots (ROC, PR, confusion matrix, reliability) -------------------------------------

__all__ = [
    "plot_confusion",
    "plot_pr",
    "plot_reliability",
    "plot_report",
    "plot_roc",
    "plot_split",
    "plot_subgroup_tables",
    "plot_subgroups",
    "reliability_figure",
]


def plot_roc(y, p, path, tag: str, threshold: float | None = None, positive: str = "positive"):
    """ROC curve of P(positive) with its AUC and the operating point marked; returns the path."""
    import numpy as np
    from sklearn.metrics import roc_auc_score, roc_curve

    fpr, tpr, _ = roc_curve(y, p)
    fig, ax = new_figure(figsize=(4.2, 4))
    ax.plot(fpr, tpr, lw=1.8, label=f"AUC {roc_auc_score(y, p):.3f}")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    t = 0.5 if threshold is None else threshold
    pred = np.asarray(p) >= t
    sens, spec = pred[y == 1].mean(), 1 - pred[y == 0].mean()
    ax.plot(
        1 - spec, sens, "o", c="C3", label=f"threshold {t:.3f}: sens {sens:.2f}, spec {spec:.2f}"
    )
    ax.set(xlabel="1 − specificity (FPR)", ylabel="sensitivity (TPR)")
    set_title(ax, f"ROC curve, {positive} ({tag})")
    ax.legend(loc="lower right", fontsize=7)
    return _saved(fig, path)


def plot_pr(y, p, path, tag: str, threshold: float | None = None, positive: str = "positive"):
    """Precision-recall curve with average precision and prevalence baseline; returns the path."""
    import numpy as np
    from sklearn.metrics import average_precision_score, precision_recall_curve

    prec, rec, _ = precision_recall_curve(y, p)
    fig, ax = new_figure(figsize=(4.2, 4))
    ax.plot(rec, prec, lw=1.8, label=f"AP {average_precision_score(y, p):.3f}")
    ax.axhline(np.mean(y), ls="--", c="grey", lw=0.8, label=f"prevalence {np.mean(y):.2f}")
    t = 0.5 if threshold is None else threshold
    pred = np.asarray(p) >= t
    if pred.any():
        ax.plot(pred[y == 1].mean(), y[pred].mean(), "o", c="C3", label=f"threshold {t:.3f}")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", ylim=(0, 1.02))
    set_title(ax, f"Precision-recall curve, {positive} ({tag})")
    ax.legend(loc="lower left", fontsize=7)
    return _saved(fig, path)


def plot_confusion(cm, classes, path, tag: str):
    """Confusion matrix (rows: true, columns: predicted) with counts; returns the path."""
    import numpy as np

    cm = np.asarray(cm)
    side = max(3.6, 0.55 * len(classes) + 1.8)
    fig, ax = new_figure(figsize=(side, side * 0.92))
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", c="white" if v > cm.max() / 2 else "black")
    ax.set(
        xticks=range(len(classes)), yticks=range(len(classes)), xlabel="predicted", ylabel="true"
    )
    ax.set_xticklabels(
        classes,
        rotation=45 if len(classes) > 2 else 0,
        ha="right" if len(classes) > 2 else "center",
    )
    ax.set_yticklabels(classes)
    set_title(ax, f"Confusion matrix ({tag})")
    return _saved(fig, path)


def plot_reliability(
    y,
    probs,
    path,
    tag: str,
    probs_after=None,
    temperature=1.0,
    n_bins=15,
    positive="positive",
    positive_index=1,
):
    """Write `reliability_figure(...)` as a PNG; returns the path."""
    fig = reliability_figure(
        y, probs, tag, probs_after, temperature, n_bins, positive, positive_index
    )
    return _saved(fig, path)


def reliability_figure(
    y,
    probs,
    tag: str,
    probs_after=None,
    temperature=1.0,
    n_bins=15,
    positive="positive",
    positive_index=1,
):
    """Reliability diagram (equal-width bins), before and, if given, after temperature scaling.

    Binary: P(positive) against the observed positive rate; more classes: top-label confidence
    against accuracy (see `skincls.metrics.calibration_bins`). Below the curve, the number of
    images in each bin; the legend sits above the plot, off the data. Returns the `Figure`.
    """
    import numpy as np

    from .metrics import calibration_bins, expected_calibration_error

    # Top: the curve; bottom: how many images each bin holds (a point from 3 images means little).
    fig, (ax, counts) = new_figure(
        2, 1, figsize=(4.6, 5.2), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8, label="perfect calibration")
    curves = [("uncalibrated", probs, "C0")]
    if probs_after is not None:
        curves.append((f"T = {temperature:.2f}", probs_after, "C3"))
    width = 1 / n_bins
    for k, (name, pr, colour) in enumerate(curves):
        conf, freq, count = calibration_bins(y, pr, n_bins, positive_index)
        used = count > 0
        ece = expected_calibration_error(y, pr, n_bins, positive_index)
        ax.plot(conf[used], freq[used], "o-", c=colour, ms=3, label=f"{name}: ECE {ece:.3f}")
        # Bars side by side within each bin when there are two curves.
        share = width / len(curves)
        left = np.arange(n_bins) * width + k * share
        counts.bar(left, count, width=share, align="edge", color=colour, alpha=0.8)
    binary = probs.shape[1] == 2
    ax.set(
        ylabel=f"observed {positive} rate" if binary else "accuracy",
        xlim=(0, 1),
        ylim=(0, 1),
    )
    counts.set(
        xlabel=f"predicted P({positive})" if binary else "top-class confidence",
        ylabel="images",
        xlim=(0, 1),
    )
    integer_ticks(counts.yaxis)
    set_title(fig, f"Reliability, {n_bins} bins ({tag})")
    # Outside the axes, above them: a legend inside would cover points in some corner or other.
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), fontsize=7, frameon=False)
    return fig


def plot_split(
    y,
    probs_raw,
    probs,
    cm,
    classes: list[str],
    stem,
    tag: str,
    *,
    temperature: float,
    threshold: float | None,
    positive: int,
) -> list[str]:
    """Every plot of one evaluated split, as `<stem>_<kind>.png`; the paths written.

    Confusion matrix always; ROC and PR for two classes when both occur; the reliability diagram
    before (`probs_raw`) and, when a temperature other than 1 is in use, after calibration (`probs`).
    """
    import numpy as np

    from .report import ECE_BINS

    Path(stem).parent.mkdir(parents=True, exist_ok=True)
    written = [plot_confusion(cm, classes, f"{stem}_confusion.png", tag)]
    pos = classes[positive]
    if len(classes) == 2 and len(np.unique(y)) == 2:
        yb, pb = (y == positive).astype(int), probs[:, positive]
        written.append(plot_roc(yb, pb, f"{stem}_roc.png", tag, threshold, pos))
        written.append(plot_pr(yb, pb, f"{stem}_pr.png", tag, threshold, pos))
    after = probs if temperature != 1.0 else None
    written.append(
        plot_reliability(
            y,
            probs_raw,
            f"{stem}_reliability.png",
            tag,
            after,
            temperature,
            ECE_BINS,
            pos,
            positive,
        )
    )
    return [str(p) for p in written]


def plot_report(out: Outputs, report: EvalReport, folder: str | Path) -> list[str]:
    """The plots of an evaluated split (`plot_split`) at its report's temperature and threshold.

    Written as `<folder>/<split>_<kind>.png`; the paths written.
    """
    tag = f"{out.split} split, n={len(out.labels)}" + (", TTA" if report.tta else "")
    paths = plot_split(
        out.labels,
        out.probs(),
        out.probs(report.temperature),
        report.confusion_matrix,
        report.classes,
        Path(folder) / out.split,
        tag,
        temperature=report.temperature,
        threshold=report.threshold,
        positive=report.classes.index(report.positive_class),
    )
    # forest plots, next to the others
    return paths + plot_subgroup_tables(report.subgroups, folder, out.split, tag)


def plot_subgroup_tables(tables: list[SubgroupTable], folder, split: str, tag: str) -> list[str]:
    """A forest plot per subgroup table, `<folder>/<split>_subgroups_<column>.png`; the paths."""
    return [
        str(plot_subgroups(t, Path(folder) / f"{split}_subgroups_{_file_part(t.column)}.png", tag))
        for t in tables
    ]


def _file_part(column: str) -> str:
    """A column name as a safe part of a file name."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in column)


def _saved(fig, path):
    from pathlib import Path

    save_figure(fig, path)
    return Path(path)


def plot_subgroups(table: SubgroupTable, path, tag: str):
    """Forest plot of one subgroup table: ROC-AUC, sensitivity and specificity per group with
    their CIs, small groups (n < min_group_n) as hollow markers; returns the path."""
    from .subgroups import SUBGROUP_METRICS

    rows = table.rows[::-1]  # the first group at the top
    fig, axes = new_figure(
        1, len(SUBGROUP_METRICS), figsize=(9, 1.2 + 0.35 * len(rows)), sharey=True
    )
    names = [f"{r.value} (n={r.n}{', small' if r.small else ''})" for r in rows]
    for ax, m in zip(axes, SUBGROUP_METRICS):
        for i, r in enumerate(rows):
            v, ci = getattr(r, m), r.ci.get(m)
            if v is None:
                continue
            if ci:
                ax.plot(ci, [i, i], c="C0", lw=1.5)
            face = "white" if r.small else "C0"
            ax.plot(v, i, "o", mfc=face, mec="C0")
        ax.set(xlim=(-0.02, 1.02), xlabel=m.replace("_", "-"), yticks=range(len(rows)))
        ax.grid(axis="x", lw=0.4, alpha=0.5)
    axes[0].set_yticklabels(names, fontsize=7)
    set_title(fig, f"Subgroups by {table.column} ({tag}); hollow: n < {table.min_group_n}")
    return _saved(fig, path)
