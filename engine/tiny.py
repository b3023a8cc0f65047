"""Build a tiny random Qwen-Image pipeline on disk, in real diffusers format, with no download.

Tests, CI and anyone without a GPU load it through exactly the same ``from_pretrained`` code
path as ``Qwen/Qwen-Image``: same classes, same scheduler, a Qwen2.5-VL text encoder and a
byte-level BPE tokenizer (trained here on a few strings, with Qwen's chat special tokens). The
images are noise, but every shape, step and callback is the real one.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

if TYPE_CHECKING:
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel

logger = logging.getLogger(__name__)

# Marks a directory as a tiny model; the engine then defaults to small output sizes.
TINY_MARKER = "imagine_tiny.json"
TINY_MAX_SIDE = 256
TINY_LORA_DIR = "lightning"
# Qwen/Qwen-Image's scheduler_config.json: the tiny model and the GPU benchmark use the real one.
QWEN_IMAGE_SCHEDULER: dict[str, object] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}
TINY_LORA_FILE = "tiny-lightning.safetensors"
# The linears the Lightning LoRA files adapt in every transformer block.
LORA_TARGETS = (
    "attn.to_q",
    "attn.to_k",
    "attn.to_v",
    "attn.to_out.0",
    "attn.add_q_proj",
    "attn.add_k_proj",
    "attn.add_v_proj",
    "attn.to_add_out",
    "img_mlp.net.0.proj",
    "img_mlp.net.2",
    "txt_mlp.net.0.proj",
    "txt_mlp.net.2",
    "img_mod.1",
    "txt_mod.1",
)

_CORPUS = [
    "a red fox in the snow",
    "a watercolor painting of a lighthouse at dusk",
    "portrait of an astronaut, cinematic lighting",
    "pixel art castle on a hill, sunset",
    "Describe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:",
    "system user assistant",
    "photorealistic, anime, digital art, oil painting, 3d render, ultra HD, 4K",
    "0123456789 the quick brown fox jumps over the lazy dog",
]
# Qwen's chat tokens, then its vision tokens: the edit pipeline's processor expands
# <|image_pad|> into one token per merged image patch, and the text encoder's config names them.
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_VISION_SPECIAL = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]


def _train_tokenizer(out_dir: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=_SPECIAL + _VISION_SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    with tempfile.TemporaryDirectory() as tmp:
        vocab_file, merges_file = tok.model.save(tmp)
        # transformers annotates ``merges`` as strings and ``unk_token`` as always set: its BPE
        # takes (left, right) pairs too, and Qwen's tokenizer has no unknown token.
        try:  # transformers 5: the tokenizer takes the vocabulary and merges themselves
            vocab = json.loads(Path(vocab_file).read_text())
            merges = [
                tuple(line.split(" "))
                for line in Path(merges_file).read_text().splitlines()
                if line and not line.startswith("#version")
            ]
            qwen_tok = Qwen2Tokenizer(
                vocab=vocab,
                merges=merges,  # type: ignore[arg-type]
                unk_token=None,  # type: ignore[arg-type]
                bos_token=None,
                eos_token="<|im_end|>",
                pad_token="<|endoftext|>",
            )
        except TypeError:  # transformers 4: file paths
            qwen_tok = Qwen2Tokenizer(
                vocab_file=vocab_file,
                merges_file=merges_file,
                unk_token=None,  # type: ignore[arg-type]
                bos_token=None,
                eos_token="<|im_end|>",
                pad_token="<|endoftext|>",
            )
        qwen_tok.add_special_tokens({"additional_special_tokens": _SPECIAL[1:] + _VISION_SPECIAL})
        qwen_tok.model_max_length = 2048
        qwen_tok.save_pretrained(out_dir)


TINY_TEXT_HIDDEN = 32


def tiny_transformer(**overrides: object) -> QwenImageTransformer2DModel:
    """A random ``QwenImageTransformer2DModel`` with the real block structure, shrunk.

    The text width must match the tiny encoder's hidden size, and ``axes_dims_rope`` must sum
    to ``attention_head_dim``. The edit checkpoint passes ``zero_cond_t=True`` like
    Qwen-Image-Edit-2511's transformer config.
    """
    # The defining module: to a type checker ``diffusers.QwenImageTransformer2DModel`` is
    # diffusers' untyped placeholder (engine.diffusers_types says why).
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformer2DModel

    config: dict[str, object] = {
        "patch_size": 2,
        "in_channels": 64,
        "out_channels": 16,
        "num_layers": 2,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": TINY_TEXT_HIDDEN,
        "guidance_embeds": False,
        "axes_dims_rope": (8, 4, 4),
    }
    config.update(overrides)
    model: QwenImageTransformer2DModel = QwenImageTransformer2DModel(**config)
    return model


def build_tiny_pipeline(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``QwenImagePipeline`` to ``out_dir`` and return the path."""
    import torch
    from diffusers.models.autoencoders.autoencoder_kl_qwenimage import AutoencoderKLQwenImage
    from diffusers.pipelines.qwenimage.pipeline_qwenimage import QwenImagePipeline
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import (
        FlowMatchEulerDiscreteScheduler,
    )
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2Tokenizer,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok_dir = out / "tokenizer"
    _train_tokenizer(tok_dir)
    tokenizer = Qwen2Tokenizer.from_pretrained(tok_dir)
    vocab = len(tokenizer)

    def token_id(token: str) -> int:
        found = tokenizer.convert_tokens_to_ids(token)
        if not isinstance(found, int):  # one token in, one id out
            raise TypeError(f"no single id for {token!r}")
        return found

    torch.manual_seed(seed)
    hidden = TINY_TEXT_HIDDEN
    transformer = tiny_transformer()
    # 16 latent channels and an 8x spatial factor, like the real VAE, at a fraction of the width.
    vae = AutoencoderKLQwenImage(
        base_dim=16,
        z_dim=16,
        dim_mult=[1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 16,
        latents_std=[1.0] * 16,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(**QWEN_IMAGE_SCHEDULER)
    # The flat keys after vision_config are stored on the config as they are; the config's
    # dataclass signature does not list them.
    config = Qwen2_5_VLConfig(  # type: ignore[call-arg]
        text_config={
            "hidden_size": hidden,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "rope_scaling": {"mrope_section": [2, 3, 3], "rope_type": "default", "type": "default"},
            "rope_theta": 1000000.0,
            "vocab_size": vocab,
            "max_position_embeddings": 2048,
            "bos_token_id": token_id("<|im_start|>"),
            "eos_token_id": token_id("<|im_end|>"),
            "pad_token_id": tokenizer.pad_token_id,
        },
        vision_config={
            "depth": 1,
            "hidden_size": 16,
            "intermediate_size": 16,
            "num_heads": 2,
            "out_hidden_size": hidden,
        },
        hidden_size=hidden,
        vocab_size=vocab,
        vision_start_token_id=token_id("<|vision_start|>"),
        vision_end_token_id=token_id("<|vision_end|>"),
        vision_token_id=token_id("<|vision_start|>"),
        image_token_id=token_id("<|image_pad|>"),
        video_token_id=token_id("<|video_pad|>"),
        bos_token_id=token_id("<|im_start|>"),
        eos_token_id=token_id("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(config)
    text_encoder.eval()  # type: ignore[no-untyped-call]  # transformers leaves eval() unannotated
    pipe = QwenImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
    )
    pipe.save_pretrained(out)
    write_random_lora(transformer, out / TINY_LORA_DIR / TINY_LORA_FILE, rank=4, seed=seed)
    (out / TINY_MARKER).write_text(
        json.dumps({"tiny": True, "max_side": TINY_MAX_SIDE, "seed": seed}, indent=2) + "\n"
    )
    logger.info("wrote tiny random Qwen-Image pipeline to %s", out)
    return out


def write_random_lora(
    transformer: QwenImageTransformer2DModel, path: str | Path, *, rank: int, seed: int = 0
) -> Path:
    """A random LoRA in the Lightning files' layout (``lora_down``/``lora_up``/``alpha`` per
    block linear), so fast mode loads through the same ``load_lora_weights`` path as the real
    file. Works for the tiny and the full-size transformer (the GPU benchmark uses it)."""
    import torch
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(seed)
    tensors: dict[str, torch.Tensor] = {}
    modules = dict(transformer.named_modules())
    for index in range(len(transformer.transformer_blocks)):
        for target in LORA_TARGETS:
            name = f"transformer_blocks.{index}.{target}"
            linear = modules[name]
            if not isinstance(linear, torch.nn.Linear):
                raise TypeError(f"{name} is not a linear layer")
            down = torch.randn(rank, linear.in_features, generator=generator) * 0.01
            up = torch.randn(linear.out_features, rank, generator=generator) * 0.01
            tensors[f"{name}.lora_down.weight"] = down.to(torch.bfloat16)
            tensors[f"{name}.lora_up.weight"] = up.to(torch.bfloat16)
            tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    target_path = Path(path)
    target_path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(target_path))
    return target_path


class TinyMarker(TypedDict, total=False):
    """What the marker file holds (the edit build adds its image areas)."""

    tiny: bool
    edit: bool
    max_side: int
    seed: int
    edit_condition_area: int
    edit_vae_area: int


def tiny_defaults(model_path: str | Path) -> TinyMarker | None:
    """The tiny marker's contents when ``model_path`` is a tiny model folder, else None."""
    marker = Path(model_path) / TINY_MARKER
    if not marker.is_file():
        return None
    contents: TinyMarker = json.loads(marker.read_text())  # written by the builders below
    return contents


# The tiny edit checkpoint: its transformer comes from another seed, everything else is the
# text-to-image checkpoint's (same code, same seed, so byte-identical files).
TINY_EDIT_SEED_OFFSET = 1000
# Image areas the tiny edit model runs at (diffusers' module constants are 384² and 1024²; see
# engine.edit.processor) and the tiny vision tower's pixel bounds (a 56² image is 16 patches of
# 14², merged 2×2 into 4 vision tokens).
TINY_EDIT_CONDITION_AREA = 64 * 64
TINY_EDIT_VAE_AREA = 64 * 64
TINY_VISION_PIXELS = (28 * 28, 56 * 56)


def build_tiny_edit_pipeline(out_dir: str | Path, seed: int = 0) -> Path:
    """Write a tiny random ``QwenImageEditPlusPipeline`` to ``out_dir`` and return the path.

    Real diffusers format, loaded by the same ``from_pretrained`` code as
    ``Qwen/Qwen-Image-Edit-2511``: a ``processor/`` folder (the tokenizer plus a
    ``Qwen2VLImageProcessor``, assembled offline) feeds the tiny Qwen2.5-VL encoder's vision
    tower. ``text_encoder/``, ``vae/``, ``tokenizer/`` and ``scheduler/`` are written by
    ``build_tiny_pipeline(seed)`` itself, so they are byte-identical to a text-to-image build of
    the same seed (the engine then shares those modules); the transformer differs (another seed,
    ``zero_cond_t`` like 2511's).
    """
    import torch
    from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

    from engine.edit.processor import (
        STOCK_PROCESSOR_CLASS,
        ImageOnlyQwen2VLProcessor,
        save_processor,
    )

    out = build_tiny_pipeline(out_dir, seed=seed)
    torch.manual_seed(seed + TINY_EDIT_SEED_OFFSET)
    transformer = tiny_transformer(zero_cond_t=True)
    shutil.rmtree(out / "transformer")
    transformer.save_pretrained(out / "transformer")
    tokenizer = AutoTokenizer.from_pretrained(out / "tokenizer")
    min_pixels, max_pixels = TINY_VISION_PIXELS
    image_processor = Qwen2VLImageProcessorPil(min_pixels=min_pixels, max_pixels=max_pixels)
    processor = ImageOnlyQwen2VLProcessor(image_processor=image_processor, tokenizer=tokenizer)
    save_processor(processor, out / "processor")
    index_file = out / "model_index.json"
    index = json.loads(index_file.read_text())
    index["_class_name"] = "QwenImageEditPlusPipeline"
    index["processor"] = ["transformers", STOCK_PROCESSOR_CLASS]
    index_file.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    lora = out / TINY_LORA_DIR / TINY_LORA_FILE
    write_random_lora(transformer, lora, rank=4, seed=seed + TINY_EDIT_SEED_OFFSET)
    marker: TinyMarker = {
        "tiny": True,
        "edit": True,
        "max_side": TINY_MAX_SIDE,
        "seed": seed,
        "edit_condition_area": TINY_EDIT_CONDITION_AREA,
        "edit_vae_area": TINY_EDIT_VAE_AREA,
    }
    (out / TINY_MARKER).write_text(json.dumps(marker, indent=2) + "\n")
    logger.info("wrote tiny random Qwen-Image-Edit pipeline to %s", out)
    return out
