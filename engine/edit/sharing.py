"""Are two checkpoints' components the same weights? Decided from their files, never assumed.

Qwen-Image and Qwen-Image-Edit-2511 both ship a Qwen2.5-VL text encoder (~16 GB) and a VAE; when
the files are identical the edit pipeline reuses the loaded modules instead of a second copy.
The check compares, per component folder, every weight file's SHA-256 and the ``config.json``
(minus bookkeeping keys such as versions and the dtype a checkpoint was saved in):

- a local folder: the file's content is hashed (sizes are compared first, so different weights
  cost no hashing);
- a Hugging Face cache snapshot: each file is a link to ``blobs/<sha256>`` (LFS files are stored
  under their content hash), so identical content is recognised from the link, without reading
  16 GB;
- a hub id whose weights are not downloaded yet: the hub's file metadata gives each LFS file's
  SHA-256, so nothing is downloaded to decide (and a shared component is never downloaded).

Anything that cannot be verified counts as different: a second copy costs memory, a wrong share
would silently change the images.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from pathlib import Path

logger = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
# Keys of a config.json that say how or when a file was written, not what the model is.
VOLATILE_CONFIG_KEYS = frozenset(
    {"_name_or_path", "_commit_hash", "transformers_version", "_diffusers_version", "torch_dtype"}
)
_SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")
_HASH_CHUNK = 16 * 2**20


@dataclasses.dataclass(frozen=True)
class Fingerprint:
    """What identifies one component: its weight files' SHA-256 and its normalised config."""

    weights: dict[str, str]
    config: dict[str, object] | None  # JSON, only compared


def _normalise_config(config: dict[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in config.items():
        if key in VOLATILE_CONFIG_KEYS or key == "dtype":
            continue
        out[key] = _normalise_config(value) if isinstance(value, dict) else value
    return out


def _read_config(path: Path) -> dict[str, object] | None:
    if not path.is_file():
        return None
    return _normalise_config(json.loads(path.read_text()))


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file: from the Hugging Face cache blob it links to, else by hashing."""
    real = Path(os.path.realpath(path))
    if real.parent.name == "blobs" and _SHA256_NAME.match(real.name):
        return real.name
    digest = hashlib.sha256()
    with real.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _weight_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES))


def local_fingerprint(folder: Path) -> Fingerprint | None:
    """The fingerprint of a component folder on disk, or None when it holds no weights."""
    files = _weight_files(folder)
    if not files:
        return None
    weights = {str(p.relative_to(folder)): file_sha256(p) for p in files}
    return Fingerprint(weights=weights, config=_read_config(folder / "config.json"))


def _local_folder(source: str, component: str, cache_dir: str | None) -> Path | None:
    """The component's folder on this machine: a local checkpoint, or a cached hub snapshot."""
    local = Path(source) / component
    if local.is_dir():
        return local
    if Path(source).exists():
        return None
    try:
        from huggingface_hub import snapshot_download

        snapshot = snapshot_download(
            source, cache_dir=cache_dir, local_files_only=True, allow_patterns=[f"{component}/*"]
        )
    except Exception:
        return None
    folder = Path(snapshot) / component
    return folder if folder.is_dir() and _weight_files(folder) else None


def _remote_fingerprint(source: str, component: str, cache_dir: str | None) -> Fingerprint | None:
    """From the hub's file metadata (SHA-256 of every LFS file) and the small config.json."""
    try:
        from huggingface_hub import HfApi, hf_hub_download

        info = HfApi().model_info(source, files_metadata=True)
        weights: dict[str, str] = {}
        for sibling in info.siblings or []:
            name = sibling.rfilename
            if not name.startswith(f"{component}/") or not name.endswith(WEIGHT_SUFFIXES):
                continue
            if sibling.lfs is None:
                return None  # a non-LFS weight file has no SHA-256 in the metadata
            weights[name.removeprefix(f"{component}/")] = sibling.lfs.sha256
        if not weights:
            return None
        config_path = hf_hub_download(source, f"{component}/config.json", cache_dir=cache_dir)
        return Fingerprint(weights=weights, config=_read_config(Path(config_path)))
    except Exception as exc:
        logger.info("no hub metadata for %s/%s (%s)", source, component, exc.__class__.__name__)
        return None


def fingerprint(source: str, component: str, cache_dir: str | None = None) -> Fingerprint | None:
    """A component's fingerprint from the files on this machine, else from the hub's metadata."""
    folder = _local_folder(source, component, cache_dir)
    if folder is not None:
        return local_fingerprint(folder)
    if Path(source).exists() or os.environ.get("HF_HUB_OFFLINE") == "1":
        return None
    return _remote_fingerprint(source, component, cache_dir)


def same_weights(
    loaded: str, candidate: str, component: str, cache_dir: str | None = None
) -> tuple[bool, str]:
    """Whether ``candidate``'s ``component`` is the same weights as ``loaded``'s, and why.

    ``loaded`` is the checkpoint whose module is already in memory (its files are local).
    """
    mine_dir = _local_folder(loaded, component, cache_dir)
    if mine_dir is None:
        return False, f"{loaded}/{component}: weight files not found"
    theirs_dir = _local_folder(candidate, component, cache_dir)
    if theirs_dir is not None:
        if theirs_dir.resolve() == mine_dir.resolve():
            return True, "same folder"
        # Names and sizes first: different weights are told apart without reading them.
        mine_files = {str(p.relative_to(mine_dir)): p for p in _weight_files(mine_dir)}
        theirs_files = {str(p.relative_to(theirs_dir)): p for p in _weight_files(theirs_dir)}
        if set(theirs_files) != set(mine_files):
            return False, "different weight files"
        if any(mine_files[n].stat().st_size != p.stat().st_size for n, p in theirs_files.items()):
            return False, "weight files differ in size"
        theirs = local_fingerprint(theirs_dir)
    else:
        theirs = fingerprint(candidate, component, cache_dir)
    if theirs is None:
        return False, f"{candidate}/{component}: weights could not be verified"
    mine = local_fingerprint(mine_dir)
    if mine is None or theirs.weights != mine.weights:
        return False, "weight files differ (SHA-256)"
    if theirs.config != mine.config:
        return False, "config.json differs"
    return True, f"identical weights ({len(mine.weights)} file(s), SHA-256)"
