"""IMAGINE_GPUS on two real GPUs with the tiny model: the shipped start-up path (rank 0 starts
rank 1 itself, NCCL, fast mode as Ulysses in CUDA graphs). Skipped without two CUDA GPUs; run
on the lent two-GPU machine with ``python3 -m pytest tests/engine/test_parallel_gpu.py``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.contract import JobRequest, Mode
from engine.settings import EngineSettings

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"
)


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


def request(mode: Mode, prompt: str = "a red fox in the snow") -> JobRequest:
    return JobRequest(job_id=f"gpu-{mode}", user_id=1, prompt=prompt, seed=5, mode=mode)


def test_two_gpus_make_the_one_gpu_images(tiny_model_dir: Path) -> None:
    from engine import parallel
    from engine.pipeline import ImageGenerator

    settings = EngineSettings(model=str(tiny_model_dir), max_side=64, warmup=False, device="cuda:0")
    one = ImageGenerator.load(settings)
    modes = (Mode.STANDARD, Mode.FAST)
    expected = {mode: pixels(one.generate(request(mode)).image.png) for mode in modes}
    del one
    torch.cuda.empty_cache()

    two = parallel.load(settings.model_copy(update={"gpus": "0,1"}))
    try:
        assert two.info().parallel == "cfg + ulysses for fast"
        two.warmup()
        for mode in (*modes, Mode.FAST, Mode.STANDARD):  # fast twice: a graph replay
            image = pixels(two.generate(request(mode)).image.png)
            assert np.abs(image - expected[mode]).max() <= 8, mode
        longer = request(Mode.FAST, "a red fox in the snow at dawn, with pine trees behind")
        assert two.generate(longer).image.png  # a new prompt length: a new graph
        assert two.parallel_images >= 5 and not two.broken
    finally:
        two.close()
