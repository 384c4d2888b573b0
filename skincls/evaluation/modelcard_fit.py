"""Model card, fitted side: the decision threshold and the calibration, each from this evaluation's
report or else from what the checkpoint stores (`threshold_info`, `calibration`), with where it was
fitted and what it did there."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..models.checkpoint import Checkpoint
from .modelcard_data import NOT_RECORDED, fmt, metric, num

__all__ = ["calibration_lines", "threshold_lines"]


def threshold_lines(ckpt: Checkpoint, rep: Mapping[str, Any], positive: str | None) -> list[str]:
    """The Decision threshold section (argmax with more than two classes)."""
    threshold = rep.get("threshold", ckpt.threshold)
    choice = rep.get("threshold_choice") or ckpt.data.get("threshold_info") or {}
    if positive is None:
        return [
            "- **Threshold:** none; with more than two classes the predicted class is the most "
            "probable one (argmax of the calibrated probabilities)."
        ]
    if threshold is None:
        return [
            "- **Threshold:** none; the predicted class is the most probable one "
            f"(for two classes: {positive} when P({positive}) > 0.5).",
            "- **How chosen:** not chosen (argmax is the default).",
        ]
    lines = [
        f"- **Threshold:** {positive} when P({positive}) >= {float(threshold):.4f}, on probabilities "
        f"at temperature {fmt(choice.get('temperature', rep.get('temperature')))}",
        f"- **How chosen:** {_how_chosen(choice, rep)}",
    ]
    if choice.get("method") == "target_sensitivity":
        lines.append(
            f"- **On the {_where(choice)} where it was chosen** "
            f"({fmt(choice.get('n_images'))} images, {fmt(choice.get('n_positive'))} {positive}): "
            f"sensitivity {num(choice.get('sensitivity'), True)}, specificity "
            f"{num(choice.get('specificity'), True)}. The test labels were never used."
        )
    return lines


def _how_chosen(choice: Mapping[str, Any], rep: Mapping[str, Any]) -> str:
    """The threshold's provenance from the stored choice (`threshold_info`), else the report's."""
    if choice.get("method") == "target_sensitivity":
        return (
            f"the largest threshold reaching sensitivity >= {fmt(choice.get('target_sensitivity'))} "
            f"on the {_where(choice)}"
            + (" with test-time augmentation" if choice.get("tta") else "")
        )
    if choice.get("method") == "fixed":
        return "fixed by the user"
    return fmt(rep.get("threshold_source"))


def calibration_lines(ckpt: Checkpoint, rep: Mapping[str, Any]) -> list[str]:
    """The Calibration section: temperature, where it was fitted, ECE before and after."""
    temperature = rep.get("temperature", ckpt.data.get("temperature"))
    fit = rep.get("calibration") or ckpt.data.get("calibration") or {}
    discarded = fit if fit.get("kept") is False else None
    if discarded:  # this evaluation's fit was not used: describe the one in force, if any
        fit = ckpt.data.get("calibration") or {}
    split = rep.get("split", NOT_RECORDED)
    members = (ckpt.data.get("ensemble") or {}).get("members") or []
    if fit:
        how = (
            f"temperature scaling fitted on the {_where(fit)} "
            f"({fmt(fit.get('n_images'))} images) by minimising the negative log-likelihood"
        )
        on_fit = (
            f"- **On the {_where(fit)} where it was fitted:** ECE "
            f"{metric(fit, 'ece_before')} before, {metric(fit, 'ece_after')} after; negative "
            f"log-likelihood {metric(fit, 'nll_before')} before, {metric(fit, 'nll_after')} after"
        )
    else:
        how = "not fitted (temperature 1.0 is the plain softmax)"
        on_fit = "- **ECE where the temperature was fitted:** not fitted"
    if members and not rep.get("calibration"):
        # An ensemble: its members' temperatures are inside the model; its output needs none.
        temps = ", ".join(fmt(m.get("temperature")) for m in members)
        how = f"on the ensemble's output; its {len(members)} members' temperatures ({temps}): {how}"
    bins = rep.get("ece_bins")
    lines = [f"- **Temperature:** {fmt(temperature)}: {how}", on_fit]
    if fit.get("worse"):
        lines.append(f"- Kept on request although it made {' and '.join(fit['worse'])} worse there")
    if discarded:
        lines.append(
            f"- A new fit on the {_where(discarded)} (temperature "
            f"{fmt(discarded.get('temperature'))}) made its "
            f"{' and '.join(discarded.get('worse') or [])} worse and was discarded"
        )
    return [
        *lines,
        f"- **ECE on the {split} split** ({fmt(bins)} equal-width bins): "
        f"{metric(rep, 'ece_uncalibrated')} at temperature 1, "
        f"{metric(rep, 'ece')} at temperature {fmt(temperature)}",
        "- Probabilities are `softmax(logits / temperature)`; dividing by a positive temperature "
        "keeps the ranking, so ROC-AUC is unchanged by calibration.",
    ]


def _where(fit: Mapping[str, Any]) -> str:
    """E.g. "val split", or "val split of ddi" for another dataset's than the model's own."""
    data = fit.get("data")
    return f"{fmt(fit.get('split'))} split" + (
        f" of {data} (not the model's own data)" if data else ""
    )
