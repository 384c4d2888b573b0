"""Clinical-photo datasets used for external validation: PAD-UFES-20, DDI and Fitzpatrick17k.

Each parser reads the dataset's own metadata CSV (column names as the real downloads have them)
into one `MetaRow` per image: the diagnosis as a canonical code (`metadata.DIAGNOSES`) where the
dataset's name for it has one, else the dataset's own name, lower-cased, as its own code; the
dataset's own benign/malignant label where it has one; lesion and patient where it records them;
and its clinical columns as attributes (Fitzpatrick type as `fitzpatrick`, I–VI or a DDI band).

How each dataset's labels map is written out in `LABEL_NOTES` and recorded, with the map itself
(`LABEL_MAPS`), in `dataset.json`'s `metadata`. Nothing is dropped silently: a row left out (no
image, a Fitzpatrick17k row its own quality check calls wrongly labelled, a non-neoplastic
condition in the binary task) is counted in `dataset.json` and listed in `skipped.csv`.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from ..errors import DataError
from .metadata import MetaRow, normalise_diagnosis, read_csv_rows

__all__ = [
    "LABEL_MAPS",
    "LABEL_NOTES",
    "fitzpatrick_type",
    "parse_ddi",
    "parse_fitzpatrick17k",
    "parse_pad_ufes20",
]

# PAD-UFES-20 `diagnostic` → canonical code. BOD (Bowen's disease) is in SCC in the published
# release; an older copy that lists it apart is read as PAD's own paper groups it: with SCC.
PAD_UFES20_MAP = {
    "ACK": "akiec",
    "BCC": "bcc",
    "MEL": "mel",
    "NEV": "nv",
    "SCC": "scc",
    "BOD": "scc",
    "SEK": "bkl",
}
# DDI `disease` (hyphenated) → canonical code, for the diseases that have one; the others
# diseases keep their own name as their code.
DDI_MAP = {
    "melanoma": "mel",
    "melanoma-in-situ": "mel",
    "melanoma-acral-lentiginous": "mel",
    "nodular-melanoma-(nm)": "mel",
    "lentigo-maligna": "mel",
    "basal-cell-carcinoma": "bcc",
    "basal-cell-carcinoma-superficial": "bcc",
    "basal-cell-carcinoma-nodular": "bcc",
    "squamous-cell-carcinoma": "scc",
    "squamous-cell-carcinoma-in-situ": "scc",
    "squamous-cell-carcinoma-keratoacanthoma": "scc",
    "actinic-keratosis": "akiec",
    "seborrheic-keratosis": "bkl",
    "seborrheic-keratosis-irritated": "bkl",
    "solar-lentigo": "bkl",
    "dermatofibroma": "df",
    "pyogenic-granuloma": "vasc",
    "angioma": "vasc",
    "hemangioma": "vasc",
    "melanocytic-nevi": "nv",
    "blue-nevus": "nv",
    "dysplastic-nevus": "nv",
}
# Fitzpatrick17k `label` (114 conditions) → canonical code, for those that have one.
FITZPATRICK17K_MAP = {
    "melanoma": "mel",
    "malignant melanoma": "mel",
    "superficial spreading melanoma ssm": "mel",
    "lentigo maligna": "mel",
    "basal cell carcinoma": "bcc",
    "basal cell carcinoma morpheiform": "bcc",
    "squamous cell carcinoma": "scc",
    "actinic keratosis": "akiec",
    "seborrheic keratosis": "bkl",
    "solar lentigo": "bkl",
    "dermatofibroma": "df",
    "pyogenic granuloma": "vasc",
    "nevocytic nevus": "nv",
    "halo nevus": "nv",
    "congenital nevus": "nv",
}
LABEL_MAPS = {"pad_ufes20": PAD_UFES20_MAP, "ddi": DDI_MAP, "fitzpatrick17k": FITZPATRICK17K_MAP}
LABEL_NOTES = {
    "pad_ufes20": [
        "diagnostic → canonical code by label_map; BOD (Bowen's disease) counts with SCC, as "
        "PAD-UFES-20's own release groups it",
        "ACK (actinic keratosis, pre-malignant) is akiec, malignant in the default binary map as "
        "for HAM10000 and ISIC 2019 (the models trained on them learnt it so); PAD-UFES-20's own "
        "cancer / non-cancer split counts it non-cancer: give the malignant codes bcc, mel, scc for that",
        "BCC, SCC and MEL are biopsy-proven; ACK, NEV and SEK mostly clinical (dx_type histo or "
        "consensus, from biopsed)",
    ],
    "ddi": [
        "disease → canonical code by label_map where it has one, else the disease name as its "
        "own code",
        "binary task: the default map decides the diseases in it; every other disease takes DDI's "
        "own biopsy-proven malignant column (label_disagreements counts the images where the map "
        "and that column differ, e.g. actinic keratosis: akiec, malignant by the map, benign in DDI)",
        "skin_tone 12 / 34 / 56 is Fitzpatrick I-II / III-IV / V-VI (attribute fitzpatrick)",
    ],
    "fitzpatrick17k": [
        "label → canonical code by label_map where it has one, else the condition's name as its "
        "own code",
        "binary task: three_partition_label decides the conditions outside the default map "
        "(benign, malignant); non-neoplastic conditions are neither, so they are left out of the "
        "binary task, each listed in skipped.csv (the multiclass task keeps them)",
        "rows whose qc column says '3 Wrongly labelled' are left out (rows_unreadable)",
        "images are not distributed: download them from the url column, named md5hash.jpg",
    ],
}
_ROMAN = {1: "I", 2: "II", 3: "III", 4: "IV", 5: "V", 6: "VI"}
_DDI_TONE = {"12": "I-II", "34": "III-IV", "56": "V-VI"}
_TRUE, _FALSE = {"true", "1", "1.0", "yes"}, {"false", "0", "0.0", "no"}


def fitzpatrick_type(value: str) -> str:
    """A Fitzpatrick skin type (`3`, `3.0`, `III`) as a Roman numeral I–VI; "" if not one."""
    v = value.strip().upper()
    if v in _ROMAN.values():
        return v
    try:
        n = float(v)
    except ValueError:
        return ""
    return _ROMAN.get(int(n), "") if n == int(n) else ""


def _flag(value: str) -> bool | None:
    v = value.strip().lower()
    return True if v in _TRUE else False if v in _FALSE else None


def _code(raw: str, table: dict[str, str]) -> str:
    key = raw.strip()
    return table.get(key, table.get(key.lower(), normalise_diagnosis(key)))


def _stem(name: str) -> str:
    return PurePosixPath(name.strip().replace("\\", "/")).stem if name.strip() else ""


# PAD-UFES-20 columns carried as they are (the clinical features), besides those renamed.
_PAD_CLINICAL = (
    "smoke", "drink", "background_father", "background_mother", "pesticide",
    "skin_cancer_history", "cancer_history", "has_piped_water", "has_sewage_system",
    "diameter_1", "diameter_2", "itch", "grew", "hurt", "changed", "bleed", "elevation",
    "biopsed",
)  # fmt: skip


def parse_pad_ufes20(data: bytes | str, name: str = "metadata.csv") -> list[MetaRow]:
    """PAD-UFES-20 `metadata.csv` (patient_id, lesion_id, … fitspatrick, region, …, diagnostic,
    …, img_id, biopsed): one row per smartphone image `img_id` (`PAT_46_881_14.png`).

    Diagnoses by `PAD_UFES20_MAP`; lesion ids are qualified by patient (`PAT_46/881`);
    attributes: sex (gender), age, site (region), fitzpatrick (fitspatrick, as I–VI), dx_type
    (histo where biopsed, else consensus) and the 22 clinical features under their own names.
    """
    _, rows = read_csv_rows(data, name, ("patient_id", "lesion_id", "diagnostic", "img_id"))
    out = []
    for r in rows:
        if not r["img_id"]:
            continue
        biopsy = _flag(r.get("biopsed", ""))
        attrs = {
            "sex": r.get("gender", "").lower(),
            "age": r.get("age", ""),
            "site": r.get("region", "").lower(),
            "fitzpatrick": fitzpatrick_type(r.get("fitspatrick", "")),
            "dx_type": {True: "histo", False: "consensus"}.get(biopsy, ""),  # type: ignore[arg-type]
            **{c: r.get(c, "") for c in _PAD_CLINICAL},
        }
        lesion = f"{r['patient_id']}/{r['lesion_id']}" if r["lesion_id"] else ""
        out.append(
            MetaRow(
                _stem(r["img_id"]),
                _code(r["diagnostic"], PAD_UFES20_MAP),
                lesion_id=lesion,
                patient_id=r["patient_id"],
                attributes=_present(attrs),
            )
        )
    return out


def parse_ddi(data: bytes | str, name: str = "ddi_metadata.csv") -> list[MetaRow]:
    """DDI `ddi_metadata.csv` (DDI_ID, DDI_file, skin_tone, malignant, disease; an early release
    has `malignancy(malig=1)` for malignant): 656 biopsy-proven images, no patient or lesion ids.

    The `malignant` column is kept as the row's own benign/malignant label; `skin_tone` (12, 34,
    56) becomes the `fitzpatrick` attribute I-II, III-IV, V-VI.
    """
    header, rows = read_csv_rows(data, name, ("DDI_file", "skin_tone", "disease"))
    column = next((c for c in ("malignant", "malignancy(malig=1)") if c in header), None)
    if column is None:
        raise DataError(f"{name} has neither a malignant nor a malignancy(malig=1) column")
    out = []
    for r in rows:
        if not r["DDI_file"]:
            continue
        attrs = {"fitzpatrick": _DDI_TONE.get(r["skin_tone"].split(".")[0], ""), "dx_type": "histo"}
        out.append(
            MetaRow(
                _stem(r["DDI_file"]),
                _code(r["disease"], DDI_MAP),
                malignant=_flag(r[column]),
                attributes=_present(attrs),
            )
        )
    return out


def parse_fitzpatrick17k(
    data: bytes | str, name: str = "fitzpatrick17k.csv"
) -> tuple[list[MetaRow], list[tuple[str, str]]]:
    """Fitzpatrick17k `fitzpatrick17k.csv` (md5hash, fitzpatrick_scale, fitzpatrick_centaur,
    label, nine_partition_label, three_partition_label, qc, url, url_alphanum): images named
    `md5hash.jpg`, downloaded from `url` (the dataset ships no images).

    Conditions by `FITZPATRICK17K_MAP`; `three_partition_label` benign/malignant is the row's own
    binary label (non-neoplastic: none); Fitzpatrick type from `fitzpatrick_scale` (-1: unknown).

    Returns:
        The rows, and `(md5hash, reason)` for rows its quality check calls wrongly labelled.
    """
    _, rows = read_csv_rows(data, name, ("md5hash", "label", "three_partition_label"))
    out, bad = [], []
    for r in rows:
        if not r["md5hash"]:
            continue
        if r.get("qc", "").startswith("3"):
            bad.append((r["md5hash"], f"{name}: qc {r['qc']!r}"))
            continue
        three = r["three_partition_label"].strip().lower()
        attrs = {
            "fitzpatrick": fitzpatrick_type(r.get("fitzpatrick_scale", "")),
            "fitzpatrick_centaur": fitzpatrick_type(r.get("fitzpatrick_centaur", "")),
            "nine_partition_label": r.get("nine_partition_label", ""),
            "three_partition_label": three,
            "qc": r.get("qc", ""),
        }
        out.append(
            MetaRow(
                r["md5hash"],
                _code(r["label"], FITZPATRICK17K_MAP),
                malignant={"malignant": True, "benign": False}.get(three),
                attributes=_present(attrs),
            )
        )
    return out, bad


def _present(attrs: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple((k, v) for k, v in attrs.items() if v)
