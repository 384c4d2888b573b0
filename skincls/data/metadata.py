"""Metadata: read the CSV files that describe dermoscopy datasets, and turn diagnoses into classes.

Each parser takes the CSV text and returns one `MetaRow` per image: its id (the file's stem), the
diagnosis as a canonical code (`DIAGNOSES`), and the lesion and patient it shows where the dataset
says so. A `LabelPolicy` then decides each row's class: `binary` through a documented
diagnosis → benign/malignant map (`DEFAULT_BINARY_MAP`), or `multiclass` with one class per diagnosis.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace

from ..errors import DataError, opt

__all__ = [
    "ATTRIBUTE_COLUMNS",
    "BENIGN",
    "DEFAULT_BINARY_MAP",
    "DIAGNOSES",
    "MALIGNANT",
    "TASKS",
    "LabelPolicy",
    "MetaRow",
    "binary_map",
    "iter_csv_rows",
    "normalise_diagnosis",
    "parse_ham10000",
    "parse_isic2019",
    "parse_isic2020",
    "parse_labels_csv",
    "read_csv_rows",
    "row_attributes",
]

BENIGN, MALIGNANT = "benign", "malignant"
TASKS = ("binary", "multiclass")
# Canonical diagnosis codes (HAM10000's, plus ISIC 2019's SCC and UNK) and what they stand for.
DIAGNOSES: dict[str, str] = {
    "akiec": "actinic keratosis / intraepithelial carcinoma (Bowen's disease); ISIC 2019 'AK'",
    "bcc": "basal cell carcinoma",
    "bkl": "benign keratosis-like lesion (seborrheic / lichenoid keratosis, solar lentigo)",
    "df": "dermatofibroma",
    "mel": "melanoma",
    "nv": "melanocytic nevus",
    "scc": "squamous cell carcinoma",
    "vasc": "vascular lesion (angioma, angiokeratoma, pyogenic granuloma, haemorrhage)",
    "unk": "other or unknown diagnosis",
}
# The documented default of the binary task: the carcinomas, melanoma and actinic keratosis (a
# precursor, in HAM10000 pooled with intraepithelial carcinoma) are malignant. `unk` is in neither
# class: such an image takes the dataset's own benign/malignant label where it has one (ISIC 2020),
# and is left out otherwise.
DEFAULT_BINARY_MAP: dict[str, str] = {
    "mel": MALIGNANT,
    "bcc": MALIGNANT,
    "akiec": MALIGNANT,
    "scc": MALIGNANT,
    "nv": BENIGN,
    "bkl": BENIGN,
    "df": BENIGN,
    "vasc": BENIGN,
}
# Spellings of the datasets (ISIC 2019 columns, ISIC 2020 `diagnosis` strings) → canonical code.
_ALIASES = {
    "ak": "akiec",
    "melanoma": "mel",
    "nevus": "nv",
    "seborrheic keratosis": "bkl",
    "lichenoid keratosis": "bkl",
    "solar lentigo": "bkl",
    "lentigo nos": "bkl",
    "cafe-au-lait macule": "unk",
    "atypical melanocytic proliferation": "unk",
    "unknown": "unk",
}
_MAX_CSV_BYTES = 256 * 2**20


def normalise_diagnosis(raw: str) -> str:
    """The canonical code of a diagnosis as a dataset spells it (`MEL`, `AK`, `nevus` → mel, akiec, nv).

    Unknown spellings are kept, lower-cased, as their own code.
    """
    code = " ".join(raw.strip().lower().split())
    return _ALIASES.get(code, code)


def binary_map(malignant: Iterable[str] | None = None) -> dict[str, str]:
    """The binary diagnosis map: `DEFAULT_BINARY_MAP`, or with `malignant` as the malignant codes.

    With `malignant` given, every other code of the default map becomes benign, e.g.
    `binary_map(["mel"])` is melanoma vs the rest (bcc, akiec, scc then count as benign).

    Raises:
        DataError: a code that is not a known diagnosis.
    """
    if malignant is None:
        return dict(DEFAULT_BINARY_MAP)
    codes = {normalise_diagnosis(c) for c in malignant if c.strip()}
    unknown = sorted(codes - set(DIAGNOSES))
    if unknown or not codes:
        raise DataError(
            f"{opt('malignant')}: unknown diagnosis codes {unknown or '(none given)'}; "
            f"choose from {', '.join(DIAGNOSES)}"
        )
    out = {c: (MALIGNANT if c in codes else BENIGN) for c in DEFAULT_BINARY_MAP}
    out.update({c: MALIGNANT for c in codes})
    return out


@dataclass(frozen=True, slots=True)
class MetaRow:
    """One image as a metadata file describes it.

    Attributes:
        image: Image id (the file's stem, e.g. `ISIC_0027419`) or, for a `labels_csv`, a file name
            or relative path.
        diagnosis: Canonical diagnosis code, or for a `labels_csv` the label column's value.
        lesion_id: The lesion it shows ("" when not recorded).
        patient_id: The patient ("" when not recorded).
        malignant: The dataset's own benign/malignant label where it has one (ISIC 2020), else None.
        groups: Further grouping keys (a `labels_csv`'s `group_columns`), as `column:value`.
        attributes: What the file says of the image and patient besides, `(column, value)` under
            the manifest's names (`ATTRIBUTE_COLUMNS`): sex, age, site, dx_type, fitzpatrick,
            source.
    """

    image: str
    diagnosis: str
    lesion_id: str = ""
    patient_id: str = ""
    malignant: bool | None = None
    groups: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()

    def keys(self) -> list[str]:
        """Grouping keys: `patient:…`, `lesion:…` and the extra columns' `column:value`."""
        out = [f"patient:{self.patient_id}"] if self.patient_id else []
        out += [f"lesion:{self.lesion_id}"] if self.lesion_id else []
        return out + list(self.groups)

    def grouping(self) -> MetaRow:
        """What a fetched image keeps of its row (`fetch.table.ImageTable`): image, diagnosis and
        malignant blank, so rows differing in these alone are one. Itself where they are already
        blank: a layout that hands rows on this way shares them with the table (one object each).
        """
        if self.image or self.diagnosis or self.malignant is not None:
            return replace(self, image="", diagnosis="", malignant=None)
        return self


@dataclass
class LabelPolicy:
    """How a row's diagnosis becomes its class.

    Attributes:
        task: `binary` (through `mapping`) or `multiclass` (one class per diagnosis code).
        mapping: Diagnosis code → class for `binary`; ignored for `multiclass`.
        as_given: Take the label column as the class unchanged (a `labels_csv` without `task`).
    """

    task: str = "binary"
    mapping: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_BINARY_MAP))
    as_given: bool = False

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise DataError(f"unknown task {self.task!r}; choose one of {', '.join(TASKS)}")

    def label(self, row: MetaRow) -> tuple[str | None, str | None]:
        """`(class, None)`, or `(None, why it has none)` for a row that is left out."""
        if self.as_given or self.task == "multiclass":
            return (row.diagnosis, None) if row.diagnosis else (None, "no diagnosis recorded")
        cls = self.mapping.get(row.diagnosis)
        if cls is not None:
            return cls, None
        if row.malignant is not None:  # the dataset's own label decides what the map does not
            return (MALIGNANT if row.malignant else BENIGN), None
        return None, f"diagnosis {row.diagnosis!r} is in neither class of the binary map"

    def describe(self) -> dict:
        """What `dataset.json`, the checkpoint and the model card record of the labels."""
        if self.as_given:
            return {"task": "as_given", "rule": "classes are the label column's values"}
        if self.task == "multiclass":
            return {
                "task": "multiclass",
                "rule": "one class per diagnosis code",
                "codes": DIAGNOSES,
            }
        return {
            "task": "binary",
            "rule": "diagnosis code → class by `map`; a code outside it takes the dataset's own "
            "benign/malignant label where there is one, else the image is left out",
            "map": dict(sorted(self.mapping.items())),
            "codes": DIAGNOSES,
        }


# Manifest column ← the names datasets give it (HAM10000, ISIC 2019/2020, Fitzpatrick17k, a labels CSV).
ATTRIBUTE_COLUMNS: dict[str, tuple[str, ...]] = {
    "sex": ("sex",),
    "age": ("age", "age_approx"),
    "site": (
        "site",
        "localization",
        "anatom_site_general",
        "anatom_site_general_challenge",
    ),
    "dx_type": ("dx_type",),
    "fitzpatrick": ("fitzpatrick", "fitzpatrick_scale", "fitzpatrick_skin_type"),
    # Where the image was taken (HAM10000's `dataset`, ISIC's `attribution`): leave-source-out CV.
    "source": ("source", "attribution", "dataset"),
}


def row_attributes(row: dict[str, str]) -> tuple[tuple[str, str], ...]:
    """A metadata row's `ATTRIBUTE_COLUMNS`, under the manifest's names, where it has a value."""
    out = []
    for name, aliases in ATTRIBUTE_COLUMNS.items():
        value = next((row[a] for a in aliases if row.get(a)), "")
        if value and value.lower() not in ("unknown", "nan", "na"):
            out.append((name, value))
    return tuple(out)


def read_csv_rows(
    data: bytes | str, name: str, required: Sequence[str]
) -> tuple[list[str], list[dict[str, str]]]:
    """Header and rows of a CSV file (UTF-8, BOM tolerated), checking that `required` columns exist.

    Raises:
        DataError: undecodable or too large, or a required column missing (naming the file).
    """
    if isinstance(data, bytes):
        if len(data) > _MAX_CSV_BYTES:
            raise DataError(f"{name} is over {_MAX_CSV_BYTES >> 20} MiB; not a metadata file")
        try:
            data = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise DataError(f"{name} is not UTF-8 text: {exc}") from None
    header, rows = iter_csv_rows(io.StringIO(data.lstrip("\ufeff")), name, required)
    return header, list(rows)


def iter_csv_rows(
    lines: Iterable[str], name: str, required: Sequence[str]
) -> tuple[list[str], Iterator[dict[str, str]]]:
    """Header and rows (streamed, names and values stripped) of CSV text, checking that
    `required` columns exist.

    Raises:
        DataError: a required column missing (naming the file and its first columns).
    """
    reader = csv.DictReader(lines)
    header = [h.strip() for h in reader.fieldnames or []]
    missing = [c for c in required if c not in header]
    if missing:
        more = "…" if len(header) > 12 else ""
        raise DataError(
            f"{name} lacks the column(s) {missing}; its columns are {header[:12]}{more}"
        )
    rows = ({(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in reader)
    return header, rows


def parse_ham10000(data: bytes | str, name: str = "HAM10000_metadata.csv") -> list[MetaRow]:
    """`HAM10000_metadata.csv` (lesion_id, image_id, dx, dx_type, age, sex, localization).

    A `patient_id` column is read when present (the real file has none; the synthetic one does).
    """
    header, rows = read_csv_rows(data, name, ("lesion_id", "image_id", "dx"))
    has_patient = "patient_id" in header
    return [
        MetaRow(
            r["image_id"],
            normalise_diagnosis(r["dx"]),
            lesion_id=r["lesion_id"],
            patient_id=r["patient_id"] if has_patient else "",
            attributes=row_attributes(r),
        )
        for r in rows
        if r["image_id"]
    ]


def parse_isic2019(
    ground_truth: bytes | str,
    metadata: bytes | str | None = None,
    names: tuple[str, str] = (
        "ISIC_2019_Training_GroundTruth.csv",
        "ISIC_2019_Training_Metadata.csv",
    ),
) -> tuple[list[MetaRow], list[tuple[str, str]]]:
    """ISIC 2019: one-hot diagnoses (image, MEL, NV, BCC, AK, BKL, DF, VASC, SCC, UNK) joined with
    the metadata file's `lesion_id` (image, age_approx, anatom_site_general, lesion_id, sex).

    Returns:
        The rows, and `(image, reason)` for ground-truth rows without exactly one diagnosis.
    """
    gt_name, meta_name = names
    header, rows = read_csv_rows(ground_truth, gt_name, ("image",))
    columns = [c for c in header if c != "image"]
    if not columns:
        raise DataError(f"{gt_name} has no diagnosis columns")
    lesions: dict[str, str] = {}
    attributes: dict[str, tuple[tuple[str, str], ...]] = {}
    if metadata is not None:
        _, meta_rows = read_csv_rows(metadata, meta_name, ("image", "lesion_id"))
        lesions = {r["image"]: r["lesion_id"] for r in meta_rows}
        attributes = {r["image"]: row_attributes(r) for r in meta_rows}
    out, bad = [], []
    for r in rows:
        try:
            hot = [c for c in columns if float(r[c] or 0) >= 0.5]
        except ValueError:
            hot = []
        if len(hot) != 1:
            bad.append((r["image"], f"{gt_name}: not exactly one diagnosis ({hot or 'none'})"))
            continue
        out.append(
            MetaRow(
                r["image"],
                normalise_diagnosis(hot[0]),
                lesion_id=lesions.get(r["image"], ""),
                attributes=attributes.get(r["image"], ()),
            )
        )
    return out, bad


def parse_isic2020(data: bytes | str, name: str = "train.csv") -> list[MetaRow]:
    """SIIM-ISIC 2020 `train.csv` (image_name, patient_id, sex, age_approx,
    anatom_site_general_challenge, diagnosis, benign_malignant, target).

    `benign_malignant` (or `target`) is kept as the row's own binary label: most 2020 images have
    the diagnosis "unknown", which the binary map leaves to it.
    """
    header, rows = read_csv_rows(data, name, ("image_name", "patient_id", "diagnosis"))
    if "benign_malignant" not in header and "target" not in header:
        raise DataError(f"{name} has neither a benign_malignant nor a target column")
    out = []
    for r in rows:
        if not r["image_name"]:
            continue
        own = r.get("benign_malignant", "").lower()
        if own in (BENIGN, MALIGNANT):
            malignant: bool | None = own == MALIGNANT
        else:
            malignant = {"0": False, "1": True}.get(r.get("target", ""))
        out.append(
            MetaRow(
                r["image_name"],
                normalise_diagnosis(r["diagnosis"]),
                patient_id=r["patient_id"] if r["patient_id"] not in ("", "-1") else "",
                malignant=malignant,
                attributes=row_attributes(r),
            )
        )
    return out


def parse_labels_csv(
    data: bytes | str,
    name: str,
    *,
    image_column: str = "image",
    label_column: str = "label",
    group_columns: Sequence[str] | None = None,
) -> list[MetaRow]:
    """Any dataset: a CSV with an image column (file name, stem or relative path), a label column and
    optional group columns (default: `lesion_id`, `patient_id` and `group`, each where present).

    `lesion_id` and `patient_id` are kept as the row's lesion and patient; every group column joins
    images that share a value into one group.
    """
    header, rows = read_csv_rows(data, name, (image_column, label_column))
    if group_columns is None:
        group_columns = [c for c in ("lesion_id", "patient_id", "group") if c in header]
    else:
        missing = [c for c in group_columns if c not in header]
        if missing:
            raise DataError(f"{name} lacks the group column(s) {missing}; its columns are {header}")
    others = [c for c in group_columns if c not in ("lesion_id", "patient_id")]
    return [
        MetaRow(
            r[image_column],
            r[label_column],
            lesion_id=r["lesion_id"] if "lesion_id" in group_columns else "",
            patient_id=r["patient_id"] if "patient_id" in group_columns else "",
            groups=tuple(f"{c}:{r[c]}" for c in others if r[c]),
            attributes=row_attributes(r),
        )
        for r in rows
        if r[image_column]
    ]
