"""`skincls train`, `skincls models` and `skincls demo`: options map onto `RunConfig` keys."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import get_args

import click
from rich.table import Table

from ._common import console, err_console, friendly_errors


def _int_or_word(value: str | None) -> int | str | None:
    """`--unfreeze 2` is a stage count, `--unfreeze all` a policy name."""
    return int(value) if value is not None and value.lstrip("-").isdigit() else value


def _freeze_policy(ctx, param, value: str | None) -> str | None:
    """`--freeze backbone|none`; a number here once meant "N stages train": point to --train-stages."""
    if value is None or value in ("backbone", "none"):
        return value
    if value.lstrip("-").isdigit():
        raise click.BadParameter(
            f"{value!r}: --freeze takes backbone or none; to train the last {value} backbone "
            f"stages (and the head) use --train-stages {value}"
        )
    raise click.BadParameter(f"{value!r}: give backbone (only the head trains) or none")


def _parse_loggers(ctx, param, value: tuple[str, ...]) -> list[str] | None:
    """`--logger tensorboard --logger mlflow` or `--logger tensorboard,mlflow`; none given: None."""
    from ..config import LOGGERS

    names = [n.strip() for given in value for n in given.split(",") if n.strip()]
    for name in names:
        if name not in LOGGERS:
            raise click.BadParameter(f"{name!r}: give {', '.join(LOGGERS)} (or several)")
    return names or None


# `skincls train` options: (flag, RunConfig key, click settings). Help text and the default shown in
# brackets come from the config's own fields, so `--help`, config files and the docs cannot disagree;
# config key names in that text (backbone_lr_mult) are shown as their options (--backbone-lr-mult).
# Settings may add "show_default": False where the config's default is not this option's.
_TRAIN_OPTIONS: tuple[tuple[str, str, dict], ...] = (
    ("--data-dir", "data.data_dir", {"type": click.Path(path_type=Path)}),
    ("--arch", "model.arch", {}),
    ("--weights", "model.weights", {}),
    (
        "--freeze",
        "model.freeze",
        {
            "callback": _freeze_policy,
            "metavar": "backbone|none",
            "help": "backbone: only the head trains (the original recipe); none: everything "
            "trains. See --train-stages.",
        },
    ),
    (
        "--train-stages",
        "model.freeze",
        {
            "type": click.IntRange(0, 1000),
            "metavar": "N",
            "show_default": False,
            "help": "Train the head and only the last N backbone stages (`skincls models` lists "
            "each arch's stages).",
        },
    ),
    (
        "--head",
        "model.head",
        {
            "callback": lambda c, p, v: _parse_head(v),
            "help": "Hidden widths, e.g. 4096,512; 'none' for a linear head.",
        },
    ),
    ("--dropout", "model.dropout", {}),
    ("--metadata", "model.metadata", {"metavar": "auto|none|COLUMNS"}),
    (
        "--image/--no-image",
        "model.use_image",
        {"help": "--no-image: a metadata-only model (ablation); needs --metadata."},
    ),
    ("--patient-context/--no-patient-context", "model.patient_context", {}),
    ("--epochs", "train.epochs", {}),
    ("--batch-size", "train.batch_size", {}),
    ("--lr", "train.lr", {}),
    ("--image-size", "data.image_size", {}),
    ("--augment/--no-augment", "data.augment", {}),
    ("--augment-policy", "data.augment_policy", {"type": click.Choice(["basic", "strong"])}),
    ("--device", "train.device", {}),
    ("--seed", "train.seed", {"type": int}),  # the huge upper bound is noise in --help
    ("--out", "out", {"type": click.Path(file_okay=False, path_type=Path)}),
    ("--finetune-epochs", "train.finetune_epochs", {}),
    (
        "--unfreeze",
        "train.unfreeze",
        {"callback": lambda c, p, v: _int_or_word(v), "metavar": "all|N"},
    ),
    (
        "--backbone-lr-mult",
        "train.backbone_lr_mult",
        {},
    ),
    ("--optimizer", "train.optimizer", {"type": click.Choice(["auto", "adam", "adamw", "sgd"])}),
    ("--weight-decay", "train.weight_decay", {}),
    ("--schedule", "train.schedule", {"type": click.Choice(["none", "cosine", "plateau"])}),
    ("--warmup-epochs", "train.warmup_epochs", {}),
    ("--label-smoothing", "train.label_smoothing", {}),
    ("--checkpoint-interval", "train.checkpoint_interval", {"metavar": "SECONDS"}),
    ("--mixup", "train.mixup", {"metavar": "ALPHA"}),
    ("--class-weights", "train.class_weights", {"type": click.Choice(["none", "balanced"])}),
    ("--sampler", "train.sampler", {"type": click.Choice(["shuffle", "balanced"])}),
    ("--layer-decay", "train.layer_decay", {}),
    ("--ema-decay", "train.ema_decay", {}),
    ("--patience", "train.patience", {}),
    ("--monitor", "train.monitor", {"type": click.Choice(["val_loss", "val_accuracy"])}),
    (
        "--cache-features",
        "train.cache_features",
        {"type": click.Choice(["auto", "memory", "disk", "off"])},
    ),
    ("--inference-batch-size", "train.inference_batch_size", {}),
    ("--num-workers", "data.num_workers", {}),
    ("--precision", "train.precision", {"type": click.Choice(["auto", "fp32", "bf16", "fp16"])}),
    (
        "--logger",
        "logging.loggers",
        {
            "multiple": True,
            "callback": _parse_loggers,
            "metavar": "csv|tensorboard|mlflow",
            "help": "Where per-epoch metrics go; repeat or comma-separate. csv: history.json/csv "
            "(always on); tensorboard: RUNDIR/tensorboard (pip install 'skincls[tensorboard]'); "
            "mlflow: an MLflow run with the config, metrics and best.pt "
            "(pip install 'skincls[mlflow]').",
        },
    ),
    ("--mlflow-uri", "logging.mlflow_uri", {"metavar": "URI"}),
)


RECIPES = ("seed", "finetune", "winners")  # config.RECIPES, without importing pydantic for --help


def _recipe_options(fn):
    """`--recipe NAME` and `--print-config`, for the commands that take the train options."""
    fn = click.option(
        "--print-config",
        "print_config_",
        is_flag=True,
        help="Print the merged config (recipe, --config file, options) as YAML and exit.",
    )(fn)
    return click.option(
        "--recipe",
        type=click.Choice(RECIPES),
        default=None,
        help="A named recipe shipped with skincls as the base config: seed (the original "
        "script's, the default), finetune (the strongest fine-tuning measured on the dev set: "
        "head first, then the last stages, weight EMA) or winners (the ISIC winners' full "
        "recipe: strong augmentation, whole backbone, label smoothing, layer decay). "
        "--config and options override it.",
    )(fn)


def load_run_config(config_file, recipe, options: dict):
    """The run's config: recipe, then config file, then the given options (checked, one line)."""
    from ..config import load_config

    overrides, names = _overrides(options)
    return load_config(config_file, overrides, names=names, recipe=recipe)


def print_config(config) -> None:
    """The merged config as YAML (what `--config` takes back)."""
    import yaml

    click.echo(yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False), nl=False)


def _config_field(key: str):
    from ..config import RunConfig

    model, *parents, leaf = [RunConfig, *key.split(".")]
    for name in parents:
        model = model.model_fields[name].annotation
    return model.model_fields[leaf]


def _train_options(fn):
    """Add every `_TRAIN_OPTIONS` entry to `fn`; each defaults to None = "not given, keep the config's"."""
    for flag, key, settings in reversed(_TRAIN_OPTIONS):
        field = _config_field(key)
        # A copy: the table is shared by every command that takes the train options.
        settings = dict(settings)
        text = settings.pop("help", None) or (field.description or "").rstrip(".") + "."
        text = _KEY_NAMES.sub(lambda m: _flag_of[m.group(0)], text)
        settings.setdefault("type", _range_type(field))
        default = field.default if settings.pop("show_default", True) else None
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        settings = {**settings, "help": text if default is None else f"{text} [{shown}]"}
        fn = click.option(flag, default=None, **settings)(fn)
    return fn


def _range_type(field):
    """A click range with the config field's own bounds, so `--help` shows them and click checks them."""
    types = [a for a in get_args(field.annotation) or (field.annotation,) if a is not type(None)]
    kind = {int: click.IntRange, float: click.FloatRange}.get(types[0]) if len(types) == 1 else None
    if kind is None:
        return None
    bounds: dict = {}
    for m in field.metadata:
        for name, key, is_open in (
            ("ge", "min", False),
            ("gt", "min", True),
            ("le", "max", False),
            ("lt", "max", True),
        ):
            if getattr(m, name, None) is not None:
                bounds[key], bounds[f"{key}_open"] = getattr(m, name), is_open
    return kind(**bounds)


def _param_name(flag: str) -> str:
    return flag.split("/")[0].lstrip("-").replace("-", "_")


def _flag_name(flag: str) -> str:
    return flag.split("/")[0]


# Config key names with an underscore, as they may appear in help text → their options.
_flag_of = {key.rsplit(".", 1)[-1]: _flag_name(flag) for flag, key, _ in reversed(_TRAIN_OPTIONS)}
_KEY_NAMES = re.compile(r"\b(" + "|".join(k for k in _flag_of if "_" in k) + r")\b")


def _overrides(options: dict) -> tuple[dict, dict]:
    """The given options as dotted config keys, and what to call each key in messages."""
    overrides: dict = {}
    names: dict = {}
    for flag, key, _ in _TRAIN_OPTIONS:
        value = options[_param_name(flag)]
        if value is None:
            continue
        if key in overrides:
            raise click.UsageError(f"give {names[key]} or {_flag_name(flag)}, not both")
        overrides[key], names[key] = value, _flag_name(flag)
    return overrides, names


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML or JSON config; options given here override it.",
)
@_recipe_options
@_train_options
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the run in --out from its last.pt (its config.json is the base config).",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Train into a non-empty --out, deleting the previous run's checkpoints, history, config "
    "and tracker files (tensorboard/, mlruns/).",
)
@click.option(
    "--nproc",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes on this machine (one per GPU): starts torchrun. --batch-size stays the "
    "global batch. For several machines run `torchrun ... -m skincls train` yourself.",
)
@friendly_errors
def train(config_file, recipe, print_config_, quiet, resume, overwrite, nproc, **options):
    """Train a classifier; writes RUNDIR/best.pt, last.pt, history.json/csv, config.json and a plot.

    --logger tensorboard and --logger mlflow also log each epoch's metrics there.

    RUNDIR is --out, or a new runs/ARCH-YYYYMMDD-HHMMSS. A non-empty --out is refused unless
    --resume or --overwrite is given, and one run dir takes one training at a time (locked).
    With a frozen backbone and no augmentation, the backbone runs once per image (feature cache) and
    only the head trains. --finetune-epochs adds a phase with the backbone unfrozen.
    """
    from ..training.run import train_from_config

    if print_config_:
        print_config(load_run_config(config_file, recipe, options))
        return
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        _launch_torchrun(nproc)
        return

    out = options["out"]
    if resume and config_file is None and out is not None and (out / "config.json").is_file():
        config_file = out / "config.json"
    config = load_run_config(config_file, recipe, options)
    # With progress lines, the trainer's own note says the device as training starts; quiet, the
    # line is printed once training has succeeded (a failure then prints only its one-line error).
    device_line = _device_line()
    result = train_from_config(
        config, progress=not quiet, resume=resume, overwrite=overwrite, callbacks=[device_line]
    )
    if int(os.environ.get("RANK", "0")) != 0:
        return  # under torchrun: rank 0 reports
    if quiet:
        err_console.print(device_line.line)
    if result.history.cache:
        cache = ", ".join(f"{k} {v}" for k, v in result.history.cache.items())
        console.print(f"feature cache (last phase): {cache}; notes in history.json")
    _print_history(result.history)
    _print_metadata(result.best_checkpoint)
    console.print(f"best checkpoint: {result.best_checkpoint} (epoch {result.history.best_epoch})")
    console.print(f"run directory:   {result.run_dir}")


def _print_metadata(path: Path) -> None:
    """For a model trained with metadata: which columns it takes, and how each is encoded."""
    from ..inference.metadata import model_inputs
    from ..models.checkpoint import load_checkpoint

    inputs = model_inputs(load_checkpoint(path))
    if inputs["metadata"]:
        cols = "; ".join(f"{m['column']}: {m['encoding']}" for m in inputs["metadata"])
        image = "" if inputs["image"] else " (no image: metadata only)"
        console.print(f"metadata inputs{image}, encoded as fitted on the training split: {cols}")


def _launch_torchrun(nproc: int) -> None:
    """Re-run this command as `torchrun --standalone --nproc-per-node N -m skincls train ...`."""
    args = sys.argv[1:]
    if "train" not in args:
        raise click.UsageError("--nproc works from the command line: skincls train --nproc N ...")
    args = args[args.index("train") + 1 :]
    for i, arg in enumerate(args):  # drop --nproc N / --nproc=N
        if arg == "--nproc":
            args = args[:i] + args[i + 2 :]
            break
        if arg.startswith("--nproc="):
            args = args[:i] + args[i + 1 :]
            break
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    cmd += ["--nproc-per-node", str(nproc), "-m", "skincls", "train", *args]
    code = subprocess.call(cmd)
    if code != 0:
        raise click.ClickException(
            f"training failed in one of its {nproc} processes (torchrun exit code {code}); "
            "the failing rank's error is above"
        )


def _device_line():
    """A trainer callback that keeps the device line (`.line`) for a quiet run to print at the end."""
    from ..runtime import describe_device
    from ..training.callbacks import Callback

    class DeviceLine(Callback):
        line = ""

        def on_fit_start(self, trainer) -> None:
            self.line = describe_device(trainer.device, trainer.precision)

    return DeviceLine()


def _parse_head(value: str | None) -> list[int] | None:
    if value is None:
        return None
    if value.strip().lower() in ("", "none"):
        return []
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter(f"{value!r}: give widths like 4096,512, or none") from None


def _print_history(history) -> None:
    table = Table(title="training history (train and val splits)")
    cols = ("epoch", "phase", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "seconds")
    for col in cols:
        table.add_column(col, justify="right")
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    for e in history.epochs:
        mark = " *" if e.epoch == history.best_epoch else ""
        table.add_row(
            f"{e.epoch}{mark}",
            e.phase,
            fmt(e.train_loss),
            fmt(e.train_accuracy),
            fmt(e.val_loss),
            fmt(e.val_accuracy),
            f"{e.seconds:.1f}",
        )
    console.print(table)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the table as JSON.")
@click.option(
    "--timm",
    "timm_pattern",
    metavar="PATTERN",
    help="List instead the timm models with pretrained weights matching PATTERN (e.g. "
    "'*efficientnet_lite*'); use one as --arch timm/NAME (needs skincls[timm]).",
)
@friendly_errors
def models(as_json, timm_pattern):
    """List the backbones `--arch` accepts, with parameter counts and default input size."""
    if timm_pattern is not None:
        _list_timm(timm_pattern, as_json)
        return
    from ..models.classifier import describe_models

    rows = describe_models()
    if as_json:
        click.echo(json.dumps([vars(r) for r in rows], indent=2))
        return
    table = Table(title="backbones for --arch")
    for col in ("arch", "params", "trainable", "stages", "px", "top-1"):
        table.add_column(col, justify="left" if col == "arch" else "right", no_wrap=True)
    for r in rows:
        acc = "-" if r.imagenet_acc1 is None else f"{r.imagenet_acc1:.1f}%"
        table.add_row(
            r.name, f"{r.params:,}", f"{r.trainable:,}", str(r.stages), str(r.input_size), acc
        )
    console.print(table)
    # Below the table, not as its caption: a caption wraps to the table's width mid-sentence.
    console.print(
        "params/trainable: default head 4096,512, 2 classes, --freeze backbone; "
        "stages: what --train-stages N counts; px: default input size; top-1: ImageNet accuracy"
    )


def _list_timm(pattern: str, as_json: bool) -> None:
    from ..models.timm_backbones import list_timm_models

    names = [f"timm/{n}" for n in list_timm_models(pattern)]
    if as_json:
        click.echo(json.dumps(names, indent=2))
        return
    for name in names:
        click.echo(name)
    click.echo(
        f"{len(names)} timm models with pretrained weights match {pattern!r}; "
        "pass one as --arch (weights come from the Hugging Face Hub cache)",
        err=True,
    )


@click.command()
@click.option(
    "--workdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("skincls-demo"),
    show_default=True,
    help="Where the demo's data and run are written.",
)
@click.option(
    "--images",
    type=click.IntRange(min=40),
    default=800,
    show_default=True,
    help="Synthetic images to generate.",
)
@click.option("--epochs", type=click.IntRange(min=1), default=8, show_default=True, help="Epochs.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@friendly_errors
def demo(workdir, images, epochs, quiet):
    """Run the whole pipeline offline on synthetic data: fetch → train → evaluate → predict."""
    from .demo import run_demo

    run_demo(workdir, images=images, epochs=epochs, progress=not quiet, console=console)
