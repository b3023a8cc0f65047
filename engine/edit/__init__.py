"""Image editing (/edit) with Qwen-Image-Edit: the generator, the weight-sharing check, the
transformer swap and the processor. See ``engine.edit.generator`` for the call it makes."""

from engine.edit.generator import EditGenerator, EditUnavailable
from engine.edit.images import edit_output_size
from engine.edit.sharing import same_weights
from engine.edit.swap import TransformerSwap, choose_residency, forget_captured_graphs

__all__ = [
    "EditGenerator",
    "EditUnavailable",
    "TransformerSwap",
    "choose_residency",
    "edit_output_size",
    "forget_captured_graphs",
    "same_weights",
]
