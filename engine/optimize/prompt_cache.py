"""``prompt-cache``: text-encoder outputs kept for recent prompts.

True CFG encodes the same neutral negative for every image, and rerolls/variations repeat the
prompt, so most encodings are repeats.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import torch

from engine.diffusers_types import EncodedPrompt, Pipeline

PROMPT_CACHE_SIZE = 32


class PromptCache:
    """Memoises ``pipe.encode_prompt`` for plain string prompts (least recently used first out).

    Encoding is deterministic and its outputs are never modified in place by the pipeline, so
    handing back the same tensors is exact. Pre-computed embeddings bypass the cache.
    """

    def __init__(self, encode: Callable[..., EncodedPrompt], size: int = PROMPT_CACHE_SIZE) -> None:
        self.encode = encode
        self.size = size
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[tuple[tuple[str, ...], int, int, str], EncodedPrompt] = (
            OrderedDict()
        )

    def __call__(
        self,
        prompt: str | list[str] | None = None,
        device: torch.device | None = None,
        num_images_per_prompt: int = 1,
        prompt_embeds: torch.Tensor | None = None,
        prompt_embeds_mask: torch.Tensor | None = None,
        max_sequence_length: int = 1024,
    ) -> EncodedPrompt:
        kwargs = {
            "prompt": prompt,
            "device": device,
            "num_images_per_prompt": num_images_per_prompt,
            "prompt_embeds": prompt_embeds,
            "prompt_embeds_mask": prompt_embeds_mask,
            "max_sequence_length": max_sequence_length,
        }
        if prompt_embeds is not None or prompt_embeds_mask is not None:
            return self.encode(**kwargs)
        texts = (prompt,) if isinstance(prompt, str) else tuple(prompt or ())
        if not texts or not all(isinstance(t, str) for t in texts):
            return self.encode(**kwargs)
        key = (texts, num_images_per_prompt, max_sequence_length, str(device))
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        value = self.encode(**kwargs)
        self._entries[key] = value
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)
        return value

    def clear(self) -> None:
        self._entries.clear()


def install_prompt_cache(pipe: Pipeline) -> PromptCache:
    existing = pipe.__dict__.get("encode_prompt")
    if isinstance(existing, PromptCache):
        return existing
    cache = PromptCache(pipe.encode_prompt)
    pipe.encode_prompt = cache
    return cache
