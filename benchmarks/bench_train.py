"""Training-speed benchmark: the original research loop against `skincls train`, same images, same recipe.

Both run as whole processes (wall time from process start to exit), one after the other, on the same
train/valid images: VGG16 with a frozen conv base, head 25088→4096→512→2, Adam 1e-3, batch 20,
10 epochs, 224 px, cross-entropy, keep the lowest-validation-loss checkpoint. VGG16 is randomly
initialised in both (ImageNet weights are not downloadable here; skincls gets the random weights as a
state-dict file); the compute is identical.

The skincls side gets a manifest whose train/val splits are exactly the source folder's train/valid
images (a symlink to the images, nothing copied); it runs once per `--precisions` entry (default: the
precision setting's default `auto`, and `fp32`). Each repetition runs every process once, in turn;
the table gives medians over `--repeats`. It also measures the machine's float32 matmul rate and the
conv base's throughput, and writes a JSON report plus a Markdown table.

Needs skincls only (`pip install -e .`; the original loop uses its torch and torchvision). DEV is the
extracted dev archive (`unzip -q DEV_ZIP -d DEV`):

    python benchmarks/make_subset.py --src DEV/train --dst sub300      # 240 train + 60 valid images
    python benchmarks/bench_train.py --source sub300 --repeats 3 --markdown docs/benchmarks-table.md
    python benchmarks/bench_train.py --smoke    # each process once, 1 epoch, 4 + 2 noise images, temp dir
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
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
    from skincls.data.info import DatasetInfo, DatasetSource
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
    source_info = DatasetSource(kind="benchmark", path=str(source))
    write_manifest(data_dir, records, DatasetInfo(classes=classes, source=source_info))
    return {s: sum(r.split == s for r in records) for s in ("train", "val")}


def timed(cmd: list[str], log: Path) -> float:
    """Run `cmd` to completion with its output in `log`; return wall seconds."""
    print("$", " ".join(cmd), flush=True)
    t = time.perf_counter()
    with log.open("w") as fh:
        subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, check=True)
    return time.perf_counter() - t


def random_vgg16_weights(work: Path) -> Path:
    """A randomly initialised VGG16 state-dict file (seeded).

    `skincls train` refuses `--weights none` with a frozen backbone (the head would learn from
    noise), so the random initialisation is given as a file: the compute is the same.
    """
    path = work / "vgg16-random.pth"
    if not path.is_file():
        from torchvision.models import vgg16

        torch.manual_seed(0)
        torch.save(vgg16(weights=None).state_dict(), path)
    return path


def run_skincls(data_dir: Path, run: Path, epochs: int, precision: str, log: Path) -> dict:
    """One `skincls train` process on the original recipe; its wall time and phase timings."""
    weights = random_vgg16_weights(run.parent)
    cmd = [
        str(Path(sys.executable).parent / "skincls"),
        "train", "--data-dir", str(data_dir), "--out", str(run), "--overwrite", "--arch", "vgg16",
        "--weights", str(weights), "--epochs", str(epochs), "--batch-size", "20", "--lr", "1e-3",
        "--image-size", "224", "--device", "cpu", "--seed", "0", "--cache-features", "memory",
        "--precision", precision, "--quiet",
    ]  # fmt: skip
    wall = timed(cmd, log)
    hist = json.loads((run / "history.json").read_text())
    for name in ("best.pt", "last.pt"):  # ~0.5 and ~1.4 GB each; the timing is what we keep
        (run / name).unlink(missing_ok=True)
    return {
        "wall_s": wall,
        "features_train_s": hist["timings"].get("features_train_seconds"),
        "features_val_s": hist["timings"].get("features_val_seconds"),
        "epochs_s": sum(e["seconds"] for e in hist["epochs"]),
        "fit_s": hist["wall_seconds"],
        "precision": hist.get("precision", {}),
        "val_loss": [e["val_loss"] for e in hist["epochs"]],
    }


def run_original(source: Path, work: Path, epochs: int) -> dict:
    """One process of the original research loop."""
    orig_json = work / "original.json"
    cmd = [
        sys.executable, str(HERE / "original_loop.py"),
        "--train-dir", str(source / "train"), "--valid-dir", str(source / "valid"),
        "--epochs", str(epochs), "--json", str(orig_json), "--out", str(work / "original.pt"),
    ]  # fmt: skip
    wall = timed(cmd, work / "original.log")
    (work / "original.pt").unlink(missing_ok=True)
    return {"wall_s": wall, **json.loads(orig_json.read_text())}


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def smoke() -> None:
    """Both processes once for 1 epoch on 2 + 1 noise images per class, in a temp dir."""
    import _smoke

    with _smoke.scratch(__file__) as tmp:
        source = _smoke.noise_images(tmp / "source", {"train": 2, "valid": 1})
        args = ["--source", str(source), "--workdir", str(tmp / "work"), "--epochs", "1"]
        args += ["--repeats", "1", "--precisions", "auto", "--gemm-size", "256"]
        main([*args, "--markdown", str(tmp / "t.md")])
        assert "whole process" in (tmp / "t.md").read_text()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--source", type=Path, help="train/ + valid/ folders (make_subset.py)")
    ap.add_argument("--workdir", type=Path, default=Path("runs/bench-train"))
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each process; medians reported")
    ap.add_argument("--precisions", nargs="+", default=["auto", "fp32"])
    ap.add_argument("--skip-original", action="store_true", help="time skincls only")
    ap.add_argument(
        "--original-from",
        type=Path,
        help="take the original loop's runs from this earlier report.json (same source and "
        "machine) instead of running them again; implies --skip-original",
    )
    ap.add_argument("--markdown", type=Path, help="also write the table here")
    ap.add_argument("--gemm-size", type=int, default=4096, help="n of the n×n float32 matmul rate")
    ap.add_argument("--smoke", action="store_true", help="a quick run on noise images (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke()
    if args.source is None:
        ap.error("give --source (or --smoke)")

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "source": str(args.source),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": _cpu_name(),
        "matmul_gflops": matmul_gflops(args.gemm_size),
        "repeats": args.repeats,
        "skincls": {p: [] for p in args.precisions},
        "original": [],
    }
    print(f"float32 matmul: {report['matmul_gflops']:.1f} GFLOP/s", flush=True)
    data_dir = work / "data"
    report["images"] = make_data_dir(args.source, data_dir)
    for rep in range(args.repeats):
        for precision in args.precisions:
            run = work / f"skincls-{precision}"
            r = run_skincls(
                data_dir, run, args.epochs, precision, work / f"skincls-{precision}.log"
            )
            report["skincls"][precision].append(r)
            print(
                f"repeat {rep + 1}: skincls --precision {precision}: {r['wall_s']:.1f} s",
                flush=True,
            )
        if not (args.skip_original or args.original_from):
            r = run_original(args.source, work, args.epochs)
            report["original"].append(r)
            print(f"repeat {rep + 1}: original loop: {r['wall_s']:.1f} s", flush=True)
        (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if args.original_from:
        earlier = json.loads(args.original_from.read_text())
        report["original"] = earlier["original"]
        report["original_from"] = str(args.original_from)
        (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)


def markdown(r: dict) -> str:
    n = r["images"]["train"] + r["images"]["val"]
    gemm = r["matmul_gflops"]
    reps = r["repeats"]
    lines = [
        f"Machine: {r['cpu']}, {r['threads']} torch threads, torch {r['torch']}; "
        f"float32 matmul {gemm:.0f} GFLOP/s. Images: {r['images']['train']} train + "
        f"{r['images']['val']} val from `{Path(r['source']).name}` (`make_subset.py`). Medians of {reps} runs of each process"
        + (
            f" ({len(r['original'])} of the original loop, from an earlier report on the same "
            "machine)."
            if r.get("original_from")
            else "."
        ),
        "",
        "| process | phase | seconds (median) |",
        "|---|---|---:|",
    ]
    orig = r["original"]
    for precision, runs in r["skincls"].items():
        plan = runs[0]["precision"]
        name = f"skincls train `--precision {precision}`"
        what = ", ".join(f"{k} {v}" for k, v in plan.items() if k != "requested") or precision
        lines += [
            f"| {name} | feature pass, train split ({plan.get('features', '?')}) | "
            f"{median(runs, 'features_train_s'):.1f} |",
            f"| {name} | feature pass, val split | {median(runs, 'features_val_s'):.1f} |",
            f"| {name} | head epochs ({plan.get('train', '?')}, incl. best/last.pt writes) | "
            f"{median(runs, 'epochs_s'):.1f} |",
            f"| {name} | **whole process** ({what}) | **{median(runs, 'wall_s'):.1f}** |",
        ]
    if orig:
        epochs = [e for o in orig for e in o["epochs"]]
        lines += [
            f"| original loop | epoch (median; train / valid) | "
            f"{statistics.median(e['wall_s'] for e in epochs):.1f} "
            f"({statistics.median(e['train_s'] for e in epochs):.1f} / "
            f"{statistics.median(e['valid_s'] for e in epochs):.1f}) |",
            f"| original loop | **whole process** | **{median(orig, 'wall_s'):.1f}** |",
            "",
        ]
        for precision, runs in r["skincls"].items():
            ratio = median(orig, "wall_s") / median(runs, "wall_s")
            lines.append(f"**Wall-time ratio, `--precision {precision}`: {ratio:.1f}×.**  ")
    lines.append("")
    for precision, runs in r["skincls"].items():
        ips = n / (median(runs, "features_train_s") + median(runs, "features_val_s"))
        lines.append(
            f"Conv base in the feature pass, `--precision {precision}`: {ips:.1f} images/s = "
            f"{ips * VGG16_CONV_GMACS * 2:.0f} GFLOP/s ({VGG16_CONV_GMACS} G multiply-adds per "
            f"image; float32 matmul rate {gemm:.0f} GFLOP/s).  "
        )
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
