"""Model card, data side: where the images and classes came from, groups, per-class numbers, limits.

What these sections say depends on the dataset (`dataset.json`) and the task recorded in the
checkpoint (`labels`): a benign-vs-malignant model of the default Kaggle dataset and a seven-class
HAM10000 model get different data, per-class and limitation lines. Values none of the inputs hold
are written as "not recorded", never guessed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "NOT_RECORDED",
    "class_lines",
    "data_lines",
    "fmt",
    "labels_line",
    "limitation_lines",
    "task_of",
]

NOT_RECORDED = "not recorded"
DEFAULT_KAGGLE = "fanconic/skin-cancer-malignant-vs-benign"
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


def data_lines(ds: Mapping[str, Any] | None) -> list[str]:
    """The Data section: source, counts, split method, images, duplicates, groups, known biases."""
    ds = dict(ds or {})
    lines = [f"- **Source:** {fmt(_source(ds))}"]
    dataset = ds.get("dataset") if isinstance(ds.get("dataset"), Mapping) else {}
    if dataset.get("layout") not in (None, "folders"):
        meta = ds.get("metadata") or {}
        lines.append(
            f"- **Read as:** {dataset.get('title') or dataset.get('layout')} "
            f"({', '.join(meta.get('metadata_files') or []) or 'metadata'}: "
            f"{fmt(meta.get('rows'))} rows, {fmt(meta.get('rows_used'))} used, "
            f"{fmt(meta.get('rows_without_image'))} without an image)"
        )
    per = "; ".join(
        f"{split}: " + ", ".join(f"{c} {k}" for c, k in row.items())
        for split, row in (ds.get("counts") or {}).items()
    )
    lines.append(f"- **Images per split and class:** {per or NOT_RECORDED}")
    dup = ds.get("duplicates") if isinstance(ds.get("duplicates"), Mapping) else {}
    lines += [
        f"- **Split method:** {_SPLIT_METHOD}; validation fraction {fmt(ds.get('val_fraction'))}, "
        f"seed {fmt(ds.get('seed'))}",
        f"- **Images:** {fmt(ds.get('n_files'))} files found, {fmt(ds.get('n_kept'))} kept, "
        f"{count(ds.get('skipped'))} skipped (unreadable, or no class)",
        f"- **Duplicates:** {count(dup.get('exact_images'))} images in exact-duplicate groups, "
        f"{count(dup.get('near_pairs'))} near-duplicate pairs (pHash distance <= "
        f"{fmt(ds.get('near_dup_distance'))} bits at the closest of 8 orientations, confirmed by a "
        f"dHash within {fmt(ds.get('near_dup_confirm'))} bits), {count(dup.get('clusters'))} "
        f"clusters in all; {count(ds.get('moved'))} images moved so that no group straddles "
        f"two splits; {count(dup.get('label_conflicts'))} clusters with conflicting labels",
    ]
    groups = ds.get("groups") if isinstance(ds.get("groups"), Mapping) else {}
    if groups:
        kinds = ", ".join(f"{v} by {k}" for k, v in (groups.get("groups_by_kind") or {}).items())
        lines.append(
            f"- **Groups kept within one split:** {fmt(groups.get('n_groups'))} for "
            f"{fmt(groups.get('n_images'))} images ({kinds}); "
            f"{fmt(groups.get('groups_with_several_images'))} with several images; groups across "
            f"splits: {fmt(groups.get('groups_across_splits'))}"
        )
    if _is_default_kaggle(ds):
        lines += [
            "",
            f"Known biases of the Kaggle dataset `{DEFAULT_KAGGLE}` (ISIC archive images):",
            "",
            "- Most benign images come from one source, HAM10000, so acquisition differences "
            "(camera, lighting, framing) can correlate with the label.",
            "- Several images can show the same lesion (different dates, zoom or rotation): a "
            "model can memorise lesions, and a split that separates copies overstates accuracy.",
            "- The dataset contains exact and near-duplicate images, some across its own train and "
            "test folders, and the Kaggle archive holds every image twice. skincls groups exact "
            "(content hash) and near duplicates (perceptual hash) into clusters and keeps each "
            "cluster in one split; other photos of one lesion it cannot see, since the dataset "
            "dropped the lesion ids.",
            "- No patient metadata (age, sex, body site, skin type) ships with the images, so "
            "subgroup performance cannot be measured.",
        ]
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


def limitation_lines(
    rep: Mapping[str, Any], ds: Mapping[str, Any] | None, multiclass: bool
) -> list[str]:
    """The Limitations section for this task and dataset."""
    n, split = rep.get("n_images", NOT_RECORDED), rep.get("split", NOT_RECORDED)
    lines = [
        f"- Measured on {n} images of one split ({split}) of one dataset; confidence intervals "
        "are wide at this size and say nothing about other clinics, cameras or populations."
    ]
    if _is_default_kaggle(dict(ds or {})):
        lines.append(
            "- Benign images come mostly from one source (HAM10000), so the model can learn "
            "acquisition cues (borders, rulers, vignetting, colour balance) that go with the label "
            "instead of lesion features."
        )
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


def _is_default_kaggle(ds: Mapping[str, Any]) -> bool:
    """Whether the data is the default Kaggle dataset, or class folders that are likely a copy of it
    (an archive or folder not named otherwise; data dirs from before datasets were recorded)."""
    dataset = ds.get("dataset")
    kind = (ds.get("source") or {}).get("kind") if isinstance(ds.get("source"), Mapping) else None
    if kind == "synthetic":
        return False
    if isinstance(dataset, Mapping):
        return dataset.get("name") == DEFAULT_KAGGLE or (
            dataset.get("layout") == "folders" and dataset.get("name") is None
        )
    return True


def _source(ds: Mapping[str, Any]) -> Any:
    src = ds.get("source")
    if isinstance(src, Mapping):  # scalar fields only: kind, dataset, archive, n...
        plain = {k: v for k, v in src.items() if isinstance(v, (str, int, float)) and v != ""}
        return ", ".join(f"{k} {v}" for k, v in plain.items()) or None
    return src
