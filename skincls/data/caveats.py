"""Known biases of named public datasets, for the model card: looked up by the name in `dataset.json`.

Only a dataset named here gets caveats; synthetic, custom and unnamed data (an archive or folder of
unknown origin) get none, since nothing is known about them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CAVEATS", "DatasetCaveats", "caveats_for"]


@dataclass(frozen=True)
class DatasetCaveats:
    """What is known to be wrong with one dataset, as Markdown bullet lines per model-card section.

    Attributes:
        title: How the card names the dataset, e.g. "the Kaggle dataset `owner/name` (...)".
        data: Known biases, listed in the card's Data section.
        limitations: Extra lines for the Limitations section.
        ethics: Extra lines for the Ethical considerations section.
    """

    title: str
    data: tuple[str, ...] = ()
    limitations: tuple[str, ...] = ()
    ethics: tuple[str, ...] = ()


CAVEATS: dict[str, DatasetCaveats] = {
    "fanconic/skin-cancer-malignant-vs-benign": DatasetCaveats(
        title="the Kaggle dataset `fanconic/skin-cancer-malignant-vs-benign` (ISIC archive images)",
        data=(
            "- Most benign images come from one source, HAM10000, so acquisition differences "
            "(camera, lighting, framing) can correlate with the label.",
            "- Several images can show the same lesion (different dates, zoom or rotation): a model "
            "can memorise lesions, and a split that separates copies overstates accuracy.",
            "- The dataset contains exact and near-duplicate images, some across its own train and "
            "test folders, and the Kaggle archive holds every image twice. skincls groups exact "
            "(content hash) and near duplicates (perceptual hash) into clusters and keeps each "
            "cluster in one split; other photos of one lesion it cannot see, since the dataset "
            "dropped the lesion ids.",
            "- No patient metadata (age, sex, body site, skin type) ships with the images, so "
            "subgroup performance cannot be measured.",
        ),
        limitations=(
            "- Benign images come mostly from one source (HAM10000), so the model can learn "
            "acquisition cues (borders, rulers, vignetting, colour balance) that go with the label "
            "instead of lesion features.",
        ),
        ethics=(
            "- Skin tone is not recorded in this dataset and dermoscopic archives are dominated by "
            "light skin: performance on darker skin is unknown and likely worse.",
            "- The images are public research data (ISIC archive).",
        ),
    ),
}


def caveats_for(name: str | None) -> DatasetCaveats | None:
    """The known caveats of dataset `name` (as recorded in `dataset.json`), or None."""
    return CAVEATS.get(name) if name else None
