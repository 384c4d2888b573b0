"""Baseline for the training-speed benchmark: the original research script's loop.

This reproduces, for timing only, how the original notebook/script trained its
benign-vs-malignant classifier: a torchvision VGG16 whose convolutional base is frozen
but still run forward on every batch of every epoch, a new 3-layer classifier head
(25088->4096 kept from VGG, then 4096->512->2 with ReLU/Dropout(0.5)), plain Adam
(lr 1e-3), cross-entropy, batch 20, Resize/CenterCrop 224 + ImageNet normalisation,
validation after each epoch and a checkpoint whenever the validation loss drops.
It is standalone on purpose (no ``skincls`` import) so that it stays a fixed baseline; it needs
torch and torchvision (as installed with skincls).

By default VGG16 is randomly initialised (``weights=None``: no download); the timing is
the same as with ImageNet weights, which can be given with ``--weights FILE``.

    python benchmarks/original_loop.py --train-dir sub300/train \
        --valid-dir sub300/valid --epochs 10 --json timings.json
    python benchmarks/original_loop.py --smoke    # 1 epoch on 4 + 2 noise images, in a temp dir
"""

import argparse
import json
import os
import tempfile
import time

import torch
from torch import nn
from torchvision import datasets, models, transforms

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def build_model(weights=None):
    model = models.vgg16(weights=None)
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu"))
    for p in model.features.parameters():
        p.requires_grad = False
    model.classifier = nn.Sequential(
        model.classifier[0],
        nn.ReLU(),
        nn.Dropout(0.5),  # Linear(25088, 4096), kept
        nn.Linear(4096, 512),
        nn.ReLU(),
        nn.Dropout(0.5),
        nn.Linear(512, 2),
    )
    return model


def smoke():
    """One epoch on 2 + 1 noise images per class (32 px, resized to 224), everything in a temp dir."""
    import _smoke

    with _smoke.scratch(__file__) as tmp:
        images = _smoke.noise_images(tmp / "images", {"train": 2, "valid": 1})
        args = ["--train-dir", str(images / "train"), "--valid-dir", str(images / "valid")]
        args += ["--epochs", "1", "--out", str(tmp / "original.pt"), "--json", str(tmp / "t.json")]
        main(args)
        assert len(json.loads((tmp / "t.json").read_text())["epochs"]) == 1


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--train-dir")
    ap.add_argument("--valid-dir")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--weights", help="VGG16 state_dict file (default: random init)")
    ap.add_argument(
        "--out",
        default=os.path.join(tempfile.gettempdir(), "original_loop.pt"),
        help="checkpoint path (~480 MB; default in the temp dir, not the repo)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num-workers", type=int, default=0)
    ap.add_argument("--json", help="write timings to this JSON file")
    ap.add_argument("--smoke", action="store_true", help="a quick run on noise images (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke()
    if args.train_dir is None or args.valid_dir is None:
        ap.error("give --train-dir and --valid-dir (or --smoke)")

    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    tf = transforms.Compose(
        [
            transforms.Resize(224),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    train_data = datasets.ImageFolder(args.train_dir, transform=tf)
    valid_data = datasets.ImageFolder(args.valid_dir, transform=tf)
    train_loader = torch.utils.data.DataLoader(
        train_data, batch_size=args.batch_size, shuffle=True, num_workers=args.num_workers
    )
    valid_loader = torch.utils.data.DataLoader(
        valid_data, batch_size=args.batch_size, num_workers=args.num_workers
    )

    model = build_model(args.weights)
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=1e-3)

    valid_loss_min = float("inf")
    epochs = []
    for epoch in range(1, args.epochs + 1):
        t0 = time.perf_counter()
        train_loss, step_times = 0.0, []
        model.train()
        for data, target in train_loader:
            ts = time.perf_counter()
            optimizer.zero_grad()
            loss = criterion(model(data), target)  # full VGG16 forward, conv base included
            loss.backward()
            optimizer.step()
            train_loss += loss.item() * data.size(0)
            step_times.append(time.perf_counter() - ts)
        t1 = time.perf_counter()

        valid_loss, correct = 0.0, 0
        model.eval()
        with torch.no_grad():
            for data, target in valid_loader:
                output = model(data)
                valid_loss += criterion(output, target).item() * data.size(0)
                correct += (output.argmax(1) == target).sum().item()
        train_loss /= len(train_data)
        valid_loss /= len(valid_data)
        acc = correct / len(valid_data)
        saved = valid_loss < valid_loss_min
        ts = time.perf_counter()
        if saved:
            torch.save(model.state_dict(), args.out)
            valid_loss_min = valid_loss
        t2 = time.perf_counter()
        epochs.append(
            {
                "epoch": epoch,
                "wall_s": t2 - t0,
                "train_s": t1 - t0,
                "valid_s": ts - t1,
                "save_s": t2 - ts,
                "mean_step_s": sum(step_times) / len(step_times),
                "train_loss": train_loss,
                "valid_loss": valid_loss,
                "valid_acc": acc,
            }
        )
        print(
            f"Epoch {epoch}: train loss {train_loss:.4f}  valid loss {valid_loss:.4f}  "
            f"valid acc {acc:.3f}{'  (saved)' if saved else ''}  [{t2 - t0:.1f}s]",
            flush=True,
        )

    total = time.perf_counter() - t_start
    print(f"Total wall time: {total:.1f}s  (threads={torch.get_num_threads()})")
    print("Per-epoch wall times: " + ", ".join(f"{e['wall_s']:.1f}s" for e in epochs))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "script": "original_loop",
                    "total_wall_s": total,
                    "epochs": epochs,
                    "n_train": len(train_data),
                    "n_valid": len(valid_data),
                    "batch_size": args.batch_size,
                    "threads": torch.get_num_threads(),
                    "torch": torch.__version__,
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
