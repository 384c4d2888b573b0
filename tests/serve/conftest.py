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


@pytest.fixture(scope="session")
def fused_ckpt(tmp_path_factory):
    """An untrained 32 px smallcnn that also takes age, sex and site (metadata fusion)."""
    from skincls.data.tabular import MetadataEncoder

    rows = [{"age": "40", "sex": "male", "site": "back"}, {"age": "70", "sex": "female",
            "site": "face"}]  # fmt: skip
    enc = MetadataEncoder.fit(rows, ["age", "sex", "site"], min_count=1)
    torch.manual_seed(0)
    model = create_model(
        "smallcnn", weights="none", head=(16,), dropout=0.0, freeze="none",
        metadata={"width": enc.width, "encoder": enc.to_dict(), "columns": enc.names},
    )  # fmt: skip
    path = tmp_path_factory.mktemp("fused") / "model.pt"
    save_checkpoint(
        path,
        model,
        classes=["benign", "malignant"],
        preprocessing=model.preprocessing.with_size(32),
    )
    return path
