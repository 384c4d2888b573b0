"""Training curves: loss and accuracy per epoch, train vs val split."""

from __future__ import annotations

from ..figures import integer_ticks, new_figure, save_figure, set_title

__all__ = ["history_figure", "plot_history"]


def plot_history(history, path):
    """Write `history_figure(history)` as a PNG; returns the path."""
    save_figure(history_figure(history), path)
    return path


def history_figure(history):
    """Loss and accuracy per epoch, train vs val split, from a `History` or its dict (a `Figure`).

    Epoch ticks are whole numbers; a dotted line marks where fine-tuning starts; a star marks the
    best epoch.
    """
    data = history if isinstance(history, dict) else history.to_dict()
    epochs = data["epochs"]
    x = [e["epoch"] for e in epochs]
    fig, axes = new_figure(1, 2, figsize=(9, 3.6))
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for split, style in (("train", "-o"), ("val", "-s")):
            ys = [e[f"{split}_{metric}"] for e in epochs]
            if any(v is not None for v in ys):
                pts = [(a, b) for a, b in zip(x, ys) if b is not None]
                ax.plot(*zip(*pts), style, ms=3, label=f"{split} {metric}")
        best = data.get("best_epoch")
        hit = [e for e in epochs if e["epoch"] == best and e.get(f"val_{metric}") is not None]
        if hit:
            ax.plot(best, hit[0][f"val_{metric}"], "*", ms=12, c="C3", label=f"best (epoch {best})")
        switch = next((e["epoch"] for e in epochs if e.get("phase") == "finetune"), None)
        if switch is not None:
            ax.axvline(switch - 0.5, ls=":", c="grey", lw=1)
        ax.set(xlabel="epoch", ylabel=metric)
        integer_ticks(ax.xaxis)
        set_title(ax, f"{metric.capitalize()} per epoch (train vs val split)")
        ax.legend(fontsize=8)
    return fig
