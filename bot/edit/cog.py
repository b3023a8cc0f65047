"""/edit: change an uploaded image with an instruction (Qwen-Image-Edit).

The command is thin, like every cog: ``bot.edit.service`` checks the uploads and runs the job.
The Edit button under finished images is ``bot.edit.views``; ``setup`` puts it there, and this
cog's interaction listener answers its form.
"""

from __future__ import annotations

import discord
from discord import app_commands
from discord.ext import commands

from bot import errors
from bot.client import ImagineClient, imagine_client
from bot.cogs.imagine import MODE_CHOICES, PromptText
from bot.edit import service as edit
from bot.edit.views import EditButton, handle_edit_form
from bot.imagine.ack import AckGuard
from bot.interaction import Interaction
from bot.uploads import UploadChecks
from bot.views import DetailsButton, Presentation
from engine.contract import Mode
from engine.presets import MAX_PROMPT_CHARS, MAX_SEED


class EditCog(commands.Cog):
    def __init__(self, bot: ImagineClient) -> None:
        self.bot = bot
        # Uploads are checked on threads of their own (see ``UploadChecks``).
        self.checks = UploadChecks()

    async def cog_unload(self) -> None:
        self.checks.close()

    @app_commands.command(name="edit", description="Change an image with an instruction")
    @app_commands.describe(
        image="The image to edit (PNG, JPEG, WebP or GIF)",
        instruction=f"What to change (up to {MAX_PROMPT_CHARS:,} characters)",
        image2="A second image to draw from (optional)",
        image3="A third image to draw from (optional)",
        seed=f"Repeat an edit exactly: the seed from its details (0 to {MAX_SEED})",
        mode="Quality (slowest), standard, or fast",
    )
    @app_commands.choices(mode=MODE_CHOICES)
    @app_commands.allowed_contexts(guilds=True, dms=True, private_channels=False)
    @app_commands.allowed_installs(guilds=True, users=False)
    async def edit(
        self,
        interaction: Interaction,
        image: discord.Attachment,
        instruction: PromptText,
        image2: discord.Attachment | None = None,
        image3: discord.Attachment | None = None,
        seed: app_commands.Range[int, 0, MAX_SEED] | None = None,
        mode: str | None = None,
    ) -> None:
        attachments = [a for a in (image, image2, image3) if a is not None]
        async with errors.replying(interaction), AckGuard(interaction) as guard:
            await edit.edit_uploads(
                self.bot.jobs,
                self.checks,
                guard,
                attachments,
                instruction=instruction,
                seed=seed,
                mode=Mode(mode) if mode else self.bot.settings.default_mode,
            )

    @commands.Cog.listener()
    async def on_interaction(self, interaction: Interaction) -> None:
        await handle_edit_form(interaction)


async def setup(bot: commands.Bot) -> None:
    """/edit, and the Edit button under every finished image (before Details)."""
    client = imagine_client(bot)
    presentation = client.jobs.views
    assert isinstance(presentation, Presentation)
    presentation.add_result_button(EditButton, before=DetailsButton)
    bot.add_dynamic_items(EditButton)
    await bot.add_cog(EditCog(client))
