"""Named recipes: shipped config files as the base of `train` and `cv`, every option still on top."""

from __future__ import annotations

import pytest
import yaml
from click.testing import CliRunner

from skincls import RunConfig, load_config
from skincls.cli import main
from skincls.cli.train import RECIPES as CLI_RECIPES
from skincls.config import RECIPES, recipe_file
from skincls.errors import ConfigError


def _printed(*args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--print-config"])
    assert result.exit_code == 0, result.output
    return yaml.safe_load(result.output)


def test_seed_recipe_is_todays_default_exactly():
    assert load_config(None, recipe="seed") == RunConfig()
    assert _printed("train", "--recipe", "seed") == _printed("train")


def test_every_recipe_is_shipped_and_valid():
    assert CLI_RECIPES == RECIPES
    for name in RECIPES:
        assert recipe_file(name).is_file()
        load_config(None, recipe=name)
    with pytest.raises(
        ConfigError, match="unknown recipe 'fast': give one of seed, finetune, winners"
    ):
        load_config(None, recipe="fast")


def test_finetune_recipe_is_the_measured_fine_tuning_with_the_weight_ema():
    config = load_config(None, recipe="finetune")
    assert config.data.augment and config.data.augment_policy == "basic"
    assert config.model.freeze == "backbone" and config.train.epochs == 2
    assert config.train.finetune_epochs == 4 and config.train.unfreeze == 3
    assert config.train.backbone_lr_mult == 0.1 and config.train.weight_decay == 1e-4
    assert config.train.ema_decay == 0.99 and config.train.schedule == "cosine"
    assert config.train.label_smoothing == 0 and config.train.layer_decay == 1


def test_winners_recipe_holds_the_winners_pieces():
    config = load_config(None, recipe="winners")
    assert config.data.augment and config.data.augment_policy == "strong"
    assert config.train.ema_decay > 0 and config.train.layer_decay < 1
    assert config.train.finetune_epochs > 0 and config.train.label_smoothing > 0
    assert config.train.optimizer == "adamw" and config.train.schedule == "cosine"


def test_options_override_the_config_file_which_overrides_the_recipe(tmp_path):
    file = tmp_path / "c.yaml"
    file.write_text("train:\n  lr: 5.0e-4\n  epochs: 3\nmodel:\n  dropout: 0.1\n")
    printed = _printed(
        "train", "--recipe", "winners", "--config", str(file), "--epochs", "2",
        "--ema-decay", "0", "--augment-policy", "basic", "--image-size", "288",
    )  # fmt: skip
    assert printed["train"]["epochs"] == 2  # option over file
    assert printed["train"]["lr"] == 5e-4 and printed["model"]["dropout"] == 0.1  # file over recipe
    assert printed["train"]["ema_decay"] == 0 and printed["data"]["augment_policy"] == "basic"
    assert printed["train"]["layer_decay"] == 0.8  # the recipe's, untouched
    assert printed["data"]["image_size"] == 288


def test_printed_config_reads_back_as_the_same_config(tmp_path):
    printed = CliRunner().invoke(main, ["train", "--recipe", "finetune", "--print-config"])
    file = tmp_path / "c.yaml"
    file.write_text(printed.output)
    assert load_config(file) == load_config(None, recipe="finetune")


def test_cv_takes_the_recipe_too():
    printed = _printed("cv", "--recipe", "finetune", "--folds", "5")
    assert printed["train"]["unfreeze"] == 3 and printed["train"]["ema_decay"] == 0.99
