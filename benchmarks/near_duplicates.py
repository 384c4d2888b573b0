"""Near-duplicate search at ISIC 2024's size: the multi-index hash against the all-pairs comparison.

    nice -n 5 python benchmarks/near_duplicates.py random --images 400000 --planted 2000
    nice -n 5 python benchmarks/near_duplicates.py archive DEV_ZIP
    python benchmarks/near_duplicates.py --smoke    # both on a few thousand hashes / 32 images

`random`: random 64-bit hashes (8 orientations, pHash and dHash) with `--planted` near copies (a
turned copy of another image with 0 to `--max-distance` pHash bits flipped): the search's wall time
and whether every planted pair is found; on a sample of `--check` images, identical pairs to the
all-pairs comparison. `archive`: the perceptual hashes of every image in a zip (as fetch computes
them); the pairs of both searches, which must be identical. Each run prints the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import zipfile
from pathlib import PurePosixPath

import _smoke
import numpy as np

from skincls.data import dedup


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _planted(n: int, planted: int, max_distance: int, seed: int):
    """Random hashes and the `(i, j, bits)` near copies planted in them."""
    rng = np.random.default_rng(seed)
    h = rng.integers(0, 2**64, size=(n, 2, 8), dtype=np.uint64)
    rows = rng.permutation(n)[: 2 * planted].reshape(-1, 2)
    pairs = []
    for p, (i, j) in enumerate(rows.tolist()):
        k, bits = int(rng.integers(8)), p % (max_distance + 1)
        flip = sum(1 << int(b) for b in rng.choice(64, bits, replace=False))
        h[j, :, 0] = h[i, :, k]
        h[j, 0, 0] ^= np.uint64(flip)
        pairs.append((min(i, j), max(i, j), bits))
    return h, pairs


def run_random(args) -> dict:
    h, pairs = _planted(args.images, args.planted, args.max_distance, args.seed)
    load = _load()
    start = time.perf_counter()
    confirmed, rejected = dedup.near_duplicate_pairs(h, args.max_distance)
    seconds = time.perf_counter() - start
    found = {(i, j): d for i, j, d in confirmed}
    missed = [p for p in pairs if found.get(p[:2], 99) > p[2]]
    sample = h[: args.check]
    same = dedup._all_pairs(sample, args.max_distance, 10, None) == _indexed(
        sample, args.max_distance
    )
    return {
        "images": args.images,
        "planted_pairs": len(pairs),
        "planted_found": len(pairs) - len(missed),
        "pairs_confirmed": len(confirmed),
        "pairs_rejected": len(rejected),
        "seconds": round(seconds, 2),
        "check_images": len(sample),
        "identical_to_all_pairs": same,
        "load_before": load,
        "load_after": _load(),
    }


def _indexed(hashes: np.ndarray, max_distance: int):
    """`near_duplicate_pairs` through the multi-index hash, whatever the number of images."""
    below = dedup._BRUTE_FORCE_BELOW
    dedup._BRUTE_FORCE_BELOW = 0
    try:
        return dedup.near_duplicate_pairs(hashes, max_distance)
    finally:
        dedup._BRUTE_FORCE_BELOW = below


def archive_hashes(archive) -> np.ndarray:
    """Perceptual hashes of every image in a zip, decoded as fetch decodes them."""
    from skincls.data.images import IMAGE_SUFFIXES, decode_image

    out = []
    with zipfile.ZipFile(archive) as zf:
        for name in sorted(zf.namelist()):
            if PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES:
                out.append(dedup.perceptual_hashes(decode_image(zf.read(name))))
    return np.stack(out)


def run_archive(args) -> dict:
    h = archive_hashes(args.archive)
    load = _load()
    timings, results = {}, {}
    for name, search in (
        ("all_pairs", lambda: dedup._all_pairs(h, args.max_distance, 10, None)),
        ("multi_index", lambda: _indexed(h, args.max_distance)),
    ):
        start = time.perf_counter()
        results[name] = search()
        timings[name] = round(time.perf_counter() - start, 3)
    return {
        "images": len(h),
        "pairs_confirmed": len(results["multi_index"][0]),
        "pairs_rejected": len(results["multi_index"][1]),
        "identical": results["all_pairs"] == results["multi_index"],
        "seconds": timings,
        "load_before": load,
        "load_after": _load(),
    }


def smoke() -> None:
    ns = argparse.Namespace(images=5000, planted=50, max_distance=2, seed=0, check=600)
    result = run_random(ns)
    print(json.dumps(result))
    assert result["planted_found"] == result["planted_pairs"] and result["identical_to_all_pairs"]
    with _smoke.scratch(__file__) as tmp:
        archive = _smoke.synthetic_archive(tmp, images=32)
        result = run_archive(argparse.Namespace(archive=archive, max_distance=2))
        print(json.dumps(result))
        assert result["identical"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run of both (CI)")
    sub = parser.add_subparsers(dest="cmd")
    r = sub.add_parser("random", help="random hashes with planted near copies")
    r.add_argument("--images", type=int, default=400_000)
    r.add_argument("--planted", type=int, default=2000)
    r.add_argument("--check", type=int, default=5000, help="images compared with all pairs too")
    r.add_argument("--seed", type=int, default=0)
    r.set_defaults(fn=run_random)
    a = sub.add_parser("archive", help="the hashes of a zip's images: both searches")
    a.add_argument("archive")
    a.set_defaults(fn=run_archive)
    for p in (r, a):
        p.add_argument("--max-distance", type=int, default=dedup.DEFAULT_NEAR_DUP_DISTANCE)
    args = parser.parse_args()
    if args.smoke:
        return smoke()
    if args.cmd is None:
        parser.error("give a command: random or archive (or --smoke)")
    print(json.dumps(args.fn(args), indent=2))


if __name__ == "__main__":
    main()
