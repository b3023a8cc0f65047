"""What the job path needs from the layer that draws messages: the buttons under a waiting job
and, per kind, how a finished job is shown. ``bot.views.results.Presentation`` implements it;
the job path takes it as a dependency, so it never imports the views (which import it).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

import discord

from engine.contract import JobResult


@dataclasses.dataclass(frozen=True, slots=True)
class Shown:
    """Who a result is for and how its file went out, for its embed."""

    requester: discord.abc.User | None
    requester_id: int
    filename: str
    conversion_note: str | None = None
    negative: str | None = None  # what the member typed, not what the model read


class ResultRenderer(Protocol):
    """How one kind's finished job is shown: its file, its embed and its buttons."""

    def file(self, result: JobResult) -> tuple[bytes, str]:
        """The PNG to upload and its file name's stem (the store keeps the same image)."""
        ...

    def embed(self, result: JobResult, shown: Shown) -> discord.Embed: ...

    def view(self, job_key: str, tasks: frozenset[str] | None) -> discord.ui.View:
        """The buttons under the result; ``tasks``: what the backend runs now (None: unknown),
        so a button whose job nothing here could run (Edit, with editing off) is left out."""
        ...

    def marker(self, job_key: str) -> str:
        """A custom id its view carries: how a restart finds a result it already posted."""
        ...


class JobViews(Protocol):
    """The status message's buttons, and each kind's renderer."""

    def status_view(self, job_key: str) -> discord.ui.View: ...

    def renderer(self, kind: str) -> ResultRenderer:
        """The renderer of ``kind`` (every kind has one: a kind without its own is shown as
        an image with the usual buttons)."""
        ...

    def add_renderer(self, kind: str, renderer: ResultRenderer) -> None: ...
