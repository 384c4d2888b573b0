"""Tiny clinical-photo datasets in the real layouts (PAD-UFES-20, DDI, Fitzpatrick17k), built from
the synthetic HAM10000-like generator's photos: each dataset's own CSV, columns and file names."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from .dermo import ham_rows, images_of

PAD_COLUMNS = [
    "patient_id", "lesion_id", "smoke", "drink", "background_father", "background_mother",
    "age", "pesticide", "gender", "skin_cancer_history", "cancer_history", "has_piped_water",
    "has_sewage_system", "fitspatrick", "region", "diameter_1", "diameter_2", "diagnostic",
    "itch", "grew", "hurt", "changed", "bleed", "elevation", "img_id", "biopsed",
]  # fmt: skip
# HAM10000 diagnosis → PAD-UFES-20's (it has no df or vasc: those become BCC and SCC here).
TO_PAD = {"nv": "NEV", "mel": "MEL", "bkl": "SEK", "bcc": "BCC", "akiec": "ACK", "df": "BCC",
          "vasc": "SCC"}  # fmt: skip
TO_DDI = {"nv": ("melanocytic-nevi", False), "mel": ("melanoma-in-situ", True),
          "bkl": ("seborrheic-keratosis", False), "bcc": ("basal-cell-carcinoma", True),
          "akiec": ("actinic-keratosis", False), "df": ("verruca-vulgaris", False),
          "vasc": ("mycosis-fungoides", True)}  # fmt: skip
TO_F17K = {"nv": ("nevocytic nevus", "benign"), "mel": ("melanoma", "malignant"),
           "bkl": ("seborrheic keratosis", "benign"), "bcc": ("basal cell carcinoma", "malignant"),
           "akiec": ("psoriasis", "non-neoplastic"), "df": ("kaposi sarcoma", "malignant"),
           "vasc": ("port wine stain", "benign")}  # fmt: skip


def _png(src: Path, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.open(src).save(dest)


def pad_ufes20_tree(ham: Path, root: Path) -> Path:
    """PAD-UFES-20 as Mendeley serves it: metadata.csv, PNGs in images/imgs_part_1..3, named
    PAT_<patient>_<lesion>_<n>.png; one row's image is missing."""
    rows, files = ham_rows(ham), images_of(ham)
    root.mkdir(parents=True)
    with (root / "metadata.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=PAD_COLUMNS)
        w.writeheader()
        for k, r in enumerate(rows):
            patient = "PAT_" + r["patient_id"].split("_")[-1].lstrip("0")
            lesion = str(int(r["lesion_id"].split("_")[-1]))
            img = f"{patient}_{lesion}_{k}.png"
            if k:  # the first row's image is not there
                _png(files[r["image_id"]], root / "images" / f"imgs_part_{k % 3 + 1}" / img)
            w.writerow({
                **dict.fromkeys(PAD_COLUMNS, "False"), "patient_id": patient, "lesion_id": lesion,
                "background_father": "POMERANIA", "background_mother": "GERMANY",
                "age": r["age"], "gender": r["sex"].upper(), "fitspatrick": f"{k % 6 + 1}.0",
                "region": "NECK", "diameter_1": "6.0", "diameter_2": "5.0",
                "diagnostic": TO_PAD[r["dx"]], "img_id": img,
                "biopsed": str(TO_PAD[r["dx"]] in ("BCC", "SCC", "MEL")),
            })  # fmt: skip
    return root


def ddi_tree(ham: Path, root: Path) -> Path:
    """DDI as Stanford AIMI serves it: ddi_metadata.csv (an unnamed index column, DDI_ID,
    DDI_file, skin_tone, malignant, disease) and 000001.png … next to it."""
    rows, files = ham_rows(ham), images_of(ham)
    root.mkdir(parents=True)
    with (root / "ddi_metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["", "DDI_ID", "DDI_file", "skin_tone", "malignant", "disease"])
        for k, r in enumerate(rows):
            disease, malignant = TO_DDI[r["dx"]]
            name = f"{k + 1:06d}.png"
            _png(files[r["image_id"]], root / name)
            w.writerow([k, k + 1, name, (12, 34, 56)[k % 3], malignant, disease])
    return root


def fitzpatrick17k_tree(ham: Path, root: Path) -> Path:
    """Fitzpatrick17k: fitzpatrick17k.csv and the images its users download, named md5hash.jpg,
    in images/; the first row's quality check says wrongly labelled."""
    rows, files = ham_rows(ham), images_of(ham)
    (root / "images").mkdir(parents=True)
    cols = ["md5hash", "fitzpatrick_scale", "fitzpatrick_centaur", "label",
            "nine_partition_label", "three_partition_label", "qc", "url", "url_alphanum"]  # fmt: skip
    with (root / "fitzpatrick17k.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(cols)
        for k, r in enumerate(rows):
            label, three = TO_F17K[r["dx"]]
            md5 = f"{k:032x}"
            (root / "images" / f"{md5}.jpg").write_bytes(files[r["image_id"]].read_bytes())
            qc = "3 Wrongly labelled" if k == 0 else ("1 Diagnostic" if k % 5 == 0 else "")
            w.writerow([md5, (k % 7) - 1 or -1, k % 6 + 1, label, "some partition", three, qc,
                        f"https://example.org/{md5}.jpg", f"httpsexampleorg{md5}jpg"])  # fmt: skip
    return root
