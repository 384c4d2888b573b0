"""Model card, data side: where the images and classes came from, groups, per-class numbers, limits.

What these sections say depends on the data's own record (`dataset.json`, read as `DatasetInfo`) and
the task recorded in the checkpoint (`labels`): a benign-vs-malignant model of the default Kaggle
dataset and a seven-class HAM10000 model get different data, per-class and limitation lines; known
biases come only with a named dataset skincls knows (`skincls.data.caveats`). Values none of the
inputs hold are written as "not recorded", never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from ..data.caveats import CAVEATS
from ..data.info import DATASET_JSON, DatasetInfo

__all__ = [
    "NOT_RECORDED",
    "class_lines",
    "data_lines",
    "fmt",
    "labels_line",
    "limitation_lines",
    "metric",
    "num",
    "task_of",
]

NOT_RECORDED = "not recorded"
_SPLIT_METHOD = (
    "the source's own test split kept; stratified, seeded held-out splits carved whole groups at "
    "a time (scikit-learn StratifiedGroupKFold), a group being a lesion, a patient and their "
    "duplicate clusters, joined (skincls fetch)"
)


def fmt(value: Any) -> str:
    if value is None or value == "":
        return NOT_RECORDED
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def count(value: Any) -> str:
    if value is None:
        return NOT_RECORDED
    return str(len(value)) if isinstance(value, (list, tuple, dict)) else str(value)


def pct(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "undefined on this split"
    return f"{100 * float(value):.1f}%"


def metric(values: Mapping[str, Any], key: str, pct: bool = False) -> str:
    """`values[key]` as `num` writes it; a key it lacks was not recorded."""
    return num(values[key], pct) if key in values else NOT_RECORDED


def num(value: Any, pct: bool) -> str:
    """A proportion as a percentage, another number to 4 decimals; None/NaN = undefined."""
    if value is None:
        return "undefined on this split"
    value = float(value)
    if math.isnan(value):
        return "undefined on this split"
    return f"{100 * value:.1f}%" if pct else f"{value:.4f}"


def task_of(labels: Mapping[str, Any] | None, classes: list[str]) -> str:
    """`binary`, `multiclass`, or for class-folder data by the class count."""
    task = (labels or {}).get("task")
    if task in ("binary", "multiclass"):
        return task
    return "binary" if len(classes) == 2 else "multiclass"


def labels_line(labels: Mapping[str, Any] | None) -> str:
    """The task and the diagnosis map the classes were made with (from the checkpoint)."""
    if not labels:
        return f"- **Labels:** {NOT_RECORDED}"
    task = labels.get("task")
    source = ", ".join(labels.get("source") or []) or "the dataset's metadata"
    if task == "binary":
        mapping = labels.get("map") or {}
        side = {c: sorted(k for k, v in mapping.items() if v == c) for c in ("malignant", "benign")}
        return (
            f"- **Labels:** binary task from the diagnoses in {source}: malignant = "
            f"{', '.join(side['malignant'])}; benign = {', '.join(side['benign'])}; a diagnosis "
            "in neither takes the dataset's own benign/malignant label, or the image is left out"
        )
    if task == "multiclass":
        return f"- **Labels:** multiclass task, one class per diagnosis code (from {source})"
    if task == "as_given":
        return f"- **Labels:** the label column of {source}, as given"
    return f"- **Labels:** {labels.get('rule') or 'the class folder names'}"


def data_lines(ds: DatasetInfo | None) -> list[str]:
    """The Data section: source, counts, split method, images, duplicates, groups, known biases."""
    if ds is None:
        return [
            f"- **Source:** {NOT_RECORDED} (no `{DATASET_JSON}` was given)",
            f"- **Known biases:** {NOT_RECORDED}",
        ]
    lines = [f"- **Source:** {fmt(_source(ds))}"]
    if ds.dataset is not None and ds.dataset.layout not in (None, "folders"):
        meta = ds.metadata
        files = ", ".join(meta.metadata_files) if meta else ""
        lines.append(
            f"- **Read as:** {ds.dataset.title or ds.dataset.layout} "
            f"({files or 'metadata'}: {fmt(meta and meta.rows)} rows, "
            f"{fmt(meta and meta.rows_used)} used, {fmt(meta and meta.rows_without_image)} "
            "without an image)"
        )
    per = "; ".join(
        f"{split}: " + ", ".join(f"{c} {k}" for c, k in row.items())
        for split, row in ds.counts.items()
    )
    lines.append(f"- **Images per split and class:** {per or NOT_RECORDED}")
    dup = ds.duplicates
    lines += [
        f"- **Split method:** {_SPLIT_METHOD}; validation fraction {fmt(ds.val_fraction)}, "
        f"seed {fmt(ds.seed)}",
        f"- **Images:** {fmt(ds.n_files)} files found, {fmt(ds.n_kept)} kept, "
        f"{count(ds.skipped)} skipped (unreadable, or no class)",
        f"- **Duplicates:** {count(dup and dup.exact_images)} images in exact-duplicate groups, "
        f"{count(dup and dup.near_pairs)} near-duplicate pairs (pHash distance <= "
        f"{fmt(ds.near_dup_distance)} bits at the closest of 8 orientations, confirmed by a "
        f"dHash within {fmt(ds.near_dup_confirm)} bits), {count(dup and dup.clusters)} "
        f"clusters in all; {count(ds.moved)} images moved so that no group straddles "
        f"two splits; {count(dup and dup.label_conflicts)} clusters with conflicting labels",
    ]
    groups = ds.groups
    if groups is not None:
        kinds = ", ".join(f"{v} by {k}" for k, v in groups.groups_by_kind.items())
        lines.append(
            f"- **Groups kept within one split:** {fmt(groups.n_groups)} for "
            f"{fmt(groups.n_images)} images ({kinds}); "
            f"{fmt(groups.groups_with_several_images)} with several images; groups across "
            f"splits: {fmt(groups.groups_across_splits)}"
        )
    caveats = ds.caveats
    if caveats is None:
        known = ", ".join(f"`{name}`" for name in CAVEATS)
        lines.append(
            "- **Known biases:** none on record for this source; skincls lists the known biases "
            f"of named public datasets only ({known}). Look for your data's own."
        )
    else:
        lines += ["", f"Known biases of {caveats.title}:", "", *caveats.data]
    return lines


def class_lines(rep: Mapping[str, Any], multiclass: bool) -> list[str]:
    """Per-class recall and precision (and one-vs-rest ROC-AUC with more than two classes)."""
    per_class = rep.get("per_class") or []
    if not per_class:
        return []
    if not multiclass:
        lines = ["", "Per-class accuracy:", ""]
        for c in per_class:
            total = c.get("total") or 0
            acc = c["correct"] / total if total else None
            lines.append(f"- {c.get('name')}: {pct(acc)} ({c.get('correct')}/{total})")
        return lines
    lines = [
        "",
        "Per class (recall = share of the class found; precision = share of its predictions "
        "that are right; ROC-AUC one-vs-rest):",
        "",
        "| class | images | recall | precision | ROC-AUC |",
        "| --- | --- | --- | --- | --- |",
    ]
    for c in per_class:
        auc = c.get("roc_auc")
        lines.append(
            f"| {c.get('name')} | {c.get('total')} | {pct(c.get('recall'))} "
            f"({c.get('correct')}/{c.get('total')}) | {pct(c.get('precision'))} "
            f"({c.get('correct')}/{c.get('predicted') or 0}) | "
            f"{'undefined on this split' if auc is None else f'{auc:.4f}'} |"
        )
    k, used = len(per_class), rep.get("roc_auc_classes")
    if used is not None and used < k:
        lines += ["", f"The macro ROC-AUC averages the {used} of {k} classes present in the split."]
    return lines


def limitation_lines(rep: Mapping[str, Any], ds: DatasetInfo | None, multiclass: bool) -> list[str]:
    """The Limitations section for this task and dataset."""
    n, split = rep.get("n_images", NOT_RECORDED), rep.get("split", NOT_RECORDED)
    lines = [
        f"- Measured on {n} images of one split ({split}) of one dataset; confidence intervals "
        "are wide at this size and say nothing about other clinics, cameras or populations."
    ]
    caveats = ds.caveats if ds is not None else None
    lines += caveats.limitations if caveats else ()
    if multiclass:
        lines.append(
            "- Rare diagnoses have few images: their per-class recall, precision and ROC-AUC rest "
            "on a handful of test images and can change a lot with a few more; every image is "
            "forced into one of the classes it was trained on."
        )
    else:
        lines.append(
            "- Two classes only: every malignant lesion type is pooled into one class, and any image "
            "is forced into one of the two, even one that shows no lesion."
        )
    lines += [
        "- PPV and NPV depend on prevalence: the test split's class mix is not that of any "
        "clinic, so recompute them for the population of interest.",
        "- Calibration was fitted on the validation split of the same dataset and need not "
        "transfer to new data.",
    ]
    return lines


def _source(ds: DatasetInfo) -> str | None:
    if ds.source is None:
        return None
    # Scalar fields only: kind, dataset, archive, path, n, layout root.
    plain = ds.source.model_dump(exclude_none=True, exclude={"ignored_copies"})
    return ", ".join(f"{k} {v}" for k, v in plain.items() if v != "") or None
