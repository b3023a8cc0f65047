"""The gallery's view of the image store (``bot.store.ImageStore`` satisfies it): files are
found by sha256 only, never by a path from a request."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class ImageFiles(Protocol):
    """Where the store keeps an image's PNG and WebP thumbnail, and how one is deleted."""

    def png_path(self, sha256: str) -> Path: ...

    def thumb_path(self, sha256: str) -> Path: ...

    def delete(self, sha256: str) -> int: ...
