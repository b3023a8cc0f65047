"""GPU-side settings, read from the environment (``IMAGINE_`` prefix) and ``.env``."""

from __future__ import annotations

import enum
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.contract import Mode


class MemoryMode(enum.StrEnum):
    AUTO = "auto"
    RESIDENT = "resident"
    MODEL_OFFLOAD = "model_offload"
    SEQUENTIAL_OFFLOAD = "sequential_offload"


class EngineSettings(BaseSettings):
    """Everything the GPU side needs; nothing Discord- or database-related."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGINE_", env_file=".env", extra="ignore", protected_namespaces=()
    )

    model: str = Field(
        "Qwen/Qwen-Image", description="Hugging Face id or local path of the Qwen-Image pipeline"
    )
    device: str = Field("auto", description="auto, cuda, cuda:N or cpu")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, float32 on CPU), bf16, fp16, fp32")
    memory_mode: MemoryMode = MemoryMode.AUTO
    hf_cache_dir: Path | None = Field(None, description="Hugging Face cache (model weights)")
    default_mode: Mode = Mode.STANDARD
    lightning_lora: str = Field(
        "lightx2v/Qwen-Image-Lightning",
        description="repo id or local path of the Lightning LoRA used by fast mode",
    )
    lightning_weight_name: str = Field(
        "Qwen-Image-Lightning-8steps-V1.1.safetensors",
        description="file inside the LoRA repo/folder",
    )
    lightning_steps: int = Field(8, ge=1, le=16)
    positive_magic: bool = Field(True, description="append the model card's quality suffix")
    max_sequence_length: int = Field(512, ge=16, le=1024)
    max_side: int | None = Field(
        None,
        description="cap the long side (tests / CPU dry runs); the aspect ratio stays exact",
    )
    job_timeout_s: float = Field(600.0, gt=0, description="per-job GPU deadline")
    max_queued_per_user: int = Field(5, ge=1, description="engine-wide cap per user")
    max_queue: int = Field(200, ge=1, description="jobs waiting at most, all users together")
    allow_cpu: bool = Field(
        False,
        description="allow the full model on a CPU (no service; a dry run uses the tiny model)",
    )
    compile: bool = Field(True, description="torch.compile the repeated transformer blocks")
    compile_cache_dir: Path | None = Field(None, description="persistent inductor cache")
    fp8: bool = Field(False, description="rowwise FP8 linears on Hopper (changes output slightly)")
    gpus: str = Field(
        "",
        description="GPUs one image runs across, e.g. 0,1 (CFG-parallel, engine.parallel); "
        "empty: one GPU",
    )
    warmup: bool = Field(True, description="render one small image before taking jobs")
    previews: bool = Field(
        True, description="attach a small preview of the forming image to progress updates"
    )
    preview_interval_s: float = Field(
        1.5, ge=0, description="at most one preview this often (Discord edits are throttled too)"
    )
    test_step_delay_s: float = Field(
        0.0, ge=0, description="test only: extra sleep per denoising step (stands in for GPU time)"
    )
