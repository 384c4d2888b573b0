"""Subgroup reports and the CLEAR Derm model card on HAM10000's real metadata with synthetic images.

    python benchmarks/subgroups.py --metadata ../shared/data/metadata/HAM10000_metadata.csv \\
        --images 2000 --out WORK/subgroups
    python benchmarks/subgroups.py --smoke    # 80 rows of a CSV it writes itself, 1 epoch, temp dir

`--images N` rows are sampled from the metadata table (whole lesions, malignant share kept); their
lesion, diagnosis, age, sex and site are real, their pictures are drawn by `skincls.data.synthetic`
in HAM10000's layout (`HAM10000_metadata.csv` + `HAM10000_images_part_1/ISIC_*.jpg`). Only a weak
image signal tells malignant from benign (a malignant lesion is drawn malignant-looking with
probability `--signal`, a benign one with 1 - signal), so the metrics are modest and vary by group
by chance alone. Then `skincls fetch` → `skincls train` (smallcnn, no pretrained weights, on the CPU)
→ `skincls evaluate --split test --by sex,age_band,site --model-card`: the subgroup lines, the
model card's CLEAR Derm section and a JSON report (`report.json`) in `--out`.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import _smoke
import numpy as np

MALIGNANT = {"mel", "bcc", "akiec", "scc"}  # skincls's default binary task
COLUMNS = ("lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization")
BY = "sex,age_band,site"


def sample_rows(rows: list[dict], n: int, seed: int) -> list[dict]:
    """About `n` rows, whole lesions, the table's malignant share kept (lesions drawn at random)."""
    lesions: dict[str, list[dict]] = {}
    for row in rows:
        lesions.setdefault(row["lesion_id"], []).append(row)
    rng = np.random.default_rng(seed)
    order = [lesions[k] for k in rng.permutation(sorted(lesions))]
    share = sum(r["dx"] in MALIGNANT for r in rows) / len(rows)
    picked: list[dict] = []
    for malignant, target in ((True, round(n * share)), (False, n - round(n * share))):
        taken = 0
        for group in order:
            if taken >= target:
                break
            if (group[0]["dx"] in MALIGNANT) == malignant:
                picked += group
                taken += len(group)
    return picked


def write_ham(rows: list[dict], root: Path, size: int, signal: float, seed: int) -> Path:
    """`root` in HAM10000's layout: the rows' CSV and one synthetic picture per row."""
    from skincls.data.synthetic import make_lesion

    images = root / "HAM10000_images_part_1"
    images.mkdir(parents=True, exist_ok=True)
    for i, row in enumerate(rows):
        rng = np.random.default_rng([seed, i])
        malignant = row["dx"] in MALIGNANT
        looks = bool(rng.random() < (signal if malignant else 1 - signal))
        make_lesion(looks, rng, size).save(images / f"{row['image_id']}.jpg", quality=90)
    with (root / "HAM10000_metadata.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return root


def skincls(*args: str) -> str:
    """Run one `skincls` command (this interpreter's); its stdout."""
    cmd = [sys.executable, "-m", "skincls", *map(str, args)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{done.stdout}{done.stderr}")
    return done.stdout


def run(args) -> dict:
    """Sample → images → fetch → train → evaluate by subgroups with the model card; the report."""
    from skincls.evaluation.report import EvalReport

    start = time.perf_counter()
    with open(args.metadata, newline="") as fh:
        rows = list(csv.DictReader(fh))
    missing = [c for c in COLUMNS if c not in (rows[0] if rows else {})]
    if missing:
        sys.exit(f"{args.metadata}: not HAM10000's metadata (no {', '.join(missing)} column)")
    rows = sample_rows(rows, args.images, args.seed)
    out = args.out
    write_ham(rows, out / "ham", args.size, args.signal, args.seed)
    made = time.perf_counter()
    data, run_dir, card = out / "data", out / "run", out / "model_card.md"
    skincls(
        "fetch", "--source-dir", out / "ham", "--data-dir", data, "--seed", args.seed, "--quiet"
    )
    skincls(
        "train", "--data-dir", data, "--out", run_dir, "--arch", "smallcnn", "--weights", "none",
        "--freeze", "none", "--image-size", args.size, "--epochs", args.epochs,
        "--batch-size", 32, "--device", "cpu", "--seed", args.seed, "--quiet", "--overwrite",
    )  # fmt: skip
    trained = time.perf_counter()
    evaluate = [
        "evaluate", run_dir / "best.pt", "--data-dir", data, "--split", "test", "--by", BY,
        "--min-group-n", args.min_group_n, "--bootstrap", args.bootstrap, "--calibrate",
        "--target-sensitivity", args.target_sensitivity, "--device", "cpu", "--quiet",
        "--model-card", card, "--json",
    ]  # fmt: skip
    report = EvalReport.model_validate_json(skincls(*evaluate))
    lines = report.metric_lines()
    clear = "## CLEAR Derm" + card.read_text().split("## CLEAR Derm", 1)[1].split("\n## ", 1)[0]
    print("\n".join(lines))
    print()
    print(clear.rstrip())
    result = {
        "metadata": str(args.metadata),
        "images": len(rows),
        "lesions": len({r["lesion_id"] for r in rows}),
        "signal": args.signal,
        "size": args.size,
        "epochs": args.epochs,
        "test_images": report.n_images,
        "roc_auc": report.roc_auc,
        "subgroups": [t.model_dump(mode="json") for t in report.subgroups],
        "model_card": str(card),
        "seconds": {
            "images": round(made - start, 1),
            "fetch_and_train": round(trained - made, 1),
            "evaluate": round(time.perf_counter() - trained, 1),
        },
    }
    (out / "report.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nreport: {out / 'report.json'}")
    return result


def smoke() -> None:
    """80 rows in the real column layout (random ages, sexes, sites) → the whole run, 1 epoch."""
    rng = np.random.default_rng(0)
    dxs = ["nv"] * 5 + ["mel", "bkl", "bcc"]
    with _smoke.scratch(__file__) as tmp:
        csv_path = tmp / "metadata.csv"
        with csv_path.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            for i in range(80):
                lesion = i // 2 if i < 40 else i  # some lesions photographed twice
                writer.writerow([
                    f"HAM_{lesion:07d}", f"ISIC_{24306 + i:07d}", dxs[lesion % len(dxs)], "histo",
                    f"{5 * int(rng.integers(2, 17))}.0", rng.choice(["male", "female", "unknown"]),
                    rng.choice(["back", "trunk", "face", "lower extremity"]),
                ])  # fmt: skip
        run(argparse.Namespace(
            metadata=csv_path, images=80, out=tmp / "out", size=32, epochs=1, signal=0.8,
            min_group_n=10, bootstrap=50, target_sensitivity=0.8, seed=0,
        ))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run on 80 rows (CI)")
    parser.add_argument("--metadata", type=Path, help="HAM10000_metadata.csv (real rows)")
    parser.add_argument("--images", type=int, default=2000, help="rows sampled (whole lesions)")
    parser.add_argument("--out", type=Path, help="work folder (images, data dir, run, report)")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--signal", type=float, default=0.7, help="P(drawn as its own class)")
    parser.add_argument("--min-group-n", type=int, default=30)
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--target-sensitivity", type=float, default=0.8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.smoke:
        return smoke()
    if args.metadata is None or args.out is None:
        parser.error("give --metadata and --out (or --smoke)")
    run(args)


if __name__ == "__main__":
    main()
