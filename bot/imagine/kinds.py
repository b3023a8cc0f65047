"""The kinds of job, and the registry a ``JobService`` looks them up in.

A kind names the engine task it runs (``engine.contract.TASK_*``: a worker runs the tasks it
announces) and how its Reroll goes. Everything else about a job is its ``JobSpec``; how its
result is shown is its renderer (``bot.views.results``). Adding a kind of job is: a ``JobKind``
here, one entry point that builds its spec, one generator in the engine for its task, and one
renderer — ``docs/ARCHITECTURE.md`` ("Adding a job kind") walks through it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from engine.contract import TASK_EDIT, TASK_GENERATE


@dataclasses.dataclass(frozen=True, slots=True)
class JobKind:
    """One kind of job. ``name`` is what its rows record (at most 16 characters).

    ``rerolls_inputs``: Reroll makes the same job again from the same inputs (copied to the
    new job, so each job owns its inputs); otherwise Reroll is text-to-image from the prompt.
    """

    name: str
    task: str
    rerolls_inputs: bool = False


IMAGINE = JobKind("imagine", TASK_GENERATE)
REROLL = JobKind("reroll", TASK_GENERATE)
VARIATION = JobKind("variation", TASK_GENERATE)  # new seeds of the same prompt (old button)
VARY = JobKind("vary", TASK_GENERATE)  # image-to-image from the parent's image
REMIX = JobKind("remix", TASK_GENERATE)  # vary with the prompt edited in a form
EDIT = JobKind("edit", TASK_EDIT, rerolls_inputs=True)

BUILTIN_KINDS: tuple[JobKind, ...] = (IMAGINE, REROLL, VARIATION, VARY, REMIX, EDIT)


class UnknownKind(LookupError):
    """A row or spec names a kind this bot does not have (a newer bot's row, a removed
    extension): the job cannot run here."""


class Kinds:
    """The kinds one ``JobService`` runs: the built-in ones, plus any an extension adds."""

    def __init__(self, kinds: Iterable[JobKind] = BUILTIN_KINDS) -> None:
        self._kinds: dict[str, JobKind] = {}
        for kind in kinds:
            self.add(kind)

    def add(self, kind: JobKind) -> None:
        if not 0 < len(kind.name) <= 16:
            raise ValueError(f"a kind's name is 1 to 16 characters: {kind.name!r}")
        if self._kinds.get(kind.name, kind) != kind:
            raise ValueError(f"another kind is called {kind.name!r}")
        self._kinds[kind.name] = kind

    def __getitem__(self, name: str) -> JobKind:
        try:
            return self._kinds[name]
        except KeyError:
            raise UnknownKind(name) from None

    def __contains__(self, name: object) -> bool:
        return name in self._kinds
