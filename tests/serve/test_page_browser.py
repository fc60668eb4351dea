"""The page at ``/`` of ``gradex serve``, driven in headless Chromium against a real server."""

import base64
import re
from pathlib import Path

import pytest
from PIL import Image
from skimage import data

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)

ARTIFACTS = Path(__file__).parent / "artifacts"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# The first explanation also pays for the server's lazy work; two CPU cores can be slow.
EXPLAIN_TIMEOUT_MS = 90_000


@pytest.fixture(scope="module")
def server(serve_process):
    # conftest's shared, ready server: only its ``url`` is used here.
    return serve_process


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def page(browser, server):
    page = browser.new_page(viewport={"width": 1000, "height": 900})
    # The page must be self-contained (the server's machine may have no internet): any request
    # that leaves the server is recorded and fails the test, as does any uncaught script error.
    foreign, script_errors = [], []

    def check(request):
        if not request.url.startswith((server.url, "data:")):
            foreign.append(request.url)

    page.on("request", check)
    page.on("pageerror", lambda e: script_errors.append(str(e)))
    page.goto(server.url + "/")
    page.wait_for_selector("#file", state="attached")
    yield page
    page.close()
    assert foreign == [], f"the page fetched something from outside the server: {foreign}"
    assert script_errors == [], f"script errors on the page: {script_errors}"


@pytest.fixture(scope="module")
def cat_png(tmp_path_factory):
    path = tmp_path_factory.mktemp("images") / "chelsea.png"
    Image.fromarray(data.chelsea()).save(path)
    return path


def _state(page):
    return page.evaluate("document.body.dataset.state")


def _natural_width(page, selector):
    return page.eval_on_selector(selector, "img => img.complete ? img.naturalWidth : 0")


def _assert_cat_explained(page):
    entries = page.locator("#top5 li")
    assert entries.count() == 5
    first = entries.first.inner_text()
    # EfficientNet-Lite0 calls chelsea "Egyptian cat", "tabby" or "tiger cat" depending on crop.
    assert re.search(r"\bcat\b", first, re.IGNORECASE), f"top-1 is not a cat: {first!r}"
    assert re.search(r"\d+(\.\d+)?\s*%", first), f"no percentage in {first!r}"
    assert _natural_width(page, "#cam") > 0 and _natural_width(page, "#saliency") > 0
    assert re.search(r"\d+(\.\d+)?\s*ms", page.inner_text("#latency"))
    assert page.inner_text("#layer").strip()
    assert page.inner_text("#error") == ""


def test_cat_is_explained(page, cat_png):
    page.set_input_files("#file", str(cat_png))
    page.wait_for_selector("body[data-state=done]", timeout=EXPLAIN_TIMEOUT_MS)
    _assert_cat_explained(page)
    # The server reports the method; the page spells it as the paper does.
    assert page.inner_text("figure:has(#cam) figcaption") == "Grad-CAM (coarse)"
    assert page.inner_text("figure:has(#saliency) figcaption") == "GE"
    for selector in ("#cam", "#saliency"):
        assert page.get_attribute(selector, "alt")
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "page_cat.png"), full_page=True)


def test_a_non_image_shows_the_servers_error(page, tmp_path):
    fake = tmp_path / "notes.png"
    fake.write_text("these are notes, not a picture\n")
    page.set_input_files("#file", str(fake))
    page.wait_for_selector("body[data-state=error]", timeout=EXPLAIN_TIMEOUT_MS)
    message = page.inner_text("#error")
    assert "image" in message, f"the error does not name the field: {message!r}"
    assert _state(page) == "error"
    assert page.is_hidden("#result")


def test_a_dropped_image_is_explained(page, cat_png):
    # Playwright has no file drag from disk: the drop event is built in the page with the file.
    payload = base64.b64encode(cat_png.read_bytes()).decode()
    page.evaluate(
        """([b64, name]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, { type: "image/png" }));
            const drop = document.getElementById("drop");
            drop.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true,
                                                       cancelable: true }));
        }""",
        [payload, cat_png.name],
    )
    page.wait_for_selector("body[data-state=done]", timeout=EXPLAIN_TIMEOUT_MS)
    _assert_cat_explained(page)
