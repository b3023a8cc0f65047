"""Every text and embed the bot shows, in one place, so wording and escaping stay consistent.

User text (prompts, negatives, style names, blocked words) always goes through ``escape``:
markdown and mentions are neutralised in what is *shown*, and every message that carries such
text is also sent with ``allowed_mentions`` none, so nobody is ever pinged by a prompt.

Callers use ``render.<name>`` (never ``from bot.render.x import name``), so one place decides
each wording. Nothing reads these texts back: the job's state lives in its database row.

- ``text``: escaping, clipping, durations, timestamps, colours.
- ``jobs``: status messages, progress, the final embed, failures and refusals.
- ``info``: /history, /quota, /status.
- ``admin``: /limits, /blocked, /styles.
"""

from bot.render.admin import (
    blocked_words_embed,
    ceiling_binds,
    limits_embed,
    style_embed,
    styles_list_embed,
)
from bot.render.info import (
    STATUS_ICONS,
    erase_kept_text,
    erase_question_text,
    erased_text,
    history_embed,
    loading_text,
    quota_text,
    status_embed,
)
from bot.render.jobs import (
    FAILURE_LEADS,
    PROMPT_PREVIEW_CHARS,
    cancelled_text,
    conversion_note,
    delivered_elsewhere_text,
    details_embed,
    failure_text,
    header_of,
    image_gone_text,
    image_ready_text,
    job_header,
    model_loading_line,
    not_resumed_reason,
    partial_variations_text,
    progress_line,
    queued_line,
    quota_used_up_text,
    result_embed,
    resumed_text,
    source_gone_reason,
    too_many_queued_text,
)
from bot.render.text import (
    COLOR_FAIL,
    COLOR_INFO,
    COLOR_OK,
    aspect_label,
    clip,
    escape,
    jump_url,
    megabytes,
    minutes,
    model_name,
    progress_bar,
    reset_time,
    seconds,
    shown,
    shown_status,
    timestamp,
)

__all__ = [
    "COLOR_FAIL",
    "COLOR_INFO",
    "COLOR_OK",
    "FAILURE_LEADS",
    "PROMPT_PREVIEW_CHARS",
    "STATUS_ICONS",
    "aspect_label",
    "blocked_words_embed",
    "cancelled_text",
    "ceiling_binds",
    "clip",
    "conversion_note",
    "delivered_elsewhere_text",
    "details_embed",
    "erase_kept_text",
    "erase_question_text",
    "erased_text",
    "escape",
    "failure_text",
    "header_of",
    "history_embed",
    "image_gone_text",
    "image_ready_text",
    "job_header",
    "jump_url",
    "limits_embed",
    "loading_text",
    "megabytes",
    "minutes",
    "model_loading_line",
    "model_name",
    "not_resumed_reason",
    "partial_variations_text",
    "progress_bar",
    "progress_line",
    "queued_line",
    "quota_text",
    "quota_used_up_text",
    "reset_time",
    "result_embed",
    "resumed_text",
    "seconds",
    "shown",
    "shown_status",
    "source_gone_reason",
    "status_embed",
    "style_embed",
    "styles_list_embed",
    "timestamp",
    "too_many_queued_text",
]
