"""Every text and embed the bot shows, in one place, so wording and escaping stay consistent.

User text (prompts, negatives, style names, blocked words) always goes through ``escape``:
markdown and mentions are neutralised in what is *shown*, and every message that carries such
text is also sent with ``allowed_mentions`` none, so nobody is ever pinged by a prompt.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import discord

from engine.contract import EngineStatus, FailureKind, JobResult, Progress
from engine.presets import ASPECTS

COLOR_OK = discord.Colour(0x5865F2)
COLOR_INFO = discord.Colour(0x4E5D94)
COLOR_FAIL = discord.Colour(0xED4245)

_BAR_CELLS = 16
PROMPT_PREVIEW_CHARS = 300


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


# --------------------------------------------------------------------------- job messages


def job_header(
    user_id: int, prompt: str, style: str, aspect: str, mode: str, seed: int | None
) -> str:
    """The first lines of a status message: whose job, what prompt, which settings."""
    seed_text = f" · seed {seed}" if seed is not None else ""
    return (
        f"**Imagining** for <@{user_id}>: “{shown(prompt, PROMPT_PREVIEW_CHARS)}”\n"
        f"-# {shown(style, 64)} · {aspect_label(aspect)} · {mode}{seed_text}"
    )


def queued_line(position: int | None) -> str:
    if position is None:
        return "⏳ Waiting for the image engine…"
    if position <= 0:
        return "🖌️ Starting…"
    if position == 1:
        return "⏳ Next in line."
    ahead = position - 1
    return f"⏳ In line: position **{position}** ({ahead} ahead)."


def progress_line(progress: Progress) -> str:
    fraction = progress.step / progress.total if progress.total else 0.0
    eta = progress.eta_s
    eta_text = "almost done" if eta < 0.5 else f"about {seconds(eta)} left"
    return (
        f"🖌️ Step **{progress.step}/{progress.total}** · {progress.percent}% · {eta_text}\n"
        f"`{progress_bar(fraction)}`"
    )


FAILURE_LEADS: dict[FailureKind, str] = {
    FailureKind.OOM: "The GPU ran out of memory",
    FailureKind.TIMEOUT: "The image took too long",
    FailureKind.UNAVAILABLE: "The image engine is unavailable",
    FailureKind.QUEUE_FULL: "The queue is full",
    FailureKind.INVALID: "The request was not valid",
    FailureKind.ERROR: "The generation failed",
    FailureKind.CANCELLED: "Cancelled",
}


def failure_text(header: str, kind: FailureKind, message: str, refunded: bool) -> str:
    """The status message after a failure: plain words, no buttons, never a stack trace."""
    lead = FAILURE_LEADS.get(kind, "The generation failed")
    refund = " It did not count against your daily quota." if refunded else ""
    detail = message.strip()
    if detail and not detail.endswith((".", "!", "?")):
        detail += "."
    return f"{header}\n❌ **{lead}.** {detail}{refund}"


def cancelled_text(header: str, by_user_id: int | None, requester_id: int, refunded: bool) -> str:
    who = "" if by_user_id in (None, requester_id) else f" by <@{by_user_id}>"
    refund = " It did not count against the daily quota." if refunded else ""
    return f"{header}\n🚫 **Cancelled{who}.**{refund}"


def result_embed(
    result: JobResult,
    *,
    requester: discord.abc.User | None,
    requester_id: int,
    filename: str,
    conversion_note: str | None = None,
    negative_prompt: str | None = None,
) -> discord.Embed:
    """The parameters under a finished image: enough to reproduce it exactly."""
    embed = discord.Embed(
        description=shown(result.prompt, 1500),
        colour=COLOR_OK,
        timestamp=discord.utils.utcnow(),
    )
    if requester is not None:
        embed.set_author(
            name=clip(requester.display_name, 200), icon_url=requester.display_avatar.url
        )
    else:
        embed.set_author(name=f"user {requester_id}")
    embed.add_field(name="Style", value=shown(result.style, 64), inline=True)
    embed.add_field(
        name="Size",
        value=f"{aspect_label(result.aspect)} · {result.width}×{result.height}",
        inline=True,
    )
    cfg = f" · CFG {result.true_cfg_scale:g}" if result.true_cfg_scale > 1 else ""
    embed.add_field(name="Mode", value=f"{result.mode} · {result.steps} steps{cfg}", inline=True)
    embed.add_field(name="Seed", value=f"`{result.seed}`", inline=True)
    waited = f" (waited {seconds(result.queued_s)})" if result.queued_s >= 1 else ""
    embed.add_field(name="Time", value=f"{seconds(result.run_s)}{waited}", inline=True)
    if negative_prompt:
        embed.add_field(name="Negative", value=shown(negative_prompt, 1000), inline=False)
    if result.note:
        embed.add_field(name="Note", value=clip(result.note, 1000), inline=False)
    if conversion_note:
        embed.add_field(name="File", value=conversion_note, inline=False)
    footer = result.model if not result.worker else f"{result.model} · {result.worker}"
    embed.set_footer(text=clip(footer, 200))
    embed.set_image(url=f"attachment://{filename}")
    return embed


def details_embed(row: Any) -> discord.Embed:
    """Every parameter of a generation (from its database row), for the Details button."""
    embed = discord.Embed(title="Generation details", colour=COLOR_INFO)
    embed.add_field(name="Prompt", value=shown(row.prompt, 1000) or "(empty)", inline=False)
    if row.negative_prompt:
        embed.add_field(
            name="Negative prompt", value=shown(row.negative_prompt, 1000), inline=False
        )
    embed.add_field(name="Style", value=shown(row.style, 64), inline=True)
    size = f" · {row.width}×{row.height}" if row.width and row.height else ""
    embed.add_field(name="Aspect", value=f"{aspect_label(row.aspect)}{size}", inline=True)
    mode = (
        row.mode
        if not row.mode_used or row.mode_used == row.mode
        else f"{row.mode_used} (asked {row.mode})"
    )
    embed.add_field(name="Mode", value=mode, inline=True)
    embed.add_field(name="Steps", value=str(row.steps) if row.steps else "?", inline=True)
    cfg = row.true_cfg_scale
    embed.add_field(name="True CFG", value=f"{cfg:g}" if cfg is not None else "?", inline=True)
    seed = row.seed_used if row.seed_used is not None else row.seed
    embed.add_field(name="Seed", value=f"`{seed}`" if seed is not None else "random", inline=True)
    embed.add_field(
        name="Seconds",
        value=f"{seconds(row.run_s)} on the GPU, {seconds(row.queued_s)} in line",
        inline=False,
    )
    model = row.model or "?"
    if row.worker:
        model += f" (worker {row.worker})"
    embed.add_field(name="Model", value=clip(model, 1000), inline=False)
    if row.note:
        embed.add_field(name="Note", value=clip(row.note, 1000), inline=False)
    embed.add_field(name="Status", value=row.status, inline=True)
    embed.add_field(name="Requested by", value=f"<@{row.user_id}>", inline=True)
    embed.add_field(name="Kind", value=row.kind, inline=True)
    embed.set_footer(text=f"job {row.job_key}")
    if row.created_at is not None:
        embed.timestamp = row.created_at
    return embed


# --------------------------------------------------------------------------- history, quota, status

STATUS_ICONS = {
    "queued": "⏳",
    "running": "🖌️",
    "done": "✅",
    "failed": "❌",
    "cancelled": "🚫",
}


def history_embed(
    rows: Sequence[Any],
    *,
    target_name: str,
    page: int,
    pages: int,
    total: int,
) -> discord.Embed:
    embed = discord.Embed(title=f"Generations by {clip(target_name, 200)}", colour=COLOR_INFO)
    if not rows:
        embed.description = "No generations yet. Try `/imagine`!"
        return embed
    lines = []
    for row in rows:
        seed = row.seed_used if row.seed_used is not None else row.seed
        link = jump_url(row.guild_id, row.channel_id, row.message_id)
        jump = f" · [jump]({link})" if link and row.status in ("done", "queued", "running") else ""
        lines.append(
            f"{STATUS_ICONS.get(row.status, '•')} **{shown(row.prompt, 120)}**\n"
            f"-# {shown(row.style, 64)} · seed {seed if seed is not None else '?'} · {row.status}"
            f" · {timestamp(row.created_at)}{jump}"
        )
    embed.description = "\n".join(lines)
    embed.set_footer(text=f"Page {page} of {pages} · {total} in all")
    return embed


def status_embed(
    status: EngineStatus | None,
    *,
    uptime_s: float,
    latency_ms: float | None,
    error: str | None = None,
    owners: dict[str, int] | None = None,
) -> discord.Embed:
    """``owners`` maps job ids this bot follows to their requesters, so "Running" can say
    whose image it is instead of an opaque id."""
    embed = discord.Embed(title="Image engine status", colour=COLOR_INFO)
    if status is None:
        embed.colour = COLOR_FAIL
        embed.description = (
            f"The image engine did not answer: {clip(error or 'unknown error', 500)}"
        )
        embed.add_field(name="Bot uptime", value=seconds(uptime_s), inline=True)
        return embed
    state = "ready" if status.ready else "not ready"
    embed.description = f"**{status.backend}** backend, {state}."
    embed.add_field(name="Queue", value=f"{status.queue_length} waiting", inline=True)
    owners = owners or {}
    running = (
        ", ".join(
            f"an image for <@{owners[job]}>" if job in owners else f"job `{job}`"
            for job in status.running
        )
        if status.running
        else "nothing"
    )
    embed.add_field(name="Running", value=clip(running, 1000), inline=True)
    embed.add_field(name="Model", value=clip(status.model, 1000), inline=False)
    embed.add_field(name="Memory mode", value=status.memory_mode, inline=True)
    embed.add_field(name="GPU", value=clip(status.gpu, 200), inline=True)
    per_step = status.mean_sec_per_step
    embed.add_field(
        name="Mean time per step",
        value=f"{per_step:.3f} s" if per_step is not None else "no images yet",
        inline=True,
    )
    embed.add_field(
        name="Fast mode",
        value="available" if status.fast_available else "unavailable (uses standard)",
        inline=True,
    )
    embed.add_field(name="Bot uptime", value=seconds(uptime_s), inline=True)
    if latency_ms is not None:
        embed.add_field(name="Gateway latency", value=f"{latency_ms:.0f} ms", inline=True)
    if status.workers:
        lines = []
        for worker in status.workers[:10]:
            job = f"running `{worker.current_job}`" if worker.current_job else "idle"
            lines.append(
                f"**{clip(worker.name, 60)}** · {clip(worker.gpu, 60)} · {worker.memory_mode} · "
                f"{job} · {worker.jobs_done} done"
            )
        if len(status.workers) > 10:
            lines.append(f"… and {len(status.workers) - 10} more")
        embed.add_field(
            name=f"Workers ({len(status.workers)})", value="\n".join(lines), inline=False
        )
    if status.note:
        embed.add_field(name="Note", value=clip(status.note, 1000), inline=False)
    return embed
