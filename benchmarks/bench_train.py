"""Training-speed benchmark: the original research loop against `skincls train`, same images, same recipe.

Both run as whole processes (wall time from process start to exit), one after the other, on the same
train/valid images: VGG16 with a frozen conv base, head 25088→4096→512→2, Adam 1e-3, batch 20,
10 epochs, 224 px, cross-entropy, keep the lowest-validation-loss checkpoint. VGG16 is randomly
initialised in both (ImageNet weights are not downloadable here); the compute is identical.

The skincls side gets a manifest whose train/val splits are exactly the source folder's train/valid
images (a symlink to the images, nothing copied). It also measures the machine's float32 matmul rate
and the conv base's throughput, and writes a JSON report plus a Markdown table.

    python benchmarks/make_subset.py --src DEV/train --dst sub300      # 240 train + 60 valid images
    python benchmarks/bench_train.py --source sub300 --markdown docs/benchmarks-table.md
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
VGG16_CONV_GMACS = 15.4  # multiply-adds per 224 px image in the conv base (≈ 30.8 GFLOP)


def matmul_gflops(n: int = 4096, reps: int = 5) -> float:
    """Best-of-`reps` float32 GEMM rate (2·n³ FLOP per product) with torch's default threads."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def make_data_dir(source: Path, data_dir: Path) -> dict[str, int]:
    """A skincls data dir whose train/val are exactly `source/train` and `source/valid`."""
    sys.path.insert(0, str(HERE.parent))
    from skincls.data.splits import Record, write_manifest

    data_dir.mkdir(parents=True, exist_ok=True)
    link = data_dir / "images"
    if not link.exists():
        link.symlink_to(source.resolve(), target_is_directory=True)
    records = []
    for folder, split in (("train", "train"), ("valid", "val")):
        for f in sorted((source / folder).glob("*/*")):
            digest = hashlib.sha256(f.read_bytes()).hexdigest()
            records.append(
                Record(f"images/{folder}/{f.parent.name}/{f.name}", f.parent.name, split, digest)
            )
    classes = sorted({r.label for r in records})
    write_manifest(
        data_dir, records, classes, {"source": {"kind": "benchmark", "path": str(source)}}
    )
    return {s: sum(r.split == s for r in records) for s in ("train", "val")}


def timed(cmd: list[str], log: Path) -> float:
    """Run `cmd` to completion with its output in `log`; return wall seconds."""
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    with log.open("w") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--source", type=Path, required=True, help="train/ + valid/ folders (make_subset.py)"
    )
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench-train"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--skip-original", action="store_true", help="time skincls only")
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    args = ap.parse_args(argv)

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "source": str(args.source),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "matmul_gflops": matmul_gflops(),
    }
    print(f"float32 matmul: {report['matmul_gflops']:.1f} GFLOP/s", flush=True)
    data_dir = work / "data"
    report["images"] = make_data_dir(args.source, data_dir)

    run = work / "skincls-run"
    cmd = [
        str(Path(sys.executable).parent / "skincls"),
        "train", "--data-dir", str(data_dir), "--out", str(run), "--arch", "vgg16",
        "--weights", "none", "--epochs", str(args.epochs), "--batch-size", "20", "--lr", "1e-3",
        "--image-size", "224", "--device", "cpu", "--seed", "0", "--cache-features", "memory",
        "--quiet",
    ]  # fmt: skip
    report["skincls_wall_s"] = timed(cmd, work / "skincls.log")
    hist = json.loads((run / "history.json").read_text())
    report["skincls"] = {
        "features_train_s": hist["timings"].get("features_train_seconds"),
        "features_val_s": hist["timings"].get("features_val_seconds"),
        "epoch_s": [e["seconds"] for e in hist["epochs"]],
        "fit_s": hist["wall_seconds"],
        "val_loss": [e["val_loss"] for e in hist["epochs"]],
    }
    n = report["images"]["train"] + report["images"]["val"]
    feat_s = report["skincls"]["features_train_s"] + report["skincls"]["features_val_s"]
    report["backbone_images_per_s"] = n / feat_s
    print(json.dumps(report["skincls"], indent=1), flush=True)

    if not args.skip_original:
        orig_json = work / "original.json"
        cmd = [
            sys.executable, str(HERE / "original_loop.py"),
            "--train-dir", str(args.source / "train"), "--valid-dir", str(args.source / "valid"),
            "--epochs", str(args.epochs), "--json", str(orig_json), "--out", str(work / "original.pt"),
        ]  # fmt: skip
        report["original_wall_s"] = timed(cmd, work / "original.log")
        report["original"] = json.loads(orig_json.read_text())
        report["ratio"] = report["original_wall_s"] / report["skincls_wall_s"]
        (work / "original.pt").unlink(missing_ok=True)
    (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    for name in ("best.pt", "last.pt"):  # ~0.5 and ~1.4 GB each; the timing is what we keep
        (run / name).unlink(missing_ok=True)


def markdown(r: dict) -> str:
    s = r["skincls"]
    gemm = r["matmul_gflops"]
    ips = r["backbone_images_per_s"]
    lines = [
        f"Machine: {r['cpu']}, {r['threads']} torch threads, torch {r['torch']}; "
        f"float32 matmul {gemm:.0f} GFLOP/s. Images: {r['images']['train']} train + "
        f"{r['images']['val']} val from `{r['source']}`.",
        "",
        "| process | phase | seconds |",
        "|---|---|---:|",
        f"| skincls train | feature pass, train split | {s['features_train_s']:.1f} |",
        f"| skincls train | feature pass, val split | {s['features_val_s']:.1f} |",
        f"| skincls train | head epochs (10, incl. best/last.pt writes) | {sum(s['epoch_s']):.1f} |",
        f"| skincls train | **whole process** | **{r['skincls_wall_s']:.1f}** |",
    ]
    if "original" in r:
        o = r["original"]["epochs"]
        lines += [
            f"| original loop | epoch (mean of {len(o)}; train / valid) | "
            f"{sum(e['wall_s'] for e in o) / len(o):.1f} "
            f"({sum(e['train_s'] for e in o) / len(o):.1f} / {sum(e['valid_s'] for e in o) / len(o):.1f}) |",
            f"| original loop | **whole process** | **{r['original_wall_s']:.1f}** |",
            "",
            f"**Wall-time ratio: {r['ratio']:.1f}×.**",
        ]
    lines += [
        "",
        f"Conv base throughput in the feature pass: {ips:.1f} images/s = "
        f"{ips * VGG16_CONV_GMACS * 2:.0f} GFLOP/s ({VGG16_CONV_GMACS} G multiply-adds per image), "
        f"{100 * ips * VGG16_CONV_GMACS * 2 / gemm:.0f}% of the matmul rate.",
    ]
    return "\n".join(lines) + "\n"


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ×{os.cpu_count()}"
    except OSError:
        pass
    return f"{os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
