"""Images from images in SimCord: Vary (Subtle), Vary (Strong) and Remix on a delivered image,
the stored image they start from, live previews while an image forms, and what happens when
the stored image is gone."""

from __future__ import annotations

from typing import Any

import discord

from engine.img2img import img2img_steps
from engine.presets import VARY_STRONG_STRENGTH, VARY_SUBTLE_STRENGTH
from tests.bot.harness import Harness, attachment_bytes, png_parameters

FAST_STEPS = 8  # the tests' default mode is fast (Lightning, 8 steps)
RESULT_BUTTONS = [
    "Reroll",
    "Vary (Subtle)",
    "Vary (Strong)",
    "Remix",
    # No Edit: this bot cannot edit (no edit model), so the button would only refuse.
    "Details",
    "Delete",
]


def button_labels(message: discord.Message) -> list[str]:
    return [child.label for row in message.components for child in row.children]  # type: ignore[union-attr]


async def finished_image(harness: Harness, actor: Any, **options: Any) -> discord.Message:
    result = await actor.slash(harness.channel, "imagine", **options)
    assert result.response is not None and not result.ephemeral
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    assert message.attachments, message.content
    return message


async def delivered(harness: Harness, result: Any) -> tuple[discord.Message, dict[str, Any]]:
    """The image a button's job delivered, and its PNG parameters."""
    assert result.response is not None and not result.ephemeral, result.response
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    return message, png_parameters(await attachment_bytes(message))


async def test_vary_and_remix_make_images_from_the_stored_image(harness: Harness) -> None:
    alice, bob = harness.member("alice"), harness.member("bob")
    original = await finished_image(
        harness, alice, prompt="a paper boat", negative="people", style="anime", seed=3
    )
    assert button_labels(original) == RESULT_BUTTONS
    (parent,) = await harness.rows()
    stored = await harness.bot.images.read(parent.job_key)
    assert stored == await attachment_bytes(original)  # the PNG as delivered, chunks and all

    subtle, subtle_png = await delivered(harness, await bob.click(original, label="Vary (Subtle)"))
    strong, strong_png = await delivered(
        harness, await alice.click(original, label="Vary (Strong)")
    )
    form = await alice.click(original, label="Remix")
    assert form.modal is not None
    defaults = {
        c["custom_id"]: c.get("value")
        for row in form.modal["components"]
        for c in row.get("components", [row.get("component", {})])
    }
    assert defaults == {"prompt": "a paper boat", "negative": "people"}
    remix, remix_png = await delivered(
        harness,
        await alice.submit_modal(form, {"prompt": "a paper boat at night", "negative": "fog"}),
    )

    rows = await harness.rows()
    assert [r.kind for r in rows] == ["imagine", "vary", "vary", "remix"]
    expected = [
        (subtle_png, rows[1], VARY_SUBTLE_STRENGTH, bob),
        (strong_png, rows[2], VARY_STRONG_STRENGTH, alice),
        (remix_png, rows[3], VARY_STRONG_STRENGTH, alice),
    ]
    for params, row, strength, who in expected:
        steps = img2img_steps(FAST_STEPS, strength)
        assert steps == round(strength * FAST_STEPS)  # about s × steps denoising steps
        assert params["parent_job_id"] == parent.job_key and params["strength"] == strength
        assert params["steps"] == steps and params["schedule_steps"] == FAST_STEPS
        assert (row.parent_key, row.strength, row.steps, row.user_id) == (
            parent.job_key,
            strength,
            steps,
            who.id,
        )
        assert row.status == "done" and row.charged and row.seed_used != parent.seed_used
        assert (row.style, row.aspect, row.mode) == ("anime", "1:1", "fast")
        assert params["mode"] == "fast" and params["true_cfg_scale"] == 1.0
    assert subtle_png["prompt"] == strong_png["prompt"] == "a paper boat"
    assert rows[1].negative_prompt == rows[2].negative_prompt == "people"
    assert remix_png["prompt"] == "a paper boat at night" and rows[3].negative_prompt == "fog"
    for message in (subtle, strong, remix):
        assert button_labels(message) == RESULT_BUTTONS
    assert (await harness.quota(alice)).used == 3 and (await harness.quota(bob)).used == 1
    # Every delivered image is kept, the variations too.
    for row in rows:
        assert await harness.bot.images.has(row.job_key)


async def test_a_variation_in_a_cfg_mode_keeps_true_cfg(harness: Harness) -> None:
    alice = harness.member("alice")
    original = await finished_image(harness, alice, prompt="a lantern", mode="standard", seed=4)
    _, params = await delivered(harness, await alice.click(original, label="Vary (Subtle)"))
    assert params["mode"] == "standard" and params["true_cfg_scale"] == 4.0
    assert params["negative_prompt"] == " "  # true CFG needs a negative; " " is the neutral one
    assert params["steps"] == img2img_steps(30, VARY_SUBTLE_STRENGTH) == 11


async def test_remix_refuses_empty_and_over_long_prompts_like_imagine(harness: Harness) -> None:
    alice = harness.member("alice")
    original = await finished_image(harness, alice, prompt="a kite")
    for prompt, answer in [
        ("   ", "Your prompt is empty"),
        ("x" * 1501, "the limit is 1,500"),
    ]:
        form = await alice.click(original, label="Remix")
        refused = await alice.submit_modal(form, {"prompt": prompt, "negative": ""})
        assert refused.ephemeral and answer in refused.response.content
    assert len(await harness.rows()) == 1 and (await harness.quota(alice)).used == 1


async def test_previews_appear_on_progress_edits_before_the_image(harness: Harness) -> None:
    settings = harness.engine.inner.settings
    settings.test_step_delay_s = 0.12
    settings.preview_interval_s = 0.0
    alice = harness.member("alice")
    result = await alice.slash(
        harness.channel, "imagine", prompt="a foggy harbour", mode="standard"
    )
    await harness.wait_jobs()
    token = result._interaction.token
    edits = [
        r.json
        for r in harness.env.http_requests
        if r.method == "PATCH" and r.path.endswith(f"/{token}/messages/@original")
    ]
    final = next(i for i, body in enumerate(edits) if body.get("embeds"))
    previews = [
        body
        for body in edits[:final]
        if any(a.get("filename", "").startswith("preview.") for a in body.get("attachments", []))
    ]
    assert previews, edits
    for body in previews:
        assert "Step **" in body["content"] and len(body["attachments"]) == 1
        step = int(body["content"].split("Step **")[1].split(" of ")[0])
        assert step >= 0.3 * 30  # from about 30 % of the steps
        # Alt text: what the preview is and how far the image has come.
        description = body["attachments"][0]["description"]
        assert description.startswith("Preview of the image being made, step "), description
    # The final edit replaces the preview: one attachment, the image itself.
    (image,) = edits[final]["attachments"]
    assert image["filename"].endswith(".png")
    message = harness.message(result.response.id)
    assert [a.filename for a in message.attachments] == [image["filename"]]
