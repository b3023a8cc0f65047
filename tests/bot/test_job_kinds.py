"""Adding a kind of job is a one-place change: a kind, one entry point, one generator, one
renderer (docs/ARCHITECTURE.md, "Adding a job kind").

"swatch", a square of one colour, exists only in this file. It goes from its slash command to
a delivered result through the real ``JobService``, the real in-process backend
(``LocalEngine`` with its ``JobRunner``) and the real finisher; nothing in ``bot/`` or
``engine/`` knows about it. The four pieces below are all it takes.
"""

from __future__ import annotations

import io
from collections.abc import AsyncIterator

import discord
import pytest
from discord import app_commands
from discord.ext import commands
from PIL import Image

import db
from bot import errors
from bot.client import imagine_client
from bot.imagine import JobKind, JobSpec
from bot.imagine.ack import AckGuard
from bot.imagine.presenting import Shown
from bot.interaction import Interaction
from bot.views import DeleteButton
from engine.contract import (
    FailureKind,
    JobFailed,
    JobRequest,
    JobResult,
    OutputImage,
)
from engine.generator import Generator, GeneratorInfo, JobControl, Plan
from engine.generators import Generators
from engine.queue import LocalEngine
from engine.settings import EngineSettings
from tests.bot.harness import ExternalEngine, Harness, attachment_bytes

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

SIDE = 48


# 1. The kind: its name (what its rows record) and the engine task it runs.
SWATCH = JobKind("swatch", task="swatch")


# 2. The generator, on the engine side: the task's work.
class SwatchGenerator(Generator):
    def tasks(self) -> tuple[str, ...]:
        return ("swatch",)

    def info(self) -> GeneratorInfo:
        return GeneratorInfo(model="swatches", tasks=self.tasks())

    def plan(self, request: JobRequest) -> Plan:
        request.validate()
        colour(request.prompt)  # refused before any work when it is not one
        return Plan(
            task="swatch", seed=request.seed or 0, steps=1, true_cfg_scale=1.0, width=SIDE,
            height=SIDE, aspect="1:1", mode=request.mode, requested_mode=request.mode,
            model="swatches", negative_prompt="", prompt=request.prompt,
            full_prompt=request.prompt, style="none",
        )  # fmt: skip

    def generate(
        self, request: JobRequest, control: JobControl, plan: Plan | None = None
    ) -> JobResult:
        plan = plan or self.plan(request)
        control.step(1, 1, 0.01)
        buffer = io.BytesIO()
        Image.new("RGB", (SIDE, SIDE), colour(request.prompt)).save(buffer, format="PNG")
        return JobResult(
            job_id=request.job_id,
            images=(OutputImage(buffer.getvalue(), SIDE, SIDE, plan.seed),),
            steps=1, true_cfg_scale=1.0, mode=plan.mode, requested_mode=request.mode,
            style="none", prompt=request.prompt, full_prompt=request.prompt,
            negative_prompt="", aspect="1:1", model="swatches", run_s=0.01,
        )  # fmt: skip


def colour(text: str) -> tuple[int, int, int]:
    try:
        value = int(text.strip().removeprefix("#"), 16)
    except ValueError:
        raise JobFailed(FailureKind.INVALID, "That is not a colour.") from None
    return (value >> 16) & 255, (value >> 8) & 255, value & 255


# 3. The renderer: the file, the embed and the buttons of a finished swatch.
class SwatchRenderer:
    def file(self, result: JobResult) -> tuple[bytes, str]:
        return result.image.png, "swatch"

    def embed(self, result: JobResult, shown: Shown) -> discord.Embed:
        red, green, blue = colour(result.prompt)
        embed = discord.Embed(
            title=f"Swatch {result.prompt}", colour=(red << 16) | (green << 8) | blue
        )
        embed.set_image(url=f"attachment://{shown.filename}")
        return embed

    def view(self, job_key: str, tasks: frozenset[str] | None) -> discord.ui.View:
        view = discord.ui.View(timeout=None)
        view.add_item(DeleteButton(job_key))
        return view

    def marker(self, job_key: str) -> str:
        return DeleteButton(job_key).custom_id


# 4. The entry point: a command that builds the job's spec and starts it.
class SwatchCog(commands.Cog):
    @app_commands.command(name="swatch", description="A square of one colour")
    async def swatch(self, interaction: Interaction, colour: str) -> None:
        spec = JobSpec(kind=SWATCH.name, prompt=colour)
        async with errors.replying(interaction), AckGuard(interaction) as guard:
            await imagine_client(interaction.client).jobs.start(guard, spec)


# ------------------------------------------------------------------------- the wiring
@pytest.fixture
async def engine() -> AsyncIterator[ExternalEngine]:
    """An engine that runs swatches only (this module's bots make nothing else)."""
    settings = EngineSettings(_env_file=None, warmup=False)  # type: ignore[call-arg]
    local = LocalEngine(settings, Generators({"swatch": SwatchGenerator()}))
    yield ExternalEngine(local)
    await local.close()


async def add_swatches(harness: Harness) -> None:
    bot = harness.bot
    bot.jobs.register(SWATCH, SwatchRenderer())
    await bot.add_cog(SwatchCog())
    await bot.tree.sync()
    await harness.env.settle(timeout=30)


async def test_a_new_kind_goes_from_its_command_to_a_delivered_result(harness: Harness) -> None:
    await add_swatches(harness)
    alice = harness.member("alice")

    result = await alice.slash(harness.channel, "swatch", colour="#ff8800")
    assert result.acknowledged and not result.ephemeral
    assert result.response is not None
    await harness.wait_jobs()

    message = harness.message(result.response.id)
    (embed,) = message.embeds
    assert embed.title == "Swatch #ff8800"
    assert [child.label for row in message.components for child in row.children] == ["Delete"]
    png = await attachment_bytes(message)
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (SIDE, SIDE)
        assert image.convert("RGB").getcolors() == [(SIDE * SIDE, (255, 136, 0))]
    row = await harness.row(harness.key(result))
    assert (row.kind, row.status, row.prompt) == ("swatch", db.GenerationStatus.DONE, "#ff8800")
    assert (row.width, row.height, row.steps, row.model) == (SIDE, SIDE, 1, "swatches")
    assert row.charged  # a unit of the member's quota, like any image


async def test_the_new_kinds_refusals_charge_nothing(harness: Harness) -> None:
    await add_swatches(harness)
    bob = harness.member("bob")
    refused = await bob.slash(harness.channel, "swatch", colour="not a colour")
    await harness.wait_jobs()
    row = await harness.row(harness.key(refused))
    assert row.status == db.GenerationStatus.FAILED and not row.charged
    assert (await harness.quota(bob)).used == 0


async def test_a_bot_without_the_kind_refunds_its_jobs_after_a_restart(harness: Harness) -> None:
    """A row of a kind the restarted bot does not have (its extension was removed) is refunded
    and says why; it never runs as something else."""
    await add_swatches(harness)
    harness.engine.hold()  # the swatch is made, but not delivered before the restart
    carol = harness.member("carol")
    result = await carol.slash(harness.channel, "swatch", colour="#00ff00")
    key = harness.key(result)
    await harness.restart()  # a bot without swatches
    harness.engine.release()

    async def ended() -> bool:
        return (await harness.row(key)).finished

    await harness.wait_until(ended, what="the job to be ended")
    row = await harness.row(key)
    assert row.status == db.GenerationStatus.FAILED and not row.charged
    assert "no longer makes this kind of image" in (row.error or "")
