"""The job path, one module per concern.

Every entry point builds a ``JobSpec`` (``spec``: what was asked, inputs as image-store keys) of
a ``JobKind`` (``kinds``) and calls ``JobService.start`` (``service``): the checks
(``policy``) → reserve the quota unit and the job row (the spec) in one transaction, the
interaction id as the key → submit to the image backend → answer within Discord's 3 seconds
(``ack``) → progress edits and places in line (``following``) → the result written to the row,
then the image uploaded → the row done. Every ending goes through ``Finisher.end``
(``finish``); ``recovery`` resumes what a restart interrupted from the rows alone; ``again``
builds the jobs the buttons under a result make (Reroll, Variations, Vary, Remix);
``cancelling`` is the Cancel button. ``presenting`` is what the job path needs from the views
(``bot.views.results`` implements it), so it never imports them.
"""

from bot.imagine.ack import ACK_DEFER_AFTER_S, AckGuard
from bot.imagine.deps import JobDeps
from bot.imagine.job import Job, Outcome, utcnow
from bot.imagine.kinds import JobKind, Kinds
from bot.imagine.policy import style_description
from bot.imagine.service import JobService
from bot.imagine.spec import JobSpec

__all__ = [
    "ACK_DEFER_AFTER_S",
    "AckGuard",
    "Job",
    "JobDeps",
    "JobKind",
    "JobService",
    "JobSpec",
    "Kinds",
    "Outcome",
    "style_description",
    "utcnow",
]
