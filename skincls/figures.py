"""Figures: matplotlib without pyplot (no global backend switch; safe in notebooks), one style."""

from __future__ import annotations

from matplotlib.figure import Figure

__all__ = ["new_figure", "save_figure"]


def new_figure(*grid: int, figsize: tuple[float, float]):
    """A figure without pyplot: no global backend switch, nothing to close (safe in notebooks)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(*grid)


def save_figure(fig: Figure, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
