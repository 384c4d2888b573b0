"""Model card: a Markdown summary of one checkpoint and its evaluation report, for people, not code.

Follows the sections of Mitchell et al., "Model Cards for Model Reporting" (2019), cut to what a
skin-lesion classifier needs. Every value comes from the checkpoint, the report or the dataset's
`dataset.json`; a value none of them holds is written as "not recorded", never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._version import __version__
from ..data.info import DATASET_JSON, DatasetInfo
from ..data.splits import MANIFEST_NAME, load_manifest
from ..inference.decision import positive_index
from ..inference.metadata import model_inputs
from ..models.checkpoint import Checkpoint, load_checkpoint
from .classmap import ClassMapping
from .modelcard_clear import clear_derm_lines
from .modelcard_data import (
    NOT_RECORDED,
    class_lines,
    data_lines,
    labels_line,
    limitation_lines,
    metric,
    num,
    task_of,
)
from .modelcard_data import fmt as _fmt
from .modelcard_fit import calibration_lines, threshold_lines

__all__ = ["NOT_RECORDED", "SECTIONS", "render_model_card", "write_model_card"]

SECTIONS = (
    "Model details",
    "Intended use",
    "Data",
    "Metrics",
    "Decision threshold",
    "Calibration",
    "Limitations",
    "CLEAR Derm checklist",
    "Ethical considerations",
)

# (label, report key, is a proportion shown in %); CIs are looked up under the same key.
_METRICS = (
    ("Accuracy", "accuracy", True),
    ("Balanced accuracy", "balanced_accuracy", True),
    ("Sensitivity (recall of the positive class)", "sensitivity", True),
    ("Specificity", "specificity", True),
    ("PPV (precision)", "ppv", True),
    ("NPV", "npv", True),
    ("ROC-AUC", "roc_auc", False),
    ("PR-AUC (average precision)", "pr_auc", False),
    ("Brier score", "brier", False),
    ("Expected calibration error (calibrated)", "ece", False),
    ("Loss (cross-entropy)", "loss", False),
)
_BINARY_ONLY = ("sensitivity", "specificity", "ppv", "npv", "pr_auc")
# Said of data whose biases skincls does not know (a named dataset's caveats say more).
_UNKNOWN_POPULATION = (
    "- Performance per skin tone, age, sex or body site is measured only where the data records it "
    "(evaluate's subgroup option `by`; skin tone is an ITA estimate from the image, see the CLEAR Derm "
    "section). Check whom the training images show before any use.",
)
# Training options named in the recipe when set (None, "none" and 0 are left out).
_RECIPE_EXTRAS = ("optimizer", "weight_decay", "schedule", "label_smoothing", "class_weights")


def write_model_card(
    checkpoint: str | Path | Checkpoint,
    report: Any,
    path: str | Path,
    *,
    dataset: str | Path | DatasetInfo | None = None,
) -> Path:
    """Render a model card for `checkpoint` evaluated as `report` and write it to `path`.

    Args:
        checkpoint: A checkpoint path or a loaded `Checkpoint` (threshold and temperature are read
            from it).
        report: The `EvalReport` from `Evaluator.evaluate` (or its `model_dump()` dict).
        path: The Markdown file to write; parent folders are created.
        dataset: The data's own record, for counts, duplicates, groups, source and the source's
            known biases: a `DatasetInfo`, a data dir or its `dataset.json`; optional (a path that
            does not exist counts as no record).

    Returns:
        The path written.
    """
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    records = None
    if isinstance(dataset, (str, Path)) and (Path(dataset) / MANIFEST_NAME).is_file():
        records = load_manifest(dataset).records  # label provenance, split unit (CLEAR Derm)
    if isinstance(dataset, (str, Path)):
        file = Path(dataset) / DATASET_JSON if Path(dataset).is_dir() else Path(dataset)
        dataset = DatasetInfo.read(file) if file.is_file() else None
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_model_card(ckpt, report, dataset=dataset, records=records))
    return path


def render_model_card(
    ckpt: Checkpoint,
    report: Any,
    *,
    dataset: DatasetInfo | None = None,
    records: Sequence | None = None,
) -> str:
    """The model card as a Markdown string; see `write_model_card`.

    Known biases of the data (Data, Limitations and Ethical considerations) come from the data's
    own record: only a source that `dataset.json` names and skincls knows gets them.
    """
    rep = _as_dict(report)
    caveats = dataset.caveats if dataset is not None else None
    data = dict(ckpt.data)
    cfg = ckpt.model_config
    run = data.get("train_config") or {}
    arch = cfg.get("arch", NOT_RECORDED)
    multiclass = task_of(data.get("labels"), ckpt.classes) == "multiclass"
    positive = None if multiclass else ckpt.classes[positive_index(ckpt.classes)]
    split, n = rep.get("split", NOT_RECORDED), rep.get("n_images", NOT_RECORDED)
    what = (
        f"classification of dermoscopic skin-lesion images into {len(ckpt.classes)} diagnoses"
        if multiclass
        else "benign-vs-malignant classification of dermoscopic skin-lesion images"
    )
    out: list[str] = [
        f"# Model card: skincls `{arch}` classifier ({', '.join(ckpt.classes)})",
        "",
        f"Written by skincls {__version__} on {datetime.now(timezone.utc):%Y-%m-%d} from "
        f"`{ckpt.path.name}`. **Research software, not a medical device.**",
        "",
    ]
    out += _section("Model details", _details(ckpt, cfg, run))
    out += _section(
        "Intended use",
        [
            f"- **Intended:** research and teaching on {what}: comparing backbones and training "
            "recipes, studying dataset leakage, calibration and thresholds.",
            "- **Users:** machine-learning researchers and students who can read the metrics below.",
            "- **Out of scope:** diagnosis, triage or screening of real patients; any clinical "
            "decision; use without a clinician; clinical (non-dermoscopic) or smartphone photos; "
            "populations, skin types or lesion types absent from the training data; more than the "
            f"classes it was trained on ({', '.join(ckpt.classes)}).",
        ],
    )
    out += _section("Data", _measured_data(rep, run) + data_lines(dataset))
    out += _section("Metrics", _metrics(rep, split, n, positive) + class_lines(rep, multiclass))
    out += _section("Decision threshold", threshold_lines(ckpt, rep, positive))
    out += _section("Calibration", calibration_lines(ckpt, rep))
    out += _section("Limitations", limitation_lines(rep, dataset, multiclass))
    out += _section("CLEAR Derm checklist", clear_derm_lines(rep, dataset, records))
    out += _section(
        "Ethical considerations",
        [
            *(caveats.ethics if caveats else _UNKNOWN_POPULATION),
            "- A false negative (missed malignancy) can delay treatment; a false positive causes "
            "anxiety and unnecessary excisions. The threshold trades one against the other and "
            "must be chosen with clinicians for any real use, which this model is not cleared for.",
            "- No patient identifiers are used or stored by skincls.",
        ],
    )
    return "\n".join(out).rstrip() + "\n"


def _section(title: str, lines: list[str]) -> list[str]:
    return [f"## {title}", "", *lines, ""]


def _details(ckpt: Checkpoint, cfg: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    pre = ckpt.preprocessing
    train = run.get("train") or {}
    planned = run.get("model") or {}  # the config as asked for; `cfg` is the model as saved
    head = cfg.get("head")
    head_desc = (
        " → ".join([str(cfg.get("feature_dim", "features")), *map(str, head)])
        + f" → {len(ckpt.classes)}"
        if head is not None
        else NOT_RECORDED
    )
    arch = cfg.get("arch", NOT_RECORDED)
    if cfg.get("backbone") or arch == "custom":
        arch_desc = f"bring-your-own backbone `{_fmt(cfg.get('backbone'))}` + MLP head"
    else:
        arch_desc = f"`{cfg.get('member_arch') or arch}` backbone + MLP head"
    if arch == "ensemble":
        arch_desc = f"ensemble of {cfg.get('num_members')} models, each a {arch_desc}; " + (
            "it outputs the mean of their calibrated probabilities"
        )
    # A custom backbone brings its own weights (the model config says None); the run config names them.
    weights = cfg.get("weights") or planned.get("weights")
    recipe = [f"{k} {train[k]}" for k in ("epochs", "batch_size", "lr") if k in train]
    if train.get("optimizer") == "auto":  # resolved as the trainer does
        train = {**train, "optimizer": "adamw" if train.get("weight_decay") else "adam"}
    recipe += [f"{k} {train[k]}" for k in _RECIPE_EXTRAS if train.get(k) not in (None, "none", 0)]
    if (run.get("data") or {}).get("augment"):
        recipe.append("augmentation on")
    if train.get("finetune_epochs"):
        recipe.append(
            f"then {train['finetune_epochs']} fine-tuning epochs with "
            f"{_trainable(train.get('unfreeze'))} trainable at lr × "
            f"{_fmt(train.get('backbone_lr_mult'))}"
        )
    if "seed" in train:
        recipe.append(f"seed {train['seed']}")
    cv = (ckpt.data.get("ensemble") or {}).get("cv") or {}
    epoch = ckpt.data.get("epoch")
    if epoch is None and cv.get("best_epochs"):
        epoch = ", ".join(map(str, cv["best_epochs"])) + " (one per member)"
    lines = []
    if cv:
        lines.append(
            f"- **Cross-validation:** {cv.get('folds')} grouped, stratified folds over "
            f"{_fmt(cv.get('n_images'))} non-test images; member k trained on every fold but k; "
            "temperature and threshold chosen on the out-of-fold predictions, never on test"
        )
    return [
        f"- **Architecture:** {arch_desc}",
        f"- **Initial weights:** {_fmt(weights)}",
        f"- **Head:** {head_desc} (dropout {_fmt(cfg.get('dropout'))})",
        f"- **Trainable (as saved):** {_trainable(cfg.get('freeze'))}",
        f"- **Classes (index order):** {', '.join(f'{i}={c}' for i, c in enumerate(ckpt.classes))}"
        + (
            f"; positive class: {ckpt.classes[positive_index(ckpt.classes)]}"
            if task_of(ckpt.data.get("labels"), ckpt.classes) == "binary"
            else ""
        ),
        labels_line(ckpt.data.get("labels")),
        inputs_line(ckpt),
        f"- **Preprocessing:** resize shorter side to {pre.resize_size} px ({pre.interpolation}), "
        f"centre crop {pre.crop_size} px, normalise with mean {_triple(pre.mean)} and std "
        f"{_triple(pre.std)}",
        f"- **Training recipe:** {', '.join(recipe) or NOT_RECORDED}; best epoch "
        f"{_fmt(epoch)}" + (f" ({ckpt.data['phase']} phase)" if ckpt.data.get("phase") else ""),
        f"- **Versions:** trained with skincls {_fmt(ckpt.data.get('skincls_version'))}, torch "
        f"{_fmt(ckpt.data.get('torch_version'))}",
        *lines,
    ]


def _measured_data(rep: Mapping[str, Any], run: Mapping[str, Any]) -> list[str]:
    """Another dataset measured: the Data section describes it, not the training data."""
    if not rep.get("data"):
        return []
    trained = (run.get("data") or {}).get("data_dir")
    return [
        f"- **Measured data, not the training data:** below is {rep['data']} "
        f"(`{rep.get('data_dir')}`); the model was trained on `{_fmt(trained)}`"
    ]


def inputs_line(ckpt: Checkpoint) -> str:
    """What the model needs: the image, and for a fused model its metadata columns and what
    happens when they are missing."""
    if ckpt.is_ensemble and not ckpt.model_config.get("metadata"):
        return "- **Inputs:** the image"
    inputs = model_inputs(ckpt)
    if not inputs["metadata"]:
        return "- **Inputs:** the image only"
    if ckpt.is_ensemble:  # each member's own encoding of the same columns
        names = ", ".join(dict.fromkeys(m["column"] for m in inputs["metadata"]))
        cols = f"{names} (each member encodes them with its own training images' encoder)"
    else:
        cols = "; ".join(f"{m['column']} ({m['encoding']})" for m in inputs["metadata"])
    image = "the image and" if inputs["image"] else "no image (a metadata-only model), only"
    return (
        f"- **Inputs:** {image} the metadata columns {cols}. A missing value, or one never seen "
        "in training, is encoded as `unknown` with a missing-value indicator: the model still "
        "answers, and predict reports which inputs were missing; how much accuracy that costs "
        "was not measured here"
    )


def _trainable(freeze: Any) -> str:
    """What a freeze/unfreeze setting leaves trainable, in words."""
    if freeze in ("backbone", 0):
        return "head only (backbone frozen)"
    if freeze in ("none", "all"):
        return "whole backbone and head"
    if isinstance(freeze, int):
        return f"last {freeze} backbone stages and head"
    return NOT_RECORDED


def _metrics(rep: Mapping[str, Any], split: Any, n: Any, positive: str | None) -> list[str]:
    ci = _cis(rep)
    level = f"{100 * float(rep.get('ci_level') or 0.95):.0f}%"
    resamples = rep.get("bootstrap_resamples")
    how = (
        f"percentile bootstrap, {resamples} resamples, seed {rep.get('bootstrap_seed', 0)}"
        if resamples
        else NOT_RECORDED
    )
    tta = " With test-time augmentation (flips and 90° turns)." if rep.get("tta") else ""
    data = rep.get("data")
    where = (
        f"the **{split}** split of **{data}** (`{rep.get('data_dir')}`), not the data the model "
        f"was trained on (kept in the checkpoint as `{data}:{split}`, apart from its own metrics)"
        if data
        else f"the **{split}** split"
    )
    lines = [
        f"Measured on {where}, **{n}** images; "
        + (f"positive class: {positive}; " if positive else "ROC-AUC is the macro one-vs-rest; ")
        + f"at the decision rule and temperature below.{tta} {level} confidence intervals: {how}.",
        "",
        _overlap(rep.get("training_overlap")),
        "",
        *_missing_inputs(rep.get("missing_inputs")),
        *_class_mapping(rep.get("class_mapping")),
        f"| metric | value | {level} CI |",
        "| --- | --- | --- |",
    ]
    for label, key, pct in _METRICS:
        if positive is None and key in _BINARY_ONLY:
            continue
        if positive is None and key == "roc_auc":
            label = "ROC-AUC (macro one-vs-rest)"
        # The report holds None for a metric undefined on this split (e.g. NPV with no negative
        # prediction); a key it lacks altogether was not recorded.
        value = metric(rep, key, pct)
        lo_hi = ci.get(key)
        if lo_hi:
            interval = f"{num(lo_hi[0], pct)} – {num(lo_hi[1], pct)}"
        else:
            interval = "not computed" if key in rep else NOT_RECORDED
        lines.append(f"| {label} | {value} | {interval} |")
    cm = rep.get("confusion_matrix")
    if cm:
        lines += ["", f"Confusion matrix (rows = truth, columns = prediction): `{cm}`"]
    return lines


def _missing_inputs(columns: Any) -> list[str]:
    """A fused model measured on data without some of its metadata columns: say which."""
    if not columns:
        return []
    cols = ", ".join(map(str, columns))
    return [
        f"**Metadata missing:** no image of this split has {cols}; they were `unknown` for every "
        f"image, so these are the metrics of the model without {cols}.",
        "",
    ]


def _class_mapping(mapping: Mapping[str, Any] | None) -> list[str]:
    """Data whose classes differ from the model's: how they were matched, what was left out."""
    if not mapping:
        return []
    lines = ClassMapping.model_validate(mapping).lines()
    return [f"**Another dataset's classes.** {lines[0]}.", "", *(f"{x}." for x in lines[1:]), ""]


def _overlap(overlap: Mapping[str, Any] | None) -> str:
    """Whether the measured images were seen in training (compared by content hash)."""
    if not overlap:
        return (
            "**Overlap with the training data:** not recorded (the checkpoint holds no record "
            "of its training images)."
        )
    if overlap.get("message"):
        return f"**Warning: not a held-out estimate.** {overlap['message']}."
    return (
        f"**Overlap with the training data:** none of these {overlap.get('n_images')} images was "
        "a training or validation image of this model (compared by content hash)."
    )


def _as_dict(report: Any) -> dict[str, Any]:
    if report is None:
        return {}
    if hasattr(report, "model_dump"):
        return report.model_dump(mode="json")
    return dict(report)


def _cis(rep: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """The report's bootstrap intervals (`EvalReport.ci`) as {metric: (low, high)}."""
    return {
        key: (float(pair[0]), float(pair[1]))
        for key, pair in (rep.get("ci") or {}).items()
        if pair is not None and None not in pair
    }


def _triple(values: Any) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"
