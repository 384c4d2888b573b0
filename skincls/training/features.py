"""Feature cache: run a frozen feature extractor once per image and keep its features in memory or on disk.

With a frozen extractor (a model's `split_for_cache()`: a frozen backbone) and a deterministic
transform, every epoch would recompute the same features; the cache computes them once (batched,
inference mode, channels_last) so that only the rest of the model (the head) trains.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset, TensorDataset

from ..atomic import atomic_path, atomic_write
from ..errors import opt, spell_options
from .contract import Inputs, forward_inputs, inputs_to_device, split_batch
from .distributed import Dist, shard_bounds

__all__ = [
    "FeatureSet",
    "backbone_fingerprint",
    "cache_refusal",
    "dataset_fingerprint",
    "extract_features",
    "load_or_extract",
    "precision_name",
]

_FORMAT = "skincls-features-v1"


@dataclass
class FeatureSet:
    """A split's head inputs: `features` (N, D) float32 (in memory or memory-mapped) and `targets` (N,)."""

    features: np.ndarray
    targets: np.ndarray
    source: str  # "computed", "disk" (reused) or "computed+disk" (computed and stored)
    seconds: float = 0.0
    precision: str = "fp32"  # what the backbone ran in: fp32, bf16 or fp16

    def __len__(self) -> int:
        return len(self.targets)

    def batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = idx.numpy()
        return torch.from_numpy(np.ascontiguousarray(self.features[i])), torch.from_numpy(
            self.targets[i]
        )


def cache_refusal(extractor: nn.Module | None, dataset: Dataset, mode: str) -> str | None:
    """Why `dataset`'s features can't be cached through `extractor` (a model's `split_for_cache()`
    feature extractor, None when it has none) under `mode` ("auto", "memory", "disk", "off"), or
    None when they can."""
    if mode == "off":
        return spell_options(opt("train.cache_features='off'"))
    if extractor is None:
        return "the model has no frozen feature extractor to cache (no split_for_cache())"
    if any(p.requires_grad for p in extractor.parameters()):
        return "the feature extractor has trainable parameters"
    det = getattr(dataset, "deterministic", True if isinstance(dataset, TensorDataset) else None)
    if det is False:
        return "augmentation needs the backbone in the loop"
    if det is None and mode == "auto":
        return "the dataset does not say its transform is deterministic"
    return None


def dataset_fingerprint(dataset: Dataset) -> str | None:
    """A stable identity of a dataset's content and transform, or None when it has none."""
    fp = getattr(dataset, "fingerprint", None)
    return fp() if callable(fp) else None


def backbone_fingerprint(extractor: nn.Module) -> str:
    """Hash of a feature extractor's architecture and every weight and buffer, part by part (its
    children: a `SkinClassifier`'s backbone and pool)."""
    h = hashlib.sha256()
    for part in list(extractor.children()) or [extractor]:
        h.update(repr(part).encode())
        for name, t in part.state_dict().items():
            h.update(name.encode())
            h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
            h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@torch.inference_mode()
def extract_features(
    extractor: nn.Module,
    dataset: Dataset,
    *,
    device: torch.device,
    batch_size: int = 32,
    num_workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    allocate: Callable[[tuple[int, int]], np.ndarray] | None = None,
    split_batch: Callable[[Any], tuple[Inputs, torch.Tensor]] = split_batch,
) -> tuple[np.ndarray, np.ndarray]:
    """`extractor` over the whole dataset in order: (N, D) float32 features and (N,) targets.

    The extractor (a model's `split_for_cache()[0]`) runs in eval mode (BatchNorm statistics, no
    dropout/stochastic depth); the caller's train/eval modes are restored afterwards.
    `allocate(shape)` makes the output array (default: in memory; a memory map lets features larger
    than RAM stream to disk). `split_batch` maps a batch to the extractor's inputs and the targets
    (see `contract`).
    """
    modes = [(m, m.training) for m in extractor.modules()]
    extractor.eval()
    # Our own generator: a loader without one would draw from the global torch RNG and shift the
    # dropout masks of the training that follows (cached and uncached runs must match).
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )
    feats: np.ndarray | None = None
    targets = np.empty(len(dataset), dtype=np.int64)
    done = 0
    try:
        for batch in loader:
            inputs, y = split_batch(batch)
            with torch.autocast(
                device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None
            ):
                f = forward_inputs(extractor, inputs_to_device(inputs, device))
            f = f.float().cpu().numpy()
            if feats is None:
                shape = (len(dataset), f.shape[1])
                feats = allocate(shape) if allocate else np.empty(shape, dtype=np.float32)
            feats[done : done + len(f)] = f
            targets[done : done + len(f)] = torch.as_tensor(y).numpy()
            done += len(f)
            if on_progress:
                on_progress(done, len(dataset))
    finally:
        for m, training in modes:
            m.training = training
    if feats is None:
        feats = np.empty((0, 0), dtype=np.float32)
    return feats, targets


def precision_name(dtype: torch.dtype | None) -> str:
    """'fp32' for None (no autocast), else 'bf16' or 'fp16'."""
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def _cache_key(backbone_fp: str, data_fp: str, dtype: torch.dtype | None) -> str:
    blob = json.dumps(
        {"format": _FORMAT, "data": data_fp, "backbone": backbone_fp, "amp": str(dtype)}
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _fits_in_memory(n_bytes: int) -> bool:
    """'Comfortably': at most a quarter of the memory available now."""
    try:
        with open("/proc/meminfo") as fh:
            info = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in fh}
        available = info.get("MemAvailable", info["MemFree"])
    except (OSError, KeyError, ValueError, IndexError):
        available = 8 << 30
    return n_bytes <= available // 4


def load_or_extract(
    extractor: nn.Module,
    dataset: Dataset,
    *,
    mode: str,
    cache_dir: Path | None,
    device: torch.device,
    batch_size: int,
    num_workers: int = 0,
    autocast_dtype: torch.dtype | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    log: Callable[[str], None] = lambda _: None,
    backbone_fp: str | None = None,
    dist: Dist | None = None,
    split_batch: Callable[[Any], tuple[Inputs, torch.Tensor]] = split_batch,
) -> FeatureSet:
    """`extractor`'s features of `dataset` under `mode` ('memory', 'disk' or 'auto'), reusing a disk
    entry if any. `extractor` is a model's frozen feature extractor (`split_for_cache()[0]`).

    Disk entries live in `cache_dir/<key>.npy` (+ `<key>.targets.npy` and `<key>.json`, which says
    the precision that made them), keyed by the dataset's fingerprint (records and transform), the
    extractor's architecture and weights, and the autocast dtype; they are written atomically and
    memory-mapped when read. `auto` reuses an entry when one
    exists, else keeps features in memory when they fit comfortably, else writes them to disk.
    `backbone_fp` is `backbone_fingerprint(extractor)` when the caller has it already (computed if
    needed). `split_batch` maps a batch to the extractor's inputs and the targets (see `contract`).
    With `dist` (a distributed run) each rank extracts its share of the images, the shares are
    gathered into one array on every rank, and rank 0 writes the disk entry that later runs reuse.
    """
    data_fp = dataset_fingerprint(dataset)
    precision = precision_name(autocast_dtype)
    if isinstance(dataset, TensorDataset) or data_fp is None:
        if mode == "disk":
            log("feature cache: this dataset has no fingerprint, so it is cached in memory only")
        mode = "memory"
    key = None
    if mode != "memory":
        key = _cache_key(backbone_fp or backbone_fingerprint(extractor), data_fp, autocast_dtype)
    feat_path = targ_path = None
    if key is not None and cache_dir is not None:
        feat_path = Path(cache_dir) / f"{key}.npy"
        targ_path = Path(cache_dir) / f"{key}.targets.npy"
        if feat_path.is_file() and targ_path.is_file():
            feats = np.load(feat_path, mmap_mode="r")
            targets = np.load(targ_path)
            if len(feats) == len(dataset) == len(targets):
                log(f"feature cache: reusing {feat_path} ({precision})")
                return FeatureSet(feats, targets, "disk", precision=precision)
    if dist is not None and dist.enabled and len(dataset) >= dist.world_size:
        return _extract_sharded(
            extractor, dataset, dist, mode, feat_path, device=device, batch_size=batch_size,
            num_workers=num_workers, autocast_dtype=autocast_dtype, log=log,
            split_batch=split_batch,
        )  # fmt: skip
    start = time.perf_counter()
    # The features file is written in place as a memory map and only renamed to its real name
    # (atomic_path) when the ExitStack closes, after its targets: a complete entry or none.
    with contextlib.ExitStack() as stack:
        on_disk = False

        def allocate(shape: tuple[int, int]) -> np.ndarray:
            nonlocal on_disk
            if feat_path is None or (mode != "disk" and _fits_in_memory(shape[0] * shape[1] * 4)):
                return np.empty(shape, dtype=np.float32)
            tmp = stack.enter_context(atomic_path(feat_path))
            on_disk = True
            return np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=shape)

        feats, targets = extract_features(
            extractor,
            dataset,
            device=device,
            batch_size=batch_size,
            num_workers=num_workers,
            autocast_dtype=autocast_dtype,
            on_progress=on_progress,
            allocate=allocate,
            split_batch=split_batch,
        )
        seconds = time.perf_counter() - start
        if not on_disk:
            return FeatureSet(feats, targets, "computed", seconds, precision)
        feats.flush()
        feats_shape = feats.shape
        del feats
        # Targets first: the features file appearing under its name marks a complete entry.
        with atomic_write(targ_path) as fh:
            np.save(fh, targets)
        meta = {"format": _FORMAT, "precision": precision, "shape": list(feats_shape)}
        with atomic_write(feat_path.with_suffix(".json"), "w") as fh:
            json.dump(meta, fh)
    log(f"feature cache: wrote {feat_path} ({precision})")
    feats = np.load(feat_path, mmap_mode="r")
    return FeatureSet(feats, targets, "computed+disk", seconds, precision)


def _extract_sharded(
    extractor: nn.Module,
    dataset: Dataset,
    dist: Dist,
    mode: str,
    feat_path: Path | None,
    *,
    device: torch.device,
    log: Callable[[str], None],
    **options,
) -> FeatureSet:
    """Each rank's share of `dataset` through the backbone, gathered in order on every rank."""
    start = time.perf_counter()
    share = Subset(dataset, range(*shard_bounds(len(dataset), dist.rank, dist.world_size)))
    local, local_targets = extract_features(extractor, share, device=device, **options)
    feats = dist.gather_rows(local, len(dataset), device)
    targets = dist.gather_rows(local_targets, len(dataset), device)
    seconds = time.perf_counter() - start
    precision = precision_name(options.get("autocast_dtype"))
    to_disk = feat_path is not None and (mode == "disk" or not _fits_in_memory(feats.nbytes))
    if to_disk and dist.is_main:
        targ_path = feat_path.with_suffix(".targets.npy")
        with atomic_write(targ_path) as fh:
            np.save(fh, targets)
        meta = {"format": _FORMAT, "precision": precision, "shape": list(feats.shape)}
        with atomic_write(feat_path.with_suffix(".json"), "w") as fh:
            json.dump(meta, fh)
        with atomic_write(feat_path) as fh:  # last: its name marks a complete entry
            np.save(fh, feats)
        log(f"feature cache: wrote {feat_path} ({precision})")
    dist.barrier()  # the entry exists for every rank (and later runs) before anyone goes on
    return FeatureSet(
        feats, targets, "computed+disk" if to_disk else "computed", seconds, precision
    )
