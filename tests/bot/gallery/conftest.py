"""Fixtures of the gallery tests: a gallery server with 30 images, and one headless Chromium.

The browser is Debian's ``chromium`` driven by Playwright (``executable_path``): nothing is
downloaded. ``make chromium`` (run by ``make test``) installs it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from tests.bot.gallery.harness import GalleryServer, Seeded, seed_gallery

CHROMIUM_HINT = (
    "the gallery's browser tests need Debian's chromium: run `make chromium` "
    "(as root it runs `apt-get install -y chromium`), or set IMAGINE_CHROMIUM to a Chromium binary"
)


def chromium_path() -> str:
    explicit = os.environ.get("IMAGINE_CHROMIUM")
    if explicit:
        if not Path(explicit).exists():
            pytest.fail(f"IMAGINE_CHROMIUM={explicit} does not exist: {CHROMIUM_HINT}")
        return explicit
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    pytest.fail(f"no Chromium found: {CHROMIUM_HINT}", pytrace=False)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser() -> AsyncIterator[Any]:
    """One headless Chromium for the whole session (starting one costs about a second).

    Playwright's async API on the session's event loop: its sync API would keep an event loop
    running in the main thread for as long as the browser lives, and every asyncio test after
    it would fail. Browser tests therefore run on the session loop
    (``pytest.mark.asyncio(loop_scope="session")``).
    """
    from playwright.async_api import async_playwright

    executable = chromium_path()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=executable, headless=True)
        try:
            yield browser
        finally:
            await browser.close()


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GalleryServer]:
    server = GalleryServer(tmp_path_factory.mktemp("gallery")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def thirty(gallery: GalleryServer) -> list[Seeded]:
    """The module's 30 images in the test server (two thirds Alice's, a third Bob's)."""
    return seed_gallery(gallery, 30)


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Any) -> AsyncIterator[Any]:
    """A fresh browser tab (own cookies and cache); ``page.dialogs`` lists any alert() seen."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    tab = await context.new_page()
    dialogs: list[str] = []

    async def on_dialog(dialog: Any) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    tab.on("dialog", on_dialog)
    tab.dialogs = dialogs
    try:
        yield tab
    finally:
        await context.close()


def screenshot_dir(tmp_path: Path) -> Path:
    """``docs/img`` when ``make screenshots`` runs the tests, else a throwaway folder."""
    target = os.environ.get("IMAGINE_SCREENSHOTS")
    return Path(target) if target else tmp_path
