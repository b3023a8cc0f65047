"""``JobSpec``: what a member asked for, as one typed, frozen value.

Every entry point — a slash command, a button, a form — builds a ``JobSpec``, and
``JobService.start(guard, spec)`` is the one way in. The spec is written to the job's row when
the job is reserved (``JobSpec.new_row``) and read back from it (``JobSpec.of_row``), so a job
resumed after a restart runs exactly what was asked, and nothing about a job lives anywhere
else (no module-level state, nothing parsed from message text).

Its input images are image-store keys, never bytes: the service reads them back from the store
when it submits the job, the same way for a fresh job and a resumed one.

How rows map to kinds (``bot.imagine.kinds``; ``0007_job_specs`` set the last two columns for
rows written before):

==============  ====================================================  ==================
kind            the row                                               inputs
==============  ====================================================  ==================
``imagine``     /imagine                                              none
``reroll``      Reroll: the parent's prompt, a new seed               none
``variation``   the old Variations button: new seeds, no strength     none
``vary``        Vary (Subtle/Strong): img2img at ``strength``         the parent's image
``remix``       Remix: a strong variation with an edited prompt       the parent's image
``edit``        /edit, the Edit button, Reroll of an edit             ``<key>:in<n>``
==============  ====================================================  ==================

A field added here is a column added to ``generations`` (its own migration) and read in
``of_row``; the spec, not the row, is what the rest of the bot handles.
"""

from __future__ import annotations

import dataclasses

import db
from engine.contract import JobRequest, Mode, StyleSpec
from engine.presets import DEFAULT_ASPECT, DEFAULT_STYLE

# The image-store key of a job's own ``number``-th input (1-based): kept with the job, so a
# resume after a restart reads it back and a member's erase removes it with their images.
INPUT_KEY = "{job_key}:in{number}"


def input_key(job_key: str, number: int) -> str:
    return INPUT_KEY.format(job_key=job_key, number=number)


@dataclasses.dataclass(frozen=True, slots=True)
class JobSpec:
    """One job, as asked: its kind, its text and options, and its inputs by store key.

    ``seed`` None draws a fresh one when the job is reserved. ``parent_key`` names the job it
    was made from (Reroll, Vary, Remix, an Edit of a result); ``strength`` is an
    image-to-image job's share of the schedule re-run from its input.
    """

    kind: str
    prompt: str
    negative: str | None = None
    style: str = DEFAULT_STYLE
    aspect: str = DEFAULT_ASPECT
    mode: Mode = Mode.STANDARD
    seed: int | None = None
    strength: float | None = None
    parent_key: str | None = None
    inputs: tuple[str, ...] = ()

    @classmethod
    def of_row(cls, row: db.Generation) -> JobSpec:
        """The spec a row was reserved with (a resumed job, or the parent of a new one)."""
        return cls(
            kind=row.kind,
            prompt=row.prompt,
            negative=row.negative_prompt,
            style=row.style,
            aspect=row.aspect,
            mode=Mode(row.mode),
            seed=row.seed,
            strength=row.strength,
            parent_key=row.parent_key,
            inputs=tuple(row.inputs or ()),
        )

    def new_row(
        self,
        *,
        job_key: str,
        user_id: int,
        guild_id: int | None,
        channel_id: int | None,
        seed: int,
    ) -> db.NewGeneration:
        """The row that reserves this job (``seed``: this one, or the one drawn for it)."""
        return db.NewGeneration(
            job_key=job_key,
            user_id=user_id,
            channel_id=channel_id,
            guild_id=guild_id,
            prompt=self.prompt,
            style=self.style,
            aspect=self.aspect,
            mode=str(self.mode),
            negative_prompt=self.negative,
            seed=seed,
            kind=self.kind,
            parent_key=self.parent_key,
            strength=self.strength,
            inputs=self.inputs,
        )


def request_for(
    spec: JobSpec,
    *,
    job_key: str,
    user_id: int,
    task: str,
    style: StyleSpec,
    images: tuple[bytes, ...],
    deadline_s: float | None,
) -> JobRequest:
    """What the engine runs for a job: the same for every kind, a new job and a resumed one.

    ``images`` are the spec's inputs as the store keeps them, in order; the engine writes the
    parent job and the strength of an image-to-image job into its PNG.
    """
    return JobRequest(
        job_id=job_key,
        user_id=user_id,
        prompt=spec.prompt,
        task=task,
        style=style,
        negative_prompt=spec.negative,
        aspect=spec.aspect,
        seed=spec.seed,
        mode=spec.mode,
        deadline_s=deadline_s,
        images=images,
        strength=spec.strength,
        parent_job_id=spec.parent_key,
    )
