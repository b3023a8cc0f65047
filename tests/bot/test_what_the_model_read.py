"""Details and /styles preview show what the model actually read: the prompt after the style's
template and the quality suffix, and the whole negative prompt (the member's and the style's,
or the single space the model card recommends, or none at all in fast mode)."""

from __future__ import annotations

from typing import Any

import pytest

from tests.bot.harness import Harness, attachment_bytes, png_parameters

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

SINGLE_SPACE = "(none — a single space, as the model card recommends)"


async def details_of(harness: Harness, actor: Any, **options: Any) -> tuple[dict, dict]:
    result = await actor.slash(harness.channel, "imagine", **options)
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    params = png_parameters(await attachment_bytes(message))
    details = await actor.click(message, label="Details")
    fields = {f.name: f.value for f in details.response.embeds[0].fields}
    return fields, params


async def test_details_show_the_prompt_and_negative_the_model_read(harness: Harness) -> None:
    alice = harness.member("alice")
    fields, params = await details_of(
        harness,
        alice,
        prompt="a lighthouse",
        style="watercolor",
        negative="people",
        mode="standard",
    )
    assert fields["Prompt"] == "a lighthouse"
    assert fields["Prompt the model read"] == params["full_prompt"]
    assert fields["Prompt the model read"].startswith("a lighthouse, watercolor painting")
    assert fields["Prompt the model read"].endswith("Ultra HD, 4K, cinematic composition.")
    assert fields["Negative prompt the model read"] == params["negative_prompt"]
    assert fields["Negative prompt the model read"].startswith("people, photo, 3d render")

    plain, params = await details_of(harness, alice, prompt="a cat", mode="standard")
    assert params["negative_prompt"] == " "
    assert plain["Negative prompt the model read"] == SINGLE_SPACE

    fast, params = await details_of(harness, alice, prompt="a dog", mode="fast")
    assert fast["Prompt the model read"] == params["full_prompt"] == "a dog"
    assert fast["Negative prompt the model read"].startswith("(none: fast mode")


async def test_styles_preview_shows_the_same_text(harness: Harness) -> None:
    alice = harness.member("alice")
    fields, _ = await details_of(
        harness, alice, prompt="a fox", style="anime", negative="text", mode="standard"
    )
    preview = await harness.admin.slash(
        harness.channel, "styles preview", name="anime", prompt="a fox"
    )
    shown = {f.name: f.value for f in preview.response.embeds[0].fields}
    read = next(value for name, value in shown.items() if name.startswith("Prompt the model"))
    assert read == fields["Prompt the model read"]
    style_negative = "photorealistic, photo, 3d render, lowres, blurry, deformed"
    assert shown["Negative prompt the model reads"] == style_negative  # no member negative here
    assert fields["Negative prompt the model read"] == f"text, {style_negative}"
    none_preview = await harness.admin.slash(
        harness.channel, "styles preview", name="none", prompt="a fox"
    )
    shown = {f.name: f.value for f in none_preview.response.embeds[0].fields}
    assert shown["Negative prompt the model reads"] == SINGLE_SPACE
