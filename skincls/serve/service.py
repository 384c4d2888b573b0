"""The model behind the server: one `Predictor`, one lock, and what each image's result shows.

No web framework here: `ModelService` takes PIL images and returns `ImageResult`s, so it is tested
and reused without HTTP. The model is used by one request at a time (a lock around prediction and
Grad-CAM): Grad-CAM hooks the model's layers, and two requests inside it at once would read each
other's activations.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, SkinclsError, opt, spell_options
from ..inference.metadata import FixedMetadata
from ..inference.predict import Prediction, Predictor
from .images import to_data_url
from .schemas import ImageResult, Limits, ModelInfo

__all__ = ["DISPLAY_SIZE", "ModelService", "decide"]

DISPLAY_SIZE = 512  # longest side of the image and heat map sent back to the page
_DATASET_JSON = "dataset.json"  # written by `skincls fetch` into the data dir
_CAM_OFF = f"Grad-CAM is off ({opt('grad_cam=False')})"


def decide(
    probabilities: dict[str, float],
    positive_class: str | None,
    threshold: float | None,
    band: float,
) -> bool:
    """Whether a prediction is too close to the decision boundary to call ("uncertain").

    Two classes: P(positive) within `band` of the threshold (0.5 when the checkpoint stores none).
    More classes (argmax): the two most probable classes less than `band` apart. `band` 0: never.
    """
    if band <= 0:
        return False
    if len(probabilities) == 2 and positive_class is not None:
        t = 0.5 if threshold is None else threshold
        return abs(probabilities[positive_class] - t) < band
    top = sorted(probabilities.values(), reverse=True)
    return top[0] - top[1] < band


class ModelService:
    """Predictions with decisions and Grad-CAM heat maps, for one model, safe to call from threads.

    Args:
        predictor: Any `Predictor`: of a single checkpoint or of an ensemble checkpoint (Grad-CAM
            then averages the members' maps), with Grad-CAM where the model has a spatial map.
        uncertain_band: See `decide`.
        limits: What one request may hold (reported by `info`).
        grad_cam: Compute Grad-CAM heat maps (off: probabilities only).
    """

    def __init__(
        self,
        predictor: Predictor,
        *,
        uncertain_band: float = 0.1,
        limits: Limits | None = None,
        grad_cam: bool = True,
    ):
        if not 0 <= uncertain_band < 0.5:
            raise ConfigError(f"the uncertain band must be in [0, 0.5), got {uncertain_band}")
        self.predictor = predictor
        self.band = uncertain_band
        self.limits = limits or Limits()
        self.grad_cam = grad_cam
        self._lock = threading.Lock()
        self._explainer: Any = None
        self._cam_error: str | None = None
        self.info = self._model_info()

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        *,
        device: str = "auto",
        tta: bool = False,
        precision: str = "auto",
        **kwargs: Any,
    ) -> ModelService:
        """Load a checkpoint or ensemble checkpoint (safely) into a `Predictor` and serve it."""
        return cls(Predictor.from_checkpoint(path, device, tta=tta, precision=precision), **kwargs)

    @property
    def positive_class(self) -> str | None:
        """The thresholded class of a two-class model (e.g. malignant); None with more classes."""
        classes = self.predictor.classes
        return classes[self.predictor.positive] if len(classes) == 2 else None

    def _cam_target(self, pred: Prediction) -> int:
        """Two classes: the positive class (evidence for it, whatever the decision); more: the label."""
        if self.positive_class is not None or pred.label is None:
            return self.predictor.positive
        return self.predictor.classes.index(pred.label)

    def predict(
        self,
        names: list[str],
        images: list[Image.Image],
        *,
        cam: bool = True,
        metadata: Mapping[str, str] | None = None,
    ) -> list[ImageResult]:
        """One result per image, in order; `cam=False` skips the heat map and the image copy.

        `metadata` (age, sex, site...: one patient's, for every image) feeds a model trained with
        metadata; what it lacks is unknown, and each result's `missing_inputs` says what.
        """
        rows = [dict(metadata or {}) for _ in images]
        with self._lock:
            if self.predictor.encoder is not None:
                preds = self.predictor.predict(images, metadata=rows)
            else:
                preds = self.predictor.predict(images)
            maps = [
                self._heatmap(im, self._cam_target(pred), _display_size(im.size), row)
                if cam and self.grad_cam and not pred.error
                else None
                for im, pred, row in zip(images, preds, rows)
            ]
        # Encoding needs no model: outside the lock, so the next request can start.
        return [
            self._result(name, im, pred, hm, cam)
            for name, im, pred, hm in zip(names, images, preds, maps)
        ]

    def _result(
        self,
        name: str,
        image: Image.Image,
        pred: Prediction,
        heatmap: np.ndarray | None,
        cam: bool,
    ) -> ImageResult:
        if pred.error:  # images arrive decoded: the model failed (e.g. a non-finite output)
            raise SkinclsError(f"{name}: {pred.error}")
        assert pred.label is not None and pred.probabilities is not None
        uncertain = decide(pred.probabilities, self.positive_class, pred.threshold, self.band)
        result = ImageResult(
            file=name,
            label=pred.label,
            decision="uncertain" if uncertain else pred.label,
            uncertain=uncertain,
            probability=float(pred.probability or 0.0),
            positive_class=self.positive_class,
            threshold=pred.threshold,
            probabilities=pred.probabilities,
            width=image.width,
            height=image.height,
            missing_inputs=pred.missing_inputs,
        )
        if cam:
            result.image = to_data_url(image.resize(_display_size(image.size), Image.BILINEAR))
            if heatmap is not None:
                result.heatmap = to_data_url(_colourise(heatmap), "PNG")
                result.cam_class = self.predictor.classes[self._cam_target(pred)]
            else:
                result.cam_error = self._cam_error or spell_options(_CAM_OFF)
        return result

    def _heatmap(
        self, image: Image.Image, target: int, size: tuple[int, int], metadata: dict | None = None
    ) -> np.ndarray | None:
        """Grad-CAM of class `target` at `size`, or None (the reason in `_cam_error`)."""
        encoder = self.predictor.encoder
        if self._explainer is None and self._cam_error is None:
            from ..inference.cam import GradCamExplainer

            model = self.predictor.model
            if encoder is not None:  # a fused model: the image's metadata held fixed
                model = FixedMetadata(model, encoder.width)
            try:
                self._explainer = GradCamExplainer(model, self.predictor.checkpoint.preprocessing)
            except SkinclsError as exc:  # e.g. a backbone without a spatial map
                self._cam_error = f"no Grad-CAM for this model: {exc}"
        if self._explainer is None:
            return None
        if encoder is not None:
            self._explainer.model.meta = torch.from_numpy(encoder.encode([metadata or {}]))
        return self._explainer.heatmap_on_image(image, target, size)

    def _model_info(self) -> ModelInfo:
        p = self.predictor
        ckpt = p.checkpoint
        data = ckpt.data
        cfg = ckpt.model_config
        run = data.get("train_config") or {}
        info_t = data.get("threshold_info") or {}
        if p.threshold is None:
            source = "none stored in the checkpoint"
        elif info_t.get("method") == "target_sensitivity":
            source = (
                f"largest with sensitivity >= {info_t.get('target_sensitivity')} on the "
                f"{info_t.get('split')} split (n={info_t.get('n_images')})"
            )
        elif info_t.get("method") == "fixed":
            source = "fixed by the user"
        else:
            source = "stored in the checkpoint"
        train = dict(run.get("train") or {})
        if data.get("epoch") is not None:
            train["best_epoch"] = data.get("epoch")
        members = None
        if cfg.get("arch") == "ensemble":
            members = cfg.get("num_members") or len(cfg.get("members") or [])
            name = f"ensemble of {members} {cfg.get('member_arch') or 'mixed'} models"
        else:
            name = f"{cfg.get('arch', 'model')} classifier"
        return ModelInfo(
            name=f"{name} ({', '.join(p.classes)})",
            checkpoint=ckpt.path.name,
            arch=cfg.get("arch"),
            members=members,
            precision=p.precision,
            backbone=cfg.get("backbone"),
            classes=p.classes,
            positive_class=self.positive_class,
            threshold=p.threshold,
            threshold_source=source,
            uncertain_band=self.band,
            temperature=p.temperature,
            calibration=data.get("calibration"),
            tta=p.tta,
            preprocessing=ckpt.preprocessing.model_dump(mode="json"),
            data=_data_info(run.get("data") or {}),
            training=train,
            metrics={k: v for k, v in ckpt.metrics.items() if isinstance(v, dict)},
            labels=data.get("labels"),
            skincls_version=data.get("skincls_version"),
            grad_cam=self.grad_cam,
            metadata_columns=p.encoder.names if p.encoder is not None else [],
            limits=self.limits,
        )


def _data_info(recorded: dict[str, Any]) -> dict[str, Any]:
    """The data section of the training config, plus source and counts from `dataset.json` if found."""
    out = dict(recorded)
    data_dir = recorded.get("data_dir")
    if data_dir:
        try:
            meta = json.loads((Path(data_dir) / _DATASET_JSON).read_text())
        except (OSError, ValueError):
            return out  # moved or never there: the recorded config is all there is
        source = meta.get("source") or {}
        out["source"] = source.get("kind") or source.get("dataset")
        out["counts"] = meta.get("counts")
    return out


def _display_size(size: tuple[int, int]) -> tuple[int, int]:
    """(w, h) scaled so the longest side is at most DISPLAY_SIZE (never enlarged)."""
    w, h = size
    s = min(1.0, DISPLAY_SIZE / max(w, h))
    return max(1, round(w * s)), max(1, round(h * s))


def _colourise(cam: np.ndarray) -> Image.Image:
    """(h, w) map in [0, 1] → RGB image in the jet colour map, as `Predictor.predict` blends it."""
    from matplotlib import colormaps

    rgb = colormaps["jet"](np.clip(cam, 0, 1))[..., :3]
    return Image.fromarray((rgb * 255).round().astype(np.uint8))
