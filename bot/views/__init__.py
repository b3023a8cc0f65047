"""Buttons and forms that keep working after a restart.

Every button is a ``discord.ui.DynamicItem`` whose ``custom_id`` carries the action and the job
key (``imagine:reroll:<job_key>``), the history page it shows, or the member it asks; forms
(the Remix form) are answered from their custom id too. Nothing lives in memory: the handler
loads what it needs from the database, so a restarted bot answers clicks on messages it sent
before the restart. ``setup_hook`` registers these classes with ``add_dynamic_items``.

The custom ids are a promise to every message already posted: change a template and the
buttons in every server stop working. Who may press a button is checked in each item's
``interaction_check``, before its action runs.

- ``base``: the shared check and the custom id pattern.
- ``jobs``: the buttons under a job's message.
- ``forms``: the Remix form.
- ``results``: how a finished job is shown (``Presentation``, the job path's ``JobViews``).
- ``erase``: the confirmation of /forget-me.
"""

from __future__ import annotations

import discord

from bot.interaction import ViewButton
from bot.views.base import Guarded, JobButton, has_permission, job_row
from bot.views.erase import EraseButton, erase_view
from bot.views.forms import form_values, handle_remix_form, remix_form
from bot.views.jobs import (
    RESULT_BUTTONS,
    CancelButton,
    DeleteButton,
    DetailsButton,
    RemixButton,
    RerollButton,
    VariationsButton,
    VaryStrongButton,
    VarySubtleButton,
    status_view,
)
from bot.views.results import ImageResult, Presentation

# Every restart-proof button: those under a finished image, plus the ones that are not.
DYNAMIC_ITEMS: tuple[type[discord.ui.DynamicItem[ViewButton]], ...] = (
    *RESULT_BUTTONS,
    VariationsButton,
    CancelButton,
    EraseButton,
)

__all__ = [
    "DYNAMIC_ITEMS",
    "RESULT_BUTTONS",
    "CancelButton",
    "DeleteButton",
    "DetailsButton",
    "EraseButton",
    "Guarded",
    "ImageResult",
    "JobButton",
    "Presentation",
    "RemixButton",
    "RerollButton",
    "VariationsButton",
    "VaryStrongButton",
    "VarySubtleButton",
    "erase_view",
    "form_values",
    "handle_remix_form",
    "has_permission",
    "job_row",
    "remix_form",
    "status_view",
]
