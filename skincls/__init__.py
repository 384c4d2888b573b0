"""skincls: benign-vs-malignant skin-lesion classification by transfer learning, reproducible and leak-free.

Research software, not a medical device.
"""

__version__ = "0.1.0"

from .checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from .config import DataConfig, ModelConfig, RunConfig, TrainConfig, load_config
from .errors import SkinclsError
from .evaluate import EvalReport, Evaluator
from .fetch import fetch
from .models import Preprocessing, SkinClassifier, create_model, list_models
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
    "fetch",
    "list_models",
    "load_checkpoint",
    "load_config",
    "load_manifest",
    "save_checkpoint",
    "train_from_config",
]
