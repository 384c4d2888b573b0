"""Tiny dermoscopy datasets in the real layouts (HAM10000, ISIC 2019, ISIC 2020), built from the
synthetic HAM10000-like generator: same lesions and photos, each dataset's own CSV and folders."""

from __future__ import annotations

import csv
import shutil
import zipfile
from pathlib import Path

from skincls.data.synthetic_metadata import generate_synthetic_metadata

# Enough of every diagnosis that each class reaches every split.
EVEN_MIX = {"nv": 3, "mel": 2, "bkl": 2, "bcc": 1, "akiec": 1, "vasc": 1, "df": 1}
ISIC2019_COLUMNS = ["MEL", "NV", "BCC", "AK", "BKL", "DF", "VASC", "SCC", "UNK"]
_TO_2019 = {"mel": "MEL", "nv": "NV", "bcc": "BCC", "akiec": "AK", "bkl": "BKL", "df": "DF",
            "vasc": "VASC"}  # fmt: skip
_TO_2020 = {"mel": "melanoma", "nv": "nevus", "bkl": "seborrheic keratosis", "bcc": "unknown",
            "akiec": "unknown", "vasc": "unknown", "df": "unknown"}  # fmt: skip


def ham_rows(root: Path) -> list[dict]:
    with (root / "HAM10000_metadata.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def images_of(root: Path) -> dict[str, Path]:
    return {p.stem: p for p in root.rglob("*.jpg")}


def make_ham(root: Path, n: int = 60, seed: int = 0, size: int = 40, mix=EVEN_MIX) -> Path:
    generate_synthetic_metadata(root, n, seed=seed, size=size, mix=mix)
    return root


def zip_tree(tree: Path, archive: Path, extra: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(tree.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(tree).as_posix())
        for name, arc in (extra or {}).items():
            zf.write(tree / name, arc)
    return archive


def ham_archive(ham: Path, archive: Path) -> Path:
    """As Kaggle serves kmader/skin-cancer-mnist-ham10000: a lower-case copy of both image folders
    and unrelated CSVs next to the metadata file."""
    (ham / "hmnist_8_8_L.csv").write_text("pixel0000,label\n1,2\n")
    extra = {
        p.relative_to(ham).as_posix(): f"{p.parent.name.lower()}/{p.name}"
        for p in sorted(ham.rglob("*.jpg"))
    }
    return zip_tree(ham, archive, extra)


def isic2019_tree(ham: Path, root: Path, *, drop_lesion_of: int = 1) -> Path:
    """ISIC 2019 layout: one-hot ground truth + metadata with lesion_id; images in
    ISIC_2019_Training_Input/ISIC_2019_Training_Input/. One extra ground-truth row has no image,
    one has no diagnosis; the first `drop_lesion_of` images have no lesion_id (as MSK's)."""
    rows = ham_rows(ham)
    img_dir = root / "ISIC_2019_Training_Input" / "ISIC_2019_Training_Input"
    img_dir.mkdir(parents=True)
    files = images_of(ham)
    for r in rows:
        shutil.copy(files[r["image_id"]], img_dir / f"{r['image_id']}.jpg")
    with (root / "ISIC_2019_Training_GroundTruth.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", *ISIC2019_COLUMNS])
        for r in rows:
            w.writerow([r["image_id"], *("1.0" if c == _TO_2019[r["dx"]] else "0.0"
                                         for c in ISIC2019_COLUMNS)])  # fmt: skip
        w.writerow(["ISIC_9999999", *(["1.0"] + ["0.0"] * 8)])  # no such image
        w.writerow(["ISIC_9999998", *(["0.0"] * 9)])  # no diagnosis
    with (root / "ISIC_2019_Training_Metadata.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image", "age_approx", "anatom_site_general", "lesion_id", "sex"])
        for k, r in enumerate(rows):
            lesion = "" if k < drop_lesion_of else r["lesion_id"]
            w.writerow([r["image_id"], r["age"], r["localization"], lesion, r["sex"]])
    return root


def isic2020_tree(ham: Path, root: Path, *, competition: bool = True) -> Path:
    """SIIM-ISIC 2020 layout: train.csv (patient_id, diagnosis, benign_malignant, target) and
    images in jpeg/train/ (competition) or train/ (cdeotte's resized copy); test images unlisted."""
    rows = ham_rows(ham)
    img_dir = root / ("jpeg/train" if competition else "train")
    test_dir = root / ("jpeg/test" if competition else "test")
    img_dir.mkdir(parents=True)
    test_dir.mkdir(parents=True)
    files = images_of(ham)
    for r in rows:
        shutil.copy(files[r["image_id"]], img_dir / f"{r['image_id']}.jpg")
    shutil.copy(files[rows[0]["image_id"]], test_dir / "ISIC_7777777.jpg")
    malignant = {"mel", "bcc", "akiec"}
    with (root / "train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["image_name", "patient_id", "sex", "age_approx",
                    "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target"])  # fmt: skip
        for r in rows:
            bm = "malignant" if r["dx"] in malignant else "benign"
            w.writerow([r["image_id"], r["patient_id"], r["sex"], r["age"], r["localization"],
                        _TO_2020[r["dx"]], bm, int(bm == "malignant")])  # fmt: skip
    (root / "test.csv").write_text("image_name,patient_id\nISIC_7777777,IP_1\n")
    return root


def splits_of(records, key) -> dict[str, set[str]]:
    """Which splits hold each value of `key(record)` (empty values left out)."""
    out: dict[str, set[str]] = {}
    for r in records:
        k = key(r)
        if k:
            out.setdefault(k, set()).add(r.split)
    return out


def across(records, key) -> int:
    return sum(1 for s in splits_of(records, key).values() if len(s) > 1)
