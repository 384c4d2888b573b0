"""Runtime helpers shared by training and inference: device choice, mixed precision, seeding, RNG state."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from .errors import ConfigError

__all__ = [
    "amp_dtype",
    "get_rng_state",
    "resolve_device",
    "seed_everything",
    "seed_worker",
    "set_rng_state",
]


def resolve_device(name: str = "auto") -> torch.device:
    """Turn `auto|cpu|cuda|cuda:N|mps` into a device, failing clearly when it is not there."""
    name = (name or "auto").lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name} was asked for, but this PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}); use --device cpu or auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"--device {name}: only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return dev
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError("--device mps was asked for, but MPS is not available here")
        return torch.device("mps")
    raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def amp_dtype(device: torch.device, enabled: bool | None = None) -> torch.dtype | None:
    """The autocast dtype for `device`, or None for full float32.

    Mixed precision is a CUDA feature here: bf16 where the GPU supports it (no loss scaling needed),
    else fp16 (the caller then needs a `GradScaler`). `enabled=None` means "on for CUDA".

    Raises:
        ConfigError: `enabled=True` on a device without CUDA mixed precision.
    """
    if device.type != "cuda":
        if enabled:
            raise ConfigError(
                f"--amp needs a CUDA device, not {device.type}; drop --amp (float32 is used)"
            )
        return None
    if enabled is False:
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: torch seeds each worker from the loader's generator; follow it.

    Python's and NumPy's generators would otherwise start identical in every worker (fork).
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def get_rng_state(**generators: torch.Generator) -> dict[str, Any]:
    """Every random state a training run depends on, as tensors and plain lists.

    The result loads with `torch.load(weights_only=True)`. Named `generators` are stored too.
    """
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": [version, list(internal), gauss],
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "generators": {k: g.get_state() for k, g in generators.items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], **generators: torch.Generator) -> None:
    """Restore what `get_rng_state` captured, including the named generators present in it."""
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    for k, g in generators.items():
        if k in state["generators"]:
            g.set_state(state["generators"][k])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
