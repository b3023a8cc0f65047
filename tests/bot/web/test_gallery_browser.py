"""The web gallery in a real headless Chromium: thumbnails load, search narrows, the image page
shows every parameter, a hostile prompt stays text, bad links get 403, deleting follows the
rules. Screenshots of the gallery and an image page go to docs/img with `make screenshots`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from tests.bot.web.conftest import screenshot_dir
from tests.bot.web.harness import ALICE, BOB, OTHER_GUILD, GalleryServer, Seeded

HOSTILE = "<script>alert(1)</script>"


def captions(page: Any) -> list[str]:
    return [c.strip() for c in page.locator(".card .caption").all_inner_texts()]


def all_thumbnails_loaded(page: Any) -> list[int]:
    """Scroll every thumbnail into view (the later ones load lazily) and return their
    naturalWidth once the browser says each is complete."""
    images = page.locator(".card img")
    for n in range(images.count()):
        images.nth(n).scroll_into_view_if_needed()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.card img')].every(i => i.complete)"
    )
    return page.eval_on_selector_all(".card img", "imgs => imgs.map(i => i.naturalWidth)")


def test_a_server_with_30_images_shows_thumbnails_that_load(
    gallery: GalleryServer, thirty: list[Seeded], page: Any, tmp_path: Path
) -> None:
    response = page.goto(gallery.link(user_id=ALICE, admin=True))
    assert response.status == 200
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert page.locator("h1").inner_text() == "Pixel Garden: every image"
    assert len(captions(page)) == 30
    # Newest first.
    assert captions(page)[0] == thirty[-1].prompt
    assert captions(page)[-1] == thirty[0].prompt
    widths = all_thumbnails_loaded(page)
    assert len(widths) == 30 and all(w > 0 for w in widths), widths
    page.locator(".card img").first.scroll_into_view_if_needed()
    page.evaluate("window.scrollTo(0, 0)")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "gallery.png"))


def test_a_member_sees_only_their_own_images_while_the_gallery_is_private(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    page.goto(gallery.link(user_id=BOB))
    assert page.locator("h1").inner_text() == "Your images here"
    bobs = [s.prompt for s in reversed(thirty) if s.user_id == BOB]
    assert captions(page) == bobs
    # Bob's link cannot open Alice's member page.
    alice_page = page.goto(gallery.link(user_id=BOB) + f"u/{ALICE}")
    assert alice_page.status == 403


def test_search_narrows_to_the_right_images(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    page.goto(gallery.link(user_id=ALICE, admin=True))
    page.fill("input[name=q]", "lighthouse")
    page.click("form.search button")
    page.wait_for_url(re.compile(r"\?q=lighthouse"))
    expected = [s.prompt for s in reversed(thirty) if "lighthouse" in s.prompt]
    assert len(expected) == 2
    assert captions(page) == expected
    assert "matching “lighthouse”" in page.locator("h1").inner_text()
    widths = all_thumbnails_loaded(page)
    assert all(w > 0 for w in widths)

    # Two words narrow further; a prefix matches while typing.
    page.fill("input[name=q]", "snowy vill")
    page.click("form.search button")
    page.wait_for_load_state()
    assert captions(page) == [s.prompt for s in reversed(thirty) if "snowy village" in s.prompt]
    page.fill("input[name=q]", "zeppelin")
    page.click("form.search button")
    page.wait_for_load_state()
    assert captions(page) == []
    assert "No image here has a prompt with those words." in page.content()


def test_the_image_page_shows_every_parameter_and_the_command(
    gallery: GalleryServer, thirty: list[Seeded], page: Any, tmp_path: Path
) -> None:
    root = thirty[0]
    child = gallery.add(
        f"{root.prompt}, in spring", user_id=ALICE, parent_key=root.job_key, size=(768, 768)
    )
    page.goto(gallery.link(user_id=ALICE, admin=True))
    page.click(f"a[href$='/i/{child.image_id}']")
    page.wait_for_url(re.compile(rf"/i/{child.image_id}$"))
    params = dict(
        zip(
            page.locator(".params dt").all_inner_texts(),
            page.locator(".params dd").all_inner_texts(),
            strict=True,
        )
    )
    assert params["Prompt"] == child.prompt
    assert params["Negative prompt"] == "blurry"
    assert params["Aspect"] == "1:1" and params["Mode"] == "standard"
    assert params["Steps"] == "30" and params["True CFG scale"] == "4"
    assert params["Size"] == "768 × 768" and params["Kind"] == "variation"
    assert re.fullmatch(r"[0-9]+", params["Seed"])
    command = page.locator("#command").input_value()
    assert command == (
        f"/imagine prompt:{child.prompt} aspect:1:1 negative:blurry "
        f"seed:{params['Seed']} mode:standard"
    )
    full = page.locator("figure.full img")
    assert page.evaluate("(img) => img.complete && img.naturalWidth", full.element_handle()) == 768
    # The parent chain links back to the image it was made from.
    assert page.locator("ol.chain li").all_inner_texts() == [root.prompt]
    with page.expect_download() as download:
        page.click("text=Download PNG")
    saved = tmp_path / "download.png"
    download.value.save_as(saved)
    assert saved.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert download.value.suggested_filename == f"imagine-{child.job_key}.png"
    # The dark theme (prefers-color-scheme) for this one: the README shows both.
    page.emulate_media(color_scheme="dark")
    page.screenshot(path=str(screenshot_dir(tmp_path) / "image-page.png"), full_page=True)


def test_a_script_prompt_renders_as_text_and_runs_nothing(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    hostile = gallery.add(HOSTILE, user_id=BOB)
    page.goto(gallery.link(user_id=BOB))
    assert HOSTILE in captions(page)
    page.goto(gallery.link(user_id=BOB) + f"i/{hostile.image_id}")
    assert page.locator(".params dd").first.inner_text() == HOSTILE
    assert page.locator("#command").input_value().startswith(f"/imagine prompt:{HOSTILE}")
    page.fill("input[name=q]", HOSTILE)
    page.click("form.search button")
    page.wait_for_load_state()
    assert HOSTILE in captions(page)
    assert page.locator("script").count() == 0
    assert page.dialogs == []


def test_expired_tampered_and_foreign_links_get_403(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    expired = page.goto(gallery.link(user_id=ALICE, ttl_s=-1))
    assert expired.status == 403
    assert "403 Forbidden" in page.locator("h1").inner_text()
    assert "/gallery" in page.content()
    assert expired.headers["referrer-policy"] == "no-referrer"

    link = gallery.link(user_id=ALICE, admin=True)
    token = link.rstrip("/").rsplit("/", 1)[1]
    tampered = link.replace(token, token[:-2] + ("AA" if token[-2:] != "AA" else "BB"))
    assert page.goto(tampered).status == 403

    # An admin of another server: its own gallery is empty, and this server's images are
    # out of reach by id, as pages and as files.
    foreign = gallery.link(user_id=ALICE, guild_id=OTHER_GUILD, admin=True)
    assert page.goto(foreign).status == 200
    assert captions(page) == []
    image_id = thirty[0].image_id
    assert page.goto(foreign + f"i/{image_id}").status == 403
    assert page.goto(foreign + f"t/{image_id}.webp").status == 403
    assert page.goto(foreign + f"f/{image_id}.png").status == 403


def delete_from_page(page: Any) -> Any:
    page.check("form.delete input[name=confirm]")
    with page.expect_navigation():
        page.click("form.delete button")
    return page


def test_a_member_deletes_their_own_image_and_not_another(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    mine = gallery.add("alice's doomed doodle", user_id=ALICE)
    bobs = gallery.add("bob's keeper", user_id=BOB)
    link = gallery.link(user_id=ALICE)
    page.goto(link + f"i/{mine.image_id}")
    delete_from_page(page)
    assert page.locator(".notice").inner_text() == "Image deleted."
    assert "alice's doomed doodle" not in captions(page)
    assert not gallery.exists(mine.image_id)
    assert page.goto(link + f"t/{mine.image_id}.webp").status == 404

    # Bob's image: not visible to Alice, and a forged POST with her own valid CSRF token fails.
    assert page.goto(link + f"i/{bobs.image_id}").status == 403
    page.goto(link)
    csrf = gallery.signer.csrf_token(link.rstrip("/").rsplit("/", 1)[1])
    forged = page.request.post(
        link + f"i/{bobs.image_id}/delete", form={"csrf": csrf, "confirm": "yes"}
    )
    assert forged.status == 403
    # Even with the gallery public, she may look but not delete.
    gallery.set_public(True)
    try:
        page.goto(link + f"i/{bobs.image_id}")
        assert page.locator(".params dd").first.inner_text() == "bob's keeper"
        assert page.locator("form.delete").count() == 0
        forged = page.request.post(
            link + f"i/{bobs.image_id}/delete", form={"csrf": csrf, "confirm": "yes"}
        )
        assert forged.status == 403
    finally:
        gallery.set_public(False)
    assert gallery.exists(bobs.image_id)


def test_an_admin_deletes_any_image(
    gallery: GalleryServer, thirty: list[Seeded], page: Any
) -> None:
    bobs = gallery.add("bob's rule-breaking picture", user_id=BOB)
    link = gallery.link(user_id=ALICE, admin=True)
    page.goto(link + f"i/{bobs.image_id}")
    delete_from_page(page)
    assert page.locator(".notice").inner_text() == "Image deleted."
    assert not gallery.exists(bobs.image_id)
    assert "bob's rule-breaking picture" not in captions(page)
