"""What the engine checks of every input image before it decodes a pixel, whichever job it is
for (a variation's source, an edit's images): the bot checked its uploads already, but a job
from Redis is untrusted, and the engine trusts no input."""

from __future__ import annotations

from engine.contract import MAX_INPUT_ASPECT_RATIO, FailureKind, JobFailed


def check_aspect(width: int, height: int, what: str) -> None:
    """Refuse an input past ``MAX_INPUT_ASPECT_RATIO`` (or of no area) before any pixel is
    decoded: the pipeline's image processor would raise a plain ``ValueError`` mid-job."""
    if min(width, height) < 1 or max(width, height) > MAX_INPUT_ASPECT_RATIO * min(width, height):
        raise JobFailed(
            FailureKind.INVALID,
            f"{what} is {width}×{height}, longer than {MAX_INPUT_ASPECT_RATIO}:1.",
        )
