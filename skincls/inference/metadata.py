"""A fused model's metadata inputs: its encoder from the checkpoint, and a metadata CSV for `predict`.

A model trained with metadata (`skincls.models.fused`) keeps its encoder in the checkpoint
(`model.metadata.encoder`, plain data). At prediction time each image's row comes from a CSV
(image, age, sex, site, patient_id); any column the CSV lacks, and any image it has no row for,
counts as missing (the encoder's `unknown`), and the caller is told which.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import torch
from torch import nn

from ..data.dataset import ManifestDataset
from ..data.metadata import ATTRIBUTE_COLUMNS, read_csv_rows
from ..data.patient_context import patient_contexts
from ..data.splits import Manifest
from ..data.tabular import MetadataEncoder
from ..errors import ConfigError, DataError
from ..models.checkpoint import Checkpoint

__all__ = [
    "FixedMetadata",
    "MetadataTable",
    "context_rows",
    "metadata_encoder",
    "metadata_rows",
    "model_inputs",
    "read_metadata_csv",
    "uses_patient_context",
    "with_inputs",
]

IMAGE_COLUMNS = ("image", "image_id", "image_name", "file", "path")


def metadata_encoder(ckpt: Checkpoint) -> MetadataEncoder | None:
    """The encoder a fused checkpoint was trained with; None for an image-only model. An ensemble's
    is its fused members' encoders side by side (`models.ensemble`)."""
    settings = ckpt.model_config.get("metadata") or {}
    if not settings:
        return None
    try:
        return MetadataEncoder.from_dict(settings["encoder"])
    except (KeyError, TypeError) as exc:
        raise DataError(f"{ckpt.path}: its metadata encoding is missing ({exc})") from None


def model_inputs(ckpt: Checkpoint) -> dict:
    """What the model needs, for the model card and listings: images, and the metadata
    columns with how each is encoded."""
    enc = metadata_encoder(ckpt)
    settings = ckpt.model_config.get("metadata") or {}
    out: dict = {"image": bool(settings.get("image", True)), "metadata": []}
    for c in enc.columns if enc else ():
        kind = c.kind if c.kind == "numeric" else f"categorical ({', '.join(c.levels) or 'none'})"
        out["metadata"].append({"column": c.name, "encoding": kind})
    return out


@dataclass
class MetadataTable:
    """A metadata CSV's rows by image key (the file's name and its stem), and the encoder's columns
    the CSV lacks."""

    rows: dict[str, dict[str, str]]
    absent_columns: list[str] = field(default_factory=list)

    def row(self, image: str | Path) -> dict[str, str] | None:
        """The row of an image (matched by its file name, then its stem), or None."""
        name = PurePath(str(image)).name
        return self.rows.get(name) or self.rows.get(PurePath(name).stem)


def read_metadata_csv(path: str | Path, encoder: MetadataEncoder) -> MetadataTable:
    """The rows of a metadata CSV, keyed by its image column (file name or id), with its columns
    under the manifest's names (`localization` or `anatom_site_general` count as `site`,
    `age_approx` as `age`).

    Raises:
        DataError: unreadable, no image column, or an image listed twice.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read the metadata file {path}: {exc.strerror or exc}") from None
    header, raw = read_csv_rows(data, str(path), ())
    key = next((c for c in IMAGE_COLUMNS if c in header), None)
    if key is None:
        raise DataError(
            f"{path} has no image column ({' or '.join(IMAGE_COLUMNS)}); its columns are {header}"
        )
    names = _column_names(header)
    rows: dict[str, dict[str, str]] = {}
    for r in raw:
        image = PurePath(r[key]).name
        if not image:
            continue
        if image in rows:
            raise DataError(f"{path} lists the image {image} twice")
        rows[image] = {ours: r[theirs] for ours, theirs in names.items()}
    absent = [c for c in encoder.names if c not in names]
    return MetadataTable(rows, absent)


def _column_names(header: Iterable[str]) -> Mapping[str, str]:
    """Our column name → the CSV's, for the columns it has (its own name first, then aliases)."""
    have = list(header)
    out = {c: c for c in have}
    for ours, aliases in ATTRIBUTE_COLUMNS.items():
        found = next((a for a in (ours, *aliases) if a in have), None)
        if found is not None:
            out[ours] = found
    return out


MetadataInput = MetadataTable | Sequence[Mapping[str, str] | None] | None


def metadata_rows(
    encoder: MetadataEncoder | None, names: Sequence[str], metadata: MetadataInput
) -> list[dict[str, str] | None]:
    """Each image's metadata row (None for an image-only model; {} where nothing is known).

    `metadata` is a `MetadataTable` (rows matched by file name), one row per image in order, or None.

    Raises:
        ConfigError: a list of rows whose length is not the number of images.
    """
    if encoder is None:
        return [None] * len(names)
    if metadata is None:
        return [{} for _ in names]
    if isinstance(metadata, MetadataTable):
        return [dict(metadata.row(n) or {}) for n in names]
    rows = list(metadata)
    if len(rows) != len(names):
        raise ConfigError(f"{len(rows)} metadata rows for {len(names)} images; give one per image")
    return [dict(r or {}) for r in rows]


def with_inputs(
    model: nn.Module | Callable[..., torch.Tensor], extra: Sequence[torch.Tensor]
) -> Callable[[torch.Tensor], torch.Tensor]:
    """`model` as a function of the images alone, its further inputs (metadata) fixed to `extra`:
    what test-time augmentation turns while the metadata stays."""

    def run(x: torch.Tensor) -> torch.Tensor:
        return model(x, *extra)

    return run


class FixedMetadata(nn.Module):
    """A fused model as a module of the images alone, with one image's encoded metadata (`meta`, set
    before each call) for every row: what Grad-CAM needs. Shares the model's backbone."""

    def __init__(self, model: nn.Module, width: int):
        super().__init__()
        self.model = model
        # An ensemble has no one backbone: Grad-CAM then looks through all of it, as for images only.
        self.backbone = getattr(model, "backbone", model)
        self.meta = torch.zeros(1, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x, self.meta.to(x.device).expand(len(x), -1))


def uses_patient_context(ckpt: Checkpoint) -> bool:
    """Whether a checkpoint's model takes patient context among its metadata."""
    return bool((ckpt.model_config.get("metadata") or {}).get("patient_context"))


@torch.inference_mode()
def context_rows(
    model: nn.Module,
    manifest: Manifest,
    split: str,
    transform,
    device: torch.device,
    batch_size: int = 64,
) -> list[dict[str, str]]:
    """Patient context of one split's images (`data.patient_context`), from that split's images
    only, through `model.features` (a frozen backbone: the same embeddings in training and later).
    """
    ds = ManifestDataset(manifest, split, transform)
    was = model.training
    model.eval()
    feats = []
    try:
        for i in range(0, len(ds), batch_size):
            x = torch.stack([ds[j][0] for j in range(i, min(i + batch_size, len(ds)))])
            feats.append(model.features(x.to(device)).float().cpu())
    finally:
        model.train(was)
    emb = torch.cat(feats).numpy() if feats else torch.zeros(0, 1).numpy()
    return patient_contexts(emb, [r.patient_id for r in ds.records])
