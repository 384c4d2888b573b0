"""`skincls serve` for real: request latency over HTTP, and a screenshot of the page after a drop.

Starts uvicorn on 127.0.0.1 (a free port) in this process, times `POST /api/predict` with one image
(with and without Grad-CAM, after one warm-up request), then opens the page in Debian's Chromium
(Playwright, `executable_path`; never `playwright install`), drops the given images on it, waits
for their results and saves a screenshot.

Needs `pip install -e '.[serve]' httpx playwright` and Debian's `chromium` package.

    python benchmarks/serve_page.py CHECKPOINT IMG1 IMG2 [IMG3] \
        --repeat 20 --screenshot docs/img/serve/page.png
    python benchmarks/serve_page.py --smoke    # an untrained smallcnn, 2 synthetic images, temp dir
"""

from __future__ import annotations

import argparse
import base64
import io
import mimetypes
import shutil
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING

import _smoke
import torch
from PIL import Image

if TYPE_CHECKING:
    import uvicorn

    from skincls.serve.service import ModelService

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _serve(service: ModelService) -> tuple[str, uvicorn.Server, threading.Thread]:
    import uvicorn

    from skincls.serve.app import create_app

    # proto=IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections (with proto 0 it does
    # not, and Nagle + delayed ACKs add ~40 ms to every response).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(service), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{sock.getsockname()[1]}", server, thread


def _latency(url: str, image: Path, repeat: int, cam: bool) -> list[float]:
    import httpx

    files = {"images": (image.name, image.read_bytes())}
    times = []
    with httpx.Client(timeout=120) as client:
        client.post(f"{url}/api/predict", params={"cam": cam}, files=files).raise_for_status()
        for _ in range(repeat):
            start = time.perf_counter()
            client.post(f"{url}/api/predict", params={"cam": cam}, files=files).raise_for_status()
            times.append(time.perf_counter() - start)
    return times


def _screenshot(url: str, images: list[Path], out: Path, chromium: str, width: int) -> None:
    from playwright.sync_api import expect, sync_playwright

    payload = [
        (
            p.name,
            mimetypes.guess_type(p.name)[0] or "image/png",
            base64.b64encode(p.read_bytes()).decode(),
        )
        for p in images
    ]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": width, "height": 900}, device_scale_factor=1)
        page.goto(url)
        expect(page.locator("#model h2")).to_be_visible()
        dt = page.evaluate_handle(
            """(files) => {
                const dt = new DataTransfer();
                for (const [name, type, b64] of files)
                    dt.items.add(new File([Uint8Array.from(atob(b64), (c) => c.charCodeAt(0))], name, { type }));
                return dt;
            }""",
            payload,
        )
        page.dispatch_event("#drop", "drop", {"dataTransfer": dt})
        expect(page.locator(".card.done")).to_have_count(len(images), timeout=120_000)
        png = page.screenshot(full_page=True)
        browser.close()
    # 256 colours, dithered (the heat maps' gradients would band otherwise): a docs-sized file.
    image = Image.open(io.BytesIO(png)).convert("RGB")
    palette = image.quantize(256, method=Image.Quantize.MEDIANCUT)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(out, optimize=True)


def smoke() -> None:
    """An untrained smallcnn checkpoint and 2 synthetic images: 2 requests each way, a screenshot."""
    from skincls import create_model, save_checkpoint

    _smoke.require(__file__, _smoke.SERVE, _smoke.SERVE_INSTALL, programs=["chromium"])
    with _smoke.scratch(__file__) as tmp:
        checkpoint = tmp / "smallcnn.pt"
        model = create_model("smallcnn", weights="none", freeze="none", head=(8,))
        save_checkpoint(checkpoint, model, classes=["benign", "malignant"])
        images = sorted(_smoke.synthetic_source(tmp / "images", images=8).rglob("*.jpg"))[:2]
        shot = tmp / "page.png"
        args = [str(checkpoint), *map(str, images), "--repeat", "2", "--screenshot", str(shot)]
        main([*args, "--chromium", shutil.which("chromium")])
        assert shot.stat().st_size > 0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("checkpoint", type=Path, nargs="?")
    ap.add_argument("images", type=Path, nargs="*")
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    ap.add_argument("--screenshot", type=Path, default=None)
    ap.add_argument("--width", type=int, default=1100, help="browser viewport width")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--smoke", action="store_true", help="a quick run on synthetic images (CI)")
    args = ap.parse_args(argv)
    if args.smoke:
        return smoke()
    if args.checkpoint is None or not args.images:
        ap.error("give CHECKPOINT and at least one image (or --smoke)")
    from skincls.serve.service import ModelService

    torch.set_num_threads(args.threads)
    service = ModelService.from_checkpoint(args.checkpoint, device="cpu")
    url, server, thread = _serve(service)
    print(f"serving {service.info.name} at {url} (torch threads: {args.threads})")
    for cam in (False, True):
        t = _latency(url, args.images[0], args.repeat, cam)
        print(
            f"POST /api/predict, 1 image ({args.images[0].name}), cam={str(cam).lower()}: "
            f"median {1000 * statistics.median(t):.1f} ms, min {1000 * min(t):.1f} ms, "
            f"max {1000 * max(t):.1f} ms over {len(t)} requests"
        )
    if args.screenshot:
        _screenshot(url, args.images, args.screenshot, args.chromium, args.width)
        print(f"screenshot: {args.screenshot}")
    server.should_exit = True
    thread.join(timeout=10)


if __name__ == "__main__":
    main()
