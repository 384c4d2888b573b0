"""Demo: the whole pipeline offline on synthetic images, with a small CNN, in a couple of minutes."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from ..config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ..data.fetch import fetch
from ..evaluation.evaluator import Evaluator
from ..inference.predict import Predictor
from ..training.run import train_from_config

__all__ = ["demo_config", "run_demo"]


def demo_config(workdir: Path, epochs: int = 8) -> RunConfig:
    """The demo's recipe: `smallcnn` from scratch at 64 px with augmentation off."""
    return RunConfig(
        data=DataConfig(data_dir=workdir / "data"),
        model=ModelConfig(arch="smallcnn", weights="none", head=(64,), dropout=0.2, freeze="none"),
        train=TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=0, device="cpu"),
        out=workdir / "run",
    )


def run_demo(
    workdir: str | Path,
    *,
    images: int = 800,
    epochs: int = 8,
    progress: bool = True,
    console: Console | None = None,
) -> dict:
    """Fetch synthetic data, train, evaluate on test and predict a few images; return the test report."""
    console = console or Console()
    workdir = Path(workdir)
    config = demo_config(workdir, epochs)
    console.rule("1/4 fetch: synthetic data")
    report = fetch(config.data.data_dir, synthetic=images, seed=0)
    counts = report.manifest.counts()
    console.print({s: sum(v.values()) for s, v in counts.items()}, f"→ {config.data.data_dir}")
    console.rule("2/4 train: smallcnn")
    # The demo's workdir is its own: a second demo replaces the first one's run (and says so).
    result = train_from_config(config, progress=progress, overwrite=True)
    best = result.history.best
    console.print(
        f"best epoch {best.epoch}: val loss {best.val_loss:.4f}, val accuracy {best.val_accuracy:.3f}"
    )
    console.rule("3/4 evaluate: test split")
    test = Evaluator(result.best_checkpoint, device="cpu").evaluate(config.data.data_dir, "test")
    for line in test.lines():
        console.print(line)
    console.rule("4/4 predict: three test images")
    samples = [config.data.data_dir / r.path for r in report.manifest.select("test")[:3]]
    for p in Predictor.from_checkpoint(result.best_checkpoint, device="cpu").predict(samples):
        console.print(f"{p.path}: {p.label} (P(malignant) = {p.probability:.3f})")
    console.rule("written")
    console.print(
        f"data:       {config.data.data_dir}\nrun:        {result.run_dir}\ncheckpoint: {result.best_checkpoint}"
    )
    return test.model_dump()
