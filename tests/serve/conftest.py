"""Serve fixtures: a model service on the shared tiny checkpoint, and a three-class checkpoint."""

from __future__ import annotations

import pytest
import torch

from skincls.models.checkpoint import save_checkpoint
from skincls.models.classifier import create_model


@pytest.fixture(scope="module")
def service(untrained_ckpt_file):
    """The untrained 32 px smallcnn, on the CPU, with the default limits."""
    from skincls.serve.service import ModelService

    return ModelService.from_checkpoint(untrained_ckpt_file, device="cpu")


@pytest.fixture(scope="session")
def three_class_ckpt(tmp_path_factory):
    """An untrained 32 px smallcnn over three classes (no threshold: argmax)."""
    torch.manual_seed(0)
    model = create_model(
        "smallcnn", weights="none", num_classes=3, head=(16,), dropout=0.0, freeze="none"
    )
    path = tmp_path_factory.mktemp("three") / "model.pt"
    save_checkpoint(
        path,
        model,
        classes=["bcc", "mel", "nv"],
        preprocessing=model.preprocessing.with_size(32),
        labels={"task": "multiclass"},
    )
    return path
