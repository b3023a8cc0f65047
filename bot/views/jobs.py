"""The buttons under a job's message: Cancel while it waits or renders; Reroll, Vary (Subtle),
Vary (Strong), Remix, Details and Delete under the finished image; and the Variations button
that images posted before the Vary buttons still carry."""

from __future__ import annotations

import logging

import discord

import db
from bot import errors, render
from bot.client import imagine_client
from bot.imagine import again
from bot.imagine.ack import AckGuard
from bot.interaction import Interaction
from bot.views.base import JobButton, job_row
from bot.views.forms import remix_form

logger = logging.getLogger(__name__)


class RerollButton(JobButton):
    action = "reroll"
    label = "Reroll"
    emoji = "🎲"
    button_style = discord.ButtonStyle.primary
    button_row = 0

    async def run(self, interaction: Interaction) -> None:
        async with AckGuard(interaction) as guard:
            await again.reroll(imagine_client(interaction.client).jobs, guard, self.job_key)


class VariationsButton(JobButton):
    """Images posted before the Vary buttons carry this one (no stored image): two new seeds
    of the same prompt, as it always did. New images get Vary (Subtle/Strong) instead."""

    action = "vary"
    label = "Variations"
    emoji = "🔀"

    async def run(self, interaction: Interaction) -> None:
        async with AckGuard(interaction) as guard:
            await again.variations(imagine_client(interaction.client).jobs, guard, self.job_key)


class VarySubtleButton(JobButton):
    """Image-to-image from the stored image at ``VARY_SUBTLE_STRENGTH``, new seed."""

    action = "subtle"
    label = "Vary (Subtle)"
    emoji = "🪶"
    button_row = 0

    async def run(self, interaction: Interaction) -> None:
        jobs = imagine_client(interaction.client).jobs
        async with AckGuard(interaction) as guard:
            await again.vary(jobs, guard, self.job_key, strong=False)


class VaryStrongButton(JobButton):
    """Image-to-image from the stored image at ``VARY_STRONG_STRENGTH``, new seed."""

    action = "strong"
    label = "Vary (Strong)"
    emoji = "🌀"
    button_row = 0

    async def run(self, interaction: Interaction) -> None:
        jobs = imagine_client(interaction.client).jobs
        async with AckGuard(interaction) as guard:
            await again.vary(jobs, guard, self.job_key, strong=True)


class RemixButton(JobButton):
    """Opens the Remix form (prompt and negative, pre-filled); its answer is a strong variation
    with the edited text (``handle_remix_form``)."""

    action = "remix"
    label = "Remix"
    emoji = "🎨"
    button_row = 0

    async def run(self, interaction: Interaction) -> None:
        jobs = imagine_client(interaction.client).jobs
        prompt, negative = await again.open_remix(jobs, self.job_key)
        await interaction.response.send_modal(remix_form(self.job_key, prompt, negative))


class DetailsButton(JobButton):
    action = "details"
    label = "Details"
    emoji = "ℹ️"
    button_row = 1

    async def run(self, interaction: Interaction) -> None:
        row = await job_row(interaction, self.job_key)
        await errors.send_ephemeral(interaction, embed=render.details_embed(row))


class DeleteButton(JobButton):
    action = "delete"
    label = "Delete"
    emoji = "🗑️"
    button_style = discord.ButtonStyle.danger
    moderator_permission = "manage_messages"
    denied = "Only the person who asked for this image or a moderator can delete it."
    button_row = 1

    async def run(self, interaction: Interaction) -> None:
        await interaction.response.defer()
        try:
            await interaction.delete_original_response()
        except discord.HTTPException:
            if interaction.message is None:
                raise
            await interaction.message.delete()
        bot = imagine_client(interaction.client)
        await db.set_message(bot.db, self.job_key, message_id=None)
        # The stored copy goes too (the file itself once no other job shares its bytes).
        await bot.images.forget(self.job_key)
        logger.info("job %s: image deleted by user %s", self.job_key, interaction.user.id)


class CancelButton(JobButton):
    action = "cancel"
    label = "Cancel"
    emoji = "✖️"
    button_style = discord.ButtonStyle.danger
    moderator_permission = "manage_guild"
    denied = "Only the person who asked for this image or a server admin can cancel it."

    async def run(self, interaction: Interaction) -> None:
        await imagine_client(interaction.client).jobs.cancel(interaction, self.job_key)


def status_view(job_key: str) -> discord.ui.View:
    """The buttons under a status message while its job waits or runs."""
    view = discord.ui.View(timeout=None)
    view.add_item(CancelButton(job_key))
    return view


# The buttons under a finished image, in their order; a feature adds its own
# (``Presentation.add_result_button``: the Edit button of ``bot.edit``).
RESULT_BUTTONS: tuple[type[JobButton], ...] = (
    RerollButton,
    VarySubtleButton,
    VaryStrongButton,
    RemixButton,
    DetailsButton,
    DeleteButton,
)
