"""IMAGINE_GPUS through the in-process engine: the queue sees one engine (``engine.parallel``).

Its own module: a process holds one default process group, and ``test_parallel``'s two ranks
keep theirs for that whole module.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from engine import parallel
from engine.contract import JobRequest, Mode
from engine.generators import Generators
from engine.pipeline import ImageGenerator
from engine.settings import EngineSettings


def request(**overrides: object) -> JobRequest:
    fields: dict[str, object] = {"job_id": "q1", "user_id": 1, "prompt": "a red fox", "seed": 21}
    fields.update(overrides)
    return JobRequest(**fields)  # type: ignore[arg-type]


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


async def test_the_local_engine_runs_each_image_across_imagine_gpus(
    generator: ImageGenerator, tiny_settings: EngineSettings
) -> None:
    """IMAGINE_GPUS=0,1 (here on the CPU): the queue sees one engine; the image is the same."""
    from engine.queue import LocalEngine

    local = LocalEngine(tiny_settings.model_copy(update={"device": "cpu", "gpus": "0,1"}))
    await local.start()
    await local.loaded()  # start() returns at once; the model loads on the GPU thread
    assert isinstance(local._generator, Generators)
    facade = local._generator.main
    try:
        assert isinstance(facade, parallel.ParallelGenerator)
        handle = await local.submit(request(job_id="le1", mode=Mode.STANDARD))
        result = await handle.result()
        expected = generator.generate(request(mode=Mode.STANDARD))
        np.testing.assert_array_equal(pixels(result.image.png), pixels(expected.image.png))
        assert facade.parallel_images >= 1
    finally:
        await local.close()
        facade.close()
