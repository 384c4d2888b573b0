"""skincls: benign-vs-malignant skin-lesion classification by transfer learning, reproducible and leak-free.

Research software, not a medical device.

`import skincls` is fast and changes nothing: each public name below is imported from its module the
first time it is used (PEP 562), so torch, scikit-learn and matplotlib load only when needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._lazy import lazy_getattr
from ._version import __version__

if TYPE_CHECKING:  # what type checkers and editors see; at run time `__getattr__` imports on demand
    from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config
    from .data.fetch import fetch
    from .data.splits import Manifest, load_manifest
    from .errors import SkinclsError
    from .evaluation.evaluator import EvalReport, Evaluator
    from .evaluation.run import evaluate_checkpoint
    from .experiments.cv import CVResult, cross_validate
    from .experiments.ensemble import create_ensemble
    from .inference.predict import Prediction, Predictor
    from .models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from .models.classifier import (
        SkinClassifier,
        create_model,
        list_models,
        register_model,
        set_freeze,
    )
    from .models.ensemble import EnsembleClassifier
    from .models.timm_backbones import list_timm_models
    from .preprocessing import Preprocessing
    from .training.run import train_from_config
    from .training.trainer import History, Trainer

# Public name → the module that defines it.
_LAZY = {
    **dict.fromkeys(
        ("DataConfig", "ModelConfig", "RunConfig", "TrainConfig", "load_config"), ".config"
    ),
    "fetch": ".data.fetch",
    **dict.fromkeys(("Manifest", "load_manifest"), ".data.splits"),
    "SkinclsError": ".errors",
    **dict.fromkeys(("EvalReport", "Evaluator"), ".evaluation.evaluator"),
    "evaluate_checkpoint": ".evaluation.run",
    **dict.fromkeys(("CVResult", "cross_validate"), ".experiments.cv"),
    "create_ensemble": ".experiments.ensemble",
    **dict.fromkeys(("Prediction", "Predictor"), ".inference.predict"),
    **dict.fromkeys(("Checkpoint", "load_checkpoint", "save_checkpoint"), ".models.checkpoint"),
    **dict.fromkeys(
        ("SkinClassifier", "create_model", "list_models", "register_model", "set_freeze"),
        ".models.classifier",
    ),
    "EnsembleClassifier": ".models.ensemble",
    "list_timm_models": ".models.timm_backbones",
    "Preprocessing": ".preprocessing",
    "train_from_config": ".training.run",
    **dict.fromkeys(("History", "Trainer"), ".training.trainer"),
}

__all__ = [
    "CVResult",
    "Checkpoint",
    "DataConfig",
    "EnsembleClassifier",
    "EvalReport",
    "Evaluator",
    "History",
    "Manifest",
    "ModelConfig",
    "Prediction",
    "Predictor",
    "Preprocessing",
    "RunConfig",
    "SkinClassifier",
    "SkinclsError",
    "TrainConfig",
    "Trainer",
    "__version__",
    "create_ensemble",
    "create_model",
    "cross_validate",
    "evaluate_checkpoint",
    "fetch",
    "list_models",
    "list_timm_models",
    "load_checkpoint",
    "load_config",
    "load_manifest",
    "register_model",
    "save_checkpoint",
    "set_freeze",
    "train_from_config",
]


__getattr__ = lazy_getattr(__name__, _LAZY)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
