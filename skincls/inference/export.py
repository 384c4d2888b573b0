"""Export: a checkpoint as one ONNX or TorchScript file that runs without skincls, checked for parity
(or as a `.safetensors` skincls checkpoint, for sharing a model without pickles).

The exported network is `ExportWrapper`: it takes **float32 RGB images, NCHW, values in [0, 1], at the
checkpoint's crop size** (resize the shorter side to `resize_size` and centre-crop `crop_size` first,
as the checkpoint's preprocessing says), normalises them with the checkpoint's mean and std, and returns
calibrated class probabilities: `softmax(logits / temperature)`. The batch axis is dynamic.
"""

from __future__ import annotations

import contextlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from .._version import __version__
from ..atomic import atomic_path
from ..errors import SkinclsError, opt
from ..models.checkpoint import Checkpoint, convert_checkpoint, load_checkpoint
from ..models.checkpoint_safetensors import SUFFIX
from .metadata import metadata_encoder

__all__ = ["FORMATS", "ExportError", "ExportResult", "ExportWrapper", "export_model"]

FORMATS = ("onnx", "torchscript", "safetensors")
Format = Literal["onnx", "torchscript", "safetensors"]

# Batch sizes for the parity check: 1 and odd sizes catch a batch axis that was baked in at trace time.
PARITY_BATCHES = (1, 2, 5)
INPUT_NAME = "images"
METADATA_NAME = "metadata"  # a fused model's second input: the encoded metadata (N, width)
OUTPUT_NAME = "probabilities"


class ExportError(SkinclsError):
    """Export failed, or the exported model disagrees with PyTorch beyond the tolerance."""


class ExportWrapper(nn.Module):
    """Images in [0, 1] → normalise → model → softmax(logits / temperature).

    Args:
        model: The trained classifier (eval mode).
        mean: Per-channel mean of the checkpoint's preprocessing.
        std: Per-channel standard deviation.
        temperature: Calibration temperature (1.0 = uncalibrated softmax).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        temperature: float = 1.0,
    ):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, images: torch.Tensor, *metadata: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) float in [0, 1] (and a fused model's (N, width) encoded metadata) →
        (N, num_classes) probabilities summing to 1."""
        logits = self.model((images - self.mean) / self.std, *metadata)
        return torch.softmax(logits / self.temperature, dim=1)


@dataclass
class ExportResult:
    """What `export_model` wrote and how closely it matches PyTorch."""

    path: Path
    format: str
    input_shape: tuple[int | str, ...]  # ("batch", 3, crop, crop)
    classes: list[str]
    temperature: float
    max_abs_diff: float
    tolerance: float
    batch_sizes: tuple[int, ...]
    metadata: dict[str, Any] = field(default_factory=dict)


def export_model(
    checkpoint: str | Path | Checkpoint,
    out: str | Path,
    *,
    format: Format = "onnx",
    tolerance: float = 1e-4,
    backbone: nn.Module | None = None,
    seed: int = 0,
    opset: int = 17,
) -> ExportResult:
    """Export a checkpoint with preprocessing and calibrated softmax built in, then check parity.

    The file is written only if every parity batch (seeded random images of sizes 1, 2 and 5) agrees
    with the same wrapper run eagerly in PyTorch to within `tolerance` (max absolute difference of the
    probabilities); otherwise nothing is left at `out`.

    Args:
        checkpoint: A checkpoint path or a loaded `Checkpoint`.
        out: The file to write (`.onnx`, or `.pt` for TorchScript by convention).
        format: "onnx" (checked with ONNX Runtime), "torchscript" (checked with `torch.jit.load`),
            or "safetensors": the checkpoint itself as safetensors + JSON metadata (no pickle; no
            resume state), which skincls loads as it loads the `.pt`; checked field by field and
            by running both.
        tolerance: Largest acceptable max absolute difference between the two sets of probabilities.
        backbone: The backbone module, for checkpoints of a custom (bring-your-own) backbone.
        seed: Seed of the random parity images.
        opset: ONNX opset version.

    Returns:
        The written path, input shape, classes, temperature and the measured max absolute difference.

    Raises:
        ExportError: unknown format, a missing optional dependency, a failed export, or a parity
            difference above `tolerance`.
    """
    if format not in FORMATS:
        raise ExportError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    if tolerance < 0:
        raise ExportError(f"tolerance must be >= 0, not {tolerance}")
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    if format == "safetensors":
        return _export_checkpoint(ckpt, Path(out), tolerance)
    encoder = metadata_encoder(ckpt)
    width = encoder.width if encoder is not None else 0  # a fused model: a second input
    model = ckpt.build_model(backbone=backbone)
    pre = ckpt.preprocessing
    _fix_input_size(model, pre.crop_size)
    wrapper = ExportWrapper(model.cpu().eval(), pre.mean, pre.std, ckpt.temperature).eval()
    size = pre.crop_size
    metadata = _metadata(ckpt)
    if encoder is not None:
        metadata["metadata_input"] = (
            f"float32 (N, {width}): {', '.join(encoder.names)} encoded by "
            "skincls.data.tabular.MetadataEncoder.from_dict(metadata_encoding).encode(rows); "
            "unknown values: encode([{}])"
        )
        metadata["metadata_encoding"] = encoder.to_dict()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)

    # Write next to the target, check, then rename: a failed check never leaves a file behind.
    with atomic_path(out) as tmp:
        example = _inputs(2, size, width, torch.Generator().manual_seed(seed))
        if format == "onnx":
            _export_onnx(wrapper, example, tmp, metadata, opset)
        else:
            _export_torchscript(wrapper, example, tmp, metadata)
        diff = _parity(wrapper, tmp, format, size, seed, width)
        if diff != diff:  # NaN: the exported model gave NaN where PyTorch did not
            raise ExportError(
                f"parity check failed: the exported {format} model outputs NaN or inf where "
                f"PyTorch does not; nothing was written to {out}"
            )
        if not diff <= tolerance:
            raise ExportError(
                f"parity check failed: the exported {format} model differs from PyTorch by up to "
                f"{diff:.3g} (tolerance {tolerance:g}); nothing was written to {out}. "
                f"Raise {opt('tolerance')} only if you understand where the difference comes from."
            )
    return ExportResult(
        path=out,
        format=format,
        input_shape=("batch", 3, size, size),
        classes=ckpt.classes,
        temperature=ckpt.temperature,
        max_abs_diff=diff,
        tolerance=tolerance,
        batch_sizes=PARITY_BATCHES,
        metadata=metadata,
    )


def _export_checkpoint(ckpt: Checkpoint, out: Path, tolerance: float) -> ExportResult:
    """The checkpoint as a `.safetensors` one, checked field by field and tensor by tensor."""
    if out.suffix != SUFFIX:
        raise ExportError(
            f"{out}: a safetensors checkpoint's name must end in {SUFFIX} (it is how skincls "
            f"tells the formats apart when writing), or choose another {opt('format')}"
        )
    # convert_checkpoint reads the copy back and compares every field and tensor bit for bit, so
    # the copy computes exactly what the original does: no second model build is needed to say so.
    convert_checkpoint(ckpt, out, file_format="safetensors")
    crop = ckpt.preprocessing.crop_size
    return ExportResult(
        path=out,
        format="safetensors",
        input_shape=("batch", 3, crop, crop),
        classes=ckpt.classes,
        temperature=ckpt.temperature,
        max_abs_diff=0.0,
        tolerance=tolerance,
        batch_sizes=(),
        metadata=_metadata(ckpt),
    )


def _inputs(n: int, size: int, width: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random parity inputs: images in [0, 1], and for a fused model encoded metadata rows."""
    images = torch.rand(n, 3, size, size, generator=gen)
    return (images, torch.randn(n, width, generator=gen)) if width else (images,)


def _fix_input_size(model: nn.Module, size: int) -> None:
    """Vision transformers built for any input size (timm's `dynamic_img_size`) fixed to `size`.

    Their position embedding is resampled here, once, instead of in every forward pass: ONNX has
    no antialiased bicubic resize, and the exported graph is for one input size anyway.
    """
    for m in model.modules():
        if getattr(m, "dynamic_img_size", False) is True and hasattr(m, "set_input_size"):
            m.set_input_size(img_size=(size, size))


def _metadata(ckpt: Checkpoint) -> dict[str, Any]:
    """What a consumer of the file needs besides the graph: classes, preprocessing, threshold."""
    pre = ckpt.preprocessing
    return {
        "skincls_version": __version__,
        "torch_version": str(torch.__version__),
        "arch": ckpt.model_config.get("arch"),
        "classes": ckpt.classes,
        # How the classes were made: task and diagnosis map (None for checkpoints without it).
        "labels": ckpt.data.get("labels"),
        "input": f"float32 RGB NCHW in [0, 1], {pre.crop_size}x{pre.crop_size}",
        "output": "class probabilities softmax(logits / temperature), columns in `classes` order",
        "resize_size": pre.resize_size,
        "crop_size": pre.crop_size,
        "interpolation": pre.interpolation,
        "mean": list(pre.mean),
        "std": list(pre.std),
        "temperature": ckpt.temperature,
        "threshold": ckpt.threshold,
    }


def _import_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as exc:
        raise ExportError(
            f"ONNX export needs the optional packages onnx and onnxruntime ({exc.name} is missing); "
            "install them with: pip install 'skincls[export]'"
        ) from exc
    return onnx, onnxruntime


def _export_onnx(
    wrapper: nn.Module,
    example: tuple[torch.Tensor, ...],
    path: Path,
    metadata: dict[str, Any],
    opset: int,
) -> None:
    onnx, _ = _import_onnx()
    # The TorchScript-based exporter (dynamo=False): it needs no onnxscript, gives a dynamic batch axis
    # through `dynamic_axes` and behaves the same on every torch >= 2.2 we support. torch >= 2.9
    # defaults to the torch.export-based exporter and flags this one as deprecated, hence the filter.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            names = [INPUT_NAME, METADATA_NAME][: len(example)]
            torch.onnx.export(
                wrapper,
                example,
                str(path),
                dynamo=False,
                input_names=names,
                output_names=[OUTPUT_NAME],
                dynamic_axes={**{n: {0: "batch"} for n in names}, OUTPUT_NAME: {0: "batch"}},
                opset_version=opset,
            )
    except Exception as exc:  # the exporter raises many types; all mean "this model did not export"
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {exc}") from exc
    proto = onnx.load(str(path))
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    proto.doc_string = f"skincls {__version__} export: {metadata['input']} → {metadata['output']}"
    onnx.save(proto, str(path))


def _export_torchscript(
    wrapper: nn.Module, example: tuple[torch.Tensor, ...], path: Path, metadata: dict[str, Any]
) -> None:
    # Tracing (not scripting) works for any backbone, including bring-your-own modules; the wrapper
    # has no data-dependent control flow, so the trace is the whole computation.
    # torch >= 2.10 marks torch.jit as deprecated (FutureWarning); the format is still what many C++
    # and mobile runtimes load, so we keep offering it and keep the warning out of users' output.
    try:
        with torch.no_grad(), _quiet_jit():
            traced = torch.jit.trace(wrapper, example)
            torch.jit.save(traced, str(path), _extra_files={"skincls.json": json.dumps(metadata)})
    except Exception as exc:
        raise ExportError(f"TorchScript export failed: {type(exc).__name__}: {exc}") from exc


@contextlib.contextmanager
def _quiet_jit() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=r".*torch\.jit.*")
        yield


def _parity(
    wrapper: nn.Module, path: Path, format: str, size: int, seed: int, width: int = 0
) -> float:
    """Max abs difference between eager PyTorch and the exported file over the parity batches.

    NaN anywhere is never a pass: a model whose PyTorch output is not finite is refused, and a NaN
    difference is returned at once (`max(0.0, nan)` is 0.0, i.e. "perfect parity").
    """
    run = _load_runner(path, format)
    gen = torch.Generator().manual_seed(seed + 1)
    worst = 0.0
    for n in PARITY_BATCHES:
        inputs = _inputs(n, size, width, gen)
        with torch.no_grad():
            expected = wrapper(*inputs).numpy()
        if not np.isfinite(expected).all():
            raise ExportError(
                "the model's own (PyTorch) probabilities are NaN or infinite, so there is nothing "
                f"to export; train again (with a lower {opt('train.lr')} if training diverged)"
            )
        got = np.asarray(run(*(t.numpy() for t in inputs)))
        if got.shape != expected.shape:
            raise ExportError(
                f"parity check failed: batch of {n} gave shape {got.shape}, expected {expected.shape}"
            )
        diff = float(np.abs(got.astype(np.float64) - expected).max())  # NaN if any is NaN
        if diff != diff:
            return diff  # a later batch's max() would drop it
        worst = max(worst, diff)
    return worst


def _load_runner(path: Path, format: str):
    """A function numpy images → numpy probabilities that runs the exported file."""
    if format == "onnx":
        _, ort = _import_onnx()
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        return lambda *x: session.run([OUTPUT_NAME], dict(zip(names, x)))[0]
    with _quiet_jit():
        module = torch.jit.load(str(path), map_location="cpu").eval()

    def run(*x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(*(torch.from_numpy(v) for v in x)).numpy()

    return run
