"""Informational answers: /history pages, /quota, and the engine's /status."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import discord

import db
from bot.images import StoreReport
from bot.render.text import (
    COLOR_FAIL,
    COLOR_INFO,
    clip,
    jump_url,
    megabytes,
    minutes,
    model_name,
    reset_time,
    seconds,
    shown,
    shown_status,
    timestamp,
)
from engine.contract import EngineStatus

STATUS_ICONS = {
    "queued": "⏳",
    "running": "🖌️",
    "delivering": "📤",
    "done": "✅",
    "failed": "❌",
    "cancelled": "🚫",
}
# Statuses whose message is worth a jump link (the image, or the job still in progress).
_LINKED = ("done", "queued", "running", "delivering")


def history_embed(
    rows: Sequence[db.Generation],
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
        jump = f" · [jump]({link})" if link and row.status in _LINKED else ""
        status = shown_status(row.status)
        lines.append(
            f"{STATUS_ICONS.get(status, '•')} **{shown(row.prompt, 120)}**\n"
            f"-# {shown(row.style, 64)} · seed {seed if seed is not None else '?'} · {status}"
            f" · {timestamp(row.created_at)}{jump}"
        )
    embed.description = "\n".join(lines)
    embed.set_footer(text=f"Page {page} of {pages} · {total} in all")
    return embed


def quota_text(
    *,
    in_dms: bool,
    used: int,
    limit: int | None,
    remaining: int | None,
    resets_at: dt.datetime,
    exempt: bool,
    active: int,
    queue_limit: int | None,
    ceiling_binds: bool,
) -> str:
    """/quota: images left today, when the count resets, and the images waiting now.

    ``queue_limit`` is the cap that applies to this member (the server's, or the bot-wide
    ceiling where ``ceiling_binds``); None when there is none.
    """
    where = "in direct messages" if in_dms else "in this server"
    if limit is None:
        why = "one of your roles is exempt" if exempt else "this server sets no daily limit"
        lines = [
            f"You can make as many images as you like {where}: {why}.",
            f"Used today: **{used}**.",
        ]
    else:
        lines = [
            f"You have **{remaining}** of **{limit}** images left today {where}.",
            f"Used today: **{used}**. The count resets {reset_time(resets_at)}.",
        ]
    if queue_limit:
        ceiling = ": the bot-wide ceiling" if ceiling_binds else ""
        lines.append(
            f"Waiting or being made now: **{active}** (at most {queue_limit} at once{ceiling})."
        )
    elif active:
        lines.append(f"Waiting or being made now: **{active}**.")
    return "\n".join(lines)


def loading_text(status: EngineStatus) -> str:
    """What a loading engine does: "downloading the model: 12.3 of 57.7 GB (21%), about
    14 min left"."""
    text = status.loading or "loading the model"
    if status.load_progress is not None:
        text += f" ({status.load_progress:.0%})"
    if status.load_eta_s is not None:
        text += f", about {minutes(status.load_eta_s)} left"
    return text


def status_embed(
    status: EngineStatus | None,
    *,
    uptime_s: float,
    latency_ms: float | None,
    error: str | None = None,
    owners: dict[str, int] | None = None,
    store: StoreReport | None = None,
) -> discord.Embed:
    """``owners`` maps the running jobs of *this* server (or this member's DM) to their
    requesters, so "Running" can say whose image it is; any other job is "from elsewhere",
    never a member of another server. The model shows as a name, never a path."""
    embed = discord.Embed(title="Image engine status", colour=COLOR_INFO)
    if status is None:
        embed.colour = COLOR_FAIL
        embed.description = (
            f"The image engine did not answer: {clip(error or 'unknown error', 500)}"
        )
        embed.add_field(name="Bot uptime", value=seconds(uptime_s), inline=True)
        _store_field(embed, store)
        return embed
    state = "ready" if status.ready else "not ready"
    embed.description = f"**{status.backend}** backend, {state}."
    if status.load_error:
        embed.colour = COLOR_FAIL
        embed.description += f"\n❌ {clip(status.load_error, 500)}"
    elif status.loading and not status.ready:
        embed.description += f"\n⏳ Getting ready: {loading_text(status)}"
    embed.add_field(name="Queue", value=f"{status.queue_length} waiting", inline=True)
    owners = owners or {}
    running = (
        ", ".join(
            f"an image for <@{owners[job]}>" if job in owners else "an image from elsewhere"
            for job in status.running
        )
        if status.running
        else "nothing"
    )
    embed.add_field(name="Running", value=clip(running, 1000), inline=True)
    embed.add_field(name="Model", value=model_name(status.model), inline=False)
    embed.add_field(name="Editing (/edit)", value=editing_text(status), inline=False)
    # The engine's memory plan in one line: what runs where, in what weight format.
    embed.add_field(name="Memory plan", value=clip(status.memory_mode, 1000), inline=False)
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
            edits = " · edits" if "edit" in worker.capabilities else ""
            lines.append(
                f"**{clip(worker.name, 60)}** · {clip(worker.gpu, 60)} · "
                f"{clip(worker.memory_mode, 160)} · "
                f"{job} · {worker.jobs_done} done{edits}"
            )
        if len(status.workers) > 10:
            lines.append(f"… and {len(status.workers) - 10} more")
        embed.add_field(
            name=f"Workers ({len(status.workers)})", value="\n".join(lines), inline=False
        )
    if status.note:
        embed.add_field(name="Note", value=clip(status.note, 1000), inline=False)
    _store_field(embed, store)
    return embed


def _store_field(embed: discord.Embed, store: StoreReport | None) -> None:
    """The image store's line (a ``bot.images.StoreReport``): how much it keeps, and the
    latest failure to keep an image (a full or read-only disk), which never stops delivery."""
    if store is None:
        return
    plural = "s" if store.images != 1 else ""
    text = f"{store.images} image{plural} kept · {megabytes(store.total_bytes)}"
    if store.problem:
        when = ""
        if store.problem_at is not None:
            stamp = dt.datetime.fromtimestamp(store.problem_at, dt.UTC)
            when = f" ({timestamp(stamp, 'R')})"
        text += (
            f"\n⚠️ Images are not being kept: {clip(store.problem, 200)}{when}. They are "
            "still delivered, but cannot be varied or remixed."
        )
    embed.add_field(name="Image store", value=text, inline=False)


def erase_question_text() -> str:
    """The private question /forget-me asks before anything is erased."""
    return (
        "**Erase everything this bot keeps about you?**\n"
        "Your stored images and your /history, in every server, are deleted for good; their "
        "Vary and Remix buttons stop working. Images already posted in channels stay where they "
        "are (delete those first with their 🗑️ button if you want them gone). Today's quota is "
        "not given back. Images still being made are kept."
    )


def erase_kept_text() -> str:
    return "Nothing was erased."


def erased_text(generations: int, images: int, kept_active: int) -> str:
    """What /forget-me erased."""
    kept = (
        f" {kept_active} image{'s' if kept_active != 1 else ''} still being made "
        f"{'were' if kept_active != 1 else 'was'} kept; run /forget-me again once "
        f"{'they are' if kept_active != 1 else 'it is'} done."
        if kept_active
        else ""
    )
    return (
        f"🧹 Erased: {generations} generation{'s' if generations != 1 else ''} from your history "
        f"and {images} stored image{'s' if images != 1 else ''}.{kept}"
    )


def editing_text(status: EngineStatus) -> str:
    """Whether /edit works, and which models sit on the GPU now: both, or one at a time (the
    other waits in host memory and jobs are grouped by model to swap rarely)."""
    if "edit" not in status.capabilities:
        if status.backend == "redis":
            return "No worker that can edit is online."
        return clip(status.edit_off or status.load_error or "Off.", 500)
    if not status.ready:
        return "Loading: edits wait in line until the models are ready."
    resident = [model_name(m) for m in status.resident_models]
    if not resident:
        return "On."
    if len(resident) == 1:
        return (
            f"On. One model on the GPU at a time (now: {clip(resident[0], 100)}); "
            "jobs are grouped by model so it swaps rarely."
        )
    return "On. On the GPU now: " + clip(", ".join(resident), 300) + "."
