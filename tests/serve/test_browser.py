"""The page in a real browser: Playwright drives Debian's Chromium against a uvicorn server on 127.0.0.1.

Never `playwright install`: the browser is the system's `/usr/bin/chromium` (apt package `chromium`,
which `.ci/run` installs). Without it or the playwright package the test skips here, and fails in CI.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from ._support import IN_CI, image_bytes, needs

needs("uvicorn", "skincls serve needs: pip install 'skincls[serve]'")
sync_api = needs("playwright.sync_api", "the browser test needs: pip install playwright")

import uvicorn  # noqa: E402

from skincls.serve.app import create_app  # noqa: E402

pytestmark = pytest.mark.slow  # a real browser: left out of `pytest -m "not slow"`

CHROMIUM = os.environ.get("SKINCLS_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@pytest.fixture(scope="module")
def chromium_path() -> str:
    found = CHROMIUM if Path(CHROMIUM).is_file() else shutil.which("chromium")
    if not found:
        message = (
            f"no Chromium at {CHROMIUM}: apt-get install chromium (never `playwright install`)"
        )
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


@contextlib.contextmanager
def _serving(service):
    """uvicorn serving `service` on 127.0.0.1, on a free port bound before the server starts."""
    # IPPROTO_TCP: asyncio sets TCP_NODELAY on connections of a TCP socket only (else +40 ms each).
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(service), log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture(scope="module")
def live_server(service):
    with _serving(service) as url:
        yield url


@contextlib.contextmanager
def _browsing(chromium_path: str, url: str):
    """A headless Chromium page at `url`; JavaScript errors on it fail the test."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
        )
        try:
            context = browser.new_context(viewport={"width": 1200, "height": 900})
            page = context.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.goto(url)
            yield page
            assert not errors, f"JavaScript errors on the page: {errors}"
        finally:
            browser.close()


@pytest.fixture()
def page(chromium_path, live_server):
    with _browsing(chromium_path, live_server) as page:
        yield page


def _drop(page, files: list[tuple[str, str, bytes]]) -> None:
    """Drop files on the drop zone the way a drag from the desktop does (a DataTransfer of Files)."""
    payload = [(n, t, base64.b64encode(d).decode()) for n, t, d in files]
    data_transfer = page.evaluate_handle(
        """(files) => {
            const dt = new DataTransfer();
            for (const [name, type, b64] of files) {
                const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
                dt.items.add(new File([bytes], name, { type }));
            }
            return dt;
        }""",
        payload,
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": data_transfer})


def test_drop_two_images_and_see_two_results(page, tmp_path):
    expect = sync_api.expect
    expect(page.locator("#notice")).to_contain_text("not a medical device")
    expect(page.locator("#model h2")).to_contain_text("smallcnn classifier")
    expect(page.locator("#model")).to_contain_text("argmax")
    expect(page.locator("#metadata")).to_be_hidden()  # an image-only model: no metadata fields

    _drop(
        page,
        [
            ("first.png", "image/png", image_bytes(11, (96, 72))),
            ("second.png", "image/png", image_bytes(12, (80, 80))),
        ],
    )
    cards = page.locator(".card.done")
    expect(cards).to_have_count(2, timeout=60_000)
    assert cards.locator(".file").all_inner_texts() == ["first.png", "second.png"]  # drop order
    for i in range(2):
        card = cards.nth(i)
        expect(card.locator(".prob")).to_have_count(2)
        values = card.locator(".prob .val").all_inner_texts()
        assert all(v.endswith("%") for v in values)
        assert sum(float(v[:-1]) for v in values) == pytest.approx(100, abs=0.2)
        assert card.locator(".badge").inner_text() in {"benign", "malignant", "uncertain"}
        heat = card.locator("img.heat")
        assert heat.get_attribute("src").startswith("data:image/png;base64,")
        assert heat.evaluate("img => img.complete && img.naturalWidth") > 0
        assert card.locator("img.photo").evaluate("img => img.naturalWidth") > 0

    # The opacity slider drives the heat map's opacity.
    first = cards.nth(0)
    first.locator("input[type=range]").fill("80")
    assert first.locator("img.heat").evaluate("img => getComputedStyle(img).opacity") == "0.8"
    expect(first.locator("output")).to_have_text("80%")

    shot = tmp_path / "serve-page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_file_picker_and_a_refused_file(page, tmp_path):
    good, bad = tmp_path / "picked.jpg", tmp_path / "notes.txt"
    good.write_bytes(image_bytes(21, (64, 64), "JPEG"))
    bad.write_text("not an image")
    page.locator("#picker").set_input_files([str(good), str(bad)])
    expect = sync_api.expect
    expect(page.locator(".card.done")).to_have_count(1, timeout=60_000)
    failed = page.locator(".card.failed")
    expect(failed).to_have_count(1)
    expect(failed.locator(".file")).to_have_text("notes.txt")
    expect(failed).to_contain_text("not an image skincls reads")


def test_three_class_model_shows_every_class_and_the_label(chromium_path, three_class_ckpt):
    from skincls.serve.service import ModelService

    service = ModelService.from_checkpoint(three_class_ckpt, device="cpu")
    with _serving(service) as url, _browsing(chromium_path, url) as page:
        expect = sync_api.expect
        expect(page.locator("#model")).to_contain_text("bcc, mel, nv")
        _drop(page, [("lesion.png", "image/png", image_bytes(31, (64, 48)))])
        card = page.locator(".card.done")
        expect(card).to_have_count(1, timeout=60_000)
        expect(card.locator(".prob")).to_have_count(3)
        expect(card.locator(".prob.top")).to_have_count(1)  # the label's bar, highlighted
        label = card.locator(".prob.top .cls").inner_text()
        assert card.locator(".badge").inner_text() in (label, "uncertain")
        expect(card.locator(".opacity")).to_contain_text(f"({label})")
        expect(card.locator(".rule")).to_contain_text("most probable class")


def test_a_model_with_metadata_gets_optional_fields_sent_with_each_image(chromium_path, fused_ckpt):
    from skincls.serve.service import ModelService

    service = ModelService.from_checkpoint(fused_ckpt, device="cpu")
    with _serving(service) as url, _browsing(chromium_path, url) as page:
        expect = sync_api.expect
        fields = page.locator("#metadata input")
        expect(fields).to_have_count(3)
        assert [fields.nth(i).get_attribute("name") for i in range(3)] == ["age", "sex", "site"]
        page.fill("#meta-age", "80")
        page.fill("#meta-site", "face")
        _drop(page, [("lesion.png", "image/png", image_bytes(41, (64, 48)))])
        card = page.locator(".card.done")
        expect(card).to_have_count(1, timeout=60_000)
        # Only the field left empty is unknown: the two filled in reached the model.
        expect(card.locator(".missing")).to_have_text("Unknown to the model (no value given): sex.")
