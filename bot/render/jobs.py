"""What a job's message says: the status header, its place in line, live progress, the final
image's embed, failures and cancellations, and the refusals of a request."""

from __future__ import annotations

import datetime as dt

import discord

import db
from bot.render.text import (
    COLOR_INFO,
    COLOR_OK,
    aspect_label,
    clip,
    megabytes,
    minutes,
    model_name,
    progress_bar,
    reset_time,
    shown,
    shown_status,
)
from bot.render.text import seconds as seconds_text
from engine.contract import TASK_EDIT, EngineStatus, FailureKind, JobResult, Progress
from engine.presets import NEUTRAL_NEGATIVE

PROMPT_PREVIEW_CHARS = 300


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


def model_loading_line(eta_s: float | None) -> str:
    """Under the place in line while the engine's model is still loading (the first start)."""
    about = f" (about {minutes(eta_s)})" if eta_s is not None else ""
    return f"⏳ The model is loading{about}; your image starts as soon as it is ready."


def alt_text(kind: str, prompt: str) -> str:
    """An image's description for screen readers (Discord's attachment ``description``, at
    most 1024 characters): what kind of image it is, then the prompt it was made from."""
    lead = ALT_LEADS.get(kind, "Image")
    return clip(f"{lead}: {prompt.strip()}" if prompt.strip() else lead, ALT_TEXT_CHARS)


def preview_alt_text(progress: Progress | None) -> str:
    """A preview's description: what it is and how far the image has come."""
    if progress is None or not progress.total:
        return "Preview of the image being made"
    return f"Preview of the image being made, step {progress.step} of {progress.total}"


ALT_TEXT_CHARS = 1024
ALT_LEADS = {
    "imagine": "Generated image",
    "reroll": "Generated image (reroll)",
    "variation": "Variation",
    "vary": "Variation",
    "remix": "Remix",
    "edit": "Edited image",
}


def progress_line(progress: Progress) -> str:
    fraction = progress.step / progress.total if progress.total else 0.0
    eta = progress.eta_s
    eta_text = "almost done" if eta < 0.5 else f"about {seconds_text(eta)} left"
    # Words first: a screen reader reads the line as it is, so the step, the share and the
    # time left come before the bar (kept short: it is read out symbol by symbol).
    return (
        f"🖌️ Step **{progress.step} of {progress.total}** · {progress.percent}% · {eta_text}\n"
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
    """The status message after a failure: plain words, no buttons, never a stack trace.

    A detail that opens with the kind's own lead ("The GPU ran out of memory for this image.")
    becomes the lead itself, so the message says it once.
    """
    lead = FAILURE_LEADS.get(kind, "The generation failed")
    detail = message.strip()
    if detail.casefold().startswith(lead.casefold()):
        first, _, rest = detail.partition(". ")
        lead, detail = first.rstrip(".!? "), rest.strip()
    if detail and not detail.endswith((".", "!", "?")):
        detail += "."
    parts = [f"❌ **{lead}.**", detail]
    if refunded:
        parts.append("It did not count against your daily quota.")
    return f"{header}\n" + " ".join(part for part in parts if part)


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
        value=f"{aspect_label(result.aspect)} · {result.image.width}×{result.image.height}",
        inline=True,
    )
    cfg = f" · CFG {result.true_cfg_scale:g}" if result.true_cfg_scale > 1 else ""
    embed.add_field(name="Mode", value=f"{result.mode} · {result.steps} steps{cfg}", inline=True)
    embed.add_field(name="Seed", value=f"`{result.image.seed}`", inline=True)
    waited = f" (waited {seconds_text(result.queued_s)})" if result.queued_s >= 1 else ""
    embed.add_field(name="Time", value=f"{seconds_text(result.run_s)}{waited}", inline=True)
    if negative_prompt:
        embed.add_field(name="Negative", value=shown(negative_prompt, 1000), inline=False)
    if result.note:
        embed.add_field(name="Note", value=clip(result.note, 1000), inline=False)
    if conversion_note:
        embed.add_field(name="File", value=conversion_note, inline=False)
    model = model_name(result.model)
    footer = model if not result.worker else f"{model} · {result.worker}"
    embed.set_footer(text=clip(footer, 200))
    embed.set_image(url=f"attachment://{filename}")
    return embed


def model_negative_text(negative: str) -> str:
    """The negative prompt the model read, as members can read it: the single space and the
    empty one (no true CFG) say what they are instead of showing nothing."""
    if negative == NEUTRAL_NEGATIVE:
        return "(none — a single space, as the model card recommends)"
    if not negative.strip():
        return "(none: fast mode runs without true CFG, so no negative prompt is used)"
    return shown(negative, 1000)


def details_embed(row: db.Generation) -> discord.Embed:
    """Every parameter of a generation (from its database row), for the Details button."""
    embed = discord.Embed(title="Generation details", colour=COLOR_INFO)
    embed.add_field(name="Prompt", value=shown(row.prompt, 1000) or "(empty)", inline=False)
    if row.negative_prompt:
        embed.add_field(
            name="Negative prompt", value=shown(row.negative_prompt, 1000), inline=False
        )
    model_prompt = getattr(row, "model_prompt", None)
    if model_prompt is not None:
        embed.add_field(
            name="Prompt the model read", value=shown(model_prompt, 1000) or "(empty)", inline=False
        )
        embed.add_field(
            name="Negative prompt the model read",
            value=model_negative_text(getattr(row, "model_negative", None) or ""),
            inline=False,
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
        value=f"{seconds_text(row.run_s)} on the GPU, {seconds_text(row.queued_s)} in line",
        inline=False,
    )
    model = model_name(row.model) if row.model else "?"
    if row.worker:
        model += f" (worker {row.worker})"
    embed.add_field(name="Model", value=clip(model, 1000), inline=False)
    if row.note:
        embed.add_field(name="Note", value=clip(row.note, 1000), inline=False)
    embed.add_field(name="Status", value=shown_status(row.status), inline=True)
    embed.add_field(name="Requested by", value=f"<@{row.user_id}>", inline=True)
    embed.add_field(name="Kind", value=row.kind, inline=True)
    embed.set_footer(text=f"job {row.job_key}")
    if row.created_at is not None:
        embed.timestamp = row.created_at
    return embed


def conversion_note(
    fmt: str, quality: int, *, scaled: tuple[int, int] | None, png_bytes: int, limit: int
) -> str:
    """The embed's note when the PNG was over the upload limit and went out converted."""
    size = "" if scaled is None else f", scaled to {scaled[0]}×{scaled[1]}"
    return (
        f"Sent as {fmt} (quality {quality}{size}): the PNG was {megabytes(png_bytes)}, "
        f"over the {megabytes(limit)} upload limit here. The PNG is reproducible "
        "from these parameters."
    )


def header_of(row: db.Generation) -> str:
    """The status header of a stored job (a restart, or a button on an old message)."""
    return job_header(row.user_id, row.prompt, row.style, row.aspect, row.mode, row.seed)


def resumed_text(header: str, position: int | None) -> str:
    return f"{header}\n♻️ Resumed after a restart. {queued_line(position)}"


def delivered_elsewhere_text(header: str) -> str:
    """The old status message once the image went out as a reply to it."""
    return f"{header}\n✅ Done: the image is in the reply below."


def image_ready_text(requester_id: int) -> str:
    """The reply that carries a late image; it mentions (and may notify) only the requester."""
    return f"<@{requester_id}>, your image is ready."


def not_resumed_reason(reason: str) -> str:
    return f"It could not be resumed after a restart: {reason}"


def quota_used_up_text(limit: int, resets_at: dt.datetime) -> str:
    return f"You've used all {limit} images of today's quota. It resets {reset_time(resets_at)}."


def too_many_queued_text(queued: int, limit: int, *, ceiling: bool) -> str:
    """The refusal when a member already has ``limit`` images waiting or being made.

    ``ceiling``: the limit is the bot-wide ceiling (the server set none, or a higher one).
    """
    plural = "s" if queued != 1 else ""
    why = (
        f"the most this bot takes from one member at once is {limit}"
        if ceiling
        else f"the limit is {limit}"
    )
    return (
        f"You already have {queued} image{plural} waiting or being made ({why}). "
        "Wait for one to finish, then try again."
    )


def partial_variations_text(reason: str) -> str:
    return f"Only one variation was started: {reason}"


def image_gone_text() -> str:
    """Vary or Remix on an image the store no longer has (retention, Delete, an erase)."""
    return (
        "This image is no longer stored (old images are cleared to save space), so it can't "
        "be varied or remixed. Nothing was charged. **Reroll** still makes a new image of the "
        "same prompt."
    )


def inputs_gone_reason() -> str:
    """Why a job could not be submitted: an image it is made from is no longer stored (a
    variation's source, an edit's uploads), swept meanwhile by retention, Delete or an erase."""
    return "an image it is made from is no longer stored"


ENGINE_SILENT_TEXT = "The image engine is not answering right now; try again in a minute."
EDIT_OFF_TEXT = "Image editing is turned off on this bot. Nothing was charged."
NO_EDIT_WORKER_TEXT = "No worker can edit right now. Nothing was charged; please try again later."
TASK_OFF_TEXT = "This kind of image can't be made here right now. Nothing was charged."


def task_unavailable_text(task: str, status: EngineStatus) -> str:
    """Nothing here runs ``task`` now, and why: no worker that can (Redis), the engine that
    could not load, or (editing) the operator's setting or an edit model that did not load."""
    if status.backend == "redis":
        return NO_EDIT_WORKER_TEXT if task == TASK_EDIT else TASK_OFF_TEXT
    if status.load_error:
        return f"{status.load_error} Nothing was charged."
    if task == TASK_EDIT and status.edit_off:
        return f"{status.edit_off} Nothing was charged."
    return EDIT_OFF_TEXT if task == TASK_EDIT else TASK_OFF_TEXT


def unknown_kind_text() -> str:
    """A button or command of a kind of job this bot no longer has (a removed extension)."""
    return "This bot can't make that kind of image any more. Nothing was charged."


def unknown_kind_reason() -> str:
    """Why a resumed job of a kind this bot no longer has could not run."""
    return "the bot no longer makes this kind of image"
