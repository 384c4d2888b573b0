"""Plots: PNG figures for people who would rather look than read (matplotlib, headless)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # no display needed; must run before pyplot is imported

import matplotlib.pyplot as plt

__all__: list[str] = []


def _save(fig: plt.Figure, path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
