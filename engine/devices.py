"""Where the models run, decided once at load: the device, the dtype and the memory mode
(resident, model offload or sequential offload, from the free GPU memory).

Apart from ``engine.pipeline``, which renders: these are pure decisions on settings and the
machine, testable without a model, and ``EngineUnavailable`` is the one refusal that the edit
generator, ``engine.parallel`` and the worker raise or catch as well.
"""

from __future__ import annotations

import torch

from engine.settings import MemoryMode

# Bytes of bf16 weights of the three real models, and what a 1328² CFG image needs on top.
RESIDENT_GIB = 57.0
ACTIVATIONS_GIB = 6.0
TRANSFORMER_GIB = 41.0


class EngineUnavailable(RuntimeError):
    """The configured model cannot be served on this machine; the message says what to do."""


def resolve_device(setting: str) -> torch.device:
    """``IMAGINE_DEVICE``: ``auto`` takes the GPU when there is one; asking for a GPU that is
    not there refuses at start instead of failing on the first image."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EngineUnavailable(f"IMAGINE_DEVICE={setting} but no CUDA GPU is usable here.")
    return device


def resolve_dtype(setting: str, device: torch.device) -> torch.dtype:
    """``IMAGINE_DTYPE``: ``auto`` is bf16 on a GPU (the weights' own dtype) and fp32 on a CPU;
    an unknown name refuses at start."""
    if setting == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    table = {
        "bf16": torch.bfloat16,
        "bfloat16": torch.bfloat16,
        "fp16": torch.float16,
        "float16": torch.float16,
        "fp32": torch.float32,
        "float32": torch.float32,
    }
    try:
        return table[setting.lower()]
    except KeyError:
        raise EngineUnavailable(f"unknown IMAGINE_DTYPE {setting!r}") from None


def choose_memory_mode(
    setting: MemoryMode, device: torch.device, free_gib: float | None
) -> tuple[MemoryMode, str]:
    """Keep everything resident whenever it fits: offloading made the same image ~8x slower."""
    if setting != MemoryMode.AUTO:
        return setting, "set by IMAGINE_MEMORY_MODE"
    if device.type != "cuda" or free_gib is None:
        return MemoryMode.RESIDENT, f"{device.type}: models stay in main memory"
    if free_gib >= RESIDENT_GIB + ACTIVATIONS_GIB:
        return (
            MemoryMode.RESIDENT,
            f"{free_gib:.0f} GiB free >= {RESIDENT_GIB + ACTIVATIONS_GIB:.0f}",
        )
    if free_gib >= TRANSFORMER_GIB + ACTIVATIONS_GIB:
        return MemoryMode.MODEL_OFFLOAD, f"{free_gib:.0f} GiB free: one model on the GPU at a time"
    return MemoryMode.SEQUENTIAL_OFFLOAD, f"{free_gib:.0f} GiB free: layer-by-layer offload (slow)"
