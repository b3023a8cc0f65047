"""/imagine end to end: the answer, live progress, the image and its embed, every refusal."""

from __future__ import annotations

import asyncio
import io
import logging
from typing import Any

import pytest
import simcord.interactions
from PIL import Image

import db
from bot import metrics
from engine.presets import MAX_PROMPT_CHARS, image_size
from tests.bot.harness import Harness, attachment_bytes, png_parameters

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


def labels(message: Any) -> list[str]:
    """Button labels of a message (discord.Message or SimCord ResponseMessage)."""
    rows = message.components
    out = []
    for row in rows:
        children = row["components"] if isinstance(row, dict) else row.children
        for child in children:
            out.append(child["label"] if isinstance(child, dict) else child.label)
    return out


async def test_imagine_answers_shows_progress_then_the_image(harness: Harness) -> None:
    harness.engine.inner.settings.test_step_delay_s = 0.45  # 8 steps: ~3.6 s, progress shows
    alice = harness.member("alice")

    result = await alice.slash(
        harness.channel,
        "imagine",
        prompt="a lighthouse at dusk, **bold** @everyone",
        style="watercolor",
        aspect="16:9",
        negative="people",
        seed=1234,
        mode="fast",
    )

    # Answered at once, publicly, with who/what/where in line and a Cancel button.
    assert result.acknowledged and not result.ephemeral
    first = result.response
    assert first is not None
    answer = harness.answers(result)[0]
    assert f"<@{alice.id}>" in answer
    assert "a lighthouse at dusk, \\*\\*bold\\*\\* @\u200beveryone" in answer
    assert "watercolor" in answer and "16:9 landscape" in answer
    assert "line" in answer or "Starting" in answer
    assert labels(first) == ["Cancel"]
    row = await harness.row(harness.key(result))
    assert row.status in ("queued", "running") and row.charged
    assert row.message_id == first.id and row.channel_id == harness.channel.id

    await harness.wait_jobs()

    # Progress edits went to the same message, at most one per 1.5 s.
    progress_edits = [
        r
        for r in harness.env.http_requests
        if r.method == "PATCH" and "Step **" in str((r.json or {}).get("content"))
    ]
    assert progress_edits, "no live progress edit was made"
    # One edit per 1.5 s of rendering at most (plus the first): ~3.6 s leaves room for three,
    # more only when a loaded machine made the steps themselves slower.
    done = await harness.row(harness.key(result))
    assert done.run_s is not None
    assert len(progress_edits) <= max(3, 1 + int(done.run_s / 1.5) + 1)

    message = harness.message(first.id)
    assert message.content == ""
    assert labels(message) == [
        "Reroll",
        "Vary (Subtle)",
        "Vary (Strong)",
        "Remix",  # no Edit: this bot cannot edit (no edit model)
        "Details",
        "Delete",
    ]
    (embed,) = message.embeds
    assert embed.description == "a lighthouse at dusk, \\*\\*bold\\*\\* @\u200beveryone"
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Style"] == "watercolor"
    assert fields["Seed"] == "`1234`"
    assert fields["Negative"] == "people"
    width, height = image_size("16:9", 64)
    assert fields["Size"] == f"16:9 landscape · {width}×{height}"
    assert fields["Mode"].startswith("fast · 8 steps")
    assert embed.image.url == "attachment://imagine-1234.png"
    assert message.mentions == [] and not message.mention_everyone

    data = await attachment_bytes(message)
    params = png_parameters(data)
    assert params["seed"] == 1234 and params["style"] == "watercolor"
    assert params["prompt"] == "a lighthouse at dusk, **bold** @everyone"
    assert "watercolor painting" in params["full_prompt"]
    assert "people" in params["negative_prompt"] or params["negative_prompt"] == ""
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == image_size("16:9", 64)

    row = await harness.row(row.job_key)
    assert (row.status, row.seed_used, row.width, row.height) == ("done", 1234, width, height)
    assert row.mode_used == "fast" and row.steps == 8 and row.message_id == message.id
    assert (await harness.quota(alice)).used == 1


@pytest.mark.parametrize("settings_overrides", [{"default_mode": "standard"}])
async def test_defaults_and_random_seed(harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="bot.imagine.service")
    bob = harness.member("bob")
    result = await bob.slash(harness.channel, "imagine", prompt="  a cat  ")
    await harness.wait_jobs()
    # One log line per job: id, user, guild, outcome, timings; no prompt, no token.
    key = harness.key(result)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"job {key} ")]
    assert f"user={bob.id} guild={harness.guild.id} outcome=done" in line
    assert "queued_s=" in line and "run_s=" in line and "total_s=" in line
    assert "a cat" not in line and "simcord_interaction" not in line
    message = harness.message(result.response.id)
    params = png_parameters(await attachment_bytes(message))
    row = await harness.row(harness.key(result))
    assert row.prompt == "a cat" and row.style == "none" and row.aspect == "1:1"
    assert row.mode == "standard" and row.seed == params["seed"] == row.seed_used
    assert params["steps"] == 30 and params["true_cfg_scale"] == 4.0


async def _refused(harness: Harness, actor: Any, text: str, **options: Any) -> str:
    """Run /imagine, expect a private refusal, and check nothing was charged or queued."""
    before = len(await harness.rows())
    submitted = len(harness.engine.submitted)
    result = await actor.slash(harness.channel, "imagine", **options)
    assert result.ephemeral, result
    content = result.response.content
    assert text in content, content
    assert len(await harness.rows()) == before
    assert len(harness.engine.submitted) == submitted
    return content


async def test_bad_input_is_refused_privately_and_costs_nothing(harness: Harness) -> None:
    carol = harness.member("carol")
    await _refused(harness, carol, "Your prompt is empty", prompt="   \n  ")
    await _refused(harness, carol, "Your prompt is empty", prompt="\u200b\u200d \ufeff")
    # Discord's own max_length stops this in the client (test_command_limits); a crafted
    # interaction gets past it, and the bot still refuses it.
    for option in harness.env.backend.find_command("imagine", None)["options"]:
        option.pop("max_length", None)
    content = await _refused(
        harness, carol, "the limit is 1,500", prompt="x" * (MAX_PROMPT_CHARS + 1)
    )
    assert f"{MAX_PROMPT_CHARS + 1:,} characters" in content
    await _refused(harness, carol, "There is no style called “nope”", prompt="a cat", style="nope")

    await harness.admin.slash(harness.channel, "blocked add", word="Forbidden Thing")
    await _refused(
        harness, carol, "doesn't allow: ||Forbidden Thing||", prompt="a FORBIDDEN thing here"
    )
    # Whole words only: "forbidden things" is not "forbidden thing".
    ok = await carol.slash(harness.channel, "imagine", prompt="forbidden things")
    assert not ok.ephemeral
    await _refused(harness, carol, "doesn't allow", prompt="a cat", negative="forbidden thing")
    await harness.wait_jobs()
    quota = await harness.quota(carol)
    assert (quota.used, quota.remaining) == (1, 24)


async def test_disallowed_channel_is_refused(harness: Harness) -> None:
    other = harness.guild.create_text_channel("memes")
    await harness.admin.slash(harness.channel, "limits channels add", channel=harness.channel)
    dave = harness.member("dave")
    result = await dave.slash(other, "imagine", prompt="a dog")
    assert result.ephemeral
    assert "can't be made in this channel" in result.response.content
    assert f"<#{harness.channel.id}>" in result.response.content
    assert await harness.rows() == []
    allowed = await dave.slash(harness.channel, "imagine", prompt="a dog")
    assert not allowed.ephemeral
    await harness.wait_jobs()


@pytest.mark.parametrize("settings_overrides", [{"default_daily_quota": 2}], indirect=False)
async def test_quota_used_up_says_when_it_resets(harness: Harness) -> None:
    erin = harness.member("erin")
    for n in range(2):
        assert not (await erin.slash(harness.channel, "imagine", prompt=f"cat {n}")).ephemeral
    await harness.wait_jobs()
    content = await _refused(
        harness, erin, "You've used all 2 images of today's quota", prompt="cat 3"
    )
    assert "resets <t:" in content and ":R>" in content
    assert metrics.JOBS.labels("refused")._value.get() >= 1

    # An exempt role lifts the quota for its members.
    vip = harness.guild.create_role("VIP")
    await harness.admin.slash(harness.channel, "limits exempt add", role=vip)
    frank = harness.member("frank", roles=[vip])
    for n in range(3):
        assert not (await frank.slash(harness.channel, "imagine", prompt=f"dog {n}")).ephemeral
    await harness.wait_jobs()
    rows = [r for r in await harness.rows() if r.user_id == frank.id]
    assert [r.status for r in rows] == ["done"] * 3 and not any(r.charged for r in rows)


async def test_too_many_queued_is_refused(harness: Harness) -> None:
    harness.engine.hold()  # images finish on the GPU but the bot does not see them yet
    gina = harness.member("gina")
    for n in range(3):  # the default cap is 3 waiting or running per member
        assert not (await gina.slash(harness.channel, "imagine", prompt=f"bird {n}")).ephemeral
    content = await _refused(harness, gina, "You already have 3 images waiting", prompt="bird 4")
    assert "the limit is 3" in content
    harness.engine.release()
    await harness.wait_jobs()
    assert [r.status for r in await harness.rows()] == ["done"] * 3


@pytest.mark.parametrize("settings_overrides", [{"job_deadline_s": 0.3}])
async def test_failed_generation_becomes_plain_text_and_refunds(harness: Harness) -> None:
    harness.engine.inner.settings.test_step_delay_s = 0.05  # 30 steps x 0.05 s > 0.3 s deadline
    hank = harness.member("hank")
    result = await hank.slash(harness.channel, "imagine", prompt="a slow painting")
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    assert "❌ **The image took too long.**" in message.content
    assert "did not count against your daily quota" in message.content
    assert message.embeds == [] and message.attachments == [] and message.components == []
    row = await harness.row(harness.key(result))
    assert row.status == "failed" and not row.charged and "longer than" in row.error
    assert (await harness.quota(hank)).used == 0


async def test_image_over_the_upload_limit_goes_out_as_webp(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = simcord.interactions.base_payload

    def small_limit(*args: Any, **kwargs: Any) -> Any:
        record, payload = original(*args, **kwargs)
        payload["attachment_size_limit"] = 6000  # the 64 px noise PNG is ~12 KB
        return record, payload

    monkeypatch.setattr(simcord.interactions, "base_payload", small_limit)
    ivy = harness.member("ivy")
    result = await ivy.slash(harness.channel, "imagine", prompt="noise", seed=7)
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    (attachment,) = message.attachments
    assert attachment.filename == "imagine-7.webp"
    data = await attachment.read()
    assert len(data) <= 6000
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "WEBP" and image.size == (64, 64)
    (embed,) = message.embeds
    note = {f.name: f.value for f in embed.fields}["File"]
    assert "Sent as WEBP" in note and "PNG is reproducible" in note
    assert embed.image.url == "attachment://imagine-7.webp"
    assert (await harness.row(harness.key(result))).status == "done"


async def test_works_in_direct_messages_with_default_limits(harness: Harness) -> None:
    user = harness.env.create_user("dm-user")
    harness.guild.add_member(user)  # shares a server with the bot, so the bot can DM back
    result = await user.slash("imagine", prompt="a moon", seed=5)
    assert not result.ephemeral
    await harness.wait_until(lambda: not harness.bot.jobs.active_keys(), what="DM job")
    response = result.response
    assert response is not None and response.embeds
    data = await response.attachments[0].read()
    assert png_parameters(data)["seed"] == 5
    row = await harness.row(harness.key(result))
    assert row.guild_id is None and row.status == "done"
    quota = await user.slash("quota")
    assert "24" in quota.response.content and "of **25**" in quota.response.content


@pytest.mark.parametrize("settings_overrides", [{"allow_dms": False}])
async def test_direct_messages_can_be_refused(harness: Harness) -> None:
    user = harness.env.create_user("dm-user")
    harness.guild.add_member(user)
    result = await user.slash("imagine", prompt="a moon")
    assert result.ephemeral and "only make images in servers" in result.response.content
    assert await harness.rows() == []


async def test_style_autocomplete_lists_guild_and_builtin_styles(harness: Harness) -> None:
    await harness.admin.slash(
        harness.channel,
        "styles add",
        name="noir",
        template="{prompt}, film noir",
        description="moody",
    )
    jo = harness.member("jo")
    choices = await jo.autocomplete(harness.channel, "imagine", "style", "no")
    names = [c["value"] for c in choices]
    assert names[:2] == ["noir", "none"]
    assert choices[0]["name"] == "noir — moody"
    everything = await jo.autocomplete(harness.channel, "imagine", "style", "")
    assert len(everything) == 12 and "noir" in [c["value"] for c in everything]


async def test_status_command_reports_the_engine(harness: Harness) -> None:
    kim = harness.member("kim")
    await kim.slash(harness.channel, "imagine", prompt="a tree")
    await harness.wait_jobs()
    result = await kim.slash(harness.channel, "status")
    assert result.ephemeral
    (embed,) = result.response.embeds
    fields = {f.name: f.value for f in embed.fields}
    assert fields["Queue"] == "0 waiting" and fields["Running"] == "nothing"
    assert fields["GPU"] == "cpu"
    assert fields["Memory plan"]
    assert fields["Mean time per step"].endswith(" s")
    assert "Bot uptime" in fields
    assert "local" in embed.description and "ready" in embed.description


def callback_types(harness: Harness, result: Any) -> list[int]:
    """The interaction callback types the bot sent for one interaction (5 = deferred)."""
    key = harness.key(result)
    return [
        r.json["type"]
        for r in harness.env.http_requests
        if r.method == "POST" and r.path.startswith(f"/interactions/{key}/")
    ]


async def _slow_reserve(monkeypatch: pytest.MonkeyPatch, delay_s: float) -> None:
    real = db.reserve_generation

    async def slow(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(delay_s)  # a database under heavy load
        return await real(*args, **kwargs)

    monkeypatch.setattr(db, "reserve_generation", slow)


async def test_a_slow_database_still_answers_within_three_seconds(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    await _slow_reserve(monkeypatch, 2.6)
    lee = harness.member("lee")
    result = await lee.slash(harness.channel, "imagine", prompt="patience", seed=31)
    # Deferred publicly after 2 s ("thinking…"), then the status message took its place.
    assert callback_types(harness, result) == [5] and not result.ephemeral
    (status, *_) = harness.answers(result)
    assert f"<@{lee.id}>" in status and "patience" in status
    await harness.wait_jobs()
    message = harness.message(result.response.id)
    assert png_parameters(await attachment_bytes(message))["seed"] == 31


@pytest.mark.parametrize("settings_overrides", [{"default_daily_quota": 1}])
async def test_a_refusal_after_deferring_is_still_private(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    lee = harness.member("lee")
    await lee.slash(harness.channel, "imagine", prompt="first")
    await harness.wait_jobs()
    await _slow_reserve(monkeypatch, 2.6)
    result = await lee.slash(harness.channel, "imagine", prompt="second")
    assert callback_types(harness, result) == [5]
    assert result.response is None  # the public "thinking…" message was deleted
    (refusal,) = result.followups
    assert refusal.ephemeral and "You've used all 1 images" in refusal.content
    assert len(await harness.rows()) == 1


@pytest.mark.parametrize("settings_overrides", [{"default_daily_quota": 1}])
async def test_two_requests_racing_for_the_last_image_charge_once(harness: Harness) -> None:
    # Both arrive before either is reserved: the reservation, one transaction, decides.
    lee = harness.member("lee")
    results = [harness.slash_nowait(lee, "imagine", prompt=prompt) for prompt in ("left", "right")]
    await harness.wait_until(lambda: all(r.acknowledged for r in results), what="both answers")
    await harness.wait_jobs()
    refused = [r for r in results if r.ephemeral]
    assert len(refused) == 1
    assert "You've used all 1 images" in refused[0].response.content
    (row,) = await harness.rows()
    assert row.status == "done"


async def test_status_shows_whose_image_runs_and_the_queue(harness: Harness) -> None:
    harness.engine.inner.settings.test_step_delay_s = 0.2
    alice, bob = harness.member("alice"), harness.member("bob")
    first = await alice.slash(harness.channel, "imagine", prompt="first")
    await bob.slash(harness.channel, "imagine", prompt="second")

    async def running() -> bool:
        return (await harness.row(harness.key(first))).status == "running"

    await harness.wait_until(running, what="the first job to run")
    result = await bob.slash(harness.channel, "status")
    values = {f.name: f.value for f in result.response.embeds[0].fields}
    assert values["Running"] == f"an image for <@{alice.id}>"
    assert values["Queue"] == "1 waiting"
    assert result.response.message.mentions == []
    await harness.wait_jobs()
