"""/imagine: the one command most members ever use; and the Remix form's answer (a form
is answered from its custom id, by this cog's interaction listener, so one opened before a
restart still works after it)."""

from __future__ import annotations

from discord import app_commands
from discord.ext import commands

from bot import errors, render
from bot.client import ImagineClient, imagine_client
from bot.guild_settings import style_choices
from bot.imagine import kinds
from bot.imagine.ack import AckGuard
from bot.imagine.spec import JobSpec
from bot.interaction import Interaction
from bot.views import handle_remix_form
from engine.contract import Mode
from engine.presets import (
    ASPECTS,
    DEFAULT_ASPECT,
    DEFAULT_STYLE,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    MODES,
)

ASPECT_CHOICES = [app_commands.Choice(name=a.label, value=a.key) for a in ASPECTS.values()]
# Discord stops over-long text in the box itself (max_length in the synced payload), so a member
# never loses a long prompt to a refusal after sending it; policy.check_prompt still checks,
# because a crafted interaction can carry anything.
PromptText = app_commands.Range[str, 1, MAX_PROMPT_CHARS]
MODE_CHOICES = [
    app_commands.Choice(name=render.clip(f"{mode}: {preset.description}", 100), value=str(mode))
    for mode, preset in MODES.items()
]


class ImagineCog(commands.Cog):
    def __init__(self, bot: ImagineClient) -> None:
        self.bot = bot

    @app_commands.command(name="imagine", description="Make an image with Qwen-Image")
    @app_commands.describe(
        prompt=f"What to draw (up to {MAX_PROMPT_CHARS:,} characters)",
        style="A look to apply; start typing to see this server's styles",
        aspect="Shape of the image (default 1:1 square)",
        negative="What to keep out of the image",
        seed=f"Repeat an image exactly: the seed from its details (0 to {MAX_SEED})",
        mode="Quality (slowest), standard, or fast",
    )
    @app_commands.choices(aspect=ASPECT_CHOICES, mode=MODE_CHOICES)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.allowed_installs(guilds=True, users=False)
    async def imagine(
        self,
        interaction: Interaction,
        prompt: PromptText,
        style: str | None = None,
        aspect: str = DEFAULT_ASPECT,
        negative: PromptText | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        mode: str | None = None,
    ) -> None:
        spec = JobSpec(
            kind=kinds.IMAGINE.name,
            prompt=prompt,
            style=style or DEFAULT_STYLE,
            aspect=aspect,
            negative=negative,
            seed=seed,
            mode=Mode(mode) if mode else self.bot.settings.default_mode,
        )
        async with errors.replying(interaction), AckGuard(interaction) as guard:
            await self.bot.jobs.start(guard, spec)

    @imagine.autocomplete("style")
    async def style_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        """This server's styles plus the built-ins, best matches first (Discord shows 25)."""
        return style_choices(await self.bot.guild_settings.styles(interaction.guild_id), current)

    @commands.Cog.listener()
    async def on_interaction(self, interaction: Interaction) -> None:
        await handle_remix_form(interaction)


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(ImagineCog(imagine_client(bot)))
