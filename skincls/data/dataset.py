"""Data: turn manifest records into tensors, with the model's own preprocessing."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision.transforms import v2 as T

from ..preprocessing import Preprocessing
from .images import DECODER, load_image
from .splits import Manifest, Record
from .tabular import MetadataEncoder

__all__ = [
    "AUGMENT_POLICIES",
    "ManifestDataset",
    "build_transform",
    "is_deterministic",
    "load_image",
]


AUGMENT_POLICIES = ("basic", "strong")
"""What `build_transform(augment=..., policy=...)` takes (`DataConfig.augment_policy`)."""


def build_transform(
    pre: Preprocessing, *, train: bool = False, augment: bool = False, policy: str = "basic"
) -> T.Compose:
    """PIL image → normalised float tensor (3, crop, crop).

    Evaluation: resize, centre crop, normalise. Training with `augment`: a lesion has no canonical
    orientation, so flips and 90° turns, plus (`policy` "basic") a small affine and colour jitter,
    or ("strong", see `_strong`) the heavier policy of the ISIC challenge winners.
    """
    if policy not in AUGMENT_POLICIES:
        raise ValueError(f"augmentation policy {policy!r}: give one of {AUGMENT_POLICIES}")
    interp = T.InterpolationMode(pre.interpolation)
    steps: list = [T.ToImage(), T.Resize(pre.resize_size, interpolation=interp, antialias=True)]
    if train and augment and policy == "strong":
        return T.Compose(steps + _strong(pre, interp))
    if train and augment:
        steps += [
            T.RandomResizedCrop(
                pre.crop_size, scale=(0.7, 1.0), interpolation=interp, antialias=True
            ),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(),
            T.RandomChoice([T.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
            T.RandomAffine(degrees=10, translate=(0.05, 0.05)),
            T.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.1, hue=0.02),
        ]
    else:
        steps.append(T.CenterCrop(pre.crop_size))
    steps += [T.ToDtype(torch.float32, scale=True), T.Normalize(pre.mean, pre.std)]
    return T.Compose(steps)


def _strong(pre: Preprocessing, interp: T.InterpolationMode) -> list:
    """The winners' policy (SIIM-ISIC 2020, ISIC 2019) in torchvision v2, after the resize.

    Any of the 8 dihedral views (flips and 90° turns: transposes included), shift-scale-rotate,
    brightness/contrast/saturation/hue, a blur or Gaussian noise, and one coarse dropout hole.
    CLAHE is left out: torchvision has none, and OpenCV's would add a dependency and a
    per-image CPU cost for what contrast jitter mostly covers.
    """
    bilinear = T.InterpolationMode.BILINEAR
    return [
        T.RandomResizedCrop(
            pre.crop_size, scale=(0.6, 1.0), ratio=(0.8, 1.25), interpolation=interp, antialias=True
        ),
        T.RandomHorizontalFlip(),
        T.RandomVerticalFlip(),
        T.RandomChoice([T.RandomRotation((a, a)) for a in (0, 90, 180, 270)]),
        T.RandomApply(
            [
                T.RandomAffine(  # bilinear: tensors' affine knows no bicubic
                    degrees=45, translate=(0.1, 0.1), scale=(0.85, 1.15), interpolation=bilinear
                )
            ],
            p=0.7,
        ),
        T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.05),
        T.ToDtype(torch.float32, scale=True),
        T.RandomApply(
            [T.RandomChoice([T.GaussianBlur(5, sigma=(0.1, 1.5)), T.GaussianNoise(sigma=0.03)])],
            p=0.3,
        ),
        T.Normalize(pre.mean, pre.std),
        T.RandomErasing(p=0.5, scale=(0.02, 0.12), ratio=(0.5, 2.0), value=0),
    ]


class ManifestDataset(Dataset):
    """Images of one split of a manifest, as `(tensor, class_index)` pairs.

    With a `metadata` encoder, `(tensor, metadata, class_index)`: `metadata` is the record's
    attributes encoded (`metadata_matrix[i]`, float32) for a fused model.
    """

    def __init__(
        self,
        manifest: Manifest,
        split: str,
        transform=None,
        metadata: MetadataEncoder | None = None,
        extra: Sequence[Mapping[str, str]] | None = None,
    ):
        self.manifest = manifest
        self.split = split
        self.records: Sequence[Record] = manifest.select(split)
        self.classes = manifest.classes
        self.transform = transform
        self.targets = [manifest.label_index(r.label) for r in self.records]
        self.metadata = metadata
        self.metadata_matrix: np.ndarray | None = None
        if metadata is not None:  # `extra`: further columns per record (patient context)
            more = extra if extra is not None else [{}] * len(self.records)
            rows = ({**dict(r.attributes), **e} for r, e in zip(self.records, more))
            self.metadata_matrix = metadata.encode(rows)

    @property
    def deterministic(self) -> bool:
        """True when an image always gives the same tensor (no augmentation): features can be cached."""
        return is_deterministic(self.transform)

    def fingerprint(self) -> str:
        """Identity of what this dataset yields: image paths, labels, content hashes and transform."""
        h = hashlib.sha256(repr(self.transform).encode())
        h.update(DECODER.encode())  # how files become pixels (EXIF orientation, RGB conversion)
        h.update(str(self.manifest.root.resolve()).encode())
        for r, t in zip(self.records, self.targets):
            h.update(f"{r.path}\0{t}\0{r.sha256}\n".encode())
        if self.metadata_matrix is not None:
            h.update(json.dumps(self.metadata.to_dict(), sort_keys=True).encode())
            h.update(np.ascontiguousarray(self.metadata_matrix).tobytes())
        return h.hexdigest()

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int):
        image = load_image(self.manifest.root / self.records[i].path)
        if self.transform is not None:
            image = self.transform(image)
        if self.metadata_matrix is not None:
            return image, torch.from_numpy(self.metadata_matrix[i]), self.targets[i]
        return image, self.targets[i]


# Transforms that map an image to the same tensor every time; anything else counts as random.
_DETERMINISTIC = (
    T.ToImage,
    T.Resize,
    T.CenterCrop,
    T.ToDtype,
    T.Normalize,
    T.ToPureTensor,
    T.Grayscale,
    T.Pad,
)


def is_deterministic(transform) -> bool:
    """Whether `transform` (None, a v2 transform or a `Compose` of them) has no random step."""
    if transform is None:
        return True
    if isinstance(transform, T.Compose):
        return all(is_deterministic(t) for t in transform.transforms)
    return isinstance(transform, _DETERMINISTIC)
