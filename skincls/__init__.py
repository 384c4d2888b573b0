"""skincls: benign-vs-malignant skin-lesion classification by transfer learning, reproducible and leak-free.

Research software, not a medical device.
"""

__version__ = "0.1.0"

import os

# Large CPU tensors (e.g. a VGG head's 400 MB gradient, allocated every step) on transparent huge
# pages: far fewer page faults. PyTorch reads this once, so it only helps when set before torch loads.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config
from .errors import SkinclsError
from .evaluate import EvalReport, Evaluator, evaluate_checkpoint
from .fetch import fetch
from .models import (
    Preprocessing,
    SkinClassifier,
    create_model,
    list_models,
    register_model,
    set_freeze,
)
from .pipeline import train_from_config
from .predict import Prediction, Predictor
from .splits import Manifest, load_manifest
from .trainer import History, Trainer

__all__ = [
    "Checkpoint",
    "DataConfig",
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
    "create_model",
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
