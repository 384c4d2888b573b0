"""Figures: matplotlib without pyplot (no global backend switch; safe in notebooks), one style."""

from __future__ import annotations

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

__all__ = ["TITLE_SIZE", "integer_ticks", "new_figure", "save_figure", "set_title"]

# Every figure title: sentence case, "What, detail (split)", this size.
TITLE_SIZE = 10


def new_figure(*grid: int, figsize: tuple[float, float], **kwargs):
    """A figure without pyplot: no global backend switch, nothing to close (safe in notebooks).

    `kwargs` go to `Figure.subplots` (e.g. `height_ratios`, `sharex`).
    """
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid, **kwargs)


def set_title(target: Axes | Figure, text: str) -> None:
    """Title an axes (or a whole figure) in the one style all skincls figures share."""
    if isinstance(target, Figure):
        target.suptitle(text, fontsize=TITLE_SIZE)
    else:
        target.set_title(text, fontsize=TITLE_SIZE)


def integer_ticks(axis) -> None:
    """Ticks on whole numbers only (epochs, counts): no "2.5" epoch."""
    axis.set_major_locator(MaxNLocator(integer=True))


def save_figure(fig: Figure, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
