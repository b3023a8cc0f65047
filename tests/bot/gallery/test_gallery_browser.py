"""The web gallery in a real headless Chromium: thumbnails load, search narrows, the image page
shows every parameter, a hostile prompt stays text, bad links get 403, deleting follows the
rules. Screenshots of the gallery and an image page go to docs/img with `make screenshots`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from tests.bot.gallery.conftest import screenshot_dir
from tests.bot.gallery.harness import ALICE, BOB, OTHER_GUILD, GalleryServer, Seeded

# Playwright's async API lives on the session's loop (see the browser fixture).
pytestmark = pytest.mark.asyncio(loop_scope="session")

HOSTILE = "<script>alert(1)</script>"


async def captions(page: Any) -> list[str]:
    return [c.strip() for c in await page.locator(".card .caption").all_inner_texts()]


async def all_thumbnails_loaded(page: Any) -> list[int]:
    """Scroll every thumbnail into view (the later ones load lazily) and return their
    naturalWidth once the browser says each is complete."""
    images = page.locator(".card img")
    for n in range(await images.count()):
        await images.nth(n).scroll_into_view_if_needed()
    await page.wait_for_function(
        "() => [...document.querySelectorAll('.card img')].every(i => i.complete)"
    )
    return await page.eval_on_selector_all(".card img", "imgs => imgs.map(i => i.naturalWidth)")


async def test_a_server_with_30_images_shows_thumbnails_that_load(
    gallery: GalleryServer, thirty: list[Seeded], page: Any, tmp_path: Path
) -> None:
    response = await page.goto(gallery.link(user_id=ALICE, admin=True))
    assert response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert await page.locator("h1").inner_text() == "Pixel Garden: every image"
    assert len(await captions(page)) == 30
    # Newest first.
    assert (await captions(page))[0] == thirty[-1].prompt
    assert (await captions(page))[-1] == thirty[0].prompt
    widths = await all_thumbnails_loaded(page)
    assert len(widths) == 30 and all(w > 0 for w in widths), widths
    await page.locator(".card img").first.scroll_into_view_if_needed()
    await page.evaluate("window.scrollTo(0, 0)")
    await page.screenshot(path=str(screenshot_dir(tmp_path) / "gallery.png"))


async def test_a_member_sees_only_their_own_images_while_the_gallery_is_private(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    await page.goto(gallery.link(user_id=BOB))
    assert await page.locator("h1").inner_text() == "Your images here"
    bobs = [s.prompt for s in reversed(thirty) if s.user_id == BOB]
    assert (await captions(page)) == bobs
    # Bob's link cannot open Alice's member page.
    alice_page = await page.goto(gallery.link(user_id=BOB) + f"u/{ALICE}")
    assert alice_page.status == 403


async def test_search_narrows_to_the_right_images(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    await page.goto(gallery.link(user_id=ALICE, admin=True))
    await page.fill("input[name=q]", "lighthouse")
    await page.click("form.search button")
    await page.wait_for_url(re.compile(r"\?q=lighthouse"))
    expected = [s.prompt for s in reversed(thirty) if "lighthouse" in s.prompt]
    assert len(expected) == 2
    assert (await captions(page)) == expected
    assert "matching “lighthouse”" in await page.locator("h1").inner_text()
    widths = await all_thumbnails_loaded(page)
    assert all(w > 0 for w in widths)

    # Two words narrow further; a prefix matches while typing.
    await page.fill("input[name=q]", "snowy vill")
    await page.click("form.search button")
    await page.wait_for_load_state()
    assert (await captions(page)) == [
        s.prompt for s in reversed(thirty) if "snowy village" in s.prompt
    ]
    await page.fill("input[name=q]", "zeppelin")
    await page.click("form.search button")
    await page.wait_for_load_state()
    assert (await captions(page)) == []
    assert "No image here has a prompt with those words." in await page.content()


async def test_the_image_page_shows_every_parameter_and_the_command(
    gallery: GalleryServer, thirty: list[Seeded], page: Any, tmp_path: Path
) -> None:
    root = thirty[0]
    child = gallery.add(
        f"{root.prompt}, in spring", user_id=ALICE, parent_key=root.job_key, size=(768, 768)
    )
    await page.goto(gallery.link(user_id=ALICE, admin=True))
    await page.click(f"a[href$='/i/{child.image_id}']")
    await page.wait_for_url(re.compile(rf"/i/{child.image_id}$"))
    params = dict(
        zip(
            await page.locator(".params dt").all_inner_texts(),
            await page.locator(".params dd").all_inner_texts(),
            strict=True,
        )
    )
    assert params["Prompt"] == child.prompt
    assert params["Negative prompt"] == "blurry"
    assert params["Aspect"] == "1:1" and params["Mode"] == "standard"
    assert params["Steps"] == "30" and params["True CFG scale"] == "4"
    assert params["Size"] == "768 × 768" and params["Kind"] == "variation"
    assert re.fullmatch(r"[0-9]+", params["Seed"])
    command = await page.locator("#command").input_value()
    assert command == (
        f"/imagine prompt:{child.prompt} aspect:1:1 negative:blurry "
        f"seed:{params['Seed']} mode:standard"
    )
    full = page.locator("figure.full img")
    assert (
        await page.evaluate(
            "(img) => img.complete && img.naturalWidth", await full.element_handle()
        )
        == 768
    )
    # The parent chain links back to the image it was made from.
    assert await page.locator("ol.chain li").all_inner_texts() == [root.prompt]
    async with page.expect_download() as download_info:
        await page.click("text=Download PNG")
    download = await download_info.value
    saved = tmp_path / "download.png"
    await download.save_as(saved)
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert download.suggested_filename == f"imagine-{child.job_key}.png"
    # The dark theme (prefers-color-scheme) for this one: the README shows both.
    await page.emulate_media(color_scheme="dark")
    await page.screenshot(path=str(screenshot_dir(tmp_path) / "image-page.png"), full_page=True)


async def test_a_script_prompt_renders_as_text_and_runs_nothing(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    hostile = gallery.add(HOSTILE, user_id=BOB)
    await page.goto(gallery.link(user_id=BOB))
    assert HOSTILE in (await captions(page))
    await page.goto(gallery.link(user_id=BOB) + f"i/{hostile.image_id}")
    assert await page.locator(".params dd").first.inner_text() == HOSTILE
    command = await page.locator("#command").input_value()
    assert command.startswith(f"/imagine prompt:{HOSTILE}")
    await page.fill("input[name=q]", HOSTILE)
    await page.click("form.search button")
    await page.wait_for_load_state()
    assert HOSTILE in (await captions(page))
    assert await page.locator("script").count() == 0
    assert page.dialogs == []


async def test_expired_tampered_and_foreign_links_get_403(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    expired = await page.goto(gallery.link(user_id=ALICE, ttl_s=-1))
    assert expired.status == 403
    assert "403 Forbidden" in await page.locator("h1").inner_text()
    assert "/gallery" in await page.content()
    assert expired.headers["referrer-policy"] == "no-referrer"

    link = gallery.link(user_id=ALICE, admin=True)
    token = link.rstrip("/").rsplit("/", 1)[1]
    tampered = link.replace(token, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    assert (await page.goto(tampered)).status == 403

    # An admin of another server: its own gallery is empty, and this server's images are
    # out of reach by id, as pages and as files.
    foreign = gallery.link(user_id=ALICE, guild_id=OTHER_GUILD, admin=True)
    assert (await page.goto(foreign)).status == 200
    assert (await captions(page)) == []
    image_id = thirty[0].image_id
    assert (await page.goto(foreign + f"i/{image_id}")).status == 403
    assert (await page.goto(foreign + f"t/{image_id}.webp")).status == 403
    assert (await page.goto(foreign + f"f/{image_id}.png")).status == 403


async def delete_from_page(page: Any) -> None:
    await page.check("form.delete input[name=confirm]")
    async with page.expect_navigation():
        await page.click("form.delete button")


async def test_a_member_deletes_their_own_image_and_not_another(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    mine = gallery.add("alice's doomed doodle", user_id=ALICE)
    bobs = gallery.add("bob's keeper", user_id=BOB)
    link = gallery.link(user_id=ALICE)
    await page.goto(link + f"i/{mine.image_id}")
    await delete_from_page(page)
    assert await page.locator(".notice").inner_text() == "Image deleted."
    assert "alice's doomed doodle" not in (await captions(page))
    assert not gallery.exists(mine.image_id)
    assert (await page.goto(link + f"t/{mine.image_id}.webp")).status == 404

    # Bob's image: not visible to Alice, and a forged POST with her own valid CSRF token fails.
    assert (await page.goto(link + f"i/{bobs.image_id}")).status == 403
    await page.goto(link)
    csrf = gallery.signer.csrf_token(link.rstrip("/").rsplit("/", 1)[1])
    forged = await page.request.post(
        link + f"i/{bobs.image_id}/delete", form={"csrf": csrf, "confirm": "yes"}
    )
    assert forged.status == 403
    # Even with the gallery public, she may look but not delete.
    gallery.set_public(True)
    try:
        await page.goto(link + f"i/{bobs.image_id}")
        assert await page.locator(".params dd").first.inner_text() == "bob's keeper"
        assert await page.locator("form.delete").count() == 0
        forged = await page.request.post(
            link + f"i/{bobs.image_id}/delete", form={"csrf": csrf, "confirm": "yes"}
        )
        assert forged.status == 403
    finally:
        gallery.set_public(False)
    assert gallery.exists(bobs.image_id)


async def test_an_admin_deletes_any_image(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    bobs = gallery.add("bob's rule-breaking picture", user_id=BOB)
    link = gallery.link(user_id=ALICE, admin=True)
    await page.goto(link + f"i/{bobs.image_id}")
    await delete_from_page(page)
    assert await page.locator(".notice").inner_text() == "Image deleted."
    assert not gallery.exists(bobs.image_id)
    assert "bob's rule-breaking picture" not in (await captions(page))
