"""Who may see what, and the plain values templates show (the templates hold no logic).

The rules, all decided from the link's grant and the server's current switch:

* a member sees their own images of the server (or of their DMs) the link is for;
* where an admin turned the gallery on (``/limits gallery on``), members see everyone's;
* an admin (Manage Server when the link was made, and confirmed with Discord while it is used:
  ``bot.gallery.admins``) sees everything and may delete anything;
* a member may delete their own images.

Nothing outside the link's server is ever visible, whatever the switch says.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Callable

from aiohttp import web

import db
from bot.gallery.auth import Grant
from bot.gallery.cards import CARD_SIDE
from db.gallery import ChainLink, GalleryEntry
from engine.presets import public_model_name

CAPTION_CHARS = 120
NameLookup = Callable[[int | None, int], str | None]


def in_scope(image: db.ImageRecord, grant: Grant) -> bool:
    """The image belongs to the server (or the member's DMs) the link is for."""
    if grant.guild_id is None:
        return image.guild_id is None and image.user_id == grant.user_id
    return image.guild_id == grant.guild_id


def may_view(image: db.ImageRecord, grant: Grant, *, see_all: bool) -> bool:
    return in_scope(image, grant) and (see_all or image.user_id == grant.user_id)


def may_delete(image: db.ImageRecord, grant: Grant) -> bool:
    return in_scope(image, grant) and (grant.admin or image.user_id == grant.user_id)


def may_view_member(user_id: int, grant: Grant, *, see_all: bool) -> bool:
    return user_id == grant.user_id or (see_all and grant.guild_id is not None)


def clip(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def when(stamp: dt.datetime | None) -> str:
    if stamp is None:
        return ""
    return stamp.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def thumb_size(width: int, height: int) -> tuple[int, int]:
    """The card thumbnail's pixel size, for width/height attributes (no layout shift)."""
    scale = min(1.0, CARD_SIDE / max(width, height, 1))
    return max(1, round(width * scale)), max(1, round(height * scale))


def member_label(names: NameLookup, guild_id: int | None, user_id: int) -> str:
    name = names(guild_id, user_id)
    return name if name else f"member …{str(user_id)[-4:]}"


def imagine_command(generation: db.Generation) -> str:
    """The /imagine line that asks for this image again (same seed, style, aspect, mode)."""
    parts = [f"/imagine prompt:{' '.join(generation.prompt.split())}"]
    if generation.style and generation.style != "none":
        parts.append(f"style:{generation.style}")
    parts.append(f"aspect:{generation.aspect}")
    if generation.negative_prompt and generation.negative_prompt.strip():
        parts.append(f"negative:{' '.join(generation.negative_prompt.split())}")
    seed = generation.seed_used if generation.seed_used is not None else generation.seed
    if seed is not None:
        parts.append(f"seed:{seed}")
    parts.append(f"mode:{generation.mode}")
    return " ".join(parts)


def parameters(generation: db.Generation, image: db.ImageRecord) -> list[tuple[str, str]]:
    """Every parameter of the image, as label/value rows (absent ones left out)."""
    seed = generation.seed_used if generation.seed_used is not None else generation.seed
    rows: list[tuple[str, str | None]] = [
        ("Prompt", generation.prompt),
        ("Negative prompt", generation.negative_prompt),
        ("Style", generation.style),
        ("Aspect", generation.aspect),
        ("Mode", generation.mode_used or generation.mode),
        ("Seed", None if seed is None else str(seed)),
        ("Size", f"{image.width} × {image.height}"),
        ("Steps", None if generation.steps is None else str(generation.steps)),
        (
            "True CFG scale",
            None if generation.true_cfg_scale is None else f"{generation.true_cfg_scale:g}",
        ),
        ("Kind", generation.kind),
        ("Strength", None if generation.strength is None else f"{generation.strength:g}"),
        ("Model", public_model_name(generation.model) if generation.model else None),
        ("Render time", None if generation.run_s is None else f"{generation.run_s:.1f} s"),
        ("Made", when(generation.created_at)),
        ("PNG", f"{image.size / 1024:.0f} KiB"),
    ]
    return [(label, value) for label, value in rows if value]


@dataclasses.dataclass(frozen=True)
class Urls:
    """Builds this link's URLs (every page, file and form of the gallery carries the token)."""

    request: web.Request
    token: str

    def _url(self, name: str, query: dict[str, str] | None = None, **parts: str) -> str:
        url = self.request.app.router[name].url_for(token=self.token, **parts)
        if query:
            url = url.with_query({k: v for k, v in query.items() if v})
        return str(url)

    def index(self, **query: str) -> str:
        return self._url("index", query)

    def member(self, user_id: int, **query: str) -> str:
        return self._url("member", query, user_id=str(user_id))

    def image(self, image_id: int) -> str:
        return self._url("image", image_id=str(image_id))

    def thumb(self, image_id: int) -> str:
        return self._url("thumb", image_id=str(image_id))

    def full(self, image_id: int, *, download: bool = False) -> str:
        return self._url("full", {"download": "1"} if download else None, image_id=str(image_id))

    def delete(self, image_id: int) -> str:
        return self._url("delete", image_id=str(image_id))


@dataclasses.dataclass(frozen=True)
class Card:
    """One thumbnail of a grid."""

    page_url: str
    thumb_url: str
    thumb_w: int
    thumb_h: int
    caption: str
    member: str
    member_url: str | None
    when: str


def card(
    entry: GalleryEntry, urls: Urls, grant: Grant, names: NameLookup, *, see_all: bool
) -> Card:
    image, generation = entry.image, entry.generation
    w, h = thumb_size(image.width, image.height)
    return Card(
        page_url=urls.image(image.id),
        thumb_url=urls.thumb(image.id),
        thumb_w=w,
        thumb_h=h,
        caption=clip(generation.prompt, CAPTION_CHARS),
        member=member_label(names, image.guild_id, image.user_id),
        member_url=(
            urls.member(image.user_id)
            if may_view_member(image.user_id, grant, see_all=see_all)
            else None
        ),
        when=when(image.created_at),
    )


@dataclasses.dataclass(frozen=True)
class Relative:
    """A parent or a variation on an image page; hidden ones show no prompt."""

    caption: str
    page_url: str | None
    thumb_url: str | None
    thumb_w: int
    thumb_h: int


def relative(link: ChainLink, urls: Urls, grant: Grant, *, see_all: bool) -> Relative:
    image = link.image
    if image is None:
        if see_all or link.generation.user_id == grant.user_id:
            text = f"{clip(link.generation.prompt, 80)} (image no longer stored)"
        else:
            text = "an image no longer stored"
        return Relative(text, None, None, 0, 0)
    if not may_view(image, grant, see_all=see_all):
        return Relative("another member's image", None, None, 0, 0)
    w, h = thumb_size(image.width, image.height)
    return Relative(
        clip(link.generation.prompt, 80), urls.image(image.id), urls.thumb(image.id), w, h
    )
