"""Training curves: whole-number epoch ticks, the shared title style."""

from __future__ import annotations

from skincls.figures import TITLE_SIZE
from skincls.training.plots import history_figure, plot_history


def _history(n: int) -> dict:
    epochs = [
        {
            "epoch": e,
            "phase": "head" if e <= 2 else "finetune",
            "train_loss": 1 / e,
            "train_accuracy": 0.5 + e / 20,
            "val_loss": 1.1 / e,
            "val_accuracy": 0.5 + e / 25,
        }
        for e in range(1, n + 1)
    ]
    return {"epochs": epochs, "best_epoch": n}


def test_epoch_ticks_are_whole_numbers():
    for n in (2, 3, 5):  # matplotlib's default locator puts ticks at 1.25, 1.5, ... here
        fig = history_figure(_history(n))
        fig.canvas.draw()
        for ax in fig.axes:
            ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
            assert ticks and all(float(t).is_integer() for t in ticks), (n, ticks)


def test_titles_share_one_style(tmp_path):
    fig = history_figure(_history(3))
    titles = [ax.title for ax in fig.axes]
    assert [t.get_text() for t in titles] == [
        "Loss per epoch (train vs val split)",
        "Accuracy per epoch (train vs val split)",
    ]
    assert {t.get_fontsize() for t in titles} == {TITLE_SIZE}
    assert plot_history(_history(3), tmp_path / "c.png").is_file()
