"""The web app: one page, `GET /api/model`, `POST /api/predict` and `/openapi.json`, on Starlette.

Uploads are parsed in memory and bounded: the body is counted as it streams in and refused past
the limit, every multipart file stays in RAM (Starlette would spill parts over 1 MB to a temporary
file), nothing is written anywhere, and every refusal is a JSON `ErrorResponse`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import AsyncIterator
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import SkinclsError
from .images import Upload, UploadError, decode_images
from .schemas import ErrorResponse, PredictResponse, openapi_spec
from .service import ModelService

__all__ = ["LOOPBACK_HOSTS", "create_app"]

STATIC = Path(__file__).parent / "static"
# Host headers a server on 127.0.0.1 answers (Starlette's host check cannot parse IPv6 literals).
LOOPBACK_HOSTS = ("127.0.0.1", "localhost")
_log = logging.getLogger("skincls.serve")
_IN_FLIGHT = 2  # one request in the model, one decoding next to it

# The page loads nothing from elsewhere; images it shows are data: URLs (server) or blob: (local).
_SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
        b"connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
]


def create_app(service: ModelService, *, allowed_hosts: list[str] | None = None) -> Starlette:
    """The ASGI app serving `service`; run it with uvicorn (`skincls serve` does).

    Args:
        service: The model, with its limits (`service.limits`).
        allowed_hosts: Host headers to answer (e.g. `LOOPBACK_HOSTS`, which stops DNS-rebinding
            pages from reaching a server on 127.0.0.1); None answers any.
    """

    async def index(request: Request) -> Response:
        return FileResponse(STATIC / "index.html")

    async def model(request: Request) -> Response:
        return JSONResponse(service.info.model_dump(mode="json"))

    async def openapi(request: Request) -> Response:
        return JSONResponse(openapi_spec())

    # Requests past upload, decoding or in the model at once. Waiting requests hold only their
    # (size-limited) bytes, so decoded images of at most this many requests are in memory.
    gate = threading.BoundedSemaphore(_IN_FLIGHT)

    def process(uploads: list[Upload], cam: bool, fields: dict[str, str]):
        with gate:
            images = decode_images(uploads, max_pixels=service.limits.max_pixels)
            names = [u.name for u in uploads]
            return service.predict(names, images, cam=cam, metadata=fields)

    async def predict(request: Request) -> Response:
        cam = request.query_params.get("cam", "true").lower() not in ("0", "false", "no")
        fields: dict[str, str] = {}  # text fields (age, sex, site...): one patient's metadata
        uploads = await _read_uploads(request, service, fields)
        # Decoding and the model are CPU-bound: a worker thread, not the event loop.
        results = await run_in_threadpool(process, uploads, cam, fields)
        return JSONResponse(PredictResponse(results=results).model_dump(mode="json"))

    routes = [
        Route("/", index),
        Route("/api/model", model),
        Route("/api/predict", predict, methods=["POST"]),
        Route("/openapi.json", openapi),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]
    middleware = [Middleware(_SecurityHeaders)]
    if allowed_hosts is not None:
        middleware.append(Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)))
    return Starlette(
        routes=routes,
        middleware=middleware,
        exception_handlers={
            UploadError: _upload_error,
            HTTPException: _http_error,
            SkinclsError: _model_error,
            Exception: _internal_error,
        },
    )


class _InMemoryParser(MultiPartParser):
    """Starlette's multipart parser with files kept in memory up to the request limit."""

    def __init__(self, *args, spool_bytes: int, **kwargs):
        super().__init__(*args, **kwargs)
        # How much of each file part stays in memory: `spool_max_size` in current Starlette,
        # `max_file_size` in older releases (0.40); setting both covers every supported version.
        self.spool_max_size = self.max_file_size = spool_bytes


async def _read_uploads(
    request: Request, service: ModelService, fields: dict[str, str] | None = None
) -> list[Upload]:
    """The request's files as `Upload`s (name, bytes), within the service's limits; its text
    fields (optional metadata: age, sex, site...) go into `fields`."""
    limits = service.limits
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UploadError(
            "send the images as multipart/form-data, field name 'images' "
            "(curl -F images=@lesion.jpg ...)",
            status=400,
            code="bad_request",
        )
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_upload_bytes:
        raise _too_large(int(length), limits.max_upload_bytes)
    parser = _InMemoryParser(
        request.headers,
        _bounded(request.stream(), limits.max_upload_bytes),
        max_files=limits.max_files,
        max_fields=32,
        spool_bytes=limits.max_upload_bytes + 1,
    )
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        too_many = "Too many files" in exc.message
        raise UploadError(
            f"at most {limits.max_files} images per request; send the rest in another request"
            if too_many
            else f"malformed multipart upload: {exc.message}",
            status=400,
            code="too_many_files" if too_many else "bad_request",
        ) from exc
    try:
        files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
        if fields is not None:
            fields.update({k: v for k, v in form.multi_items() if isinstance(v, str)})
        if not files:
            raise UploadError(
                "no image in the request; attach one or more files (field name 'images')",
                status=400,
                code="no_images",
            )
        return [Upload(f.filename or f"image {i + 1}", await f.read()) for i, f in enumerate(files)]
    finally:
        await form.close()


async def _bounded(stream: AsyncIterator[bytes], limit: int) -> AsyncIterator[bytes]:
    """`stream`, refused as soon as it has yielded more than `limit` bytes (chunked uploads too)."""
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if total > limit:
            raise _too_large(total, limit, at_least=True)
        yield chunk


def _too_large(size: int, limit: int, at_least: bool = False) -> UploadError:
    more = "more than " if at_least else ""
    return UploadError(
        f"the upload is {more}{size / 2**20:.1f} MiB; the limit is {limit / 2**20:g} MiB per "
        "request; send fewer or smaller images",
        status=413,
        code="too_large",
    )


def _error(status: int, code: str, message: str, file: str | None = None) -> JSONResponse:
    return JSONResponse(
        ErrorResponse(error=message, code=code, file=file).model_dump(mode="json"), status
    )


async def _upload_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, UploadError)
    return _error(exc.status, exc.code, str(exc), exc.file)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    codes = {404: "not_found", 405: "method_not_allowed"}
    return _error(exc.status_code, codes.get(exc.status_code, "bad_request"), str(exc.detail))


async def _model_error(request: Request, exc: Exception) -> Response:
    # Uploads were fine (they are UploadErrors otherwise): the model could not answer.
    _log.error("model error while serving %s: %s", request.url.path, exc)
    return _error(500, "model_error", str(exc))


async def _internal_error(request: Request, exc: Exception) -> Response:
    _log.exception("error while serving %s", request.url.path, exc_info=exc)
    return _error(500, "internal", f"internal error: {type(exc).__name__}: {exc}")


class _SecurityHeaders:
    """Adds `_SECURITY_HEADERS` to every response (pure ASGI: streams are left alone)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *_SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)
