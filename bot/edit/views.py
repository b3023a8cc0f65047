"""The Edit button under every finished image, and its form (the instruction).

Like every button and form here it works from its custom id alone: the button opens the form
for the job in its id, and the form is answered by ``handle_edit_form`` (the edit cog's
interaction listener), so both keep working across a restart. What the edit does is
``bot.edit.service``.
"""

from __future__ import annotations

import re

import discord

from bot.client import imagine_client
from bot.edit import service as edit
from bot.imagine.ack import AckGuard
from bot.imagine.service import JobService
from bot.interaction import Interaction
from bot.views.base import KEY, JobButton
from bot.views.forms import TEXT_INPUT_MAX, answer_job_form
from engine.contract import TASK_EDIT
from engine.presets import MAX_PROMPT_CHARS

EDIT_FORM = re.compile(rf"imagine:edited:{KEY}")
EDIT_INSTRUCTION = "instruction"


class EditButton(JobButton):
    """Opens the Edit form; its answer edits this image as the image store keeps it."""

    action = "edit"
    needs_task = TASK_EDIT
    label = "Edit"
    emoji = "✏️"
    button_row = 0

    async def run(self, interaction: Interaction) -> None:
        await edit.open_edit(imagine_client(interaction.client).jobs, self.job_key)
        await interaction.response.send_modal(edit_form(self.job_key))


def edit_form(job_key: str) -> discord.ui.Modal:
    """The Edit form: what to change in the image."""
    modal = discord.ui.Modal(title="Edit this image", custom_id=f"imagine:edited:{job_key}")
    modal.add_item(
        discord.ui.TextInput(
            label="What to change",
            custom_id=EDIT_INSTRUCTION,
            style=discord.TextStyle.paragraph,
            placeholder="e.g. make it night, add a red umbrella, remove the text",
            required=True,
            max_length=min(MAX_PROMPT_CHARS, TEXT_INPUT_MAX),
        )
    )
    modal.stop()  # answered from its custom id, not by this object (see the module doc)
    return modal


async def handle_edit_form(interaction: Interaction) -> bool:
    """Answer a submitted Edit form; False when the interaction is not one."""

    async def edit_it(jobs: JobService, guard: AckGuard, key: str, values: dict[str, str]) -> None:
        await edit.edit_stored(jobs, guard, key, instruction=values.get(EDIT_INSTRUCTION, ""))

    return await answer_job_form(interaction, EDIT_FORM, edit_it)
