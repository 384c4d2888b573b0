"""skincls: benign-vs-malignant skin-lesion classification by transfer learning, reproducible and leak-free.

Research software, not a medical device.
"""

import os

from ._version import __version__

# Large CPU tensors (e.g. a VGG head's 400 MB gradient, allocated every step) on transparent huge
# pages: far fewer page faults. PyTorch reads this once, so it only helps when set before torch loads.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

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
from .models.classifier import SkinClassifier, create_model, list_models, register_model, set_freeze
from .models.ensemble import EnsembleClassifier
from .preprocessing import Preprocessing
from .training.run import train_from_config
from .training.trainer import History, Trainer

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
    "load_checkpoint",
    "load_config",
    "load_manifest",
    "register_model",
    "save_checkpoint",
    "set_freeze",
    "train_from_config",
]
