"""What the admin commands show: a server's limits, its blocked words, and its styles."""

from __future__ import annotations

from collections.abc import Sequence

import discord

import db
from bot.render.jobs import model_negative_text
from bot.render.text import COLOR_INFO, clip, shown
from engine.contract import StyleSpec
from engine.presets import model_prompts


def ceiling_binds(max_queued: int, ceiling: int | None) -> bool:
    """Whether the bot-wide ceiling, not the server's own cap, is what stops a member."""
    return ceiling is not None and (max_queued <= 0 or max_queued > ceiling)


def limits_embed(config: db.GuildConfig, *, ceiling: int | None = None) -> discord.Embed:
    """/limits: what applies in this server now (``config`` is a ``db.GuildConfig``).

    ``ceiling`` is the image engine's per-member ceiling, shown where it binds (the server set
    no cap, or a higher one) so an admin is never told "no limit" when there is one.
    """
    embed = discord.Embed(title="Image limits in this server", colour=COLOR_INFO)
    quota = "no limit" if not config.daily_quota else f"{config.daily_quota} per member per day"
    queued = "no limit" if not config.max_queued else f"{config.max_queued} per member"
    embed.add_field(
        name="Daily quota",
        value=quota + ("" if config.custom_quota else " (bot default)"),
        inline=True,
    )
    queued += "" if config.custom_max_queued else " (bot default)"
    if ceiling_binds(config.max_queued, ceiling):
        queued += f"\nAt most {ceiling} per member: the bot-wide ceiling."
    embed.add_field(name="Waiting or running at once", value=queued, inline=True)
    roles = ", ".join(f"<@&{rid}>" for rid in config.exempt_roles) or "none"
    embed.add_field(name="Roles without a daily quota", value=clip(roles, 1024), inline=False)
    channels = ", ".join(f"<#{cid}>" for cid in config.allowed_channels) or "every channel"
    embed.add_field(name="Channels where /imagine works", value=clip(channels, 1024), inline=False)
    embed.add_field(
        name="Blocked words",
        value=f"{len(config.blocked_words)} (see `/blocked list`)",
        inline=True,
    )
    return embed


def blocked_words_embed(words: Sequence[str]) -> discord.Embed:
    """/blocked list; the words are spoilered, as a list of slurs should be."""
    listed = ", ".join(f"||{shown(w, 100)}||" for w in words)
    return discord.Embed(
        title=f"Blocked words ({len(words)})",
        description=clip(listed, 4000),
        colour=COLOR_INFO,
    )


def style_embed(style: db.Style, sample: str) -> discord.Embed:
    """One style (a ``db.Style``) and exactly what the model reads for ``sample`` with it."""
    spec = StyleSpec(style.name, style.template, style.negative or "")
    origin = "built-in" if style.builtin else "this server's own"
    embed = discord.Embed(title=f"Style: {shown(style.name, 64)}", colour=COLOR_INFO)
    embed.description = shown(style.description, 200) if style.description else None
    embed.add_field(name="Template", value=f"```{clip(style.template, 1000)}```", inline=False)
    embed.add_field(
        name="Negative",
        value=shown(style.negative, 1000) if style.negative else "(none)",
        inline=False,
    )
    # The same text Details shows after an image (one definition: engine.presets).
    full, negative = model_prompts(spec, sample, None, true_cfg=True)
    embed.add_field(
        name=f"Prompt the model reads for “{clip(sample, 60)}”",
        value=shown(full, 1000),
        inline=False,
    )
    embed.add_field(
        name="Negative prompt the model reads", value=model_negative_text(negative), inline=False
    )
    fast, _ = model_prompts(spec, sample, None, true_cfg=False)
    embed.add_field(
        name="In fast mode",
        value=f"{shown(fast, 900)}\n-# no quality suffix and no negative prompt (no true CFG)",
        inline=False,
    )
    embed.set_footer(text=origin)
    return embed


def styles_list_embed(styles: Sequence[db.Style]) -> discord.Embed:
    """/styles list: this server's own styles, then the built-ins."""
    own = [s for s in styles if not s.builtin]
    builtin = [s for s in styles if s.builtin]

    def lines(rows: list[db.Style]) -> str:
        out = []
        for s in rows:
            desc = f" — {shown(s.description, 80)}" if s.description else ""
            out.append(f"**{shown(s.name, 32)}**{desc}")
        return clip("\n".join(out), 1024) if out else "(none yet: add one with `/styles add`)"

    embed = discord.Embed(title="Styles", colour=COLOR_INFO)
    embed.add_field(name=f"This server's own ({len(own)})", value=lines(own), inline=False)
    embed.add_field(name=f"Built-in ({len(builtin)})", value=lines(builtin), inline=False)
    return embed
