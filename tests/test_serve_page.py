"""The search page in a real headless Chromium (Debian's, driven by Playwright): drop an image, type a text, see hits
with thumbnails, score, id and label. Skips, saying why, where Chromium or Playwright is absent."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_serve import TOKEN, Server, make_store, running_server
from test_serve_video import video_encoder, video_store, videos  # noqa: F401 - fixtures of the video server

from mmpretrain import load_encoder

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]

pytestmark = [
    pytest.mark.skipif(shutil.which(CHROMIUM) is None,
                       reason=f"{CHROMIUM} is absent: install Debian's chromium (apt-get install -y chromium)"),
]


@pytest.fixture
def browser_page(tmp_path: Path) -> Iterator:
    """A fresh Chromium profile (its own --user-data-dir) and one page."""
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright's Python package is not installed")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            yield context.new_page()
        finally:
            context.close()


def read_hits(page, count: int) -> list[dict[str, str]]:
    """Wait for `count` hit cards whose thumbnails have loaded, and read them."""
    page.wait_for_function(
        "n => document.querySelectorAll('.hit').length === n && "
        "[...document.querySelectorAll('.hit img')].every(i => i.complete && i.naturalWidth > 0)", arg=count,
        timeout=60_000)
    return page.eval_on_selector_all(".hit", """cards => cards.map(card => ({
        text: card.innerText, src: card.querySelector('img').src}))""")


@pytest.fixture(scope="module")
def image_server(demo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, list[Path]]]:
    from test_encoders import training_checkpoint

    ckpt = training_checkpoint(tmp_path_factory.mktemp("page_ckpt") / "tiny.ckpt")
    images = sorted((demo_root / "val").rglob("*.png"))
    store = make_store(load_encoder(ckpt, device="cpu"), images, tmp_path_factory.mktemp("page_store") / "store")
    with running_server(f"encoder={ckpt}", f"index={store}", f"token={TOKEN}") as running:
        yield running, images


def test_drop_an_image_and_see_its_neighbours(image_server: tuple[Server, list[Path]], browser_page) -> None:
    server, images = image_server
    page = browser_page
    page.goto(server.url + "/")
    page.fill("#token", TOKEN)
    page.dispatch_event("#token", "change")
    page.fill("#k", "4")
    query = images[3]
    transfer = page.evaluate_handle("""([name, data]) => {
        const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], name, { type: "image/png" }));
        return transfer;
    }""", [query.name, base64.b64encode(query.read_bytes()).decode()])
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})
    hits = read_hits(page, 4)
    first = hits[0]["text"]
    assert f"id: {query.parent.name}/{query.stem}" in first and f"label: {query.parent.name}" in first
    assert "score: 1.0000" in first and all(h["src"].startswith("blob:") for h in hits)
    assert page.inner_text("#status") == "4 hits"


def test_a_wrong_token_shows_the_refusal(image_server: tuple[Server, list[Path]], browser_page) -> None:
    server, images = image_server
    page = browser_page
    page.goto(server.url + "/")
    page.fill("#token", "wrong")
    page.set_input_files("#file", str(images[0]))
    page.wait_for_function("document.querySelector('#status').className === 'error'", timeout=60_000)
    assert "wrong bearer token" in page.inner_text("#status")


def test_type_a_text_and_see_video_hits(video_pretrained: Path, video_store: Path, videos: list,  # noqa: F811
                                        browser_page) -> None:
    with running_server(f"encoder={video_pretrained}", f"index={video_store}") as server:
        page = browser_page
        page.goto(server.url + "/")
        page.fill("#k", "3")
        page.fill("#text", "a red circle")
        page.press("#text", "Enter")
        hits = read_hits(page, 3)
    labels = {r.id: r.label for r in videos}
    for hit in hits:
        item = hit["text"].split("id: ", 1)[1].splitlines()[0]
        assert f"label: {labels[item]}" in hit["text"] and "score: " in hit["text"]
