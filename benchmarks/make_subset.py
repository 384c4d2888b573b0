"""Make a small, stratified train/valid subset of an extracted image folder.

The source is a folder in ``class/*.jpg`` layout (e.g. the extracted dev archive's ``train/`` with
``benign/`` and ``malignant/``).  The destination gets ``train/<class>/`` and
``valid/<class>/`` holding ``--n-train`` and ``--n-valid`` images, drawn without
replacement with a seeded RNG and split across classes in proportion to the source
class counts.  Files are hard-linked (falling back to copies across filesystems), so
the subset costs no extra disk space.  Images never go into the repository.  Needs only Python.

    python benchmarks/make_subset.py --src DEV/train --dst sub300 \
        --n-train 240 --n-valid 60 --seed 0
    python benchmarks/make_subset.py --smoke    # 8 + 4 of 16 empty files, in a temp dir
"""

import argparse
import os
import random
import shutil
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def allocate(total, counts):
    """Split ``total`` over classes proportionally to ``counts`` (largest remainder)."""
    n = sum(counts.values())
    exact = {c: total * k / n for c, k in counts.items()}
    alloc = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: exact[c] - alloc[c], reverse=True)[
        : total - sum(alloc.values())
    ]:
        alloc[c] += 1
    return alloc


def place(src, dst, copy):
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not copy:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass
    shutil.copy2(src, dst)


def smoke():
    """A subset of 8 train + 4 valid out of 10 + 6 empty .jpg files (nothing is decoded)."""
    import _smoke

    with _smoke.scratch(__file__) as tmp:
        for label, n in (("benign", 10), ("malignant", 6)):
            (tmp / "src" / label).mkdir(parents=True)
            for i in range(n):
                (tmp / "src" / label / f"{i}.jpg").touch()
        main(
            [
                "--src",
                str(tmp / "src"),
                "--dst",
                str(tmp / "dst"),
                "--n-train",
                "8",
                "--n-valid",
                "4",
            ]
        )
        made = {p.relative_to(tmp / "dst").parts[:2] for p in (tmp / "dst").rglob("*.jpg")}
        assert len(list((tmp / "dst").rglob("*.jpg"))) == 12 and len(made) == 4, made


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, help="a train/ folder in class/*.jpg layout")
    ap.add_argument("--dst", type=Path)
    ap.add_argument("--n-train", type=int, default=240)
    ap.add_argument("--n-valid", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--copy", action="store_true", help="copy files instead of hard-linking")
    ap.add_argument("--force", action="store_true", help="replace an existing --dst")
    ap.add_argument("--smoke", action="store_true", help="a quick run on empty files (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke()
    if args.src is None or args.dst is None:
        ap.error("give --src and --dst (or --smoke)")

    files = {
        d.name: sorted(p for p in d.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        for d in sorted(args.src.iterdir())
        if d.is_dir()
    }
    files = {c: fs for c, fs in files.items() if fs}
    if not files:
        ap.error(f"no class folders with images under {args.src}")
    if args.dst.exists():
        if not args.force:
            ap.error(f"{args.dst} exists (use --force to replace it)")
        shutil.rmtree(args.dst)

    counts = {c: len(fs) for c, fs in files.items()}
    n_train, n_valid = allocate(args.n_train, counts), allocate(args.n_valid, counts)
    rng = random.Random(args.seed)
    for c, fs in files.items():
        need = n_train[c] + n_valid[c]
        if need > len(fs):
            ap.error(f"class {c!r} has {len(fs)} images, {need} requested")
        chosen = rng.sample(fs, need)
        for split, part in (("train", chosen[: n_train[c]]), ("valid", chosen[n_train[c] :])):
            for p in part:
                place(p, args.dst / split / c / p.name, args.copy)
        print(f"{c:12s} train {n_train[c]:5d}  valid {n_valid[c]:5d}  (of {len(fs)})")
    print(f"wrote {args.n_train} train + {args.n_valid} valid images to {args.dst}")


if __name__ == "__main__":
    main()
