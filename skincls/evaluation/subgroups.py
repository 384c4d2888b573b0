"""Subgroups: how a binary model does in each group of a manifest column (sex, age band, site, skin tone).

Every group is measured at the model's one global threshold (no per-group threshold: that is how the
model is used), with percentile-bootstrap intervals from `metrics.bootstrap_samples`. The largest
gap between groups is bootstrapped too: the two groups are resampled independently and the gap of
each resample taken. Groups under `min_group_n` images are flagged as small, never dropped; they
are left out of the gap, whose extremes they would otherwise decide by noise alone.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import BaseModel

from ..data.skintone import ITA_CATEGORIES
from ..errors import ConfigError
from . import metrics as M

__all__ = [
    "AGE_BANDS",
    "MIN_GROUP_N",
    "SUBGROUP_METRICS",
    "SubgroupGap",
    "SubgroupRow",
    "SubgroupTable",
    "age_band",
    "column_values",
    "subgroup_tables",
]

MIN_GROUP_N = 30
SUBGROUP_METRICS = ("roc_auc", "sensitivity", "specificity")
# The usual clinical bands; an age is in the band whose lower bound it reaches.
AGE_BANDS = ((0, "<30"), (30, "30-49"), (50, "50-69"), (70, ">=70"))
MISSING = "unknown"


class SubgroupRow(BaseModel):
    """One group: its images, positives, and metrics (None: undefined, e.g. no positive image)."""

    value: str
    n: int
    positives: int
    roc_auc: float | None
    sensitivity: float | None
    specificity: float | None
    ci: dict[str, tuple[float, float] | None] = {}
    small: bool  # n < min_group_n: shown, flagged, left out of the gap


class SubgroupGap(BaseModel):
    """The largest difference of one metric between two groups of n >= min_group_n."""

    metric: str
    high: str
    low: str
    gap: float
    ci: tuple[float, float] | None = None


class SubgroupTable(BaseModel):
    """One column's groups and their largest gaps."""

    column: str
    min_group_n: int
    rows: list[SubgroupRow]
    gaps: list[SubgroupGap] = []

    def lines(self, threshold_rule: str, level: float = 0.95) -> list[str]:
        out = [
            f"Subgroups by {self.column} (at {threshold_rule}; {100 * level:.0f}% CI; "
            f"* = under {self.min_group_n} images, not in the gap):"
        ]
        for r in self.rows:
            parts = [_metric_text(r, m) for m in SUBGROUP_METRICS]
            flag = " *" if r.small else ""
            out.append(f"  {r.value}{flag}: n={r.n}, {r.positives} positive, " + ", ".join(parts))
        for g in self.gaps:
            ci = f" [CI {g.ci[0]:.3f} to {g.ci[1]:.3f}]" if g.ci else ""
            out.append(f"  largest {_LABELS[g.metric]} gap: {g.gap:.3f}{ci} ({g.high} - {g.low})")
        return out


_LABELS = {"roc_auc": "ROC-AUC", "sensitivity": "sensitivity", "specificity": "specificity"}


def _metric_text(r: SubgroupRow, m: str) -> str:
    v = getattr(r, m)
    if v is None:
        return f"{_LABELS[m]} n/a"
    ci = r.ci.get(m)
    return f"{_LABELS[m]} {v:.3f}" + (f" [{ci[0]:.3f}-{ci[1]:.3f}]" if ci else "")


def age_band(age: str) -> str:
    """`AGE_BANDS` label of an age in years ("unknown" when missing or not a number)."""
    try:
        years = float(age)
    except ValueError:
        return MISSING
    if not np.isfinite(years) or years < 0:
        return MISSING
    return [label for lo, label in AGE_BANDS if years >= lo][-1]


def column_values(records: Sequence, column: str) -> list[str]:
    """Each record's value of manifest `column` ("unknown" where empty); `age_band` is derived
    from `age`. A column no record has is refused (`ConfigError`), naming the ones there are."""
    source = "age" if column == "age_band" else column
    values = [r.column(source) for r in records]
    if not any(values):
        known = sorted({k for r in records for k, _ in r.attributes} | {"label", "split"})
        raise ConfigError(
            f"by={column!r}: no image of this split has a {source!r} value; "
            f"the manifest's columns with values include {', '.join(known)}"
        )
    if column == "age_band":
        return [age_band(v) for v in values]
    return [v or MISSING for v in values]


def subgroup_tables(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float | None,
    columns: dict[str, Sequence[str]],
    *,
    min_group_n: int = MIN_GROUP_N,
    n_bootstrap: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> list[SubgroupTable]:
    """Per column: each group's n, positives, ROC-AUC, sensitivity and specificity at `threshold`
    (argmax when None), with bootstrap intervals, and the largest gap per metric.

    Args:
        y: Labels in {0, 1}, (N,). p: P(positive), (N,).
        columns: `{column: value per image}`, each (N,) in the order of `y`.
    """
    y, p = np.asarray(y).astype(int), np.asarray(p, dtype=np.float64)
    tables = []
    for column, values in columns.items():
        values = np.asarray(values, dtype=object)
        rows, samples = [], {}
        for i, value in enumerate(_ordered(set(values))):
            sel = values == value
            row, samples[value] = _group(y[sel], p[sel], threshold, n_bootstrap, seed + i, level)
            rows.append(SubgroupRow(value=str(value), small=int(sel.sum()) < min_group_n, **row))
        gaps = _gaps(rows, samples, level)
        tables.append(SubgroupTable(column=column, min_group_n=min_group_n, rows=rows, gaps=gaps))
    return tables


def _ordered(values: set) -> list[str]:
    """Age bands youngest first, skin tones lightest first, other values sorted; unknown last."""
    known = [label for _, label in AGE_BANDS] + [name for _, name in ITA_CATEGORIES]
    rank = {v: i for i, v in enumerate(known)}
    return sorted(values, key=lambda v: (v == MISSING, rank.get(v, len(rank)), str(v)))


def _group(y, p, threshold, n_bootstrap, seed, level) -> tuple[dict, dict[str, np.ndarray]]:
    m = M.binary_metrics(y, p, threshold)
    row = {"n": len(y), "positives": int(y.sum())}
    row |= {k: (m[k] if np.isfinite(m[k]) else None) for k in SUBGROUP_METRICS}
    samples = {}
    if n_bootstrap:
        samples = M.bootstrap_samples(y, p, threshold, n_resamples=n_bootstrap, seed=seed)
        cis = {k: M.percentile_interval(samples[k], level) for k in SUBGROUP_METRICS}
        row["ci"] = {k: (ci if np.isfinite(ci[0]) else None) for k, ci in cis.items()}
    return row, samples


def _gaps(rows: list[SubgroupRow], samples: dict, level: float) -> list[SubgroupGap]:
    """For each metric, highest minus lowest among the groups of sufficient size."""
    gaps = []
    for m in SUBGROUP_METRICS:
        ok = [r for r in rows if not r.small and getattr(r, m) is not None]
        if len(ok) < 2:
            continue
        hi = max(ok, key=lambda r: getattr(r, m))
        lo = min((r for r in ok if r is not hi), key=lambda r: getattr(r, m))
        ci = None
        if samples.get(hi.value):
            diff = samples[hi.value][m] - samples[lo.value][m]
            lo_ci, hi_ci = M.percentile_interval(diff, level)
            ci = (lo_ci, hi_ci) if np.isfinite(lo_ci) else None
        gap = getattr(hi, m) - getattr(lo, m)
        gaps.append(SubgroupGap(metric=m, high=hi.value, low=lo.value, gap=gap, ci=ci))
    return gaps
