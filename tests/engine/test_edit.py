"""/edit's engine side on the tiny QwenImageEditPlusPipeline: one and three input images, the
text encoder and VAE shared with text-to-image only when their files are the same weights, true
CFG, fast mode and its fallback, the transformer swap's bookkeeping, the job contract."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from engine.contract import (
    MAX_EDIT_IMAGES,
    TASK_EDIT,
    FailureKind,
    JobFailed,
    JobRequest,
    Mode,
)
from engine.edit import EditGenerator, EditUnavailable, TransformerSwap, choose_residency
from engine.edit import generator as edit_module
from engine.edit.sharing import file_sha256, same_weights
from engine.pipeline import ImageGenerator
from engine.presets import public_model_name
from engine.redis.wire import JobMessage, WireError, parse_job
from engine.settings import EngineSettings
from engine.tiny import TINY_LORA_DIR, TINY_LORA_FILE

STEPS = 2  # the real 40 steps cost ~10 s on a CPU; the step count is a setting of the plan


@pytest.fixture(scope="module")
def edit_dir(tiny_edit_dir: Path) -> Path:
    return tiny_edit_dir  # built once per session (tests/conftest.py)


def edit_settings(base: EngineSettings, edit_dir: Path, **overrides: Any) -> EngineSettings:
    values: dict[str, Any] = {
        "edit_model": str(edit_dir),
        "edit_lightning_lora": str(edit_dir / TINY_LORA_DIR),
        "edit_lightning_weight_name": TINY_LORA_FILE,
    }
    values.update(overrides)
    return base.model_copy(update=values)


@pytest.fixture(scope="module")
def editor(generator: ImageGenerator, tiny_settings: EngineSettings, edit_dir: Path) -> Any:
    return EditGenerator.load(generator, edit_settings(tiny_settings, edit_dir))


@pytest.fixture(autouse=True)
def few_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(edit_module.EDIT_STEPS, Mode.STANDARD, STEPS)
    monkeypatch.setitem(edit_module.EDIT_STEPS, Mode.QUALITY, STEPS)


def png(size: tuple[int, int], color: tuple[int, int, int]) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def edit_request(*images: bytes, **fields: Any) -> JobRequest:
    values: dict[str, Any] = {"job_id": "edit-1", "user_id": 1, "prompt": "make it blue"}
    values.update(fields)
    return JobRequest(task=TASK_EDIT, images=images, seed=3, **values)


class ForwardCounter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self._handle = module.register_forward_hook(self._hook)

    def _hook(self, *_: object) -> None:
        self.calls += 1

    def close(self) -> None:
        self._handle.remove()


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ------------------------------------------------------------------- the checkpoint
def test_tiny_edit_checkpoint_has_the_text_to_image_text_encoder_and_vae_files(
    tiny_model_dir: Path, edit_dir: Path
) -> None:
    for component in ("text_encoder", "vae"):
        for file in (tiny_model_dir / component).iterdir():
            assert sha(file) == sha(edit_dir / component / file.name), file
    weights = "transformer/diffusion_pytorch_model.safetensors"
    assert sha(tiny_model_dir / weights) != sha(edit_dir / weights)
    index = json.loads((edit_dir / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline"
    assert index["processor"] == ["transformers", "Qwen2VLProcessor"]
    config = json.loads((edit_dir / "transformer" / "config.json").read_text())
    assert config["zero_cond_t"] is True  # as in Qwen-Image-Edit-2511's transformer


def test_cli_writes_the_tiny_edit_pipeline(tmp_path: Path) -> None:
    from engine.__main__ import main

    assert main(["tiny", str(tmp_path / "edit"), "--edit"]) == 0
    index = json.loads((tmp_path / "edit" / "model_index.json").read_text())
    assert index["_class_name"] == "QwenImageEditPlusPipeline"


# ------------------------------------------------------------------- sharing
def test_edit_pipeline_uses_the_text_to_image_text_encoder_and_vae_objects(
    editor: EditGenerator, generator: ImageGenerator
) -> None:
    assert editor.pipe.text_encoder is generator.pipe.text_encoder
    assert editor.pipe.vae is generator.pipe.vae
    assert editor.pipe.transformer is not generator.pipe.transformer
    assert editor.shared["text_encoder"].startswith("shared: identical weights")


def test_one_changed_byte_in_the_vae_file_means_a_separate_vae(
    generator: ImageGenerator,
    tiny_settings: EngineSettings,
    edit_dir: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    altered = tmp_path / "edit"
    shutil.copytree(edit_dir, altered)
    weights = altered / "vae" / "diffusion_pytorch_model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x01  # inside the last tensor: same size, same header, other weights
    weights.write_bytes(bytes(data))

    with caplog.at_level(logging.INFO, logger="engine.edit"):
        other = EditGenerator.load(generator, edit_settings(tiny_settings, altered))
    assert other.pipe.vae is not generator.pipe.vae
    assert other.pipe.text_encoder is generator.pipe.text_encoder
    assert other.shared["vae"] == "separate copy: weight files differ (SHA-256)"
    assert "edit vae: separate copy" in caplog.text


def test_same_weights_reads_hugging_face_cache_blob_names(tmp_path: Path) -> None:
    """In a hub cache each snapshot file links to blobs/<sha256>: equal blobs, equal weights."""
    weights, config = b"\x00" * 64, json.dumps({"z_dim": 16, "_diffusers_version": "x"})

    def repo(name: str, content: bytes, version: str) -> None:
        root = tmp_path / "cache" / f"models--org--{name}"
        snapshot = root / "snapshots" / "abc123" / "vae"
        snapshot.mkdir(parents=True)
        (root / "blobs").mkdir()
        (root / "refs").mkdir()
        (root / "refs" / "main").write_text("abc123")
        for file, blob_content in (
            ("diffusion_pytorch_model.safetensors", content),
            ("config.json", config.replace('"x"', f'"{version}"').encode()),
        ):
            blob = root / "blobs" / hashlib.sha256(blob_content).hexdigest()
            blob.write_bytes(blob_content)
            os.symlink(os.path.relpath(blob, snapshot), snapshot / file)

    repo("t2i", weights, "0.35")
    repo("edit", weights, "0.36")  # another diffusers version wrote it: still the same weights
    repo("other", b"\x01" * 64, "0.35")
    cache = str(tmp_path / "cache")
    assert same_weights("org/t2i", "org/edit", "vae", cache)[0] is True
    assert same_weights("org/t2i", "org/other", "vae", cache) == (
        False,
        "weight files differ (SHA-256)",
    )
    assert same_weights("org/t2i", "org/missing", "vae", cache)[0] is False
    # The blob's name is the content hash: a 16 GB file is never read to learn it.
    blob = tmp_path / "blobs" / ("ab" * 32)
    blob.parent.mkdir()
    blob.write_bytes(b"not hashed")
    os.symlink(blob, tmp_path / "model.safetensors")
    assert file_sha256(tmp_path / "model.safetensors") == "ab" * 32


# ------------------------------------------------------------------- editing
def test_one_image_edit_takes_the_first_image_ratio_and_names_its_input(
    editor: EditGenerator,
) -> None:
    source = png((96, 64), (200, 30, 30))
    result = editor.generate(edit_request(source))

    assert (result.image.width, result.image.height) == (64, 48)  # 3:2 like the input, max_side 64
    image = Image.open(io.BytesIO(result.image.png))
    assert image.size == (64, 48)
    assert image.text["instruction"] == "make it blue"  # type: ignore[attr-defined]
    assert image.text["input_images"] == hashlib.sha256(source).hexdigest()  # type: ignore[attr-defined]
    assert (result.steps, result.true_cfg_scale, result.negative_prompt) == (STEPS, 4.0, " ")
    assert result.prompt == "make it blue" and result.aspect == "4:3"


def test_three_images_edit_uses_the_first_image_ratio_not_the_last(
    editor: EditGenerator,
) -> None:
    images = (png((64, 96), (255, 0, 0)), png((80, 80), (0, 255, 0)), png((128, 64), (0, 0, 255)))
    result = editor.generate(edit_request(*images))

    assert (result.image.width, result.image.height) == (48, 64)  # portrait like the first image
    text = Image.open(io.BytesIO(result.image.png)).text  # type: ignore[attr-defined]
    assert text["input_images"].split(",") == [hashlib.sha256(i).hexdigest() for i in images]


def test_true_cfg_runs_two_forwards_per_step_with_the_space_negative(
    editor: EditGenerator, monkeypatch: pytest.MonkeyPatch
) -> None:
    prompts: list[object] = []
    original = editor.pipe.encode_prompt

    def spy(*args: Any, **kwargs: Any) -> Any:
        prompts.append(kwargs.get("prompt"))
        return original(*args, **kwargs)

    monkeypatch.setattr(editor.pipe, "encode_prompt", spy)
    counter = ForwardCounter(editor.pipe.transformer)
    try:
        editor.generate(edit_request(png((64, 64), (10, 10, 10))))
    finally:
        counter.close()
    assert counter.calls == 2 * STEPS
    assert prompts == ["make it blue", " "]


def test_fast_edit_runs_the_lightning_lora_without_cfg(editor: EditGenerator) -> None:
    counter = ForwardCounter(editor.pipe.transformer)
    try:
        result = editor.generate(edit_request(png((64, 64), (1, 2, 3)), mode=Mode.FAST))
    finally:
        counter.close()
    assert editor.fast_available
    assert (result.mode, result.steps, result.true_cfg_scale) == (Mode.FAST, 4, 1.0)
    assert counter.calls == 4
    assert result.note is None


def test_fast_edit_without_a_lora_falls_back_to_the_standard_call(
    generator: ImageGenerator,
    tiny_settings: EngineSettings,
    edit_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="engine.edit"):
        plain = EditGenerator.load(
            generator, edit_settings(tiny_settings, edit_dir, edit_lightning_lora="")
        )
    assert "fast edits unavailable" in caplog.text
    result = plain.generate(edit_request(png((64, 64), (1, 2, 3)), mode=Mode.FAST))
    assert (result.mode, result.requested_mode) == (Mode.STANDARD, Mode.FAST)
    assert result.true_cfg_scale == 4.0
    assert result.note == "Fast edits are unavailable on this server, so the standard edit ran."


def test_unreadable_input_is_refused_before_any_gpu_work(editor: EditGenerator) -> None:
    counter = ForwardCounter(editor.pipe.transformer)
    try:
        with pytest.raises(JobFailed) as failed:
            editor.generate(edit_request(b"\x89PNG\r\n\x1a\nnot really"))
    finally:
        counter.close()
    assert failed.value.kind == FailureKind.INVALID
    assert failed.value.user_message == "An edit image could not be read."
    assert counter.calls == 0


def test_editing_off_says_so(generator: ImageGenerator, tiny_settings: EngineSettings) -> None:
    with pytest.raises(EditUnavailable, match="Image editing is turned off"):
        EditGenerator.load(generator, tiny_settings.model_copy(update={"edit_model": ""}))


# ------------------------------------------------------------------- residency
def test_on_a_cpu_both_transformers_are_resident(
    editor: EditGenerator, generator: ImageGenerator
) -> None:
    assert editor.swap is not None
    assert editor.swap.resident() == (generator.model_name, editor.model_name)
    assert editor.resident_models() == (public_model_name(editor.model_name),)
    assert generator.resident_models() == (public_model_name(generator.model_name),)
    assert editor.swap.activate(editor.model_name) == 0.0  # nothing moves


def test_residency_choice_follows_free_gpu_memory() -> None:
    cuda, gib = torch.device("cuda"), 2**30
    transformer = 41 * gib
    assert choose_residency(cuda, 80 * gib, transformer)[0] is True  # H200 after Qwen-Image
    assert choose_residency(cuda, 22 * gib, transformer)[0] is False  # H100 80 GB
    assert choose_residency(torch.device("cpu"), None, transformer)[0] is True


def test_swap_moves_the_idle_transformer_to_host_and_back() -> None:
    """On a CPU host and device are one memory: this checks the bookkeeping, that every
    parameter is replaced by its host copy and back with its values intact, and (only where
    CUDA exists) that the host copies are pinned."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    generate, edit = torch.nn.Linear(4, 4).to(device), torch.nn.Linear(4, 4)
    edit.register_buffer("scale", torch.ones(4))
    expected = {k: v.detach().clone().cpu() for k, v in edit.state_dict().items()}
    swap = TransformerSwap(device, keep_all=False)
    swap.add("t2i", generate, on_device=True)
    swap.add("edit", edit, on_device=False)
    assert swap.resident() == ("t2i",)
    weight = edit.weight

    swap.activate("edit")
    assert swap.resident() == ("edit",)
    assert generate.weight.data_ptr() in {t.data_ptr() for t in swap.host_tensors("t2i")}
    assert edit.weight is weight  # the Parameter object survives a swap
    assert edit.weight.device.type == device.type
    for key, value in edit.state_dict().items():
        assert torch.equal(value.cpu(), expected[key])
    if torch.cuda.is_available():
        assert all(t.is_pinned() for t in swap.host_tensors("t2i"))

    swap.activate("t2i")
    assert swap.resident() == ("t2i",) and swap.swaps == 2
    assert swap.activate("t2i") == 0.0  # already resident: nothing moves


# ------------------------------------------------------------------- the contract
def test_edit_images_travel_as_base64_and_an_old_bots_edit_reads_the_same() -> None:
    request = edit_request(b"first", b"second")
    message = JobMessage(request=request, submitted_at=1.0, dispatched_at=1.0, attempt=1)
    data = json.loads(message.dumps())
    assert data["request"]["images"] == ["Zmlyc3Q=", "c2Vjb25k"]
    assert data["request"]["task"] == "edit"
    assert parse_job((data,), {}).request == request
    # The same edit from a bot one version older: ``edit_images``, the task as ``needs``.
    old = {**data, "v": 1, "needs": "edit", "request": dict(data["request"])}
    old["request"]["edit_images"] = old["request"].pop("images")
    del old["request"]["task"]
    assert parse_job((old,), {}).request == request
    assert JobRequest(job_id="1", user_id=1, prompt="a fox").task == "generate"


def test_too_many_or_undecodable_edit_images_are_invalid() -> None:
    with pytest.raises(JobFailed, match=f"at most {MAX_EDIT_IMAGES} images"):
        edit_request(*([b"x"] * (MAX_EDIT_IMAGES + 1))).validate()
    message = JobMessage(request=edit_request(b"x"), submitted_at=1.0, dispatched_at=1.0, attempt=1)
    data = json.loads(message.dumps())
    data["request"]["images"] = ["%%%"]
    with pytest.raises(WireError):
        parse_job((data,), {})
