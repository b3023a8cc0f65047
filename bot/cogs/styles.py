"""/styles: a server's own prompt templates (Manage Server).

Changes go through ``bot.guild_settings``, which keeps /imagine's style cache right by itself.
"""

from __future__ import annotations

from discord import app_commands
from discord.ext import commands

import db
from bot import errors, render
from bot.client import ImagineClient, imagine_client
from bot.cogs._admin import ADMIN_PERMISSIONS, require_manage_guild
from bot.errors import UserError
from bot.guild_settings import style_choices
from bot.interaction import Interaction
from engine.presets import MAX_PROMPT_CHARS

MAX_TEMPLATE = 1000
MAX_NEGATIVE = 1000
MAX_DESCRIPTION = 80
MAX_NAME = 32
SAMPLE_PROMPT = "a lighthouse on a cliff at dusk"


def _check_name(name: str) -> str:
    cleaned = " ".join(name.split())
    if not cleaned:
        raise UserError("A style needs a name.")
    if len(cleaned) > MAX_NAME:
        raise UserError(f"Style names can be at most {MAX_NAME} characters.")
    if any(ch in cleaned for ch in "`*_~|<>@#:"):
        raise UserError("Style names can't contain markdown or mention characters (`*_~|<>@#:`).")
    return cleaned


def _check_template(template: str) -> str:
    cleaned = template.strip()
    if "{prompt}" not in cleaned:
        raise UserError("The template must contain `{prompt}` where the member's prompt goes.")
    if len(cleaned) > MAX_TEMPLATE:
        raise UserError(f"Templates can be at most {MAX_TEMPLATE} characters.")
    return cleaned


def _check_text(value: str | None, limit: int, what: str) -> str:
    cleaned = (value or "").strip()
    if len(cleaned) > limit:
        raise UserError(f"The {what} can be at most {limit} characters.")
    return cleaned


class StylesCog(commands.Cog):
    styles = app_commands.Group(
        name="styles",
        description="This server's image styles",
        default_permissions=ADMIN_PERMISSIONS,
        guild_only=True,
    )

    def __init__(self, bot: ImagineClient) -> None:
        self.bot = bot

    async def interaction_check(self, interaction: Interaction) -> bool:
        return require_manage_guild(interaction)

    @styles.command(name="add", description="Add a style members can pick in /imagine")
    @app_commands.describe(
        name="Short name members pick (e.g. noir)",
        template="Prompt template; {prompt} is replaced by the member's prompt",
        negative="What this style keeps out of images",
        description="One line shown next to the name",
    )
    async def add(
        self,
        interaction: Interaction,
        name: str,
        template: str,
        negative: str | None = None,
        description: str | None = None,
    ) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            cleaned = _check_name(name)
            try:
                style = await self.bot.guild_settings.add_style(
                    interaction.guild_id,
                    cleaned,
                    template=_check_template(template),
                    negative=_check_text(negative, MAX_NEGATIVE, "negative prompt"),
                    description=_check_text(description, MAX_DESCRIPTION, "description"),
                    created_by=interaction.user.id,
                )
            except db.StyleExists:
                raise UserError(
                    f"This server already has a style called “{render.shown(cleaned, 64)}”. "
                    "Use `/styles edit` to change it."
                ) from None
            shadow = ""
            builtin = await db.get_style(self.bot.db, None, cleaned)
            if builtin is not None:
                shadow = " It replaces the built-in style of the same name in this server."
            await errors.send_ephemeral(
                interaction,
                f"Added the style “{render.shown(style.name, 64)}”.{shadow}",
                embed=render.style_embed(style, SAMPLE_PROMPT),
            )

    @styles.command(name="edit", description="Change one of this server's styles")
    @app_commands.describe(
        name="The style to change",
        template="New template with {prompt}",
        negative="New negative prompt (a single - clears it)",
        description="New description (a single - clears it)",
    )
    async def edit(
        self,
        interaction: Interaction,
        name: str,
        template: str | None = None,
        negative: str | None = None,
        description: str | None = None,
    ) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            if template is None and negative is None and description is None:
                raise UserError("Tell me what to change: a template, negative or description.")
            try:
                style = await self.bot.guild_settings.edit_style(
                    interaction.guild_id,
                    name,
                    template=_check_template(template) if template is not None else None,
                    negative=None
                    if negative is None
                    else _clear(negative, MAX_NEGATIVE, "negative prompt"),
                    description=None
                    if description is None
                    else _clear(description, MAX_DESCRIPTION, "description"),
                )
            except db.StyleNotFound:
                raise UserError(
                    _not_own(name, await db.get_style(self.bot.db, None, name))
                ) from None
            await errors.send_ephemeral(
                interaction,
                f"Updated the style “{render.shown(style.name, 64)}”.",
                embed=render.style_embed(style, SAMPLE_PROMPT),
            )

    @styles.command(name="remove", description="Remove one of this server's styles")
    @app_commands.describe(name="The style to remove")
    async def remove(self, interaction: Interaction, name: str) -> None:
        async with errors.replying(interaction):
            assert interaction.guild_id is not None
            removed = await self.bot.guild_settings.remove_style(interaction.guild_id, name)
            if not removed:
                raise UserError(_not_own(name, await db.get_style(self.bot.db, None, name)))
            await errors.send_ephemeral(
                interaction, f"Removed the style “{render.shown(name.strip(), 64)}”."
            )

    @styles.command(name="list", description="Every style members can pick here")
    async def list_(self, interaction: Interaction) -> None:
        async with errors.replying(interaction):
            styles = await self.bot.guild_settings.styles(interaction.guild_id)
            await errors.send_ephemeral(interaction, embed=render.styles_list_embed(styles))

    @styles.command(name="preview", description="Show exactly what the model reads with a style")
    @app_commands.describe(
        name="The style to preview", prompt="A sample prompt to put in the template"
    )
    async def preview(
        self,
        interaction: Interaction,
        name: str,
        prompt: app_commands.Range[str, 1, MAX_PROMPT_CHARS] | None = None,
    ) -> None:
        async with errors.replying(interaction):
            style = await db.get_style(self.bot.db, interaction.guild_id, name)
            if style is None:
                raise UserError(
                    f"There is no style called “{render.shown(name.strip(), 64)}” here."
                )
            sample = (prompt or "").strip() or SAMPLE_PROMPT
            await errors.send_ephemeral(interaction, embed=render.style_embed(style, sample))

    @edit.autocomplete("name")
    @remove.autocomplete("name")
    async def own_style_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        styles = await self.bot.guild_settings.styles(interaction.guild_id)
        return style_choices(styles, current, own_only=True)

    @preview.autocomplete("name")
    async def any_style_autocomplete(
        self, interaction: Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        return style_choices(await self.bot.guild_settings.styles(interaction.guild_id), current)


def _clear(value: str, limit: int, what: str) -> str:
    return "" if value.strip() == "-" else _check_text(value, limit, what)


def _not_own(name: str, builtin: db.Style | None) -> str:
    shown = render.shown(name.strip(), 64)
    if builtin is not None:
        return (
            f"“{shown}” is a built-in style and can't be changed or removed. "
            f"Add a style of the same name with `/styles add` to replace it in this server."
        )
    return f"This server has no style called “{shown}”. See `/styles list`."


async def setup(bot: commands.Bot) -> None:
    await bot.add_cog(StylesCog(imagine_client(bot)))
