"""Predict: label new images with a checkpoint; needs nothing but the checkpoint file."""

from __future__ import annotations

import glob
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..data.dataset import build_transform
from ..data.images import IMAGE_SUFFIXES, UnusableImage, load_image, prepare_image
from ..data.patient_context import patient_contexts
from ..errors import ConfigError, DataError, opt, spell_options
from ..figures import save_figure
from ..models.checkpoint import Checkpoint, load_checkpoint
from ..runtime import plan_precision, resolve_device
from .decision import positive_index, predict_labels, softmax
from .metadata import (
    FixedMetadata,
    MetadataInput,
    metadata_encoder,
    metadata_rows,
    uses_patient_context,
    with_inputs,
)
from .tta import model_logits

__all__ = ["Prediction", "Predictor", "expand_paths"]


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders searched recursively for images, glob patterns expanded.

    Patterns are expanded here too because not every shell does (Windows, quoted arguments). A path
    that matches nothing is kept, so that it gets an error row instead of vanishing.

    Raises:
        DataError: a folder holds no image file (an empty answer would look like success).
    """
    out: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            found = sorted(
                f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise DataError(
                    f"no images in folder {p} (searched recursively for "
                    f"{', '.join(sorted(IMAGE_SUFFIXES))}): nothing to predict"
                )
            out += found
        elif not p.exists() and glob.has_magic(str(raw)):
            matches = sorted(Path(m) for m in glob.glob(str(raw), recursive=True))
            out += [m for m in matches if m.is_file()] or [p]
        else:
            out.append(p)
    return out


@dataclass
class Prediction:
    """One image's result; `error` is set (and the rest empty) when the image could not be read."""

    path: str
    label: str | None = None
    # Two classes: calibrated P(positive class), e.g. P(malignant); more: P(label).
    probability: float | None = None
    positive_class: str | None = None  # None with more than two classes
    threshold: float | None = None  # None: argmax decision
    probabilities: dict[str, float] | None = None
    cam: str | None = None  # Grad-CAM overlay file, when asked for
    error: str | None = None
    top: list[tuple[str, float]] | None = None  # the `top_k` most probable classes, best first
    # A model with metadata: the columns this image had no value for (encoded as unknown).
    missing_inputs: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Predictor:
    """Runs a checkpoint on images, with its stored temperature and operating threshold.

    Args:
        checkpoint: A loaded checkpoint.
        device: auto, cpu, cuda, cuda:N or mps.
        backbone: The backbone module, for checkpoints of a custom (bring-your-own) backbone.
        tta: Average softmax over the 8 flips and 90° turns.
        batch_size: Images per forward pass.
        threshold: Decide `P(positive) >= threshold` at this threshold in [0, 1] instead of the
            checkpoint's stored one (two-class checkpoints only).
        top_k: How many of the most probable classes each prediction lists (`Prediction.top`);
            default 3 with more than two classes, none with two.

    Raises:
        ConfigError: `threshold` outside [0, 1], or given for a checkpoint with more classes.
    """

    def __init__(
        self,
        checkpoint: Checkpoint,
        device: str = "auto",
        *,
        backbone: nn.Module | None = None,
        tta: bool = False,
        batch_size: int = 16,
        precision: str = "auto",
        threshold: float | None = None,
        top_k: int | None = None,
    ):
        if threshold is not None:
            _check_threshold(threshold, checkpoint.classes)
        self.checkpoint = checkpoint
        self.device = resolve_device(device)
        plan = plan_precision(precision, self.device)
        self.precision, self._dtype = plan.inference, plan.dtype("inference")
        model = checkpoint.build_model(backbone=backbone).to(self.device).eval()
        self.model = model.to(memory_format=torch.channels_last)
        self.transform = build_transform(checkpoint.preprocessing)
        self.encoder = metadata_encoder(checkpoint)  # None: the model takes images only
        self.classes = checkpoint.classes
        self.positive = positive_index(self.classes)
        self.temperature = checkpoint.temperature
        # A threshold is a binary operating point; with more classes the decision is argmax.
        if threshold is None:
            threshold = checkpoint.threshold if len(self.classes) == 2 else None
        self.threshold = threshold
        self.tta = tta
        self.batch_size = batch_size
        if top_k is None:
            top_k = min(3, len(self.classes)) if len(self.classes) > 2 else 0
        self.top_k = max(0, min(int(top_k), len(self.classes)))

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        *,
        backbone: nn.Module | None = None,
        tta: bool = False,
        precision: str = "auto",
        threshold: float | None = None,
        top_k: int | None = None,
    ) -> Predictor:
        """Load a checkpoint file or run directory (safely, `weights_only=True`) and wrap it."""
        return cls(
            load_checkpoint(path),
            device,
            backbone=backbone,
            tta=tta,
            precision=precision,
            threshold=threshold,
            top_k=top_k,
        )

    def predict(
        self,
        images: Iterable[str | Path | Image.Image],
        *,
        cam_dir: str | Path | None = None,
        progress: Callable[[int, int, str], None] | None = None,
        metadata: MetadataInput = None,
    ) -> list[Prediction]:
        """Predict each image; unreadable files get an error row and the rest go on.

        Args:
            images: File paths, folders (searched recursively), glob patterns or PIL images.
            cam_dir: If given, write a Grad-CAM figure per image there (PNG).
            progress: Called as `progress(done, total, what)` after each batch of images.
            metadata: For a model trained with metadata: a `MetadataTable` (`read_metadata_csv`,
                rows matched by file name) or one row (dict) per image. Whatever is missing is
                `unknown`, and each prediction's `missing_inputs` says which columns were.
                Ignored by an image-only model.
        """
        items = _expand_items(images)
        metas = metadata_rows(self.encoder, [n for n, _ in items], metadata)
        if self.encoder is not None and uses_patient_context(self.checkpoint):
            metas = self._with_context(items, metas)
        items = [(n, item, m) for (n, item), m in zip(items, metas)]
        preds: list[Prediction] = []
        # A thread decodes the next batch of files while the model runs on this one (PIL's decoders
        # release the GIL); batches span files, so a folder runs at the model's batch throughput.
        with ThreadPoolExecutor(max_workers=1) as pool:
            chunks = _chunks(items, self.batch_size)
            pending = pool.submit(self._decode, next(chunks, []))
            while True:
                rows, tensors = pending.result()
                if not rows:
                    break
                pending = pool.submit(self._decode, next(chunks, []))
                preds += self._predict_decoded(rows, tensors)
                if progress is not None:
                    progress(len(preds), len(items), "predict")
        if cam_dir is not None:
            self._write_cams(items, preds, Path(cam_dir), progress)
        return preds

    @torch.inference_mode()
    def _with_context(self, items: list[tuple[str, Any]], metas: list) -> list:
        """Each row with its patient context (`data.patient_context`) among the images predicted
        together: a patient's other images here (by the rows' `patient_id`), nothing else."""
        good, feats = [], []
        for chunk in _chunks(list(enumerate(items)), self.batch_size):
            tensors = []
            for i, (name, item) in chunk:
                try:
                    tensors.append(self.transform(_read_image(name, item)))
                    good.append(i)
                except DataError:
                    continue  # its own prediction reports the error
            if tensors:
                x = torch.stack(tensors).to(self.device)
                feats.append(self.model.features(x).float().cpu())
        if not good:
            return metas
        patients = [(metas[i] or {}).get("patient_id", "") for i in good]
        out = list(metas)
        for i, row in zip(good, patient_contexts(torch.cat(feats).numpy(), patients)):
            out[i] = {**(metas[i] or {}), **row}
        return out

    def _decode(
        self, chunk: list[tuple[str, Any, dict | None]]
    ) -> tuple[list[Prediction | tuple[str, dict | None]], list[torch.Tensor]]:
        """Load and transform a batch: per item its name and metadata row (or an error row), and
        the good tensors."""
        rows: list[Prediction | tuple[str, dict | None]] = []
        tensors = []
        for name, item, meta in chunk:
            try:
                tensors.append(self.transform(_read_image(name, item)))
                rows.append((name, meta))
            except DataError as exc:
                rows.append(Prediction(name, error=str(exc)))
        return rows, tensors

    def _predict_decoded(
        self, rows: list[Prediction | tuple[str, dict | None]], tensors: list[torch.Tensor]
    ) -> list[Prediction]:
        if not tensors:
            return rows  # type: ignore[return-value]  # every item failed to load
        x = torch.stack(tensors).to(self.device)
        model: Any = self.model
        metas = [r[1] for r in rows if not isinstance(r, Prediction)]
        if self.encoder is not None:
            m = torch.from_numpy(self.encoder.encode([r or {} for r in metas])).to(self.device)
            model = with_inputs(self.model, [m])
        logits = model_logits(model, x, self.tta, self._dtype)
        probs = softmax(logits.cpu().numpy(), self.temperature)
        labels = predict_labels(probs, self.threshold, self.positive)
        it = iter(zip(probs, labels))
        out = []
        for entry in rows:
            if isinstance(entry, Prediction):
                out.append(entry)
                continue
            row, meta = entry
            p, k = next(it)
            if not np.isfinite(p).all():  # never a plausible label from NaN (argmax says class 0)
                out.append(Prediction(row, error=spell_options(NONFINITE_OUTPUT)))
                continue
            binary = len(self.classes) == 2
            best = sorted(range(len(p)), key=lambda j: -p[j])[: self.top_k]
            out.append(
                Prediction(
                    row,
                    label=self.classes[k],
                    probability=float(p[self.positive] if binary else p[k]),
                    positive_class=self.classes[self.positive] if binary else None,
                    threshold=self.threshold,
                    probabilities={c: float(v) for c, v in zip(self.classes, p)},
                    top=[(self.classes[j], float(p[j])) for j in best] if best else None,
                    missing_inputs=None if meta is None else self.encoder.missing(meta),
                )
            )
        return out

    def _write_cams(
        self,
        items: list[tuple[str, Any, dict | None]],
        preds: list[Prediction],
        cam_dir: Path,
        progress: Callable[[int, int, str], None] | None = None,
    ):
        from .cam import GradCamExplainer

        fixed = FixedMetadata(self.model, self.encoder.width) if self.encoder else None
        explainer = GradCamExplainer(fixed or self.model, self.checkpoint.preprocessing)
        cam_dir.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()
        for i, ((name, item, meta), pred) in enumerate(zip(items, preds)):
            if pred.error:
                continue
            if fixed is not None:
                fixed.meta = torch.from_numpy(self.encoder.encode([meta or {}]))
            image = _read_image(name, item)
            stem = Path(name).stem if not isinstance(item, Image.Image) else f"image_{i}"
            out = _unique(cam_dir, stem, used)
            # Two classes: the map of the positive class; more: of the predicted one.
            k = self.positive if len(self.classes) == 2 else self.classes.index(pred.label)
            fig = explainer.figure(
                image,
                k,
                label=pred.label,
                probability=pred.probabilities[self.classes[k]],
                target_name=self.classes[k],
            )
            save_figure(fig, out)
            pred.cam = str(out)
            if progress is not None:
                progress(i + 1, len(items), "Grad-CAM")


NONFINITE_OUTPUT = (
    "the model's output is NaN or infinite for this image (an overflow: try "
    f"{opt('precision', value='fp32')})"
)


def _check_threshold(threshold: float, classes: list[str]) -> None:
    if isinstance(threshold, bool) or not 0 <= threshold <= 1:  # also refuses NaN
        raise ConfigError(f"threshold must be a probability in [0, 1], not {threshold}")
    if len(classes) != 2:
        raise ConfigError(
            f"a threshold is a two-class operating point; this checkpoint has {len(classes)} "
            f"classes and decides by argmax: leave {opt('threshold')} out"
        )


def _read_image(name: str, item: str | Path | Image.Image) -> Image.Image:
    """A file through every stage's decoder (`data.images.load_image`: upright RGB), or an image in
    memory as it is, checked and converted the same way (`prepare_image`).

    Raises:
        DataError: unreadable or refused (too elongated, NaN pixels, ...).
    """
    if not isinstance(item, Image.Image):
        return load_image(item)
    try:
        return prepare_image(item)
    except UnusableImage as exc:
        raise DataError(f"cannot read image {name}: {exc}") from None


def _expand_items(images: Iterable[str | Path | Image.Image]) -> list[tuple[str, Any]]:
    """(display name, path or PIL image) pairs; folders and patterns expanded in place."""
    items: list[tuple[str, Any]] = []
    for i, im in enumerate(images if not isinstance(images, (str, Path)) else [images]):
        if isinstance(im, Image.Image):
            items.append((getattr(im, "filename", "") or f"<image {i}>", im))
        else:
            items += [(str(p), p) for p in expand_paths([im])]
    return items


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i : i + n]


def _unique(folder: Path, stem: str, used: set[str]) -> Path:
    """`stem_cam.png`, with a counter when two inputs share a name (same file name, other folder)."""
    name, k = f"{stem}_cam.png", 1
    while name in used:
        k += 1
        name = f"{stem}_{k}_cam.png"
    used.add(name)
    return folder / name
