"""Backbone plugins: installed packages add archs through the `skincls.models` entry-point group."""

from __future__ import annotations

import importlib
import logging
import textwrap

import pytest
import torch

from skincls.models import backbones
from skincls.models.classifier import create_model, describe_models, list_models

PLUGIN = '''
    """A plugin module: importing it registers a backbone, as a third-party package would."""
    from torch import nn

    from skincls.models.backbones import Body, register_model
    from skincls.preprocessing import Preprocessing


    def _body(weights):
        net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        return Body(net, 8, None, ((net,),), Preprocessing(resize_size=32, crop_size=32))


    @register_model("tiny_plugin_net", description="a plugin's backbone")
    def tiny(weights):
        return _body(weights)


    def builder(weights):
        """A builder named by the entry point itself."""
        return _body(weights)
'''


def _install(root, name: str, entry_points: str, modules: dict[str, str]) -> None:
    """A minimal installed distribution on sys.path: `NAME.dist-info` (METADATA, entry_points.txt)."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture()
def plugins(tmp_path, monkeypatch):
    """A good and a broken plugin installed; the registry restored afterwards."""
    _install(
        tmp_path,
        "skincls_tiny_plugin",
        """
        [skincls.models]
        tiny = skincls_tiny_plugin
        named_builder = skincls_tiny_plugin:builder
        broken = skincls_broken_plugin
        """,
        {
            "skincls_tiny_plugin": PLUGIN,
            "skincls_broken_plugin": "raise ImportError('needs the package foundation_weights')\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(backbones, "_REGISTRY", dict(backbones._REGISTRY))
    monkeypatch.setattr(backbones, "_plugins_loaded", False)
    for module in ("skincls_tiny_plugin", "skincls_broken_plugin"):
        monkeypatch.delitem(__import__("sys").modules, module, raising=False)


def test_plugins_add_backbones_and_a_broken_one_is_reported_not_raised(plugins, caplog):
    with caplog.at_level(logging.WARNING, logger="skincls"):
        names = list_models()
    assert {"tiny_plugin_net", "named_builder", "vgg16"} <= set(names)
    [line] = [r.getMessage() for r in caplog.records if "plugin" in r.getMessage()]
    assert "'broken'" in line and "needs the package foundation_weights" in line
    assert "\n" not in line


def test_a_plugin_backbone_builds_and_is_described(plugins):
    model = create_model("tiny_plugin_net", weights="none", head=(4,), freeze="none")
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 2)
    rows = {r.name: r for r in describe_models()}
    assert rows["tiny_plugin_net"].description == "a plugin's backbone"
    assert rows["named_builder"].description == "A builder named by the entry point itself."


def test_unknown_arch_looks_at_plugins_first(plugins):
    """An arch named before anything listed the models (e.g. `skincls train --arch`) is found."""
    assert create_model("named_builder", weights="none", head=(), freeze="none") is not None
