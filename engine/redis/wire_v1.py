"""Version 1 of the two messages that carry the contract, kept for one version step.

Version 2 (``engine.redis.wire``) took ``engine.contract``'s classes as the messages' fields: a
job's input images became one ``images`` list and its ``task`` part of the request, and a
result became a list of images (a grid makes several) with base64 PNGs instead of hex. So that
bot and workers can be upgraded one after the other, a version-2 reader turns a version-1 job
or result into version 2 here, and a worker answers a version-1 job with a version-1 result.
Delete this module with the reader of version 1 when the wire moves to version 3.

Redis content is untrusted: whatever does not have the version-1 shape raises ``WireError``
(which the caller logs and skips), and what these functions build is validated again, strictly,
as version 2.
"""

from __future__ import annotations

import base64

from engine.contract import TASK_EDIT, TASK_GENERATE, Failure, JobResult

V1 = 1
V2 = 2


class Unreadable(ValueError):
    """Not the version-1 shape (``engine.redis.wire`` reports it as a ``WireError``)."""


def _error(what: str) -> Exception:
    return Unreadable(f"version-1 {what} unreadable")


def job_message(document: dict[str, object]) -> dict[str, object]:
    """A version-1 ``JobMessage`` (its request a dict with ``init_image`` / ``edit_images`` and
    the task as the message's ``needs``) as version 2."""
    request = document.get("request")
    if not isinstance(request, dict):
        raise _error("job request")
    fields = dict(request)
    images: list[object] = []
    source = fields.pop("init_image", None)
    edits = fields.pop("edit_images", None)
    if source is not None:
        images.append(source)
    if edits is not None:
        if not isinstance(edits, list):
            raise _error("edit images")
        images.extend(edits)
    fields["images"] = images
    fields["task"] = document.get("needs") or (TASK_EDIT if edits else TASK_GENERATE)
    if fields.get("style") is None:
        fields.pop("style", None)
    return {
        "v": V2,
        "request": fields,
        "submitted_at": document.get("submitted_at"),
        "dispatched_at": document.get("dispatched_at"),
        "attempt": document.get("attempt"),
    }


def result_envelope(document: dict[str, object]) -> dict[str, object]:
    """A version-1 ``ResultEnvelope`` (one image, its PNG in hex, its size and seed among the
    result's fields) as version 2."""
    upgraded: dict[str, object] = {
        "v": V2,
        "ok": document.get("ok"),
        "error": document.get("error"),
    }
    result = document.get("result")
    if result is not None:
        if not isinstance(result, dict):
            raise _error("result")
        fields = dict(result)
        try:
            png = bytes.fromhex(fields.pop("png"))
        except (KeyError, TypeError, ValueError):
            raise _error("result image") from None
        fields["images"] = [
            {
                "png": base64.b64encode(png).decode("ascii"),
                "width": fields.pop("width", None),
                "height": fields.pop("height", None),
                "seed": fields.pop("seed", None),
            }
        ]
        upgraded["result"] = fields
    return upgraded


# What a version-1 bot reads when a newer worker made something it has no field for.
NOT_FOR_V1_MESSAGE = (
    "This GPU worker is newer than the bot and made something the bot cannot show yet; "
    "nothing was charged. Update the bot."
)


def result_document(ok: bool, result: JobResult | None, error: Failure | None) -> dict[str, object]:
    """A version-2 envelope's outcome as a version-1 bot reads it: its one image (a version-1
    result is one image), or a failure the member can read."""
    if ok and result is not None and len(result.images) == 1 and not result.texts:
        image = result.images[0]
        fields = {
            "job_id": result.job_id,
            "png": image.png.hex(),
            "width": image.width,
            "height": image.height,
            "seed": image.seed,
            "steps": result.steps,
            "true_cfg_scale": result.true_cfg_scale,
            "mode": str(result.mode),
            "requested_mode": str(result.requested_mode),
            "style": result.style,
            "prompt": result.prompt,
            "full_prompt": result.full_prompt,
            "negative_prompt": result.negative_prompt,
            "aspect": result.aspect,
            "model": result.model,
            "queued_s": result.queued_s,
            "run_s": result.run_s,
            "note": result.note,
            "worker": result.worker,
        }
        return {"v": V1, "ok": True, "result": fields, "error": None}
    if ok or error is None:
        told = {"kind": "error", "user_message": NOT_FOR_V1_MESSAGE}
    else:
        told = {"kind": str(error.kind), "user_message": error.user_message}
    return {"v": V1, "ok": False, "result": None, "error": told}
