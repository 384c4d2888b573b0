"""Grouped vs image-level splits on a HAM10000-like synthetic set: fetch time, peak memory, leaks.

Makes (once) a synthetic dataset in HAM10000's layout (patients with several lesions, several photos
of each lesion, a metadata CSV: `skincls.data.synthetic_metadata`), runs `skincls fetch --source-dir`
on it as a whole process (wall time and peak resident memory of that process), and then counts, with
the groups the fetch joined (lesion, patient and duplicate cluster):

- in the fetched manifest (grouped, stratified: what skincls does), the groups found in more than one
  split;
- in a plain image-level split of the same images (the same stratified fractions and seed, each image
  on its own: what a loader without metadata does), the same count, and the test images that have a
  lesion or patient in train.

Needs skincls only (`pip install -e .`):

    python benchmarks/grouped_split.py --n 3000 --workdir WORKDIR
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from skincls.data.splits import assign_splits, load_manifest
from skincls.data.synthetic_metadata import generate_synthetic_metadata


def fetch_process(source: Path, data_dir: Path) -> dict:
    """One `skincls fetch` process; its wall seconds and peak resident memory (MiB)."""
    cmd = [
        str(Path(sys.executable).parent / "skincls"), "fetch", "--source-dir", str(source),
        "--data-dir", str(data_dir), "--force", "--quiet",
    ]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # the largest child so far
    return {"wall_s": round(wall, 1), "peak_rss_mib": round(peak_kib / 1024)}


def leaks(groups: list[str], splits: list[str]) -> dict:
    """Groups in more than one split, their images, and test images sharing a group with train."""
    where: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(groups, splits):
        where[g].add(s)
    shared = {g for g, ss in where.items() if len(ss) > 1}
    return {
        "groups": len(where),
        "groups_across_splits": len(shared),
        "images_in_those_groups": sum(g in shared for g in groups),
        "test_images_with_a_train_group": sum(
            s == "test" and "train" in where[g] for g, s in zip(groups, splits)
        ),
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000, help="images in the synthetic set")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench-grouped-split"))
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    source = args.workdir / f"ham{args.n}"
    if not (source / "HAM10000_metadata.csv").is_file():
        t = time.perf_counter()
        counts = generate_synthetic_metadata(source, args.n, seed=args.seed)
        print(f"generated {args.n} images in {time.perf_counter() - t:.0f} s: {counts}", flush=True)
    report: dict = {"images": args.n, "fetch": fetch_process(source, args.workdir / "data")}

    manifest = load_manifest(args.workdir / "data")
    records = manifest.records
    groups = [r.group for r in records]
    report["lesions"] = len({r.lesion_id for r in records})
    report["patients"] = len({r.patient_id for r in records})
    report["grouped"] = leaks(groups, [r.split for r in records])
    plain = assign_splits([r.label for r in records], [None] * len(records), seed=args.seed)
    report["image_level"] = leaks(groups, plain)
    report["split_sizes"] = {
        "grouped": {s: sum(r.split == s for r in records) for s in ("train", "val", "test")},
        "image_level": {s: plain.count(s) for s in ("train", "val", "test")},
    }
    print(json.dumps(report, indent=2))
    (args.workdir / "grouped_split.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
