"""The parts of diffusers' pipelines and models the engine touches, written down as Protocols.

Why not diffusers' own classes: to a type checker ``from diffusers import QwenImagePipeline`` is
the untyped placeholder diffusers keeps for installs without torch (its ``__init__`` imports the
dummy objects under ``TYPE_CHECKING``), which is why the engine imports diffusers' classes from
the modules that define them. Even those register a pipeline's modules at run time, so
``pipe.transformer`` has no declared type, and their ``@register_to_config`` constructors lose
their annotations. The engine also rewires the transformer itself (``engine.cudagraph`` and
``engine.parallel`` replace its ``forward``). So each Protocol names only what the engine uses:
a typo or a wrong argument is caught without claiming more about diffusers than the engine
relies on, and a test's fake needs only these members. Loaded objects take these types where
they are loaded (``engine.loader``, ``engine.edit.generator``). Nothing here runs torch or
diffusers code at import.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    import torch
    from diffusers.models.modeling_outputs import Transformer2DModelOutput
    from PIL import Image
    from torch import nn

# What a transformer forward returns: the output object, or (with ``return_dict=False``) a tuple
# whose first item is the prediction.
TransformerOutput: TypeAlias = "Transformer2DModelOutput | tuple[torch.Tensor, ...]"
# A transformer's ``forward``, or what the engine installs in its place.
Forward: TypeAlias = Callable[..., TransformerOutput]
# ``encode_prompt``'s answer: the prompt embeddings and their mask.
EncodedPrompt: TypeAlias = tuple["torch.Tensor", "torch.Tensor | None"]


class Scheduler(Protocol):
    """A flow-matching scheduler (``FlowMatchEulerDiscreteScheduler``)."""

    @property
    def config(self) -> Mapping[str, object]: ...

    @property
    def sigmas(self) -> torch.Tensor: ...

    @property
    def step_index(self) -> int | None: ...

    @classmethod
    def from_config(cls, config: Mapping[str, object]) -> Scheduler: ...


class TransformerConfig(Protocol):
    """The transformer config fields the engine reads (diffusers' config allows attribute
    access)."""

    @property
    def in_channels(self) -> int: ...

    @property
    def joint_attention_dim(self) -> int: ...

    @property
    def num_attention_heads(self) -> int: ...

    @property
    def attention_head_dim(self) -> int: ...


class Transformer(Protocol):
    """``QwenImageTransformer2DModel``: an ``nn.Module`` with the methods diffusers adds."""

    forward: Forward

    @property
    def config(self) -> TransformerConfig: ...

    @property
    def transformer_blocks(self) -> nn.ModuleList: ...

    @property
    def proj_out(self) -> nn.Linear: ...

    def __call__(self, *args: object, **kwargs: object) -> TransformerOutput: ...

    def modules(self) -> Iterator[nn.Module]: ...

    def named_modules(self) -> Iterator[tuple[str, nn.Module]]: ...

    def parameters(self) -> Iterator[nn.Parameter]: ...

    def buffers(self) -> Iterator[torch.Tensor]: ...

    def to(self, device: torch.device) -> object: ...

    def set_attention_backend(self, backend: str) -> None: ...

    def compile_repeated_blocks(self, *, fullgraph: bool, dynamic: bool, backend: str) -> None: ...

    def enable_parallelism(self, *, config: object) -> None: ...

    def unload_lora(self) -> None: ...

    @property
    def _parallel_config(self) -> object: ...  # set by enable_parallelism


class VaeConfig(Protocol):
    @property
    def latents_mean(self) -> Sequence[float]: ...

    @property
    def latents_std(self) -> Sequence[float]: ...


class Vae(Protocol):
    """``AutoencoderKLQwenImage``: what previews decode with and ``vae-2d`` rewires."""

    @property
    def config(self) -> VaeConfig: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def decode(self, z: torch.Tensor, return_dict: Literal[False]) -> tuple[torch.Tensor]: ...

    def modules(self) -> Iterator[nn.Module]: ...


class Tokenizer(Protocol):
    def __call__(self, text: str) -> Mapping[str, Sequence[int]]: ...


class PipelineOutput(Protocol):
    @property
    def images(self) -> Sequence[Image.Image]: ...


class Pipeline(Protocol):
    """A Qwen-Image pipeline: text-to-image, its img2img view, or the edit pipeline."""

    scheduler: Scheduler  # fast mode swaps it
    encode_prompt: Callable[..., EncodedPrompt]  # engine.optimize memoises it
    _interrupt: bool  # diffusers skips the remaining steps when it is set

    @property
    def transformer(self) -> Transformer: ...

    @property
    def vae(self) -> Vae: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def vae_scale_factor(self) -> int: ...

    def __call__(self, **kwargs: object) -> PipelineOutput: ...

    def _unpack_latents(
        self, latents: torch.Tensor, height: int, width: int, vae_scale_factor: int
    ) -> torch.Tensor: ...

    def load_lora_weights(
        self, source: str, *, weight_name: str | None, adapter_name: str
    ) -> None: ...

    def enable_lora(self) -> None: ...

    def disable_lora(self) -> None: ...

    def set_adapters(self, adapter_names: list[str], *, adapter_weights: list[float]) -> None: ...

    def set_progress_bar_config(self, *, disable: bool) -> None: ...

    def to(self, device: torch.device) -> object: ...

    def enable_model_cpu_offload(self, *, device: torch.device) -> None: ...

    def enable_sequential_cpu_offload(self, *, device: torch.device) -> None: ...
