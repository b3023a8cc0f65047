"""How finished jobs are shown: ``Presentation``, the job path's ``JobViews``.

Each kind of job has a renderer (``bot.imagine.presenting.ResultRenderer``): the file it
uploads, the embed of its parameters and the buttons under it. Every built-in kind is an image
shown by ``ImageResult``: the PNG, ``render.result_embed`` and the result buttons (Reroll, Vary,
Remix, a feature's own such as Edit, Details, Delete). A kind with a look of its own registers
its renderer through ``JobService.register``.
"""

from __future__ import annotations

import discord

from bot import render
from bot.imagine.presenting import ResultRenderer, Shown
from bot.views.base import JobButton
from bot.views.jobs import RESULT_BUTTONS, RerollButton, status_view
from engine.contract import JobResult


class ImageResult:
    """An image with its parameters and the result buttons (``buttons``, in order)."""

    def __init__(self, buttons: list[type[JobButton]]) -> None:
        self.buttons = buttons

    def file(self, result: JobResult) -> tuple[bytes, str]:
        image = result.image
        return image.png, f"imagine-{image.seed}"

    def embed(self, result: JobResult, shown: Shown) -> discord.Embed:
        return render.result_embed(
            result,
            requester=shown.requester,
            requester_id=shown.requester_id,
            filename=shown.filename,
            conversion_note=shown.conversion_note,
            negative_prompt=shown.negative,
        )

    def view(self, job_key: str, tasks: frozenset[str] | None) -> discord.ui.View:
        """The buttons under a finished image: making more on the first row, the rest below;
        one whose task nothing here runs now is left out (pressing it would only be refused)."""
        view = discord.ui.View(timeout=None)
        for button in self.buttons:
            if tasks is None or button.needs_task is None or button.needs_task in tasks:
                view.add_item(button(job_key))
        return view

    def marker(self, job_key: str) -> str:
        return RerollButton(job_key).custom_id


class Presentation:
    """The status message's buttons and every kind's renderer, for one bot."""

    def __init__(self) -> None:
        self.result_buttons: list[type[JobButton]] = list(RESULT_BUTTONS)
        self.images = ImageResult(self.result_buttons)
        self._renderers: dict[str, ResultRenderer] = {}

    def status_view(self, job_key: str) -> discord.ui.View:
        return status_view(job_key)

    def renderer(self, kind: str) -> ResultRenderer:
        return self._renderers.get(kind, self.images)

    def add_renderer(self, kind: str, renderer: ResultRenderer) -> None:
        self._renderers[kind] = renderer

    def add_result_button(self, button: type[JobButton], *, before: type[JobButton]) -> None:
        """A feature's button under every finished image, placed before ``before``."""
        if button not in self.result_buttons:
            self.result_buttons.insert(self.result_buttons.index(before), button)
