"""Serve fixtures: a model service on the shared tiny checkpoint."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def service(untrained_ckpt_file):
    """The untrained 32 px smallcnn, on the CPU, with the default limits."""
    from skincls.serve.service import ModelService

    return ModelService.from_checkpoint(untrained_ckpt_file, device="cpu")
