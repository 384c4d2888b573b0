"""`skincls serve`: a local web page and JSON API around one checkpoint."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import click

from ..errors import SkinclsError
from ._common import console, friendly_errors, precision_option

_EXTRA = "pip install 'skincls[serve]'"


@click.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; 127.0.0.1 serves this machine only.",
)
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N or mps.")
@precision_option
@click.option("--tta", is_flag=True, help="Average over the 8 flips and 90° turns of each image.")
@click.option(
    "--uncertain-band",
    type=click.FloatRange(0, 0.5, max_open=True),
    default=0.1,
    show_default=True,
    help="Call an image 'uncertain' when P(positive) is this close to the threshold (0: never).",
)
@click.option(
    "--grad-cam/--no-grad-cam", default=True, show_default=True, help="Grad-CAM heat maps."
)
@click.option(
    "--max-upload-mb",
    type=click.FloatRange(min=0, min_open=True),
    default=20.0,
    show_default=True,
    help="Largest request, in MiB; larger uploads are refused.",
)
@click.option(
    "--max-files",
    type=click.IntRange(min=1),
    default=16,
    show_default=True,
    help="Most images per request.",
)
@click.option(
    "--max-megapixels",
    type=click.FloatRange(min=0, min_open=True),
    default=64.0,
    show_default=True,
    help="Most megapixels of all images of a request (refuses decompression bombs).",
)
@friendly_errors
def serve(
    checkpoint,
    host,
    port,
    device,
    precision,
    tta,
    uncertain_band,
    grad_cam,
    max_upload_mb,
    max_files,
    max_megapixels,
):
    """Serve CHECKPOINT (a model or an ensemble) as a web page — drop images, see probabilities,
    decision and Grad-CAM — and a JSON API (POST /api/predict, GET /api/model, GET /openapi.json).

    Images are processed in memory and never stored. Research software, not a medical device.
    """
    try:
        import uvicorn

        from ..serve.app import LOOPBACK_HOSTS, create_app
        from ..serve.schemas import Limits
        from ..serve.service import ModelService
    except ImportError as exc:
        raise SkinclsError(
            f"skincls serve needs the optional packages starlette, uvicorn and python-multipart "
            f"({exc.name} is missing); install them with: {_EXTRA}"
        ) from exc

    _refuse_a_busy_port(host, port)  # before the model loads: uvicorn would end in a raw [Errno 98]
    limits = Limits(
        max_upload_bytes=round(max_upload_mb * 2**20),
        max_files=max_files,
        max_pixels=round(max_megapixels * 1e6),
    )
    service = ModelService.from_checkpoint(
        checkpoint,
        device=device,
        tta=tta,
        precision=precision,
        uncertain_band=uncertain_band,
        limits=limits,
        grad_cam=grad_cam,
    )
    loopback = host in (*LOOPBACK_HOSTS, "::1")
    # On loopback, answer only loopback Host headers: a web page rebinding its own domain to
    # 127.0.0.1 (DNS rebinding) then cannot use the server.
    app = create_app(
        service, allowed_hosts=list(LOOPBACK_HOSTS) if host in LOOPBACK_HOSTS else None
    )
    shown = f"[{host}]" if ":" in host else host
    console.print(f"serving {service.info.name} from {checkpoint} on http://{shown}:{port}")
    if not loopback:
        console.print(
            f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine can "
            "upload images to this server"
        )
    console.print("research software, not a medical device · Ctrl+C to stop")
    uvicorn.run(app, host=host, port=port, log_level="info")


def _refuse_a_busy_port(host: str, port: int) -> None:
    """One clear line when `host:port` cannot be bound (another server holds it), before anything loads."""
    if port == 0:  # the system picks a free one
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # As uvicorn binds: SO_REUSEADDR, so a port in TIME_WAIT after a stopped server counts as free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            shown = f"[{host}]" if ":" in host else host
            if exc.errno == errno.EADDRINUSE:
                raise SkinclsError(
                    f"port {port} on {shown} is already in use (another server, or an earlier "
                    "skincls serve?): stop it, or give another --port (--port 0 picks a free one)"
                ) from None
            raise SkinclsError(
                f"cannot listen on {shown}:{port}: {exc.strerror or exc}; give another --host or --port"
            ) from None
