"""Fetch at the field's sizes: ISIC 2024's layout at 10k-160k images, and the process pool's speed-up.

    nice -n 5 python benchmarks/fetch_scale.py isic2024 --work WORK --sizes 10000 40000 160000
    nice -n 5 python benchmarks/fetch_scale.py isic2020 --work WORK --metadata isic2020_train.csv
    python benchmarks/fetch_scale.py --smoke    # both on a few hundred tiny images in a temp dir

`isic2024`: for each size, a synthetic source in ISIC 2024's layout (`train-image.hdf5` holding
JPEG crops of `--size` px, `train-metadata.csv` with its real column names, ~385 images per patient
as in the real set) and `skincls.fetch(dataset='isic2024', source_dir=...)` in a fresh process:
wall time and peak memory (the whole process tree: fetch and its workers; the fetch process's
peak RSS, and its peak anonymous RSS: memory not backed by a file, sampled), then a straight-line
fit of time (and of the fetch process's peak memory) on size, extrapolated to ISIC 2024's 401,059
images; `--keep` keeps the sources, and a later run reuses them. `isic2020`: SIIM-ISIC 2020's real
`train.csv` rows (`--metadata`) with generated 256 px JPEGs, zipped in the resized Kaggle dataset's
layout (`train.csv`, `train/<image_name>.jpg`), fetched with `workers=1` (one process: the serial
path) and with every core, one after the other in one run: the ratio is the speed-up. Each
measurement prints the load average before and after (the machine may be shared).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import _smoke

ISIC2024 = 401_059
_PER_PATIENT = 385  # 401,059 images of 1,042 patients
_SITES = ("posterior torso", "anterior torso", "lower extremity", "upper extremity", "head/neck")
_CHILD = """
import json, resource, sys, time
from skincls.data.fetch import fetch
kwargs = json.loads(sys.argv[1])
start, stages = time.perf_counter(), {}

def on_progress(stage, done, total):  # first and last call of each stage
    now = time.perf_counter() - start
    stages.setdefault(stage, [now, now])[1] = now

report = fetch(kwargs.pop("data_dir"), on_progress=on_progress, **kwargs)
wall = time.perf_counter() - start
me, kids = (resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
print(json.dumps({"wall_s": round(wall, 2), "images": report.info.n_kept,
                  "stages_s": {k: [round(a, 1), round(b, 1)] for k, (a, b) in stages.items()},
                  "cpu_main_s": round(me.ru_utime + me.ru_stime, 1),
                  "cpu_workers_s": round(kids.ru_utime + kids.ru_stime, 1),
                  "main_maxrss_mib": round(me.ru_maxrss / 1024)}))
"""


def lesion_jpegs(n: int, size: int, seed: int = 0) -> Iterator[bytes]:
    """`n` distinct synthetic lesion JPEGs: 256 generated lesions, each image one of them blended
    with its own low-frequency colour noise (no two within the near-duplicate distance)."""
    import numpy as np
    from PIL import Image

    from skincls.data.synthetic import make_lesion

    rng = np.random.default_rng(seed)
    bases = [make_lesion(bool(i % 2), rng, size=size) for i in range(min(n, 256))]
    for _ in range(n):
        noise = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        noise = Image.fromarray(noise).resize((size, size), Image.Resampling.BICUBIC)
        im = Image.blend(bases[int(rng.integers(len(bases)))], noise, 0.5)
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=90)
        yield buf.getvalue()


def make_isic2024(out: Path, n: int, size: int, seed: int = 0) -> Path:
    """ISIC 2024's layout: `train-image.hdf5` (JPEG bytes by isic_id) + `train-metadata.csv`.

    As in the real set, each patient keeps one age, sex and hospital (one total-body photograph per
    patient), the body site varies between a patient's lesions, and ~5.5% of the crops (22,058 of
    401,059) carry a `lesion_id` of their own."""
    import h5py
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    columns = ["isic_id", "target", "patient_id", "age_approx", "sex", "anatom_site_general",
               "tbp_lv_areaMM2", "tbp_lv_location_simple", "attribution", "lesion_id"]  # fmt: skip
    patients = max(2, n // _PER_PATIENT)
    age, sex, hospital = (rng.integers(k, size=patients) for k in (12, 2, 7))
    with (
        h5py.File(out / "train-image.hdf5", "w") as f,
        open(out / "train-metadata.csv", "w", newline="") as fh,
    ):
        w = csv.writer(fh)
        w.writerow(columns)
        for i, data in enumerate(lesion_jpegs(n, size, seed)):
            isic_id = f"ISIC_{i:07d}"
            f.create_dataset(isic_id, data=np.bytes_(data))
            target = int(i % 1000 == 0)  # ~0.1% malignant, as in the real set
            p = int(rng.integers(patients))
            lesion = f"IL_{i:07d}" if rng.random() < 0.055 else ""
            w.writerow([isic_id, target, f"IP_{p:07d}", str(30 + 5 * int(age[p])),
                        ("male", "female")[sex[p]], _SITES[int(rng.integers(len(_SITES)))],
                        f"{rng.random() * 20:.2f}", "Torso Back", f"Hospital {hospital[p]}",
                        lesion])  # fmt: skip
    return out


def make_isic2020(archive: Path, metadata: Path, size: int, limit: int | None = None) -> Path:
    """The resized SIIM-ISIC 2020 Kaggle dataset's layout, zipped: real `train.csv` rows, one
    generated JPEG per row under `train/`."""
    text = metadata.read_text(encoding="utf-8-sig")
    rows = list(csv.DictReader(io.StringIO(text)))[:limit]
    archive.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        buf = io.StringIO()
        w = csv.DictWriter(buf, list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        zf.writestr("train.csv", buf.getvalue())
        for row, data in zip(rows, lesion_jpegs(len(rows), size)):
            zf.writestr(f"train/{row['image_name']}.jpg", data)
    return archive


def _tree_rss(pid: int) -> int:
    """Memory of `pid` and all its descendants (Linux /proc), shared pages counted once."""
    parent: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parent[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, todo = set(), [pid]
    while todo:
        p = todo.pop()
        tree.add(p)
        todo += [c for c, pp in parent.items() if pp == p and c not in tree]
    total = 0
    for p in tree:  # proportional set size: pages a forked worker shares are counted once
        try:
            rollup = Path(f"/proc/{p}/smaps_rollup").read_text().splitlines()
            total += 1024 * int(next(x for x in rollup if x.startswith("Pss:")).split()[1])
        except (OSError, StopIteration, IndexError, ValueError):
            continue
    return total


def _anon_rss(pid: int) -> int:
    """Anonymous resident memory of `pid` (`RssAnon`: heap and mappings no file backs), bytes."""
    try:
        status = Path(f"/proc/{pid}/status").read_text().splitlines()
        return 1024 * int(next(x for x in status if x.startswith("RssAnon:")).split()[1])
    except (OSError, StopIteration, IndexError, ValueError):
        return 0


def measure_fetch(**kwargs) -> dict:
    """`skincls.fetch(**kwargs)` in a fresh process: its wall time, and the peak memory of the
    process tree (sampled every 0.2 s) and of the fetch process itself (its peak RSS, and its
    anonymous RSS sampled with the tree's)."""
    load = [round(x, 2) for x in os.getloadavg()]
    args = [sys.executable, "-c", _CHILD, json.dumps({k: str(v) if isinstance(v, Path) else v
                                                     for k, v in kwargs.items()})]  # fmt: skip
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    peak = anon = 0
    while proc.poll() is None:
        peak, anon = max(peak, _tree_rss(proc.pid)), max(anon, _anon_rss(proc.pid))
        time.sleep(0.2)
    out = proc.stdout.read()
    if proc.returncode:
        raise SystemExit(f"fetch failed ({proc.returncode}): {out}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(peak_tree_pss_mib=round(peak / 2**20), peak_main_anon_mib=round(anon / 2**20),
                  load_before=load, load_after=[round(x, 2) for x in os.getloadavg()])  # fmt: skip
    return result


def run_isic2024(args) -> dict:
    results = []
    for n in args.sizes:
        src, data = args.work / f"isic2024-{n}", args.work / f"isic2024-{n}-data"
        start = time.perf_counter()
        if not (src / "train-metadata.csv").is_file():
            make_isic2024(src, n, args.size)
        made = round(time.perf_counter() - start, 1)
        shutil.rmtree(data, ignore_errors=True)
        r = measure_fetch(data_dir=data, source_dir=src, dataset="isic2024", workers=args.workers)
        r.update(
            size=n, make_s=made, hdf5_mib=round((src / "train-image.hdf5").stat().st_size / 2**20)
        )
        print(json.dumps(r), flush=True)
        results.append(r)
        if not args.keep:
            shutil.rmtree(data, ignore_errors=True)
            shutil.rmtree(src, ignore_errors=True)
    return {"runs": results, **_extrapolate(results)}


def _extrapolate(results: list[dict]) -> dict:
    """Least-squares lines of wall time and of the fetch process's peak memory on images,
    evaluated at ISIC 2024's size."""
    if len(results) < 2:
        return {}
    xs = [r["images"] for r in results]
    time_slope, time_at = _fit(xs, [r["wall_s"] for r in results])
    rss_slope, rss_at = _fit(xs, [r["main_maxrss_mib"] for r in results])
    anon_slope, _ = _fit(xs, [r["peak_main_anon_mib"] for r in results])
    return {
        "ms_per_image": round(time_slope * 1000, 3),
        "intercept_s": round(time_at(0), 1),
        f"extrapolated_s_at_{ISIC2024}": round(time_at(ISIC2024)),
        "main_rss_bytes_per_image": round(rss_slope * 2**20),
        f"main_rss_mib_at_{ISIC2024}": round(rss_at(ISIC2024)),
        "main_anon_bytes_per_image": round(anon_slope * 2**20),
    }


def _fit(xs: list[float], ys: list[float]):
    """Slope of the least-squares line through `(xs, ys)`, and the line as a function."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return slope, lambda x: my + slope * (x - mx)


def run_isic2020(args) -> dict:
    archive = args.work / "isic2020.zip"
    start = time.perf_counter()
    if not archive.is_file():
        make_isic2020(archive, args.metadata, args.size, args.images)
    made = round(time.perf_counter() - start, 1)
    out = {"make_s": made, "archive_mib": round(archive.stat().st_size / 2**20)}
    for name, workers in (("serial", 1), ("pool", args.workers)):
        data = args.work / f"isic2020-{name}"
        shutil.rmtree(data, ignore_errors=True)  # a fresh data dir: no hash cache
        out[name] = measure_fetch(data_dir=data, archive=archive, workers=workers)
        out[name]["workers"] = workers or len(os.sched_getaffinity(0))
        print(json.dumps({name: out[name]}), flush=True)
        shutil.rmtree(data, ignore_errors=True)
    out["speed_up"] = round(out["serial"]["wall_s"] / out["pool"]["wall_s"], 2)
    return out


def smoke() -> None:
    _smoke.require("fetch_scale.py", ["h5py"], "pip install -e '.[hdf5]'")
    with _smoke.scratch(__file__) as tmp:
        ns = argparse.Namespace(work=tmp, sizes=[60, 300], size=32, workers=None, keep=False)
        result = run_isic2024(ns)
        print(json.dumps(result))
        assert [r["images"] for r in result["runs"]] == [60, 300]
        meta = tmp / "train.csv"
        with open(meta, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["image_name", "patient_id", "sex", "age_approx",
                        "anatom_site_general_challenge", "diagnosis", "benign_malignant", "target"])  # fmt: skip
            for i in range(300):
                malignant = i % 10 == 0
                w.writerow([f"ISIC_{i:07d}", f"IP_{i % 40:07d}", "male", "45.0", "torso",
                            "melanoma" if malignant else "nevus",
                            "malignant" if malignant else "benign", int(malignant)])  # fmt: skip
        ns = argparse.Namespace(work=tmp, metadata=meta, size=32, images=None, workers=2)
        result = run_isic2020(ns)
        print(json.dumps(result))
        assert result["serial"]["images"] == result["pool"]["images"] == 300


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a quick run of both (CI)")
    sub = parser.add_subparsers(dest="cmd")
    a = sub.add_parser("isic2024", help="fetch time and memory at several sizes")
    a.add_argument("--sizes", type=int, nargs="+", default=[10_000, 40_000, 160_000])
    a.add_argument("--size", type=int, default=128, help="image side in px (the real crops: ~133)")
    a.add_argument("--keep", action="store_true", help="keep the sources and data dirs")
    a.set_defaults(fn=run_isic2024)
    b = sub.add_parser("isic2020", help="serial vs pool on a 33,126-image ISIC 2020 archive")
    b.add_argument("--metadata", type=Path, required=True, help="SIIM-ISIC 2020's train.csv")
    b.add_argument("--images", type=int, default=None, help="only the first N rows")
    b.add_argument("--size", type=int, default=256)
    b.set_defaults(fn=run_isic2020)
    for p in (a, b):
        p.add_argument("--work", type=Path, required=True, help="a scratch folder")
        p.add_argument("--workers", type=int, default=None, help="default: every core")
    args = parser.parse_args()
    if args.smoke:
        return smoke()
    if args.cmd is None:
        parser.error("give a command: isic2024 or isic2020 (or --smoke)")
    print(json.dumps(args.fn(args), indent=2))


if __name__ == "__main__":
    main()
