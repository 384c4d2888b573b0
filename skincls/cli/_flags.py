"""The one table from the library's option names to this CLI's flags, for the library's messages.

The library names options as a Python caller spells them (`opt("data_dir")` in `skincls.errors`);
while a command runs, `friendly_errors` installs `spell_flags`, so the same messages name the flags
the user typed: `data_dir` → `--data-dir`, `resume=True` → `--resume`,
`precision='fp32'` → `--precision fp32`, `weights=FILE` → `--weights FILE`, and
`skincls.fetch(data_dir='d')` → `skincls fetch --data-dir d`.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

__all__ = ["COMMANDS", "FLAGS", "spell_flags"]

# Python name (a parameter, or a `RunConfig` key) → flag. A `name=value` key spells that exact
# setting (a boolean's negative flag), a `name=<type>` key the values of that type; otherwise True
# is the flag alone, and any other value follows the flag.
FLAGS: dict[str, str] = {
    # fetch
    "data_dir": "--data-dir",
    "source_dir": "--source-dir",
    "archive": "--archive",
    "synthetic": "--synthetic",
    "dataset": "--dataset",
    "cache_dir": "--cache-dir",
    "labels_csv": "--labels-csv",
    "task": "--task",
    "malignant": "--malignant",
    "reference": "--reference",
    "seed": "--seed",
    "workers": "--workers",
    # train and cv (RunConfig keys)
    "model.weights": "--weights",
    "model.freeze": "--freeze",
    "model.freeze=<int>": "--train-stages",
    "data.image_size": "--image-size",
    "train.lr": "--lr",
    "train.batch_size": "--batch-size",
    "train.device": "--device",
    "train.precision": "--precision",
    "train.cache_features": "--cache-features",
    "train.seed": "--seed",
    "train.finetune_epochs": "--finetune-epochs",
    "train.mixup": "--mixup",
    "train.checkpoint_interval": "--checkpoint-interval",
    "model.metadata": "--metadata",
    "model.use_image=False": "--no-image",
    "model.patient_context": "--patient-context",
    "data.augment": "--augment",
    "data.augment_policy": "--augment-policy",
    "recipe": "--recipe",
    "logging.loggers": "--logger",
    "out": "--out",
    "resume": "--resume",
    "overwrite": "--overwrite",
    "folds": "--folds",
    "group_by": "--group-by",
    "by": "--by",
    "min_group_n": "--min-group-n",
    # models, evaluate, predict, export, serve
    "arch": "--arch",
    "pattern": "--timm",
    "weights": "--weights",
    "freeze": "--freeze",
    "device": "--device",
    "precision": "--precision",
    "threshold": "--threshold",
    "calibrate": "--calibrate",
    "target_sensitivity": "--target-sensitivity",
    "split": "--split",
    "save": "--save",
    "tolerance": "--tolerance",
    "format": "--format",
    "grad_cam=False": "--no-grad-cam",
}


# Library function → the command that does the same.
COMMANDS: dict[str, str] = {
    "fetch": "skincls fetch",
    "train_from_config": "skincls train",
    "cross_validate": "skincls cv",
    "evaluate_checkpoint": "skincls evaluate",
    "list_timm_models": "skincls models",
}


def spell_flags(function: str | None, items: Sequence[tuple[str, str | None]]) -> str:
    """A `skincls.errors` marker as this CLI spells it: `opt`'s options as flags, e.g.
    `[("synthetic", "N"), ("dataset", "'ham10000'")]` → "--synthetic N --dataset ham10000", and a
    `call` as its command with those flags (its "..." left out)."""
    flags = [_flag(name, value) for name, value in items if name != "..."]
    return " ".join(flags if function is None else [COMMANDS[function], *flags])


def _flag(name: str, value: str | None) -> str:
    exact = FLAGS.get(f"{name}={value}")
    if exact is not None:
        return exact
    flag = FLAGS[name]  # KeyError: the marker shows as written (tests keep this table complete)
    if value is None:
        return flag
    try:
        literal = ast.literal_eval(value)
    except (ValueError, SyntaxError):  # a placeholder: FILE, N
        return f"{flag} {value}"
    if literal is True:
        return flag
    flag = FLAGS.get(f"{name}=<{type(literal).__name__}>", flag)
    if isinstance(literal, str):
        return f"{flag} {literal}"
    if literal is None:
        return f"{flag} none"
    return f"{flag} {value}"
