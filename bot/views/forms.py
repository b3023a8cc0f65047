"""Forms (Discord modals): the Remix form, pre-filled with an image's prompt and negative.

A form is answered from its custom id alone (``handle_remix_form``, called for every
interaction by ``ImagineClient.on_interaction``), never by an object kept in memory, so a form
opened before a restart still works when it is sent after it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping

import discord

from bot import errors
from bot.client import imagine_client
from bot.imagine import again
from bot.imagine.ack import AckGuard
from bot.imagine.service import JobService
from bot.interaction import Interaction
from bot.views.base import KEY, own_job_row

REMIX_FORM = re.compile(rf"imagine:remixed:{KEY}")
REMIX_PROMPT = "prompt"
REMIX_NEGATIVE = "negative"
# Discord's own limit on a text input; the prompt rules themselves are policy's (the same
# answers as /imagine), so the form does not cut anything short on its own.
TEXT_INPUT_MAX = 4000


def remix_form(job_key: str, prompt: str, negative: str | None) -> discord.ui.Modal:
    """The Remix form, pre-filled with the image's prompt and negative prompt.

    It is answered by ``handle_remix_form`` from its custom id alone (not by an object kept in
    memory), so a form opened before a restart still works when it is sent after it.
    """
    modal = discord.ui.Modal(title="Remix this image", custom_id=f"imagine:remixed:{job_key}")
    modal.add_item(
        discord.ui.TextInput(
            label="Prompt",
            custom_id=REMIX_PROMPT,
            style=discord.TextStyle.paragraph,
            default=prompt[:TEXT_INPUT_MAX],
            required=False,
            max_length=TEXT_INPUT_MAX,
        )
    )
    modal.add_item(
        discord.ui.TextInput(
            label="Negative prompt (what to keep out)",
            custom_id=REMIX_NEGATIVE,
            style=discord.TextStyle.paragraph,
            default=(negative or "")[:TEXT_INPUT_MAX] or None,
            required=False,
            max_length=TEXT_INPUT_MAX,
        )
    )
    modal.stop()  # nothing kept in memory: see the docstring
    return modal


def form_values(data: object) -> dict[str, str]:
    """The text inputs of a submitted form by custom id (any layout: rows or labels)."""
    values: dict[str, str] = {}

    def walk(items: object) -> None:
        if not isinstance(items, list):
            return
        for item in items:
            if not isinstance(item, dict):
                continue
            custom_id, value = item.get("custom_id"), item.get("value")
            if isinstance(custom_id, str) and isinstance(value, str):
                values[custom_id] = value
            walk(item.get("components"))
            if isinstance(item.get("component"), dict):
                walk([item["component"]])

    walk((data or {}).get("components") if isinstance(data, dict) else None)
    return values


FormAnswer = Callable[[JobService, AckGuard, str, dict[str, str]], Awaitable[None]]


async def answer_job_form(
    interaction: Interaction, custom_id: re.Pattern[str], answer: FormAnswer
) -> bool:
    """Answer a submitted form of a job, from its custom id alone (``custom_id`` matches it
    and names the job's key): on the job's own message, in its own server, within Discord's 3
    seconds, every error told. False when the interaction is not such a form."""
    if interaction.type != discord.InteractionType.modal_submit:
        return False
    data: Mapping[str, object] = interaction.data if isinstance(interaction.data, dict) else {}
    submitted = data.get("custom_id")
    match = custom_id.fullmatch(submitted) if isinstance(submitted, str) else None
    if match is None:
        return False
    values = form_values(data)
    try:
        async with errors.replying(interaction):
            await own_job_row(interaction, match["key"])
            jobs = imagine_client(interaction.client).jobs
            async with AckGuard(interaction) as guard:
                await answer(jobs, guard, match["key"], values)
    except Exception as exc:
        await errors.handle(interaction, exc)
    return True


async def handle_remix_form(interaction: Interaction) -> bool:
    """Answer a submitted Remix form; False when the interaction is not one."""

    async def remix(jobs: JobService, guard: AckGuard, key: str, values: dict[str, str]) -> None:
        prompt, negative = values.get(REMIX_PROMPT, ""), values.get(REMIX_NEGATIVE) or None
        await again.remix(jobs, guard, key, prompt=prompt, negative=negative)

    return await answer_job_form(interaction, REMIX_FORM, remix)
