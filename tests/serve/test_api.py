"""The JSON API through Starlette's TestClient: good images, every refusal, limits, concurrency."""

from __future__ import annotations

import base64
import io
import struct
import tempfile
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from skincls.inference.predict import Predictor
from skincls.models.checkpoint import update_checkpoint

from ._support import image_bytes, needs

needs("starlette", "skincls serve needs: pip install 'skincls[serve]'")

from starlette.testclient import TestClient  # noqa: E402

from skincls.serve.app import LOOPBACK_HOSTS, create_app  # noqa: E402
from skincls.serve.schemas import (  # noqa: E402
    ErrorResponse,
    Limits,
    ModelInfo,
    PredictResponse,
)
from skincls.serve.service import ModelService, decide  # noqa: E402


@pytest.fixture(scope="module")
def client(service):
    with TestClient(create_app(service)) as c:
        yield c


def _files(*named: tuple[str, bytes]) -> list:
    return [("images", (name, data, "application/octet-stream")) for name, data in named]


def _decode(url: str) -> Image.Image:
    head, b64 = url.split(",", 1)
    assert head.startswith("data:image/") and head.endswith(";base64")
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _error(r, status: int, code: str) -> ErrorResponse:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    err = ErrorResponse.model_validate(r.json())
    assert err.code == code
    assert err.error and "\n" not in err.error
    return err


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width × height but holds almost no data: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


# ---- the model endpoint and the docs ---------------------------------------------------------


def test_model_endpoint_describes_the_checkpoint(client, untrained_ckpt_file):
    r = client.get("/api/model")
    assert r.status_code == 200
    info = ModelInfo.model_validate(r.json())
    assert info.classes == ["benign", "malignant"]
    assert info.positive_class == "malignant"
    assert info.arch == "smallcnn"
    assert info.checkpoint == untrained_ckpt_file.name  # the name only, not the server's path
    assert info.threshold is None and "none stored" in info.threshold_source
    assert info.preprocessing["crop_size"] == 32
    assert "not a medical device" in info.notice
    assert info.limits == Limits()


def test_model_endpoint_shows_stored_threshold_calibration_and_metrics(ckpt):
    update_checkpoint(
        ckpt,
        threshold=0.3,
        threshold_info={
            "threshold": 0.3,
            "method": "target_sensitivity",
            "target_sensitivity": 0.9,
            "split": "val",
            "n_images": 64,
        },
        temperature=1.5,
        calibration={"temperature": 1.5, "split": "val", "n_images": 64},
        metrics={"test": {"n_images": 160, "accuracy": 0.9, "roc_auc": 0.95}},
    )
    service = ModelService.from_checkpoint(ckpt, device="cpu", uncertain_band=0.05)
    with TestClient(create_app(service)) as c:
        info = ModelInfo.model_validate(c.get("/api/model").json())
    assert info.threshold == 0.3
    assert "sensitivity >= 0.9 on the val split" in info.threshold_source
    assert info.temperature == 1.5 and info.calibration["split"] == "val"
    assert info.metrics["test"]["roc_auc"] == 0.95
    assert info.uncertain_band == 0.05


def test_openapi_documents_both_endpoints(client):
    spec = client.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.")
    assert set(spec["paths"]) == {"/api/model", "/api/predict"}
    post = spec["paths"]["/api/predict"]["post"]
    assert "multipart/form-data" in post["requestBody"]["content"]
    assert {"200", "400", "413", "415", "422"} <= set(post["responses"])
    schemas = spec["components"]["schemas"]
    assert {"ModelInfo", "PredictResponse", "ImageResult", "ErrorResponse", "Limits"} <= set(
        schemas
    )
    assert "probabilities" in schemas["ImageResult"]["properties"]


def test_page_and_static_files_are_served_with_a_strict_policy(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "not a medical device" in page.text
    assert "/static/app.js" in page.text
    csp = page.headers["content-security-policy"]
    assert "default-src 'self'" in csp and "connect-src 'self'" in csp
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/static/style.css").status_code == 200


# ---- predictions -----------------------------------------------------------------------------


def test_predict_two_images_matches_the_predictor(client, untrained_ckpt_file, tmp_path):
    a, b = image_bytes(1), image_bytes(2, (64, 30), "JPEG")
    r = client.post("/api/predict", files=_files(("a.png", a), ("b.jpg", b)))
    assert r.status_code == 200, r.text
    results = PredictResponse.model_validate(r.json()).results
    assert [x.file for x in results] == ["a.png", "b.jpg"]
    assert "not a medical device" in r.json()["notice"]

    (tmp_path / "a.png").write_bytes(a)
    (tmp_path / "b.jpg").write_bytes(b)
    expected = Predictor.from_checkpoint(untrained_ckpt_file, "cpu").predict(
        [tmp_path / "a.png", tmp_path / "b.jpg"]
    )
    for got, want in zip(results, expected):
        assert got.probabilities == pytest.approx(want.probabilities, abs=1e-6)
        assert sum(got.probabilities.values()) == pytest.approx(1.0)
        assert got.label == want.label
        assert got.probability == pytest.approx(want.probabilities["malignant"], abs=1e-6)
    assert results[0].probabilities != results[1].probabilities

    assert (results[1].width, results[1].height) == (64, 30)
    for x in results:
        image, heat = _decode(x.image), _decode(x.heatmap)
        assert image.format == "JPEG" and heat.format == "PNG"
        assert heat.size == image.size == (x.width, x.height)  # small inputs: not downscaled
        assert x.cam_class == "malignant" and x.cam_error is None
    for x in results:
        assert np.asarray(_decode(x.heatmap)).std() > 0  # a real map, not a flat colour


@pytest.mark.parametrize("orientation", [2, 3, 6])
def test_exif_orientation_gives_the_probabilities_of_predict(
    untrained_ckpt_file, tmp_path, orientation
):
    # serve did not apply the EXIF orientation: P = 0.437 / 0.431 / 0.429 against predict's 0.439.
    stored = Image.open(io.BytesIO(image_bytes(7, (48, 40))))
    exif = Image.Exif()
    exif[0x0112] = orientation  # 2: mirrored, 3: turned 180°, 6: turned 90° (a phone on its side)
    buf = io.BytesIO()
    stored.save(buf, "PNG", exif=exif)
    (tmp_path / "phone.png").write_bytes(buf.getvalue())
    # fp32: bf16 rounds the untrained model's outputs so coarsely that a turn can look the same.
    predictor = Predictor.from_checkpoint(untrained_ckpt_file, "cpu", precision="fp32")
    want, as_stored = predictor.predict([tmp_path / "phone.png", stored])
    assert want.probabilities != as_stored.probabilities  # the orientation matters to the model

    service = ModelService.from_checkpoint(untrained_ckpt_file, device="cpu", precision="fp32")
    with TestClient(create_app(service)) as c:
        r = c.post("/api/predict?cam=false", files=_files(("phone.png", buf.getvalue())))
    got = PredictResponse.model_validate(r.json()).results[0]
    assert got.probabilities == want.probabilities
    assert (got.width, got.height) == ((40, 48) if orientation == 6 else (48, 40))  # upright


def test_large_images_come_back_downscaled_with_a_matching_heatmap(client):
    r = client.post("/api/predict", files=_files(("big.png", image_bytes(3, (1200, 600)))))
    x = PredictResponse.model_validate(r.json()).results[0]
    assert (x.width, x.height) == (1200, 600)
    assert _decode(x.image).size == _decode(x.heatmap).size == (512, 256)


def test_cam_false_returns_probabilities_only(client):
    r = client.post("/api/predict?cam=false", files=_files(("a.png", image_bytes(1))))
    x = PredictResponse.model_validate(r.json()).results[0]
    assert x.image is None and x.heatmap is None
    assert set(x.probabilities) == {"benign", "malignant"}


def test_decision_at_the_threshold_with_an_uncertain_band(ckpt):
    probe = ModelService.from_checkpoint(ckpt, device="cpu")
    images = [Image.open(io.BytesIO(image_bytes(s))) for s in range(6)]
    p = [r.probability for r in probe.predict([str(i) for i in range(6)], images, cam=False)]
    order = np.argsort(p)
    lo, mid, hi = p[order[0]], p[order[3]], p[order[5]]
    assert lo < mid < hi
    # A threshold just above the middle image, a band that reaches it but neither extreme.
    band = min(mid - lo, hi - mid) / 2
    threshold = mid + band / 2
    update_checkpoint(ckpt, threshold=threshold)
    service = ModelService.from_checkpoint(ckpt, device="cpu", uncertain_band=band)
    pick = [order[0], order[3], order[5]]
    results = service.predict(["lo", "mid", "hi"], [images[i] for i in pick], cam=False)
    assert [r.threshold for r in results] == [threshold] * 3
    assert [r.label for r in results] == ["benign", "benign", "malignant"]
    assert [r.decision for r in results] == ["benign", "uncertain", "malignant"]
    assert [r.uncertain for r in results] == [False, True, False]


def test_decide_rule():
    two = {"benign": 0.45, "malignant": 0.55}
    assert decide(two, "malignant", None, 0.1)  # no threshold: the band sits around 0.5
    assert not decide(two, "malignant", None, 0.04)
    assert not decide(two, "malignant", 0.2, 0.1)  # 0.35 above the threshold
    assert decide(two, "malignant", 0.6, 0.1)
    assert not decide(two, "malignant", 0.55, 0.0)  # band 0: never uncertain
    three = {"a": 0.4, "b": 0.35, "c": 0.25}
    assert decide(three, "c", None, 0.1)  # top two 0.05 apart
    assert not decide(three, "c", None, 0.05)


def test_no_grad_cam_for_a_model_without_a_spatial_map(untrained_ckpt_file, monkeypatch):
    from skincls.errors import ModelError
    from skincls.inference import cam

    def no_map(model, crop_size):
        raise ModelError("Grad-CAM needs a backbone with a spatial feature map; this one has none")

    monkeypatch.setattr(cam, "find_target_layer", no_map)
    service = ModelService.from_checkpoint(untrained_ckpt_file, device="cpu")
    with TestClient(create_app(service)) as c:
        r = c.post("/api/predict", files=_files(("a.png", image_bytes(1))))
    assert r.status_code == 200
    x = PredictResponse.model_validate(r.json()).results[0]
    assert x.heatmap is None and x.image is not None
    assert "spatial feature map" in x.cam_error


# ---- refusals --------------------------------------------------------------------------------


def test_corrupt_image_is_refused(client):
    truncated = image_bytes(1, fmt="JPEG")[:200]
    err = _error(
        client.post(
            "/api/predict", files=_files(("ok.png", image_bytes(2)), ("cut.jpg", truncated))
        ),
        422,
        "corrupt_image",
    )
    assert err.file == "cut.jpg" and "cut.jpg" in err.error


def test_non_image_is_refused(client):
    err = _error(
        client.post("/api/predict", files=_files(("notes.txt", b"not an image at all"))),
        415,
        "not_an_image",
    )
    assert err.file == "notes.txt"


def test_document_formats_pil_could_open_are_refused(client):
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    _error(client.post("/api/predict", files=_files(("x.eps", eps))), 415, "not_an_image")


def test_empty_file_is_refused(client):
    _error(client.post("/api/predict", files=_files(("empty.png", b""))), 422, "empty_file")


@pytest.mark.parametrize("side", [10_000, 100_000])
def test_decompression_bomb_is_refused_before_decoding(client, side):
    # 100 MP is over the server's 64 MP limit (PIL only warns); 10 GP is over PIL's own limit.
    bomb = _png_header_only(side, side)
    assert len(bomb) < 200
    err = _error(
        client.post("/api/predict", files=_files(("bomb.png", bomb))), 413, "too_many_pixels"
    )
    assert err.file == "bomb.png"


def test_elongated_image_is_refused_before_it_is_resized(client, service, monkeypatch):
    # A 375-byte 100000×1 PNG cost +472 MiB per request: its short side was resized to the model's.
    wide = io.BytesIO()
    Image.new("RGB", (100_000, 1), (120, 80, 60)).save(wide, "PNG")
    assert len(wide.getvalue()) < 1000

    def resize(image):
        raise AssertionError(f"an image of {image.size} reached the model's transform")

    monkeypatch.setattr(service.predictor, "transform", resize)
    err = _error(
        client.post("/api/predict", files=_files(("wide.png", wide.getvalue()))),
        422,
        "unusable_image",
    )
    assert err.file == "wide.png"
    assert err.error == (
        "wide.png is refused: too elongated: 100000×1 pixels is 100000:1, over the limit of 10:1 "
        "(resizing its short side to the model's input would blow up the long one); crop it to "
        "the lesion"
    )


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_float_image_with_nan_or_inf_is_refused(client, value):
    # A plain conversion made NaN black and inf white, and the model answered "benign".
    tif = io.BytesIO()
    Image.fromarray(np.full((8, 6), value, dtype=np.float32)).save(tif, "TIFF")
    err = _error(
        client.post("/api/predict", files=_files(("scan.tif", tif.getvalue()))),
        422,
        "unusable_image",
    )
    assert err.error == (
        "scan.tif is refused: 48 of its 48 pixels are NaN or infinite (a 32-bit float image); "
        "export it again with finite values"
    )


def test_total_pixels_of_a_request_are_bounded(untrained_ckpt_file):
    limits = Limits(max_pixels=50 * 50)
    service = ModelService.from_checkpoint(untrained_ckpt_file, device="cpu", limits=limits)
    with TestClient(create_app(service)) as c:
        ok = c.post("/api/predict", files=_files(("a.png", image_bytes(1, (40, 40)))))
        assert ok.status_code == 200
        two = _files(("a.png", image_bytes(1, (40, 40))), ("b.png", image_bytes(2, (40, 40))))
        err = _error(c.post("/api/predict", files=two), 413, "too_many_pixels")
    assert err.file is None and "together" in err.error


def test_oversized_upload_is_refused(untrained_ckpt_file):
    service = ModelService.from_checkpoint(
        untrained_ckpt_file, device="cpu", limits=Limits(max_upload_bytes=20_000)
    )
    big = image_bytes(1, (200, 200))  # ~120 kB of noise
    with TestClient(create_app(service)) as c:
        # With a Content-Length: refused from the header, before the body is read.
        err = _error(c.post("/api/predict", files=_files(("big.png", big))), 413, "too_large")
        assert "more than" not in err.error and "limit is 0.0190735 MiB" in err.error

        # Chunked, without a Content-Length: refused while streaming.
        body, ctype = _multipart(big)

        def chunks():
            for i in range(0, len(body), 4096):
                yield body[i : i + 4096]

        r = c.post("/api/predict", content=chunks(), headers={"content-type": ctype})
        assert "content-length" not in r.request.headers
        _error(r, 413, "too_large")
        small = c.post("/api/predict", files=_files(("small.png", image_bytes(1))))
        assert small.status_code == 200


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "skinclsboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="images"; filename="big.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_too_many_files_no_files_and_not_multipart(untrained_ckpt_file):
    service = ModelService.from_checkpoint(
        untrained_ckpt_file, device="cpu", limits=Limits(max_files=2)
    )
    with TestClient(create_app(service)) as c:
        three = _files(*((f"{i}.png", image_bytes(i)) for i in range(3)))
        err = _error(c.post("/api/predict", files=three), 400, "too_many_files")
        assert "at most 2" in err.error
        _error(c.post("/api/predict", data={"note": "x"}, files=[]), 400, "bad_request")
        _error(
            c.post("/api/predict", data={"note": "x"}, files=[("images", ("", b""))]),
            400,
            "no_images",
        )
        _error(c.post("/api/predict", json={"image": "x"}), 400, "bad_request")


def test_unknown_routes_and_methods_answer_json(client):
    _error(client.get("/api/nothing"), 404, "not_found")
    _error(client.get("/api/predict"), 405, "method_not_allowed")


def test_uploads_stay_in_memory(client, monkeypatch):
    # Starlette spills upload parts over 1 MB to a temporary file; the server must not.
    def spill(self):
        raise AssertionError("an upload was written to a temporary file")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", spill)
    big = image_bytes(5, (1000, 800))  # ~2.4 MB of noise
    assert len(big) > 2**21
    r = client.post("/api/predict?cam=false", files=_files(("big.png", big)))
    assert r.status_code == 200, r.text


def test_loopback_server_refuses_foreign_host_headers(service):
    with TestClient(create_app(service, allowed_hosts=list(LOOPBACK_HOSTS))) as c:
        assert c.get("/api/model", headers={"host": "127.0.0.1:8000"}).status_code == 200
        assert c.get("/api/model", headers={"host": "evil.example"}).status_code == 400


# ---- concurrency -----------------------------------------------------------------------------


def test_concurrent_requests_each_get_their_own_result(client):
    n = 6
    uploads = [(f"img{i}.png", image_bytes(100 + i, (40 + 4 * i, 48))) for i in range(n)]
    expected = {}
    for name, data in uploads:  # one at a time: the reference
        expected[name] = client.post("/api/predict", files=_files((name, data))).json()["results"][
            0
        ]

    barrier = threading.Barrier(n)

    def send(upload):
        barrier.wait()  # all requests in flight together
        return client.post("/api/predict", files=_files(upload)).json()["results"][0]

    for _ in range(2):
        with ThreadPoolExecutor(n) as pool:
            got = list(pool.map(send, uploads))
        for (name, _), result in zip(uploads, got):
            assert result["file"] == name
            assert result["width"] == expected[name]["width"]
            assert result["probabilities"] == expected[name]["probabilities"]
            assert result["heatmap"] == expected[name]["heatmap"]


# ---- more than two classes, and a model that fails -------------------------------------------


def test_three_classes_decide_by_argmax_and_map_the_label(three_class_ckpt):
    service = ModelService.from_checkpoint(three_class_ckpt, device="cpu", uncertain_band=0.2)
    with TestClient(create_app(service)) as c:
        info = ModelInfo.model_validate(c.get("/api/model").json())
        r = c.post("/api/predict", files=_files(*((f"{i}.png", image_bytes(i)) for i in range(4))))
    assert info.positive_class is None and info.threshold is None
    assert info.labels == {"task": "multiclass"}
    results = PredictResponse.model_validate(r.json()).results
    for x in results:
        probs = x.probabilities
        assert list(probs) == ["bcc", "mel", "nv"]
        assert x.label == max(probs, key=probs.get)
        assert x.probability == pytest.approx(probs[x.label])
        assert x.positive_class is None
        top, second = sorted(probs.values(), reverse=True)[:2]
        assert x.uncertain == (top - second < 0.2)
        assert x.cam_class == x.label and x.heatmap is not None


def test_a_model_that_fails_is_a_json_error_not_a_crash(untrained_ckpt_file, monkeypatch):
    from skincls.inference.predict import Prediction

    service = ModelService.from_checkpoint(untrained_ckpt_file, device="cpu")
    monkeypatch.setattr(
        service.predictor,
        "predict",
        lambda images: [Prediction("x", error="the model returned a non-finite output")],
    )
    with TestClient(create_app(service)) as c:
        r = c.post("/api/predict", files=_files(("a.png", image_bytes(1))))
    err = _error(r, 500, "model_error")
    assert "a.png" in err.error and "non-finite" in err.error
