"""Settings, read from the environment (``IMAGINE_`` prefix) and ``.env``.

``ImagineBaseSettings`` carries the one configuration every settings class of the project shares
(bot, engine, Redis path), so a change to how settings are read is made once. No torch here: the
bot imports this module.
"""

from __future__ import annotations

import enum
import re
import sys
from pathlib import Path
from typing import Any, TypeVar

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from engine.contract import Mode
from engine.planning import WeightsSetting


class MemoryMode(enum.StrEnum):
    AUTO = "auto"
    RESIDENT = "resident"
    MODEL_OFFLOAD = "model_offload"
    SEQUENTIAL_OFFLOAD = "sequential_offload"
    # The transformer (and text encoder) stream block by block from pinned host memory.
    STREAMED = "streamed"


# The per-user safety ceiling of the engine. Members see their server's /limits max_queued
# (checked by the bot when it reserves the job); this only stops a runaway client or a server
# with "no limit" from filling the whole queue, so it sits well above any sensible server limit.
DEFAULT_QUEUED_CEILING_PER_USER = 25


class ImagineBaseSettings(BaseSettings):
    """The shared way settings are read: ``IMAGINE_`` variables, then ``.env``; unknown ones
    are ignored (one ``.env`` serves the bot, the engine and the workers)."""

    model_config = SettingsConfigDict(
        env_prefix="IMAGINE_", env_file=".env", extra="ignore", protected_namespaces=()
    )


class EngineSettings(ImagineBaseSettings):
    """Everything the GPU side needs; nothing Discord- or database-related."""

    # The field name works in code next to the environment aliases below.
    model_config = SettingsConfigDict(populate_by_name=True)

    model: str = Field(
        "Qwen/Qwen-Image", description="Hugging Face id or local path of the Qwen-Image pipeline"
    )
    device: str = Field("auto", description="auto, cuda, cuda:N or cpu")
    dtype: str = Field("auto", description="auto (bf16 on CUDA, float32 on CPU), bf16, fp16, fp32")
    memory_mode: MemoryMode = Field(
        MemoryMode.AUTO,
        description="auto: the memory planner decides per component (engine.planning); "
        "resident, streamed, model_offload or sequential_offload force one placement",
    )
    gpu_memory_gib: float | None = Field(
        None,
        gt=0,
        description="GiB of GPU memory the bot may plan for (a card shared with other "
        "programs); unset: the card's free memory at start",
    )
    weights: WeightsSetting = Field(
        WeightsSetting.AUTO,
        description="weight format: auto keeps bf16 wherever it fits and compacts (FP8, int8, "
        "4-bit) only what does not; bf16, fp8, int8 or int4 pins one (images differ slightly "
        "between formats for the same seed)",
    )
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
    edit_model: str = Field(
        "Qwen/Qwen-Image-Edit-2511",
        description="Hugging Face id or local path of the QwenImageEditPlusPipeline (/edit); "
        "empty turns editing off",
    )
    edit_lightning_lora: str = Field(
        "",
        description="repo id or local path of an edit Lightning LoRA for fast edits, e.g. "
        "lightx2v/Qwen-Image-Edit-2511-Lightning; empty: fast edits run the standard call",
    )
    edit_lightning_weight_name: str = Field(
        "Qwen-Image-Edit-2511-Lightning-4steps-V1.0-bf16.safetensors",
        description="file inside the edit LoRA repo/folder",
    )
    edit_lightning_steps: int = Field(4, ge=1, le=16)
    positive_magic: bool = Field(True, description="append the model card's quality suffix")
    max_sequence_length: int = Field(512, ge=16, le=1024)
    max_side: int | None = Field(
        None,
        description="cap the long side (tests / CPU dry runs); the aspect ratio stays exact",
    )
    job_timeout_s: float = Field(600.0, gt=0, description="per-job GPU deadline")
    queued_ceiling_per_user: int = Field(
        DEFAULT_QUEUED_CEILING_PER_USER,
        ge=1,
        # The old name still works, so an existing .env keeps its meaning.
        validation_alias=AliasChoices(
            "IMAGINE_QUEUED_CEILING_PER_USER", "IMAGINE_MAX_QUEUED_PER_USER"
        ),
        description="safety ceiling: jobs one user may have waiting or running in this engine; "
        "the limit members see is their server's /limits max_queued",
    )
    max_queue: int = Field(200, ge=1, description="jobs waiting at most, all users together")
    allow_cpu: bool = Field(
        False,
        description="allow the full model on a CPU (no service; a dry run uses the tiny model)",
    )
    compile: bool = Field(True, description="torch.compile the repeated transformer blocks")
    compile_cache_dir: Path | None = Field(None, description="persistent inductor cache")
    fp8: bool = Field(False, description="rowwise FP8 linears on Hopper (changes output slightly)")
    prefetch_weights: bool = Field(
        True,
        description="read the weight files ahead of the loader, several at a time, when they fit "
        "in free memory (a start after a reboot waits less on the disk)",
    )
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

    def __init__(self, **values: Any) -> None:
        # ``max_queued_per_user`` was this ceiling's name; callers that still pass it keep working.
        if "max_queued_per_user" in values:
            values.setdefault("queued_ceiling_per_user", values.pop("max_queued_per_user"))
        super().__init__(**values)


# ---------------------------------------------------------------------- errors at start-up
S = TypeVar("S", bound=BaseSettings)

# Field names whose values are secrets, or may hold one (a URL with a password).
_SECRET_NAME = re.compile(r"token|secret|password|passwd|key|url|dsn", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]*:)[^@\s]+@")


def describe_settings_error(exc: ValidationError) -> str:
    """What went wrong, by environment variable and message only, for a terminal or a log.

    pydantic's own text quotes each input (``input_value=...``) and, for a rule across fields,
    all of them: a piece of the Discord token or the Redis password would reach the screen and
    the logs. Here no input is printed, and any secret-looking input a rule's message quotes is
    blanked out.
    """
    lines = ["error: invalid settings (check .env and the environment):"]
    for error in exc.errors(include_url=False):
        secrets = _secret_inputs(error.get("loc", ()), error.get("input"))
        message = _scrub(str(error.get("msg", "invalid")), secrets)
        lines.append(f"  {_variable(error.get('loc', ()))}: {message}")
    return "\n".join(lines)


def load_settings(cls: type[S], **values: Any) -> S:
    """``cls(**values)``, or the error described as above on stderr and exit status 2: the one
    way every entry point (bot, worker, ``python -m engine``, ``python -m engine.remote``)
    starts from its settings."""
    try:
        return cls(**values)
    except ValidationError as exc:
        print(describe_settings_error(exc), file=sys.stderr)
        raise SystemExit(2) from None


def _variable(loc: tuple[int | str, ...]) -> str:
    """``("heartbeat_s",)`` -> ``IMAGINE_HEARTBEAT_S``; an alias is already the variable."""
    if not loc:
        return "settings"
    head, *rest = (str(part) for part in loc)
    prefix = str(ImagineBaseSettings.model_config.get("env_prefix", ""))
    name = head.upper() if head.upper().startswith(prefix) else prefix + head.upper()
    return ".".join([name, *rest])


def _secret_inputs(loc: tuple[int | str, ...], value: object) -> list[str]:
    """The inputs of secret-looking fields: those of a rule across fields, or the field's own."""
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if _SECRET_NAME.search(str(key)) and item is not None:
                secret = item.get_secret_value() if hasattr(item, "get_secret_value") else item
                found.append(str(secret))
    elif loc and _SECRET_NAME.search(str(loc[0])) and isinstance(value, str):
        found.append(value)
    return [secret for secret in found if len(secret) >= 3]


def _scrub(message: str, secrets: list[str]) -> str:
    """The message with each secret, and any password inside a URL, replaced by ``***``."""
    for secret in sorted(secrets, key=len, reverse=True):
        message = message.replace(secret, "***")
    return _URL_PASSWORD.sub(r"\1***@", message)
