"""An ablation built in: image-only, metadata-only and fused models cross-validated on the same folds.

`compare_metadata` runs `cross_validate` three times into `out/image`, `out/metadata` and `out/fused`
(the folds depend only on the images, their groups and the seed: the same for all three; a frozen
backbone's features are extracted once and reused through the disk cache). Each arm's out-of-fold
report has its own CI; the paired differences (fused − image, fused − metadata) are bootstrapped
over the same resampled groups (patients or lesions), on ROC-AUC for two classes and balanced
accuracy for more. Writes `out/compare_report.json`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from ..atomic import atomic_write
from ..config import RunConfig
from ..data.splits import load_manifest
from ..errors import ConfigError, opt
from ..evaluation.metrics import percentile_interval
from .cv import CV_STATE, CVResult, cross_validate
from .folds import fold_groups, pool_records
from .oof import gather_oof

__all__ = ["ARMS", "CompareResult", "compare_metadata", "paired_difference"]

ARMS = ("image", "metadata", "fused")


@dataclass
class CompareResult:
    """Each arm's CV result, the metric compared, each arm's value and the paired differences."""

    out: Path
    metric: str
    arms: dict[str, CVResult]
    values: dict[str, float]
    paired: dict[str, dict[str, Any]]


def compare_metadata(
    config: RunConfig, folds: int, *, n_bootstrap: int = 1000, **cv_options: Any
) -> CompareResult:
    """Cross-validate image-only, metadata-only and fused variants of `config` on the same folds.

    The metadata arms use `config.model.metadata` (`auto` when it is `none`).

    Raises:
        ConfigError: no `out` folder given; plus whatever `cross_validate` raises.
    """
    if config.out is None:
        raise ConfigError(f"a comparison needs {opt('out')}: the folder for its three CVs")
    out = Path(config.out)
    columns = config.model.metadata if config.model.metadata.lower() != "none" else "auto"
    results: dict[str, CVResult] = {}
    for arm in ARMS:
        model = config.model.model_copy(
            update={
                "metadata": "none" if arm == "image" else columns,
                "use_image": arm != "metadata",
            }
        )
        arm_config = config.model_copy(update={"model": model, "out": out / arm})
        results[arm] = cross_validate(arm_config, folds, n_bootstrap=n_bootstrap, **cv_options)
    records = pool_records(load_manifest(Path(config.data.data_dir)))
    # Resampled as the folds held them out: whole sites under group_by, not single lesions.
    groups = np.array(fold_groups(records, cv_options.get("group_by")))
    probs, labels = {}, None
    for arm, result in results.items():
        state = json.loads((result.cv_dir / CV_STATE).read_text())
        oof = gather_oof(result.cv_dir, state["completed"], len(records))
        probs[arm], labels = oof.probs(), oof.labels
    metric = "roc_auc" if probs["fused"].shape[-1] == 2 else "balanced_accuracy"
    values = {arm: _score(metric, labels, p) for arm, p in probs.items()}
    paired = {
        f"fused-{other}": paired_difference(
            metric, labels, probs["fused"], probs[other], groups, n_bootstrap, config.train.seed
        )
        for other in ("image", "metadata")
    }
    result = CompareResult(out, metric, results, values, paired)
    report = {"metric": metric, "values": values, "paired": paired, "folds": folds,
              "bootstrap_groups": len(set(groups.tolist())),
              "cv_dirs": {a: str(r.cv_dir) for a, r in results.items()}}  # fmt: skip
    with atomic_write(out / "compare_report.json", "w") as fh:
        fh.write(json.dumps(report, indent=2) + "\n")
    return result


def _score(metric: str, y: np.ndarray, p: np.ndarray) -> float:
    if metric == "roc_auc":
        return float(roc_auc_score(y, p[:, 1]))
    return float(balanced_accuracy_score(y, p.argmax(1)))


def paired_difference(
    metric: str,
    y: np.ndarray,
    p_a: np.ndarray,
    p_b: np.ndarray,
    groups: np.ndarray,
    n_bootstrap: int,
    seed: int = 0,
) -> dict[str, Any]:
    """`metric(a) − metric(b)` on the same images, and its 95% percentile CI over resampled groups
    (all of a group's images together); resamples missing a class are drawn again."""
    diff = _score(metric, y, p_a) - _score(metric, y, p_b)
    rows: dict[Any, list[int]] = {}
    for i, g in enumerate(groups):
        rows.setdefault(g, []).append(i)
    keys = list(rows)
    rng = np.random.default_rng(seed)
    draws: list[float] = []
    tries = 0
    while len(draws) < n_bootstrap and tries < 20 * max(n_bootstrap, 1):
        tries += 1
        idx = np.concatenate([rows[keys[k]] for k in rng.integers(0, len(keys), len(keys))])
        if len(np.unique(y[idx])) < len(np.unique(y)):
            continue
        draws.append(_score(metric, y[idx], p_a[idx]) - _score(metric, y[idx], p_b[idx]))
    ci = list(percentile_interval(np.array(draws))) if draws else [None, None]
    return {"diff": float(diff), "ci": ci, "n_bootstrap": len(draws)}
