"""Runtime helpers shared by training and inference: device choice, precision, seeding, RNG state."""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch

from .errors import ConfigError, opt

__all__ = [
    "PRECISIONS",
    "PrecisionPlan",
    "cpu_has_native_bf16",
    "describe_device",
    "get_rng_state",
    "plan_precision",
    "resolve_device",
    "seed_everything",
    "seed_worker",
    "set_rng_state",
]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
PRECISIONS: tuple[str, ...] = ("auto", "fp32", "bf16", "fp16")
_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


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
                f"{opt('device', value=name)} was asked for, but this PyTorch sees no CUDA GPU "
                f"(torch {torch.__version__}); use {opt('device', value='cpu')} or auto"
            )
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(
                f"{opt('device', value=name)}: only {torch.cuda.device_count()} CUDA device(s) exist"
            )
        return dev
    if name == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(
                f"{opt('device', value='mps')} was asked for, but MPS is not available here"
            )
        return torch.device("mps")
    raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    cpu = getattr(torch, "cpu", None)
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


@dataclass(frozen=True)
class PrecisionPlan:
    """The precision of each phase of a run: 'fp32', 'bf16' or 'fp16'.

    `features` is the frozen-backbone feature pass, `train` the optimisation steps, `inference`
    evaluation and prediction. Recorded in histories, checkpoints and cached features.
    """

    requested: str
    features: str
    train: str
    inference: str

    def dtype(self, phase: Literal["features", "train", "inference"]) -> torch.dtype | None:
        """The autocast dtype of `phase`, or None for full float32."""
        return _DTYPES[getattr(self, phase)]

    def describe(self) -> str:
        """One line for people: `precision auto: features bf16, train fp32, inference bf16`."""
        parts = {"features": self.features, "train": self.train, "inference": self.inference}
        if len(set(parts.values())) == 1:
            return f"precision {self.requested}: {self.train}"
        return f"precision {self.requested}: " + ", ".join(f"{k} {v}" for k, v in parts.items())

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def plan_precision(precision: str, device: torch.device) -> PrecisionPlan:
    """Decide each phase's precision for `precision` (auto|fp32|bf16|fp16) on `device`.

    `auto`: on CUDA, bf16 where the GPU supports it, else fp16 (with loss scaling), in every phase.
    On a CPU with native bf16 (AVX-512 BF16/AMX), bf16 only where it was measured to help — the frozen
    feature pass, evaluation and prediction (about 3× faster for VGG16, features within 0.7%) — and
    fp32 for training steps (a bf16 training step was measured slower on such a CPU). Elsewhere fp32.

    Raises:
        ConfigError: an unknown name, fp16 off CUDA, or bf16 on a GPU without it.
    """
    name = (precision or "auto").lower()
    if name not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")
    if device.type == "cuda":
        bf16 = torch.cuda.is_bf16_supported()
        if name == "bf16" and not bf16:
            raise ConfigError(
                f"{opt('precision', value='bf16')}: this GPU has no bf16; use fp16, fp32 or auto"
            )
        chosen = ("bf16" if bf16 else "fp16") if name == "auto" else name
        return PrecisionPlan(name, chosen, chosen, chosen)
    if name == "fp16":
        raise ConfigError(
            f"{opt('precision', value='fp16')} needs a CUDA device, not {device.type}; "
            "use bf16, fp32 or auto"
        )
    if name == "auto":
        fast = "bf16" if device.type == "cpu" and cpu_has_native_bf16() else "fp32"
        return PrecisionPlan(name, fast, "fp32", fast)
    return PrecisionPlan(name, name, name, name)


def describe_device(device: torch.device, precision: PrecisionPlan | str = "fp32") -> str:
    """One line saying where a run computes: `device: cpu (2 threads), precision fp32`.

    Args:
        device: The resolved device (`resolve_device`).
        precision: The run's precision plan (`plan_precision`), or the one precision it uses.
    """
    if device.type == "cpu":
        where = f"cpu ({torch.get_num_threads()} threads)"
    elif device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        where = f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    else:
        where = str(device)
    text = (
        precision.describe() if isinstance(precision, PrecisionPlan) else f"precision {precision}"
    )
    return f"device: {where}, {text}"


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
