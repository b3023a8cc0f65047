"""The rules a request must pass before anything is charged: where /imagine may run, what a
prompt may contain, which style and options exist, and the limits it is reserved under.

Every refusal is a ``UserError`` with a specific, private answer; nothing is written before
``server_rules`` returns, so a refused request costs nothing.
"""

from __future__ import annotations

import dataclasses
import unicodedata

import discord

import db
from bot import render
from bot.errors import UserError
from bot.guild_settings import GuildSettings, QueueLimit
from bot.imagine.spec import JobSpec
from bot.interaction import Interaction
from engine.contract import StyleSpec
from engine.presets import ASPECTS, DEFAULT_STYLE, MAX_PROMPT_CHARS, MAX_SEED


@dataclasses.dataclass(frozen=True, slots=True)
class Admitted:
    """A request that passed every rule: the spec to reserve (its prompt and negative as they
    will be stored, its style's canonical name), the style, and the limits to reserve it under."""

    spec: JobSpec
    style: db.Style
    daily_quota: int | None  # None: unlimited here, or the member's role is exempt
    queue: QueueLimit


def style_description(spec: StyleSpec) -> str:
    """A one-line description of a built-in style from its template."""
    text = spec.template.replace("{prompt}, ", "").replace("{prompt}", "").strip(" ,")
    return render.clip(text or "no styling: your prompt as written", 100)


def spec_of(style: db.Style) -> StyleSpec:
    """The engine's view of a stored style."""
    return StyleSpec(name=style.name, template=style.template, negative=style.negative or "")


def is_exempt(user: discord.abc.User, config: db.GuildConfig) -> bool:
    """Whether one of the member's roles lifts the daily quota (never in DMs: no roles)."""
    roles = getattr(user, "roles", None) or ()
    return config.is_exempt(role.id for role in roles)


def check_place(interaction: Interaction, config: db.GuildConfig, *, allow_dms: bool) -> None:
    """Refuse DMs (when configured) and channels outside the guild's allowed list."""
    if interaction.guild_id is None:
        if not allow_dms:
            raise UserError(
                "I only make images in servers, not in direct messages. "
                "Use `/imagine` in a server we share."
            )
        return
    allowed = set(config.allowed_channels)
    if not allowed:
        return
    ids = {interaction.channel_id}
    parent_id = getattr(interaction.channel, "parent_id", None)
    if parent_id is not None:  # a thread of an allowed channel is allowed too
        ids.add(parent_id)
    if ids & allowed:
        return
    where = ", ".join(f"<#{cid}>" for cid in sorted(allowed)[:10])
    raise UserError(f"Images can't be made in this channel. Try {where}.")


def check_prompt(
    prompt: str, negative: str | None, config: db.GuildConfig
) -> tuple[str, str | None]:
    """The prompt and negative as they will be stored, or a refusal."""
    cleaned = prompt.strip()
    # Zero-width and other format characters (category Cf) are invisible: a prompt made
    # only of them is as empty as one made of spaces.
    if not "".join(c for c in cleaned if unicodedata.category(c) != "Cf").strip():
        raise UserError(
            "Your prompt is empty. Describe the image you want, e.g. `a red fox in the snow`."
        )
    if len(cleaned) > MAX_PROMPT_CHARS:
        raise UserError(
            f"Your prompt is {len(cleaned):,} characters long; "
            f"the limit is {MAX_PROMPT_CHARS:,}. Please shorten it."
        )
    neg = negative.strip() if negative else None
    if neg and len(neg) > MAX_PROMPT_CHARS:
        raise UserError(
            f"Your negative prompt is {len(neg):,} characters long; "
            f"the limit is {MAX_PROMPT_CHARS:,}."
        )
    for text in (cleaned, neg or ""):
        word = config.find_blocked(text)
        if word is not None:
            raise UserError(
                "Your prompt contains a word this server doesn't allow: "
                f"||{render.shown(word, 100)}||. Please rephrase it."
            )
    return cleaned, neg or None


def check_options(aspect: str, seed: int | None) -> None:
    """Options Discord's own choices and ranges normally keep in bounds; checked anyway,
    because a crafted interaction can carry anything."""
    if aspect not in ASPECTS:
        raise UserError("Unknown aspect ratio: pick one from the list.")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise UserError(f"The seed must be between 0 and {MAX_SEED}.")


async def resolve_style(guilds: GuildSettings, guild_id: int | None, name: str | None) -> db.Style:
    wanted = (name or DEFAULT_STYLE).strip() or DEFAULT_STYLE
    style = await guilds.style(guild_id, wanted)
    if style is None:
        raise UserError(
            f"There is no style called “{render.shown(wanted, 64)}” here. "
            "Start typing in the `style` option to see the list."
        )
    return style


async def server_rules(interaction: Interaction, guilds: GuildSettings, spec: JobSpec) -> Admitted:
    """Every rule of this server for one request, in the order a member would fix them.

    A job made from an earlier one (Reroll, Vary, Remix) is held to today's rules of the
    server where it is asked for, not the original's: a prompt whose words were blocked since
    is refused like a new one."""
    config = await guilds.config(interaction.guild_id)
    check_place(interaction, config, allow_dms=guilds.settings.allow_dms)
    prompt, negative = check_prompt(spec.prompt, spec.negative, config)
    check_options(spec.aspect, spec.seed)
    chosen = await resolve_style(guilds, interaction.guild_id, spec.style)
    exempt = is_exempt(interaction.user, config)
    return Admitted(
        spec=dataclasses.replace(spec, prompt=prompt, negative=negative, style=chosen.name),
        style=chosen,
        daily_quota=None if exempt else config.daily_quota,
        queue=await guilds.queue_limit(config),
    )


def refusal(exc: db.QuotaExceeded | db.TooManyQueued, queue: QueueLimit) -> str:
    """What a member reads when the reservation found a limit reached."""
    if isinstance(exc, db.QuotaExceeded):
        return render.quota_used_up_text(exc.limit, exc.resets_at)
    return render.too_many_queued_text(exc.queued, exc.limit, ceiling=queue.by_ceiling)
