"""Ensembles: K classifiers as one module that averages their calibrated class probabilities.

`EnsembleClassifier(members, temperatures)` returns `log(mean_k softmax(z_k / T_k))`: log-probabilities,
which every consumer of logits can take as they are (`softmax` of them gives the averaged probabilities
back, so evaluate, predict, export and TTA need no special case). Members that share one frozen
backbone (the usual outcome of cross-validating a frozen-backbone recipe) run it once per batch, and a
checkpoint stores its weights once.

Members with metadata (`skincls.models.fused`) each keep their own encoder (fitted on their own
training images: no member sees another's). The ensemble's second input is every fused member's
encoding of the same raw row, side by side; `config["metadata"]["encoder"]` is those encoders'
columns concatenated, itself an encoder, so whatever encodes a single fused model's rows (evaluate,
predict, export, serve) encodes the ensemble's, and each member reads its own slice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import ModelError, opt
from .classifier import SkinClassifier
from .fused import fuse

__all__ = ["EnsembleClassifier", "ensemble_config"]


def ensemble_config(members: Sequence[nn.Module]) -> dict[str, Any]:
    """The `config` an ensemble checkpoint stores: each member's config, plus the fields they share.

    Shared fields (head, dropout, freeze, backbone...) are repeated at the top level so that readers
    of a single model's config (the model card) describe the ensemble's members without a special case.
    """
    configs = [dict(getattr(m, "config", None) or {}) for m in members]
    shared = {
        k: v
        for k, v in configs[0].items()
        if k != "arch" and all(c.get(k) == v for c in configs[1:])
    }
    arches = {c.get("arch") for c in configs}
    out = {
        **shared,
        "arch": "ensemble",
        "member_arch": arches.pop() if len(arches) == 1 else None,
        "members": configs,
        "num_members": len(configs),
    }
    out.pop("metadata", None)
    metadata = _ensemble_metadata(configs)
    if metadata is not None:
        out["metadata"] = metadata
    return out


def _ensemble_metadata(configs: Sequence[dict[str, Any]]) -> dict[str, Any] | None:
    """The fused members' encoders side by side, as one encoder (plain data); None without any."""
    settings = [c.get("metadata") or {} for c in configs]
    if not any(settings):
        return None
    if any(s.get("patient_context") for s in settings):
        raise ModelError(
            "ensembles of models with patient context are not supported (each member's context "
            f"comes from its own backbone's embeddings); ensemble models without "
            f"{opt('model.patient_context')}"
        )
    try:
        columns = [c for s in settings if s for c in s["encoder"]["columns"]]
        width = sum(int(s["encoder"]["width"]) for s in settings if s)
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"a member's metadata encoding is missing ({exc})") from None
    names = list(dict.fromkeys(str(c.get("name")) for c in columns))
    return {
        "width": width,
        "columns": names,
        "image": any(bool(s.get("image", True)) for s in settings if s),
        "encoder": {"columns": columns, "width": width},
    }


def _metadata_slices(members: Sequence[nn.Module]) -> list[tuple[int, int] | None]:
    """Each member's (start, end) in the ensemble's metadata input; None for an image-only one."""
    out: list[tuple[int, int] | None] = []
    start = 0
    for m in members:
        settings = (getattr(m, "config", None) or {}).get("metadata") or {}
        if not settings:
            out.append(None)
            continue
        width = int(settings["width"])
        out.append((start, start + width))
        start += width
    return out


class EnsembleClassifier(nn.Module):
    """The mean of K classifiers' temperature-scaled softmax probabilities, as log-probabilities.

    Args:
        members: Classifiers returning logits over the same classes (e.g. the K models of a
            cross-validation, each trained without one fold).
        temperatures: One calibration temperature per member (> 0); each member's probabilities are
            `softmax(logits / T_k)` before averaging.
        share_backbones: Let members whose backbone and pool hold identical weights share one copy
            (computed once per batch); see `share_identical_backbones`.

    Attributes:
        preprocessing: The members' (identical) preprocessing.
        config: `ensemble_config(members)`, what a checkpoint needs to rebuild the members.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        temperatures: Sequence[float] | torch.Tensor | None = None,
        *,
        share_backbones: bool = True,
    ):
        super().__init__()
        if not members:
            raise ModelError("an ensemble needs at least one member")
        temps = torch.as_tensor(
            [1.0] * len(members) if temperatures is None else temperatures, dtype=torch.float32
        ).reshape(-1)
        if len(temps) != len(members):
            raise ModelError(f"{len(members)} members but {len(temps)} temperatures")
        if not bool(torch.isfinite(temps).all()) or bool((temps <= 0).any()):
            raise ModelError(f"member temperatures must be finite and > 0, not {temps.tolist()}")
        pres = {getattr(m, "preprocessing", None) for m in members}
        if len(pres) != 1:
            raise ModelError("ensemble members must share one preprocessing (size, mean, std)")
        self.members = nn.ModuleList(members)
        self.register_buffer("temperatures", temps)
        self.preprocessing = pres.pop()
        self.config = ensemble_config(members)
        self._meta_slices = _metadata_slices(members)  # plain ints: a fixed graph for export
        self._feature_source: list[int | None] = []
        if share_backbones:
            self.share_identical_backbones()
        else:
            self._update_sources()

    def share_identical_backbones(self) -> int:
        """Make members whose backbone + pool equal an earlier member's use that member's modules.

        Returns:
            How many distinct backbones remain.
        """
        kept: list[SkinClassifier] = []
        for i, m in enumerate(self.members):
            if not isinstance(m, SkinClassifier):
                continue
            twin = next((k for k in kept if _same_body(k, m)), None)
            if twin is None:
                kept.append(m)
            elif twin.backbone is not m.backbone:
                self.members[i] = SkinClassifier(
                    twin.backbone,
                    m.head,
                    twin.pool,
                    stages=twin.stages,
                    preprocessing=m.preprocessing,
                    config=m.config,
                    meta=m.meta,
                    image_dim=m.image_dim,
                ).train(m.training)
        self._update_sources()
        return len({id(getattr(m, "backbone", m)) for m in self.members})

    def _update_sources(self) -> None:
        # For member i: the first member whose backbone (and pool) object it uses, or None when it
        # is not a backbone + head model and runs whole. Plain ints: tracing/export see a fixed graph.
        sources: list[int | None] = []
        for i, m in enumerate(self.members):
            src = None
            if isinstance(m, SkinClassifier):
                src = next(
                    j
                    for j in range(i + 1)
                    if isinstance(self.members[j], SkinClassifier)
                    and self.members[j].backbone is m.backbone
                    and self.members[j].pool is m.pool
                )
            sources.append(src)
        self._feature_source = sources

    @property
    def takes_metadata(self) -> bool:
        """Whether `forward` takes a second input: the fused members' encoded metadata, side by side."""
        return any(s is not None for s in self._meta_slices)

    def member_log_probs(
        self, x: torch.Tensor, metadata: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, 3, H, W) images [+ (N, width) metadata] → (K, N, C) each member's calibrated
        log-probabilities."""
        if metadata is None and self.takes_metadata:
            raise ModelError(
                "this ensemble's members also take the images' metadata: call it as "
                "model(images, metadata)"
            )
        features: dict[int, torch.Tensor] = {}
        out = []
        for i, m in enumerate(self.members):
            src, part = self._feature_source[i], self._meta_slices[i]
            meta = None if part is None else metadata[:, part[0] : part[1]]
            if src is None:
                z = m(x) if meta is None else m(x, meta)
            else:
                if src not in features:
                    features[src] = self.members[src].features(x)
                z = _head(m, features[src], meta)
            out.append(torch.log_softmax(z.float() / self.temperatures[i], dim=-1))
        return torch.stack(out)

    def forward(self, x: torch.Tensor, metadata: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, H, W) images [+ (N, width) metadata] → (N, C) `log(mean_k softmax(z_k / T_k))`;
        softmax of it = the mean."""
        log_probs = self.member_log_probs(x, metadata)
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))


def _head(m: SkinClassifier, features: torch.Tensor, meta: torch.Tensor | None) -> torch.Tensor:
    """A member's head on its (shared) image features, with its metadata slice if it is fused."""
    if meta is None:
        return m.head(features)
    return fuse(m.meta, m.head, features, meta, m.uses_image)


def _same_body(a: SkinClassifier, b: SkinClassifier) -> bool:
    """Whether two models' backbone and pool are the same architecture with equal weights."""
    if a.backbone is b.backbone and a.pool is b.pool:
        return True
    if repr(a.backbone) != repr(b.backbone) or repr(a.pool) != repr(b.pool):
        return False
    for part_a, part_b in ((a.backbone, b.backbone), (a.pool, b.pool)):
        sa, sb = part_a.state_dict(), part_b.state_dict()
        if sa.keys() != sb.keys():
            return False
        if not all(
            sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k])
            for k in sa
        ):
            return False
    return True
