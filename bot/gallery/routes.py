"""The gallery's pages and files. Every route starts from the link's token; the grant it
carries decides everything (see ``bot.gallery.pages`` for the rules).

Files are served by image id only: the id selects a database row of the link's server, the row
gives a sha256, and the store turns that sha256 into its own path. Nothing from the request ever
becomes part of a file path.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

import aiohttp_jinja2
from aiohttp import web
from yarl import URL

import db
from bot.gallery import pages
from bot.gallery.admins import UNKNOWN_FOR_S, Standing
from bot.gallery.auth import BadLink, Grant
from bot.gallery.cards import CARD_QUALITY, CARD_SIDE
from bot.gallery.deps import CSS_VERSION, DEPS, STATIC_DIR, GalleryDeps
from bot.gallery.security import forbidden, plain_page
from db import gallery

logger = logging.getLogger(__name__)

MAX_QUERY_CHARS = 200
# A file never changes, but it may be deleted (its Delete button, retention, /forget-me):
# browsers keep it 10 minutes, then ask again (a 304 while it exists, a 404 once it went).
FILE_CACHE = "private, max-age=600"
# A card's bytes depend on how cards are made, not only on the image: a change makes new tags.
CARD_TAG = f"card{CARD_SIDE}q{CARD_QUALITY}"

# Why an admin link shows a member's view (``granted``); the pages say it.
ADMIN_NOTICE = web.RequestKey("admin_notice", str)
NOT_CONFIRMED = (
    "Discord has not confirmed that you still manage this server, so this page shows what a "
    "member sees. Reload in a moment."
)
DEMOTED = "You no longer have Manage Server here: this link shows what a member sees."
MEMBER_NOT_CONFIRMED = (
    "Discord has not confirmed that you are still a member of this server, so this page shows "
    "only your own images. Reload in a moment."
)
# Why a link of a server no longer works at all.
GONE = "This link no longer works: you are not a member of this server any more."
REVOKED = "An admin of this server ended every gallery link given out before now."
# The member of a link could not be confirmed (``granted``): only their own images show.
UNCONFIRMED = web.RequestKey("member_unconfirmed", bool)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
GrantedHandler = Callable[[web.Request, Grant, GalleryDeps], Awaitable[web.StreamResponse]]


def _database(deps: GalleryDeps) -> db.Database:
    database = deps.database()
    if database is None:
        raise web.HTTPServiceUnavailable(reason="The bot is still starting.")
    return database


def granted(handler: GrantedHandler) -> Handler:
    """Check the link before anything else: a bad, forged, expired or revoked one, or one whose
    member is no longer in its server, gets a plain 403. An admin link shows what a member sees
    until Discord confirms the member is still an admin, and a member's link only their own
    images until Discord confirms they are still a member (``bot.gallery.admins``); the page
    then says why."""
    return _with_grant(handler, confirm_admin=True)


def _as_linked(handler: GrantedHandler) -> Handler:
    """Like ``granted`` but with the grant exactly as the link says: for a handler that
    asks Discord itself (a delete asks afresh, and answers "could not tell" with a 503)."""
    return _with_grant(handler, confirm_admin=False)


def _with_grant(handler: GrantedHandler, *, confirm_admin: bool) -> Handler:
    @functools.wraps(handler)
    async def wrapper(request: web.Request) -> web.StreamResponse:
        deps = request.app[DEPS]
        try:
            grant = deps.signer.load(request.match_info["token"])
        except BadLink:
            return forbidden()
        if grant.guild_id is not None:
            current = await gallery.gallery_links_epoch(_database(deps), grant.guild_id)
            if grant.epoch != current:
                return forbidden(REVOKED)
            standing = await deps.admins.standing(grant.guild_id, grant.user_id)
            if standing is Standing.GONE:
                return forbidden(GONE)
            request[UNCONFIRMED] = standing is None
            if confirm_admin and grant.admin and standing is not Standing.ADMIN:
                grant = dataclasses.replace(grant, admin=False)
                request[ADMIN_NOTICE] = NOT_CONFIRMED if standing is None else DEMOTED
        return await handler(request, grant, deps)

    return wrapper


def _refused(request: web.Request, text: str) -> web.Response:
    """A 403 with ``text``; but where only an admin link's confirmation stood in the way, say
    so: a 503 to retry while Discord cannot tell, a 403 that says why once demoted."""
    notice = request.get(ADMIN_NOTICE)
    if notice in (NOT_CONFIRMED, MEMBER_NOT_CONFIRMED):
        response = plain_page(503, "503 Service Unavailable", notice)
        response.headers["Retry-After"] = str(round(UNKNOWN_FOR_S))
        return response
    if notice == DEMOTED:
        return plain_page(403, "403 Forbidden", f"{text} {DEMOTED}")
    return forbidden(text)


async def _see_all(request: web.Request, deps: GalleryDeps, grant: Grant) -> bool:
    if grant.admin:
        return True
    public = await gallery.gallery_public(_database(deps), grant.guild_id)
    if public and request.get(UNCONFIRMED):
        request.setdefault(ADMIN_NOTICE, MEMBER_NOT_CONFIRMED)  # say why the rest is missing
        return False
    return public


def _scope_name(deps: GalleryDeps, grant: Grant) -> str:
    if grant.guild_id is None:
        return "Direct messages"
    return deps.guild_name(grant.guild_id) or "This server"


def _query(request: web.Request) -> str:
    return request.query.get("q", "")[:MAX_QUERY_CHARS]


def _base_context(
    request: web.Request, grant: Grant, deps: GalleryDeps, urls: pages.Urls, *, see_all: bool
) -> dict[str, object]:
    css = request.app.router["css"].url_for().with_query(v=request.app[CSS_VERSION])
    return {
        "css_url": str(css),
        "scope_name": _scope_name(deps, grant),
        "home_url": urls.index(),
        "mine_url": urls.member(grant.user_id),
        "see_all": see_all and grant.guild_id is not None,
        "admin": grant.admin,
        "admin_notice": request.get(ADMIN_NOTICE, ""),
        "expires": pages.when(_expiry(grant)),
        "q": _query(request),
    }


def _expiry(grant: Grant) -> dt.datetime:
    return dt.datetime.fromtimestamp(grant.expires, dt.UTC)


async def _grid(
    request: web.Request,
    grant: Grant,
    deps: GalleryDeps,
    *,
    member: int | None,
    heading: str,
    see_all: bool,
) -> web.Response:
    urls = pages.Urls(request, request.match_info["token"])
    q = _query(request)
    page = await gallery.list_gallery(
        _database(deps),
        guild_id=grant.guild_id,
        user_id=member,
        search=q,
        before=request.query.get("before"),
        limit=deps.page_size,
    )
    cards = [pages.card(e, urls, grant, deps.names, see_all=see_all) for e in page.entries]
    base = urls.member(member) if member is not None else urls.index()
    next_url = None
    if page.next_cursor:
        query = {"q": q, "before": page.next_cursor} if q else {"before": page.next_cursor}
        next_url = str(URL(base).with_query(query))
    context = _base_context(request, grant, deps, urls, see_all=see_all) | {
        "heading": heading,
        "cards": cards,
        "search_action": base,
        "next_url": next_url,
        "notice": "Image deleted." if request.query.get("deleted") == "1" else "",
        "searching": bool(gallery.search_terms(q)),
    }
    return aiohttp_jinja2.render_template("gallery.html", request, context)


@granted
async def index(request: web.Request, grant: Grant, deps: GalleryDeps) -> web.StreamResponse:
    """The server's gallery where the viewer may see it, else the viewer's own images."""
    see_all = await _see_all(request, deps, grant)
    if grant.guild_id is None:
        heading = "Your images in direct messages"
    elif see_all:
        heading = f"{_scope_name(deps, grant)}: every image"
    else:
        heading = "Your images here"
    member = None if see_all else grant.user_id
    return await _grid(request, grant, deps, member=member, heading=heading, see_all=see_all)


@granted
async def member(request: web.Request, grant: Grant, deps: GalleryDeps) -> web.StreamResponse:
    user_id = int(request.match_info["user_id"])
    if user_id > gallery.MAX_ID:
        return plain_page(404, "404 Not Found", "There is no such member.")
    see_all = await _see_all(request, deps, grant)
    if not pages.may_view_member(user_id, grant, see_all=see_all):
        return _refused(
            request, "This server's gallery is private: you can see your own images only."
        )
    if user_id == grant.user_id:
        heading = "Your images"
    else:
        heading = f"Images by {pages.member_label(deps.names, grant.guild_id, user_id)}"
    return await _grid(request, grant, deps, member=user_id, heading=heading, see_all=see_all)


async def _visible_entry(
    request: web.Request, grant: Grant, deps: GalleryDeps, *, see_all: bool | None = None
) -> gallery.GalleryEntry | web.Response:
    entry = await gallery.get_entry(_database(deps), int(request.match_info["image_id"]))
    if entry is None:
        return plain_page(404, "404 Not Found", "There is no such image (it may be deleted).")
    if see_all is None:
        see_all = await _see_all(request, deps, grant)
    if not pages.may_view(entry.image, grant, see_all=see_all):
        return _refused(request, "This image is not visible through this link.")
    return entry


@granted
async def image(request: web.Request, grant: Grant, deps: GalleryDeps) -> web.StreamResponse:
    see_all = await _see_all(request, deps, grant)
    found = await _visible_entry(request, grant, deps, see_all=see_all)
    if isinstance(found, web.Response):
        return found
    database = _database(deps)
    img, generation = found.image, found.generation
    urls = pages.Urls(request, request.match_info["token"])
    parents = await gallery.lineage(database, generation)
    variations = await gallery.children(database, generation)
    context = _base_context(request, grant, deps, urls, see_all=see_all) | {
        "title": pages.clip(generation.prompt, 60),
        "full_url": urls.full(img.id),
        "download_url": urls.full(img.id, download=True),
        "width": img.width,
        "height": img.height,
        "alt": pages.clip(generation.prompt, 300),
        "member": pages.member_label(deps.names, img.guild_id, img.user_id),
        "member_url": (
            urls.member(img.user_id)
            if pages.may_view_member(img.user_id, grant, see_all=see_all)
            else None
        ),
        "parameters": pages.parameters(generation, img),
        "command": pages.imagine_command(generation),
        "parents": [pages.relative(p, urls, grant, see_all=see_all) for p in parents],
        "variations": [pages.relative(c, urls, grant, see_all=see_all) for c in variations],
        "can_delete": pages.may_delete(img, grant),
        "delete_url": urls.delete(img.id),
        "csrf": deps.signer.csrf_token(request.match_info["token"]),
        "search_action": urls.index(),
    }
    return aiohttp_jinja2.render_template("image.html", request, context)


async def _send_file(
    request: web.Request, grant: Grant, deps: GalleryDeps, *, thumb: bool
) -> web.StreamResponse:
    found = await _visible_entry(request, grant, deps)
    if isinstance(found, web.Response):
        return found
    files = deps.files()
    gone = plain_page(404, "404 Not Found", "This image's file is no longer stored.")
    if files is None:
        return gone
    sha = found.image.sha256
    if thumb:
        card = await deps.cards.get(sha, files.thumb_path(sha))
        if card is None:
            return gone
        headers = {"Cache-Control": FILE_CACHE, "ETag": f'"{CARD_TAG}-{sha[:32]}"'}
        if request.headers.get("If-None-Match") == headers["ETag"]:
            return web.Response(status=304, headers=headers)
        return web.Response(body=card, content_type="image/webp", headers=headers)
    path = files.png_path(sha)
    if not path.is_file():
        return gone
    response = web.FileResponse(path)
    response.content_type = "image/png"
    response.headers["Cache-Control"] = FILE_CACHE
    if request.query.get("download") == "1":
        name = f"imagine-{found.generation.job_key}.png"
        response.headers["Content-Disposition"] = f'attachment; filename="{name}"'
    return response


@granted
async def thumb(request: web.Request, grant: Grant, deps: GalleryDeps) -> web.StreamResponse:
    return await _send_file(request, grant, deps, thumb=True)


@granted
async def full(request: web.Request, grant: Grant, deps: GalleryDeps) -> web.StreamResponse:
    return await _send_file(request, grant, deps, thumb=False)


def _same_origin(request: web.Request) -> bool:
    """A browser's Origin on a POST must name this site (behind a proxy: forward the Host
    header). Our pages send ``Referrer-Policy: no-referrer``, under which browsers send
    ``Origin: null`` for their own forms, so "null" and no Origin pass: the CSRF token is the
    real check, this only turns away a form posted from a page of another site."""
    origin = request.headers.get("Origin")
    if origin is None or origin == "null":
        return True
    return urlsplit(origin).netloc == request.host


@_as_linked
async def delete(request: web.Request, grant: Grant, deps: GalleryDeps) -> web.StreamResponse:
    """Delete an image (its owner, or an admin): POST with the link's CSRF token only."""
    try:
        form = await request.post()
    except web.HTTPException:  # a body over the size limit: aiohttp's own 413
        raise
    except Exception:  # not the form our page sends: broken multipart, an unknown charset
        return plain_page(400, "400 Bad Request", "This form could not be read.")
    csrf = form.get("csrf")
    if not isinstance(csrf, str) or not deps.signer.check_csrf(request.match_info["token"], csrf):
        return forbidden("This form is out of date or did not come from the gallery.")
    if not _same_origin(request):
        return forbidden("This form did not come from the gallery.")
    found = await _visible_entry(request, grant, deps)
    if isinstance(found, web.Response):
        return found
    if not pages.may_delete(found.image, grant):
        return forbidden("Only the member who made this image, or an admin, can delete it.")
    if form.get("confirm") != "yes":
        return plain_page(400, "400 Bad Request", "Tick the box to confirm, then delete again.")
    if found.image.user_id != grant.user_id:  # an admin's delete: still an admin?
        assert grant.guild_id is not None  # may_delete: admin links name a server
        still = await deps.admins.fresh(grant.guild_id, grant.user_id)
        if still is None:
            return plain_page(
                503,
                "503 Service Unavailable",
                "Discord did not confirm that you still manage this server; nothing was "
                "deleted. Try again in a moment.",
            )
        if not still:
            return forbidden(
                "You no longer have Manage Server here, so this link deletes only your own "
                "images; nothing was deleted."
            )
    await deps.forget(found.generation.job_key)
    logger.info(
        "gallery: image %s of user %s deleted by %s%s",
        found.image.id,
        found.image.user_id,
        grant.user_id,
        " (admin)" if found.image.user_id != grant.user_id else "",
    )
    location = pages.Urls(request, request.match_info["token"]).index(deleted="1")
    return web.Response(status=303, headers={"Location": location})


async def to_index(request: web.Request) -> web.StreamResponse:
    location = request.app.router["index"].url_for(token=request.match_info["token"])
    return web.Response(status=308, headers={"Location": str(location)})


async def css(request: web.Request) -> web.StreamResponse:
    response = web.FileResponse(STATIC_DIR / "gallery.css")
    response.content_type = "text/css"
    response.headers["Cache-Control"] = "public, max-age=86400"
    return response


def add_routes(app: web.Application) -> None:
    token = r"{token:[A-Za-z0-9_.\-]{1,512}}"
    app.router.add_get("/static/gallery.css", css, name="css")
    app.router.add_get(f"/{token}", to_index)
    app.router.add_get(f"/{token}/", index, name="index")
    app.router.add_get(f"/{token}/u/{{user_id:[0-9]{{1,20}}}}", member, name="member")
    app.router.add_get(f"/{token}/i/{{image_id:[0-9]{{1,18}}}}", image, name="image")
    app.router.add_get(f"/{token}/t/{{image_id:[0-9]{{1,18}}}}.webp", thumb, name="thumb")
    app.router.add_get(f"/{token}/f/{{image_id:[0-9]{{1,18}}}}.png", full, name="full")
    app.router.add_post(f"/{token}/i/{{image_id:[0-9]{{1,18}}}}/delete", delete, name="delete")
