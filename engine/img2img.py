"""Image-to-image ("Vary" buttons): the img2img view of the loaded pipeline and its input image.

The img2img pipeline is never loaded from disk: ``QwenImageImg2ImgPipeline.from_pipe`` builds it
from the text-to-image pipeline's own modules (transformer, VAE, text encoder, tokenizer,
scheduler), so a variation costs no memory beyond its activations. It is built lazily on the
first variation and rebuilt only if the text-to-image pipeline's modules were swapped.

Everything that arrives here is untrusted (a PNG from the image store or, later, an upload
through Redis): it is decoded with a pixel cap before any GPU work and refused with
``JobFailed(INVALID)`` when it cannot be read.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import warnings
from typing import TYPE_CHECKING, cast

from PIL import Image, ImageOps

from engine.contract import MAX_INPUT_IMAGE_PIXELS, FailureKind, JobFailed, JobRequest
from engine.diffusers_types import Pipeline
from engine.generator import Plan
from engine.inputs import check_aspect

if TYPE_CHECKING:
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img import (
        QwenImageImg2ImgPipeline,
    )

logger = logging.getLogger(__name__)

# The modules the img2img view shares with the text-to-image pipeline.
SHARED_MODULES = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler")


def img2img_steps(schedule_steps: int, strength: float) -> int:
    """Denoising steps an img2img call really runs for ``strength`` over ``schedule_steps``.

    The same arithmetic as diffusers' ``QwenImageImg2ImgPipeline.get_timesteps``: the schedule
    keeps its full length (so its sigmas match text-to-image) and the first
    ``int(steps - steps * strength)`` entries are skipped. Progress totals and
    ``JobResult.steps`` use this number, so the ETA counts only the work that happens.
    """
    init_timestep = min(schedule_steps * strength, schedule_steps)
    t_start = int(max(schedule_steps - init_timestep, 0))
    return schedule_steps - t_start


def _shared_img2img_class() -> type[QwenImageImg2ImgPipeline]:
    """``QwenImageImg2ImgPipeline`` whose ``to()`` never moves or casts the shared modules.

    ``from_pipe`` ends with ``new_pipeline.to(dtype=...)`` (float32 unless told otherwise), and
    ``DiffusionPipeline.to`` calls ``module.to(None, dtype)`` on every module: on the shared
    modules that would recast the text-to-image pipeline's own weights (FP8 buffers from
    ``engine.optimize`` included). The modules belong to the text-to-image pipeline, which
    places them; this view leaves them exactly as they are.
    """
    # The defining module: to a type checker ``diffusers.QwenImageImg2ImgPipeline`` is diffusers'
    # untyped placeholder (engine.diffusers_types says why).
    from diffusers.pipelines.qwenimage.pipeline_qwenimage_img2img import (
        QwenImageImg2ImgPipeline,
    )

    class SharedQwenImageImg2ImgPipeline(QwenImageImg2ImgPipeline):
        def to(self, *args: object, **kwargs: object) -> SharedQwenImageImg2ImgPipeline:
            return self

    return SharedQwenImageImg2ImgPipeline


def build_img2img(pipe: Pipeline) -> Pipeline:
    """An img2img pipeline built by ``from_pipe`` over ``pipe``'s modules (no weight copied)."""
    pipeline_class = _shared_img2img_class()
    # diffusers leaves from_pipe unannotated; what it builds is the engine's view of a pipeline.
    img2img = cast(Pipeline, pipeline_class.from_pipe(pipe))  # type: ignore[no-untyped-call]
    img2img.set_progress_bar_config(disable=True)
    # engine.optimize memoises prompt encodings on the text-to-image pipeline; the img2img
    # encoder is the same code over the same modules, so a variation of a recent prompt reuses
    # its embeddings instead of running the text encoder again.
    cache = pipe.__dict__.get("encode_prompt")
    if cache is not None:
        img2img.encode_prompt = cache
    logger.info("img2img pipeline built from the loaded pipeline (modules shared)")
    return img2img


class Img2ImgView:
    """The lazily built img2img pipeline that follows the text-to-image pipeline's modules."""

    def __init__(self) -> None:
        self._pipe: Pipeline | None = None
        self._source: Pipeline | None = None

    def get(self, pipe: Pipeline) -> Pipeline:
        """The img2img pipeline for ``pipe``, its scheduler set to the one ``pipe`` uses now.

        Fast mode swaps ``pipe.scheduler`` for the Lightning one; the view follows, so a fast
        variation samples exactly like a fast text-to-image job.
        """
        current = self._pipe
        stale = (
            current is None
            or self._source is not pipe
            or any(
                getattr(current, name) is not getattr(pipe, name)
                for name in SHARED_MODULES
                if name != "scheduler"
            )
        )
        if stale or current is None:
            current = build_img2img(pipe)
            self._pipe, self._source = current, pipe
        if current.scheduler is not pipe.scheduler:
            current.scheduler = pipe.scheduler
        return current


def load_init_image(data: bytes, width: int, height: int) -> Image.Image:
    """The input image as RGB, cropped to the job's aspect around its centre and resized.

    Cropping (rather than stretching) keeps shapes undistorted when the stored image's ratio
    differs from the requested one; the pixel cap is checked on the header before any pixel is
    decoded, so a decompression bomb costs nothing.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image: Image.Image = Image.open(io.BytesIO(data), formats=["PNG"])  # PNG only
            if image.width * image.height > MAX_INPUT_IMAGE_PIXELS:
                raise JobFailed(
                    FailureKind.INVALID,
                    f"The source image is too large ({image.width}×{image.height}); the limit "
                    f"is {MAX_INPUT_IMAGE_PIXELS // 1_000_000} megapixels.",
                )
            check_aspect(image.width, image.height, "The source image")
            image.load()
            image = ImageOps.exif_transpose(image)
    except JobFailed:
        raise
    except Exception as exc:  # PIL raises many types for bad input
        raise JobFailed(
            FailureKind.INVALID, "The source image could not be read as a PNG."
        ) from exc
    if image.width < 1 or image.height < 1:
        raise JobFailed(FailureKind.INVALID, "The source image is empty.")
    if image.mode != "RGB":
        if image.mode in ("RGBA", "LA", "P", "PA"):
            image = image.convert("RGBA")
            background = Image.new("RGB", image.size, (255, 255, 255))
            background.paste(image, mask=image.getchannel("A"))
            image = background
        else:
            image = image.convert("RGB")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)


def img2img_fields(plan: Plan, request: JobRequest) -> Plan:
    """A text-to-image plan made a variation's (all of it goes into the PNG's text chunks):
    the steps really run, the schedule they come from, the strength and the parent job."""
    if len(request.images) != 1 or request.strength is None:
        raise JobFailed(FailureKind.INVALID, "A variation takes one source image and a strength.")
    steps = img2img_steps(plan.steps, request.strength)
    if steps < 1:
        raise JobFailed(
            FailureKind.INVALID, "The variation strength is too small to run a single step."
        )
    return dataclasses.replace(
        plan,
        steps=steps,
        schedule_steps=plan.steps,
        strength=request.strength,
        parent_job_id=request.parent_job_id,
    )
