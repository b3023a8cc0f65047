"""The gallery over plain HTTP: security headers on every answer, the rate limit, forms that
only POST with the link's CSRF token, files by id only, DM links, paging, tokens."""

from __future__ import annotations

import re
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from bot.gallery.admins import UNKNOWN_FOR_S, Standing
from bot.gallery.auth import BadLink, LinkSigner, load_or_create_secret
from bot.gallery.security import TokenBucket, client_address, parse_networks, rate_key
from tests.bot.gallery.harness import (
    ALICE,
    BOB,
    CAROL,
    GUILD,
    OTHER_GUILD,
    GalleryServer,
    Seeded,
)

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = {k.lower(): v for k, v in headers.items()}
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


_opener = urllib.request.build_opener(_NoRedirect)


def fetch(
    url: str,
    *,
    method: str | None = None,
    form: dict[str, str] | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    method = method or ("POST" if form is not None else "GET")
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with _opener.open(request, timeout=30) as response:
            return Answer(response.status, dict(response.headers), response.read())
    except urllib.error.HTTPError as error:
        return Answer(error.code, dict(error.headers), error.read())


def token_of(link: str) -> str:
    return link.rstrip("/").rsplit("/", 1)[1]


def test_every_answer_carries_the_security_headers(
    gallery: GalleryServer, thirty: list[Seeded]
) -> None:
    link = gallery.link(admin=True)
    image_id = thirty[0].image_id
    for url in (
        link,
        link + f"i/{image_id}",
        link + f"t/{image_id}.webp",
        link + f"f/{image_id}.png",
        link + "i/999999",
        gallery.link(ttl_s=-1),
        link + "u/not-a-number",
    ):
        answer = fetch(url)
        csp = answer.headers["content-security-policy"]
        for directive in (
            "default-src 'none'",
            "img-src 'self'",
            "style-src 'self'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ):
            assert directive in csp, (url, csp)
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    # No page refers to anything outside this server.
    page = fetch(link + f"i/{image_id}").text
    assert not re.search(r"""(src|href|action)="(https?:)?//""", page)


def test_files_come_by_id_with_the_right_type_and_nothing_else(
    gallery: GalleryServer, thirty: list[Seeded]
) -> None:
    link = gallery.link(admin=True)
    image_id = thirty[0].image_id
    thumb = fetch(link + f"t/{image_id}.webp")
    assert thumb.status == 200 and thumb.headers["content-type"] == "image/webp"
    assert thumb.body[:4] == b"RIFF" and thumb.body[8:12] == b"WEBP"
    # Kept a short while only: a deleted image must not live on in a browser for a year.
    assert thumb.headers["cache-control"] == "private, max-age=600"
    again = fetch(link + f"t/{image_id}.webp", headers={"If-None-Match": thumb.headers["etag"]})
    assert again.status == 304 and not again.body
    full = fetch(link + f"f/{image_id}.png?download=1")
    assert full.headers["content-type"] == "image/png"
    assert full.headers["content-disposition"].startswith("attachment;")
    assert full.body[:8] == b"\x89PNG\r\n\x1a\n"
    assert full.headers["cache-control"] == "private, max-age=600" and full.headers["etag"]
    css = fetch(f"{gallery.base_url}/gallery/static/gallery.css")
    assert css.status == 200 and css.headers["content-type"].startswith("text/css")
    for probe in (
        "t/../../gallery.db",
        "t/%2e%2e%2fgallery.db",
        f"t/{image_id}.png",
        "f/-1.png",
        "f/1e3.png",
        "static/../gallery.db",
        "u/99999999999999999999",
        "u/9999999999999999999",
        "i/9999999999999999999",
    ):
        assert fetch(link + probe).status == 404, probe
    assert fetch(link + "i/999999").status == 404


def test_deleting_needs_post_the_csrf_token_and_a_same_site_origin(
    gallery: GalleryServer, thirty: list[Seeded]
) -> None:
    target = gallery.add("a doodle to keep", user_id=ALICE)
    link = gallery.link(user_id=ALICE)
    url = link + f"i/{target.image_id}/delete"
    csrf = gallery.signer.csrf_token(token_of(link))
    assert fetch(url).status == 405
    assert fetch(url, form={"confirm": "yes"}).status == 403
    assert fetch(url, form={"csrf": "0" * 64, "confirm": "yes"}).status == 403
    # Another link's token (even Alice's own other link) does not fit this one.
    other = gallery.signer.csrf_token(token_of(gallery.link(user_id=ALICE, ttl_s=7200)))
    assert fetch(url, form={"csrf": other, "confirm": "yes"}).status == 403
    evil = {"Origin": "https://evil.example"}
    assert fetch(url, form={"csrf": csrf, "confirm": "yes"}, headers=evil).status == 403
    assert fetch(url, form={"csrf": csrf}).status == 400  # the confirmation box
    assert gallery.exists(target.image_id)
    done = fetch(url, form={"csrf": csrf, "confirm": "yes"}, headers={"Origin": "null"})
    assert done.status == 303 and done.headers["location"].endswith("/?deleted=1")
    assert not gallery.exists(target.image_id)
    assert fetch(url, form={"csrf": csrf, "confirm": "yes"}).status == 404


def test_an_admin_link_deletes_others_images_only_while_its_member_is_still_an_admin(
    gallery: GalleryServer, thirty: list[Seeded]
) -> None:
    bobs = gallery.add("bob's picture", user_id=BOB)
    alices = gallery.add("alice's own picture", user_id=ALICE)
    link = gallery.link(user_id=ALICE, admin=True)  # made while Alice had Manage Server
    csrf = {"csrf": gallery.signer.csrf_token(token_of(link)), "confirm": "yes"}
    try:
        gallery.admin_now[ALICE] = None  # Discord did not answer: nothing happens
        refused = fetch(link + f"i/{bobs.image_id}/delete", form=csrf)
        assert refused.status == 503 and "nothing was deleted" in refused.text
        gallery.admin_now[ALICE] = False  # demoted since the link was made
        refused = fetch(link + f"i/{bobs.image_id}/delete", form=csrf)
        assert refused.status == 403 and "no longer have Manage Server" in refused.text
        assert gallery.exists(bobs.image_id)
        # Her own images are still hers to delete, whatever her roles.
        assert fetch(link + f"i/{alices.image_id}/delete", form=csrf).status == 303
        assert not gallery.exists(alices.image_id)
        gallery.admin_now[ALICE] = True  # promoted again
        assert fetch(link + f"i/{bobs.image_id}/delete", form=csrf).status == 303
        assert not gallery.exists(bobs.image_id)
    finally:
        gallery.admin_now.clear()


def test_an_admin_link_shows_the_whole_gallery_only_while_discord_confirms_its_admin(
    gallery: GalleryServer, thirty: list[Seeded]
) -> None:
    """Demoted after the link was made: within five minutes the link shows only what a
    member sees, and says why; while Discord cannot tell, the same, with a different reason."""
    bobs = gallery.add("a harbour only admins may see", user_id=BOB)
    link = gallery.link(user_id=ALICE, admin=True)
    secret = "a harbour only admins may see"
    try:
        gallery.later()  # answers from earlier tests are old
        page = fetch(link).text
        assert secret in page and '<span class="badge">admin</span>' in page
        gallery.admin_now[ALICE] = False  # demoted
        assert fetch(link + f"i/{bobs.image_id}").status == 200  # the answer stands a while
        gallery.later()
        page = fetch(link).text
        assert "You no longer have Manage Server here" in page
        assert secret not in page and "Your images here" in page
        assert '<span class="badge">admin</span>' not in page
        for path in (f"i/{bobs.image_id}", f"t/{bobs.image_id}.webp", f"f/{bobs.image_id}.png"):
            refused = fetch(link + path)
            assert refused.status == 403 and "no longer have Manage Server" in refused.text
        gallery.admin_now[ALICE] = None  # Discord does not answer
        gallery.later()
        page = fetch(link).text
        assert "Discord has not confirmed that you still manage this server" in page
        assert secret not in page
        wait = fetch(link + f"i/{bobs.image_id}")  # not refused: asked to come back
        assert wait.status == 503 and wait.headers["retry-after"] == "20"
        assert "Discord has not confirmed" in wait.text
        gallery.admin_now[ALICE] = True  # it answers again: asked again within 20 s
        gallery.later(UNKNOWN_FOR_S)
        page = fetch(link).text
        assert secret in page and "Discord has not confirmed" not in page
        assert fetch(link + f"t/{bobs.image_id}.webp").status == 200
    finally:
        gallery.admin_now.clear()
        gallery.later()


def test_a_member_link_stops_working_once_its_member_left_the_server(
    gallery: GalleryServer, thirty: list[Seeded]
) -> None:
    """issue 20 item 9: a member who left (or was kicked or banned) kept their view for the
    link's whole life. Now the link asks Discord like an admin link does (cached five minutes;
    while Discord cannot tell, only the member's own images, and come back in a moment)."""
    bobs = next(s for s in thirty if s.user_id == BOB)
    alices = next(s for s in thirty if s.user_id == ALICE)
    link = gallery.link(user_id=BOB)
    csrf = {"csrf": gallery.signer.csrf_token(token_of(link)), "confirm": "yes"}
    paths = ("", f"i/{bobs.image_id}", f"t/{bobs.image_id}.webp", f"f/{bobs.image_id}.png")
    try:
        gallery.later()
        assert fetch(link).status == 200
        gallery.admin_now[BOB] = Standing.GONE  # left, kicked or banned
        assert fetch(link).status == 200  # the answer stands a while
        gallery.later()
        for path in (*paths, f"u/{BOB}"):
            refused = fetch(link + path)
            assert refused.status == 403, path
            assert "not a member of this server any more" in refused.text
        refused = fetch(link + f"i/{bobs.image_id}/delete", form=csrf)
        assert refused.status == 403 and gallery.exists(bobs.image_id)
        gallery.admin_now[BOB] = None  # Discord does not answer: only Bob's own images
        gallery.later()
        gallery.set_public(True)
        assert all(fetch(link + path).status == 200 for path in paths)
        page = fetch(link).text
        assert "Discord has not confirmed that you are still a member" in page
        assert "Your images here" in page
        wait = fetch(link + f"i/{alices.image_id}")
        assert wait.status == 503 and wait.headers["retry-after"] == "20"
        assert "Discord has not confirmed that you are still a member" in wait.text
        gallery.admin_now[BOB] = Standing.MEMBER  # back in the server
        gallery.later(UNKNOWN_FOR_S)
        assert fetch(link + f"i/{alices.image_id}").status == 200
        assert "every image" in fetch(link).text
    finally:
        gallery.set_public(False)
        gallery.admin_now.clear()
        gallery.later()


def test_an_admin_link_of_someone_who_left_does_not_work_either(
    gallery: GalleryServer, thirty: list[Seeded]
) -> None:
    """issue 20 item 9: not even a member's view is left."""
    link = gallery.link(user_id=ALICE, admin=True)
    try:
        gallery.admin_now[ALICE] = Standing.GONE
        gallery.later()
        refused = fetch(link)
        assert refused.status == 403 and "not a member of this server any more" in refused.text
    finally:
        gallery.admin_now.clear()
        gallery.later()


def test_an_admin_ends_every_link_of_the_server_at_once(tmp_path: Path) -> None:
    """issue 20 item 9: admins had no way to end links given out (a leaked one, a member who
    must stop seeing the gallery). Revoking moves the server's link generation on."""
    server = GalleryServer(tmp_path).start()
    try:
        picture = server.add("a lighthouse at dawn")
        members = server.link(user_id=ALICE)
        admins = server.link(user_id=BOB, admin=True)
        elsewhere = server.link(user_id=ALICE, guild_id=OTHER_GUILD)
        dms = server.link(user_id=ALICE, guild_id=None)
        for link in (members, admins, elsewhere, dms):
            assert fetch(link).status == 200

        assert server.revoke() == 1

        for link in (members, admins):
            for path in ("", f"i/{picture.image_id}", f"t/{picture.image_id}.webp"):
                refused = fetch(link + path)
                assert refused.status == 403, path
                assert "An admin of this server ended every gallery link" in refused.text
        assert fetch(elsewhere).status == 200 and fetch(dms).status == 200  # not theirs
        fresh = server.link(user_id=ALICE)  # /gallery after the revocation
        assert fetch(fresh).status == 200 and fetch(fresh + f"i/{picture.image_id}").status == 200
        server.revoke()
        assert fetch(fresh).status == 403
    finally:
        server.stop()


def test_a_link_carries_its_generation_and_old_links_are_generation_zero() -> None:
    """issue 20 item 9: links made before revocation existed keep working until the first."""
    signer = LinkSigner(b"k" * 32)
    assert (
        signer.load(
            signer.sign(guild_id=GUILD, user_id=ALICE, admin=False, ttl_s=60, epoch=3)
        ).epoch
        == 3
    )
    from itsdangerous import URLSafeSerializer

    from bot.gallery.auth import LINK_SALT

    old = URLSafeSerializer(b"k" * 32, salt=LINK_SALT).dumps(
        {"g": str(GUILD), "u": str(ALICE), "a": 0, "e": 2**40}
    )
    assert signer.load(str(old)).epoch == 0
    for bad in ("x", -1, 2**63):
        forged = URLSafeSerializer(b"k" * 32, salt=LINK_SALT).dumps(
            {"g": str(GUILD), "u": str(ALICE), "a": 0, "e": 2**40, "v": bad}
        )
        with pytest.raises(BadLink):
            signer.load(str(forged))


def test_a_dm_link_shows_only_that_members_dm_images(
    gallery: GalleryServer, thirty: list[Seeded]
) -> None:
    mine = gallery.add("a private sketch in DMs", user_id=CAROL, guild_id=None)
    theirs = gallery.add("someone else's DM sketch", user_id=BOB, guild_id=None)
    link = gallery.link(user_id=CAROL, guild_id=None, admin=True)  # no admin in DMs
    page = fetch(link).text
    assert "Your images in direct messages" in page
    assert "a private sketch in DMs" in page
    assert "someone else&#39;s DM sketch" not in page and "DM sketch" not in page
    assert "a lighthouse" not in page  # nothing of any server
    assert fetch(link + f"i/{mine.image_id}").status == 200
    assert fetch(link + f"i/{theirs.image_id}").status == 403
    assert fetch(link + f"i/{thirty[0].image_id}").status == 403
    assert fetch(link + f"u/{BOB}").status == 403
    assert 'form class="delete"' in fetch(link + f"i/{mine.image_id}").text


def test_pages_of_fifty_link_to_older_images(tmp_path: Path) -> None:
    server = GalleryServer(tmp_path).start()
    try:
        for n in range(53):
            server.add(f"picture number {n}", size=(32, 32))
        link = server.link(admin=True)
        first = fetch(link).text
        assert first.count('class="card"') == 50
        older = re.search(r'<a rel="next" href="([^"]+)"', first)
        assert older is not None
        second = fetch(server.base_url + older.group(1).replace("&amp;", "&")).text
        assert second.count('class="card"') == 3
        assert "picture number 0" in second and "picture number 52" not in second
        assert 'rel="next"' not in second
        # Searching keeps the words on the next page.
        found = fetch(link + "?q=picture").text
        nxt = re.search(r'<a rel="next" href="([^"]+)"', found)
        assert nxt is not None and "q=picture" in nxt.group(1)
    finally:
        server.stop()


def test_a_flood_from_one_address_gets_429(tmp_path: Path) -> None:
    server = GalleryServer(tmp_path, rate_per_s=0.5, burst=5).start()
    try:
        link = server.link()
        statuses = [fetch(link).status for _ in range(8)]
        assert statuses[:5] == [200] * 5
        assert set(statuses[5:]) == {429}
        limited = fetch(link)
        assert int(limited.headers["retry-after"]) >= 1
        assert limited.headers["content-security-policy"].startswith("default-src 'none'")
    finally:
        server.stop()


def test_ipv6_clients_share_a_bucket_per_64_network(tmp_path: Path) -> None:
    """issue 20 item 7: every IPv6 client holds at least a /64, so 5,000 addresses of one
    client each got a full burst; now the /64 is the client."""
    server = GalleryServer(tmp_path, rate_per_s=0.5, burst=5).start()
    try:
        link = server.link()

        def from_(address: str) -> int:  # through the reverse proxy on loopback
            return fetch(link, headers={"X-Forwarded-For": address}).status

        statuses = [from_(f"2001:db8:1:2:{n:x}::{n + 1:x}") for n in range(8)]
        assert statuses[:5] == [200] * 5 and set(statuses[5:]) == {429}
        assert from_("2001:db8:1:3::1") == 200  # the next /64 is someone else
        # An IPv4 client written as IPv6 (a dual-stack socket) is still that IPv4 address.
        assert [from_("::ffff:203.0.113.9") for _ in range(5)] == [200] * 5
        assert from_("203.0.113.9") == 429
    finally:
        server.stop()


def test_rate_keys_are_addresses_and_ipv6_networks() -> None:
    """issue 20 item 7."""
    assert rate_key("203.0.113.9") == "203.0.113.9"
    assert rate_key("2001:db8:1:2:aaaa:bbbb:cccc:dddd") == "2001:db8:1:2::/64"
    assert rate_key("2001:DB8:1:2::1") == "2001:db8:1:2::/64"
    assert rate_key("fe80::1%eth0") == "fe80::/64"
    assert rate_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert rate_key("not an address") == "not an address"  # still a key of its own


def test_token_bucket_refills_and_forgets_the_oldest_addresses() -> None:
    now = [0.0]
    bucket = TokenBucket(2.0, 3, clock=lambda: now[0], max_tracked=2)
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a") == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.take("a") == 0.0
    bucket.take("b")
    bucket.take("c")  # "a" is the least recently seen: forgotten, so it starts full again
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]


def test_forwarded_addresses_count_only_from_a_local_proxy() -> None:
    from aiohttp.test_utils import make_mocked_request

    def request(peer: str, forwarded: str | None) -> str:
        headers = {"X-Forwarded-For": forwarded} if forwarded else {}
        req = make_mocked_request("GET", "/", headers=headers)
        req._transport_peername = (peer, 1234)  # type: ignore[attr-defined]
        return client_address(req.clone(remote=peer))

    assert request("127.0.0.1", "203.0.113.9") == "203.0.113.9"
    assert request("127.0.0.1", "1.1.1.1, 203.0.113.9") == "203.0.113.9"
    assert request("198.51.100.7", "203.0.113.9") == "198.51.100.7"
    assert request("198.51.100.7", None) == "198.51.100.7"


def test_forwarded_addresses_count_from_a_configured_proxy_network() -> None:
    """Behind Docker's published port the proxy's packets arrive from the bridge gateway, not
    loopback: without it in IMAGINE_TRUSTED_PROXIES every visitor shared one rate bucket."""
    from aiohttp.test_utils import make_mocked_request

    bridge = parse_networks("127.0.0.1/8, ::1, 172.17.0.1")
    req = make_mocked_request("GET", "/", headers={"X-Forwarded-For": "203.0.113.9"})
    req = req.clone(remote="172.17.0.1")
    assert client_address(req) == "172.17.0.1"  # loopback only: the header is ignored
    assert client_address(req, bridge) == "203.0.113.9"
    assert client_address(req.clone(remote="172.17.0.2"), bridge) == "172.17.0.2"
    with pytest.raises(ValueError, match="nonsense"):
        parse_networks("127.0.0.1, nonsense")


def test_links_are_signed_bound_and_expire(tmp_path: Path) -> None:
    now = [1_000_000.0]
    signer = LinkSigner(b"k" * 32, clock=lambda: now[0])
    token = signer.sign(guild_id=GUILD, user_id=ALICE, admin=True, ttl_s=60)
    grant = signer.load(token)
    assert (grant.guild_id, grant.user_id, grant.admin) == (GUILD, ALICE, True)
    dm = signer.load(signer.sign(guild_id=None, user_id=ALICE, admin=True, ttl_s=60))
    assert dm.guild_id is None and dm.admin is False
    with pytest.raises(BadLink):
        LinkSigner(b"x" * 32).load(token)  # another key
    with pytest.raises(BadLink):
        signer.load(token + "x")
    with pytest.raises(BadLink):
        signer.load("")
    now[0] += 61
    with pytest.raises(BadLink):
        signer.load(token)
    # The generated key is kept (owner-only) and reused after a restart.
    path = tmp_path / "data" / "gallery_secret"
    key = load_or_create_secret(path)
    assert load_or_create_secret(path) == key and len(key) >= 32
    assert path.stat().st_mode & 0o077 == 0
