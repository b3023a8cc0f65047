"""The edit pipeline's ``Qwen2VLProcessor`` without a video processor, and its image sizes.

Why a subclass: ``QwenImageEditPlusPipeline`` only ever feeds the processor images, but in
transformers 5 ``Qwen2VLProcessor.from_pretrained`` also loads a ``Qwen2VLVideoProcessor``, which
requires torchvision (not a dependency of this project): the stock load then fails with
"Qwen2VLVideoProcessor requires the Torchvision library". ``ImageOnlyQwen2VLProcessor`` is the
same processor (same tokenizer, same ``Qwen2VLImageProcessor``, same ``<|image_pad|>``
expansion) whose only sub-processors are the image processor and the tokenizer; it loads the
``processor/`` folder of the real checkpoint and of the tiny one, with or without torchvision,
and is passed to ``from_pretrained`` as the ``processor`` component.

Sizes: diffusers 0.42.1 resizes every input image to about ``CONDITION_IMAGE_SIZE`` (384²) pixels
for the vision-language condition and ``VAE_IMAGE_SIZE`` (1024²) for the VAE latents. Both are
module constants of ``pipeline_qwenimage_edit_plus`` read at call time, not call arguments, so a
per-call override means setting the module attributes for the duration of the call:
``edit_image_sizes`` does that under a lock and restores them. Only the tiny model uses it
(a 1024² VAE encode of three images would take seconds on a CPU); the real model runs diffusers'
own values.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

from transformers import Qwen2VLProcessor

logger = logging.getLogger(__name__)

# What model_index.json and processor_config.json name: the stock class, so the checkpoint
# stays a plain diffusers checkpoint that stock ``from_pretrained`` (with torchvision) loads.
STOCK_PROCESSOR_CLASS = "Qwen2VLProcessor"

_SIZES_LOCK = threading.Lock()


class ImageOnlyQwen2VLProcessor(Qwen2VLProcessor):
    """``Qwen2VLProcessor`` with an image processor and a tokenizer only (no torchvision)."""

    def __init__(
        self,
        image_processor: object = None,
        tokenizer: object = None,
        chat_template: str | None = None,
        **kwargs: object,
    ) -> None:
        # ProcessorMixin takes its sub-processor names from this signature: no video_processor.
        # (transformers leaves Qwen2VLProcessor.__init__ unannotated.)
        super().__init__(  # type: ignore[no-untyped-call]
            image_processor, tokenizer, None, chat_template=chat_template, **kwargs
        )


def load_processor(source: str, cache_dir: str | None = None) -> ImageOnlyQwen2VLProcessor:
    """The ``processor/`` component of a checkpoint (a local folder or a Hugging Face id)."""
    local = Path(source) / "processor"
    if local.is_dir():
        return ImageOnlyQwen2VLProcessor.from_pretrained(str(local))
    return ImageOnlyQwen2VLProcessor.from_pretrained(
        source, subfolder="processor", cache_dir=cache_dir
    )


def save_processor(processor: ImageOnlyQwen2VLProcessor, out_dir: Path) -> None:
    """Save under ``out_dir`` with the stock class name in ``processor_config.json``."""
    processor.save_pretrained(str(out_dir))
    config_file = out_dir / "processor_config.json"
    if config_file.is_file():
        config = json.loads(config_file.read_text())
        config["processor_class"] = STOCK_PROCESSOR_CLASS
        config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@contextlib.contextmanager
def edit_image_sizes(condition_area: int | None, vae_area: int | None) -> Iterator[None]:
    """Run the edit pipeline with other condition / VAE image areas (pixels), then restore.

    ``None`` keeps diffusers' value. The lock makes two generators in one process (tests) take
    turns; an engine has one GPU thread per generator, so it never waits in practice.
    """
    if condition_area is None and vae_area is None:
        yield
        return
    from diffusers.pipelines.qwenimage import pipeline_qwenimage_edit_plus as module

    with _SIZES_LOCK:
        saved = (module.CONDITION_IMAGE_SIZE, module.VAE_IMAGE_SIZE)
        if condition_area is not None:
            module.CONDITION_IMAGE_SIZE = condition_area
        if vae_area is not None:
            module.VAE_IMAGE_SIZE = vae_area
        try:
            yield
        finally:
            module.CONDITION_IMAGE_SIZE, module.VAE_IMAGE_SIZE = saved
