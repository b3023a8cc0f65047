"""Grid-sized thumbnails: the store's 384 px WebP shrunk to 256 px for the gallery's cards.

A card is about 200 CSS pixels wide. The store keeps 384 px thumbnails (the long side), which
for a detailed photo-like image weigh 40-60 KB each: 50 of them alone pass the gallery's
1.5 MB page budget. At 256 px and quality 75 they weigh about a third of that (see
docs/PERFORMANCE.md, "Web gallery"). They are made on first request from the store's thumbnail
(decoding a small WebP, not the PNG) and kept in a bounded in-memory cache; nothing is written
to disk, so the store's files and its retention stay exactly as they are.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections import OrderedDict
from pathlib import Path

from PIL import Image, UnidentifiedImageError

logger = logging.getLogger(__name__)

CARD_SIDE = 256
CARD_QUALITY = 75
CACHE_BYTES = 32 * 2**20


def shrink(path: Path) -> bytes:
    """The card-sized WebP of a stored thumbnail (the file itself when it is small already)."""
    data = path.read_bytes()
    with Image.open(io.BytesIO(data)) as image:
        if max(image.size) <= CARD_SIDE:
            return data
        image.thumbnail((CARD_SIDE, CARD_SIDE), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, format="WEBP", quality=CARD_QUALITY, method=4)
        return buffer.getvalue()


class CardCache:
    """Card thumbnails by sha256, least recently used out first past ``max_bytes``."""

    def __init__(self, max_bytes: int = CACHE_BYTES) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._size = 0

    async def get(self, sha256: str, thumb_path: Path) -> bytes | None:
        """The card for this image; None when its thumbnail is not in the store."""
        cached = self._items.get(sha256)
        if cached is not None:
            self._items.move_to_end(sha256)
            return cached
        try:
            card = await asyncio.to_thread(shrink, thumb_path)
        except FileNotFoundError:
            return None
        except (OSError, UnidentifiedImageError, ValueError):
            logger.warning("cannot read the thumbnail of image %s", sha256[:12])
            return None
        if sha256 not in self._items:
            self._items[sha256] = card
            self._size += len(card)
        while self._size > self.max_bytes and self._items:
            _, dropped = self._items.popitem(last=False)
            self._size -= len(dropped)
        return card
