"""The small pieces every text is made of: escaping user text, clipping to Discord's limits,
durations, sizes, timestamps and colours."""

from __future__ import annotations

import datetime as dt

import discord

from engine.presets import ASPECTS, public_model_name

COLOR_OK = discord.Colour(0x5865F2)
COLOR_INFO = discord.Colour(0x4E5D94)
COLOR_FAIL = discord.Colour(0xED4245)

_BAR_CELLS = 10


def escape(text: str) -> str:
    """Show user text literally: no markdown, no mention pills, no pings."""
    return discord.utils.escape_mentions(discord.utils.escape_markdown(text))


def clip(text: str, limit: int) -> str:
    """Shorten to ``limit`` characters with an ellipsis (Discord rejects overlong fields)."""
    text = text.strip()
    return text if len(text) <= limit else text[: max(0, limit - 1)].rstrip() + "…"


def shown(text: str, limit: int) -> str:
    """Clip first, then escape, then make sure escaping did not push it past the limit."""
    out = escape(clip(text, limit))
    while len(out) > limit and limit > 1:
        limit -= max(1, len(out) - limit)
        out = escape(clip(text, limit))
    return out


def seconds(value: float | None) -> str:
    """A duration as people read it: "4.2 s", "95 s", "3 min 05 s", "1 h 02 min"."""
    if value is None:
        return "?"
    if value < 10:
        return f"{value:.1f} s"
    if value < 120:
        return f"{value:.0f} s"
    minutes, secs = divmod(round(value), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def model_name(model: str | None) -> str:
    """The model as members may see it (``engine.presets.public_model_name``: one rule)."""
    return public_model_name(model)


def shown_status(status: str) -> str:
    """A job's status as members read it. "delivering" is shown as "done": the result is
    written down before the upload starts, so by the time anyone can look (Details is a button
    on the delivered image) the image is there; only the row's last write may still be on its
    way."""
    return "done" if status == "delivering" else status


def minutes(value: float) -> str:
    """A wait in whole minutes, at least one: "1 min", "14 min"."""
    return f"{max(1, round(value / 60))} min"


def megabytes(size: int) -> str:
    return f"{size / 2**20:.1f} MB"


def aspect_label(aspect: str) -> str:
    spec = ASPECTS.get(aspect)
    return spec.label if spec else aspect


def progress_bar(fraction: float) -> str:
    filled = max(0, min(_BAR_CELLS, round(fraction * _BAR_CELLS)))
    return "▰" * filled + "▱" * (_BAR_CELLS - filled)


def jump_url(guild_id: int | None, channel_id: int | None, message_id: int | None) -> str | None:
    if channel_id is None or message_id is None:
        return None
    return f"https://discord.com/channels/{guild_id or '@me'}/{channel_id}/{message_id}"


def timestamp(when: dt.datetime, style: str = "R") -> str:
    return discord.utils.format_dt(when, style)  # type: ignore[arg-type]


def reset_time(when: dt.datetime) -> str:
    """ "in 5 hours (00:00)" in every reader's own time zone."""
    return f"{timestamp(when)} ({timestamp(when, 't')})"
