"""Grouped vs image-level splits on a synthetic HAM10000-like dataset: how many lesions and patients
end up on both sides of a split.

    python benchmarks/grouped_split.py make --images 3000 --out WORK/ham3000
    /usr/bin/time -v skincls fetch --source-dir WORK/ham3000 --data-dir WORK/data --quiet
    python benchmarks/grouped_split.py count --data-dir WORK/data
    python benchmarks/grouped_split.py --smoke    # all three on 60 small images in a temp dir

`count` reads the manifest (split by `skincls fetch`: whole groups) and splits the same images again
image by image (`assign_splits` without groups, same fractions and seed) for comparison.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import _smoke

from skincls.data.grouping import groups_across_splits
from skincls.data.splits import assign_splits, load_manifest
from skincls.data.synthetic_metadata import generate_synthetic_metadata


def make(args) -> None:
    start = time.perf_counter()
    counts = generate_synthetic_metadata(args.out, args.images, seed=args.seed, size=args.size)
    print(json.dumps({"images": args.images, "diagnoses": counts,
                      "seconds": round(time.perf_counter() - start, 1)}))  # fmt: skip


def count(args) -> None:
    m = load_manifest(args.data_dir)
    info = m.info
    labels = [r.label for r in m.records]
    lesions = [r.lesion_id for r in m.records]
    patients = [r.patient_id for r in m.records]
    plain = assign_splits(
        labels,
        [None] * len(labels),
        val_fraction=info.val_fraction,
        test_fraction=info.test_fraction,
        seed=info.seed,
    )
    grouped = [r.split for r in m.records]
    train_lesions = {lesions[j] for j, s in enumerate(plain) if s == "train"}
    result = {
        "images": len(m.records),
        "lesions": len(set(lesions)),
        "patients": len(set(patients)),
        "groups": info.groups.n_groups,
        "grouped_split": {
            "lesions_across_splits": groups_across_splits(lesions, grouped),
            "patients_across_splits": groups_across_splits(patients, grouped),
            "counts": m.counts(),
        },
        "image_level_split": {
            "lesions_across_splits": groups_across_splits(lesions, plain),
            "patients_across_splits": groups_across_splits(patients, plain),
            "test_images_sharing_a_lesion_with_train": sum(
                1 for i, s in enumerate(plain) if s == "test" and lesions[i] in train_lesions
            ),
        },
    }
    print(json.dumps(result, indent=2))


def smoke() -> None:
    """make → fetch (as `skincls fetch --source-dir` does) → count, on 60 images of 32 px."""
    from skincls import fetch

    with _smoke.scratch(__file__) as tmp:
        make(argparse.Namespace(out=tmp / "ham", images=60, seed=0, size=32))
        fetch(tmp / "data", source_dir=tmp / "ham", seed=0)
        count(argparse.Namespace(data_dir=tmp / "data"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run of all three (CI)")
    sub = parser.add_subparsers(dest="cmd")
    p = sub.add_parser("make", help="write a HAM10000-like synthetic dataset")
    p.add_argument("--images", type=int, default=3000)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224)
    p.set_defaults(fn=make)
    c = sub.add_parser("count", help="lesions and patients across splits: grouped vs image-level")
    c.add_argument("--data-dir", type=Path, required=True)
    c.set_defaults(fn=count)
    args = parser.parse_args()
    if args.smoke:
        return smoke()
    if args.cmd is None:
        parser.error("give a command: make or count (or --smoke)")
    args.fn(args)


if __name__ == "__main__":
    main()
