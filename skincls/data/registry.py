"""Registry: the datasets skincls knows by name, each with the layout (parser) that reads it.

`skincls.fetch(dataset=NAME)` looks the name up here: the Kaggle slug to download, and how to read
what arrives (class folders, or a metadata CSV with images named by id). An unknown OWNER/NAME is
still downloaded; its layout is then detected from the files (`skincls.data.layouts.detect_layout`).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import DataError, call, opt

__all__ = [
    "LAYOUTS",
    "DatasetSpec",
    "get_dataset",
    "list_datasets",
    "register_dataset",
]

# How a dataset's files are read; see `skincls.data.layouts`.
LAYOUTS = (
    "folders",
    "ham10000",
    "isic2019",
    "isic2020",
    "isic2024",
    "pad_ufes20",
    "ddi",
    "fitzpatrick17k",
    "labels_csv",
    "auto",
)


@dataclass(frozen=True)
class DatasetSpec:
    """A known dataset.

    Attributes:
        name: The Kaggle dataset slug (OWNER/NAME), or a plain name for one Kaggle's dataset API
            cannot serve (a competition).
        title: What people call it.
        layout: How its files are read (one of `LAYOUTS`).
        kaggle: Whether `fetch(dataset=NAME)` can download it through the Kaggle API.
        aliases: Short names that mean the same (`ham10000`).
        url: Where it is described.
        notes: What to know (size, licence, how to get it when `kaggle` is False); it may name
            options (`skincls.errors.opt`), which `skincls.errors.spell_options(notes)` spells.
        synthetic: Whether `fetch(synthetic=N, dataset=NAME)` can generate an offline look-alike.
    """

    name: str
    title: str
    layout: str
    kaggle: bool = True
    aliases: tuple[str, ...] = ()
    url: str = ""
    notes: str = ""
    synthetic: bool = False

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {LAYOUTS}")


_REGISTRY: dict[str, DatasetSpec] = {}
_ALIASES: dict[str, str] = {}


def register_dataset(spec: DatasetSpec) -> DatasetSpec:
    """Add a dataset to the registry; a name or alias that is already taken is refused."""
    for key in (spec.name, *spec.aliases):
        if key.lower() in _ALIASES:
            raise ValueError(f"dataset name {key!r} is already registered")
    _REGISTRY[spec.name] = spec
    for key in (spec.name, *spec.aliases):
        _ALIASES[key.lower()] = spec.name
    return spec


def get_dataset(name: str) -> DatasetSpec:
    """The spec of `name` (a registered name or alias, any case); an unregistered OWNER/NAME gets a
    spec whose layout is detected from the files.

    Raises:
        DataError: a name that is neither registered nor OWNER/NAME.
    """
    key = _ALIASES.get(name.strip().lower())
    if key is not None:
        return _REGISTRY[key]
    if name.count("/") == 1 and all(name.split("/")):
        return DatasetSpec(name, name, "auto")
    known = ", ".join(sorted(_ALIASES))
    raise DataError(f"unknown dataset {name!r}: give a Kaggle OWNER/NAME or one of {known}")


def list_datasets() -> list[DatasetSpec]:
    """The registered datasets, in registration order."""
    return list(_REGISTRY.values())


# The Kaggle slugs below were checked against public code that downloads them (kaggle CLI,
# kagglehub) and against the file names its loaders open.
register_dataset(
    DatasetSpec(
        "fanconic/skin-cancer-malignant-vs-benign",
        "Skin Cancer: Malignant vs. Benign (ISIC archive subset)",
        "folders",
        url="https://www.kaggle.com/datasets/fanconic/skin-cancer-malignant-vs-benign",
        notes="train/ and test/ with benign/ and malignant/ folders (2,637 images, no metadata; "
        f"every benign image is a HAM10000 copy: see {opt('reference')}). The default.",
        synthetic=True,
    )
)
register_dataset(
    DatasetSpec(
        "kmader/skin-cancer-mnist-ham10000",
        "HAM10000",
        "ham10000",
        aliases=("ham10000",),
        url="https://www.kaggle.com/datasets/kmader/skin-cancer-mnist-ham10000",
        notes="HAM10000_metadata.csv (lesion_id, image_id, dx, ...) with 10,015 images of 7,470 "
        "lesions in HAM10000_images_part_1/ and _part_2/ (the archive holds a second, lower-case "
        "copy, ignored); ~5 GB; CC BY-NC-SA 4.0.",
        synthetic=True,
    )
)
register_dataset(
    DatasetSpec(
        "andrewmvd/isic-2019",
        "ISIC 2019 training data",
        "isic2019",
        aliases=("isic2019", "isic-2019"),
        url="https://www.kaggle.com/datasets/andrewmvd/isic-2019",
        notes="ISIC_2019_Training_GroundTruth.csv (one-hot MEL, NV, BCC, AK, BKL, DF, VASC, SCC, "
        "UNK) + ISIC_2019_Training_Metadata.csv (lesion_id) with 25,331 images in "
        "ISIC_2019_Training_Input/; ~9 GB; CC BY-NC 4.0. Includes HAM10000.",
    )
)
register_dataset(
    DatasetSpec(
        "cdeotte/jpeg-melanoma-256x256",
        "SIIM-ISIC 2020 (JPEG, resized to 256 px)",
        "isic2020",
        aliases=("isic2020", "isic-2020"),
        url="https://www.kaggle.com/datasets/cdeotte/jpeg-melanoma-256x256",
        notes="The SIIM-ISIC 2020 competition's train.csv (image_name, patient_id, diagnosis, "
        "benign_malignant, target) with its 33,126 training images in train/, resized; 2,056 "
        "patients; 1.8% melanoma.",
    )
)
register_dataset(
    DatasetSpec(
        "siim-isic-melanoma-classification",
        "SIIM-ISIC 2020 (the competition's own files)",
        "isic2020",
        kaggle=False,
        url="https://www.kaggle.com/competitions/siim-isic-melanoma-classification",
        notes="a Kaggle competition, not a dataset: accept its rules on kaggle.com, download it "
        "(`kaggle competitions download -c siim-isic-melanoma-classification`; ~100 GB with the "
        "DICOM copies), unpack train.csv and jpeg/train/, and run "
        f"`{call('fetch', 'source_dir=DIR', dataset='siim-isic-melanoma-classification')}`; or "
        f"use {opt('dataset', value='isic2020')} (the same images, resized)",
    )
)
# Clinical-photo datasets for external validation (`skincls.data.clinical`): none is on Kaggle's
# dataset API in its original form, so each is downloaded by hand and read with source_dir.
register_dataset(
    DatasetSpec(
        "pad-ufes-20",
        "PAD-UFES-20 (smartphone photos, Brazil)",
        "pad_ufes20",
        kaggle=False,
        aliases=("pad_ufes_20", "pad-ufes20", "padufes20"),
        url="https://data.mendeley.com/datasets/zr7vgbcyr2/1",
        notes="2,298 smartphone images of 1,641 lesions of 1,373 patients: metadata.csv "
        "(patient_id, lesion_id, 22 clinical features incl. fitspatrick and biopsed, diagnostic "
        "ACK/BCC/MEL/NEV/SCC/SEK, img_id) and PNGs in images/imgs_part_1..3; CC BY 4.0. Download "
        "the zip from Mendeley Data, unpack it, and run "
        f"`{call('fetch', 'source_dir=DIR', dataset='pad-ufes-20')}`",
    )
)
register_dataset(
    DatasetSpec(
        "ddi",
        "DDI: Diverse Dermatology Images (Stanford)",
        "ddi",
        kaggle=False,
        aliases=("diverse-dermatology-images",),
        url="https://ddi-dataset.github.io/",
        notes="656 biopsy-proven clinical images, Fitzpatrick I-II / III-IV / V-VI: ddi_metadata.csv "
        "(DDI_ID, DDI_file, skin_tone, malignant, disease) and the PNGs; research use after "
        "accepting its terms on the Stanford AIMI site. Unpack it and run "
        f"`{call('fetch', 'source_dir=DIR', dataset='ddi')}`",
    )
)
register_dataset(
    DatasetSpec(
        "fitzpatrick17k",
        "Fitzpatrick17k (clinical atlases, 114 conditions)",
        "fitzpatrick17k",
        kaggle=False,
        aliases=("fitzpatrick-17k",),
        url="https://github.com/mattgroh/fitzpatrick17k",
        notes="16,577 clinical images with Fitzpatrick types: fitzpatrick17k.csv (md5hash, "
        "fitzpatrick_scale, fitzpatrick_centaur, label, nine_partition_label, "
        "three_partition_label, qc, url, url_alphanum). The images are not distributed: download "
        "each from its url as md5hash.jpg into a folder next to the CSV (or ask the authors for "
        f"the archive), then run `{call('fetch', 'source_dir=DIR', dataset='fitzpatrick17k')}`; "
        "non-neoplastic conditions are in neither class of the binary task",
    )
)
register_dataset(
    DatasetSpec(
        "isic-2024-challenge",
        "ISIC 2024 (SLICE-3D): 3D total-body-photo lesion crops",
        "isic2024",
        kaggle=False,
        aliases=("isic2024", "isic-2024", "slice-3d"),
        url="https://www.kaggle.com/competitions/isic-2024-challenge",
        notes="train-image.hdf5 (the JPEG bytes of 401,059 crops of about 133 px, keyed by "
        "isic_id) + train-metadata.csv (isic_id, target, patient_id, age_approx, sex, "
        "anatom_site_general, tbp_lv_* measurements, attribution = hospital, ...); 1,042 patients, "
        "393 malignant; CC BY-NC. Read from the HDF5 file in place (needs h5py: pip install "
        "'skincls[hdf5]'); the class is target (1 = malignant). A Kaggle competition: accept its "
        "rules, download it (`kaggle competitions download -c isic-2024-challenge`), and run "
        f"`{call('fetch', 'source_dir=DIR', dataset='isic2024')}` on the folder holding the two "
        f"files (or give the zip as {opt('archive')}).",
    )
)
