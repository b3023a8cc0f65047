"""The /imagine job path, one module per concern.

validate (``policy``) → reserve the quota unit and the job row in one transaction, the
interaction id as the key → submit to the image backend → answer within Discord's 3 seconds
(``ack``) → progress edits and places in line (``following``) → the result written to the row,
then the image uploaded → the row done. Every ending goes through ``JobService.end``
(``service``); ``recovery`` resumes what a restart interrupted. ``job`` holds the one place that
builds a ``Job`` and the one that builds a ``JobRequest``.

Commands and buttons only call into ``JobService``, so /imagine, Reroll, Variations and restart
recovery cannot drift apart.
"""

from bot.imagine.ack import ACK_DEFER_AFTER_S, AckGuard
from bot.imagine.job import Job, Outcome, utcnow
from bot.imagine.policy import ImagineParams, style_description
from bot.imagine.service import JobService

__all__ = [
    "ACK_DEFER_AFTER_S",
    "AckGuard",
    "ImagineParams",
    "Job",
    "JobService",
    "Outcome",
    "style_description",
    "utcnow",
]
