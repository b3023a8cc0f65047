"""What every gallery response gets: strict headers and a per-client rate limit (an IPv4
address, or an IPv6 /64).

The pages run no script and load nothing from elsewhere, so the Content-Security-Policy can
forbid everything except our own images, our own stylesheet and forms posted back to us. The
link in the address bar is a credential, hence ``Referrer-Policy: no-referrer``: no other site
ever sees it in a Referer header.
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from html import escape

from aiohttp import web
from aiohttp.typedefs import Middleware

logger = logging.getLogger(__name__)

CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

# A gallery page asks for ~50 thumbnails at once, so the burst covers a few pages; the steady
# rate is far above a person browsing and far below a scraper or a flood.
DEFAULT_RATE_PER_S = 30.0
DEFAULT_BURST = 200
# Addresses remembered at once; the least recently seen are forgotten first (a flood of
# spoofed-looking addresses costs bounded memory).
MAX_TRACKED = 10_000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def plain_page(status: int, title: str, text: str) -> web.Response:
    """A tiny self-contained HTML error page (no template: it must work when nothing else does)."""
    body = (
        "<!doctype html><html lang=en><meta charset=utf-8>"
        f"<title>{escape(title)}</title><h1>{escape(title)}</h1><p>{escape(text)}</p></html>"
    )
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8")


def forbidden(
    text: str = "This link is not valid, has expired, or is not for this page.",
) -> web.Response:
    return plain_page(403, "403 Forbidden", text + " Ask the bot for a new one with /gallery.")


class TokenBucket:
    """Per-key token buckets: ``burst`` requests at once, refilled at ``rate_per_s``."""

    def __init__(
        self,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        burst: int = DEFAULT_BURST,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_tracked: int = MAX_TRACKED,
    ) -> None:
        self.rate = rate_per_s
        self.burst = float(burst)
        self._clock = clock
        self._max = max_tracked
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str) -> float:
        """Take one token; returns 0 when allowed, else the seconds until one is available."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        wait = 0.0
        if tokens >= 1.0:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait


Networks = tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
# A reverse proxy on this machine. Behind Docker's published port the peer is the bridge's
# gateway instead (e.g. 172.17.0.1): name it in IMAGINE_TRUSTED_PROXIES.
LOOPBACK: Networks = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


def parse_networks(text: str) -> Networks:
    """``"127.0.0.1, 172.17.0.0/16"`` as networks; ``ValueError`` names a bad entry."""
    networks = []
    for item in (part.strip() for part in text.split(",")):
        if item:
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"not an address or network: {item!r}") from None
    return tuple(networks)


def client_address(request: web.Request, trusted: Networks = LOOPBACK) -> str:
    """The address a request came from, for rate limiting.

    A reverse proxy among ``trusted`` forwards the real client in ``X-Forwarded-For``; its last
    entry is the address the proxy itself saw. From any other peer the header is ignored,
    since anyone can send it.
    """
    peer = request.remote or "unknown"
    forwarded = request.headers.get("X-Forwarded-For")
    if forwarded:
        try:
            address = ipaddress.ip_address(peer)
            proxy = any(address in network for network in trusted)
        except ValueError:
            proxy = False
        if proxy:
            last = forwarded.split(",")[-1].strip()
            if last:
                return last[:64]
    return peer


# Every IPv6 client gets at least a /64 from its provider (RFC 6177): counting single addresses
# would hand one client 2**64 full bursts.
IPV6_CLIENT_PREFIX = 64


def rate_key(address: str) -> str:
    """The rate limit's client for an address: IPv4 as it is, IPv6 by its /64 (an IPv4 address
    written as IPv6 is that IPv4 address). Anything unparsable counts as itself."""
    try:
        parsed = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(parsed, ipaddress.IPv6Address):
        if parsed.ipv4_mapped is not None:
            return str(parsed.ipv4_mapped)
        host_bits = 128 - IPV6_CLIENT_PREFIX
        return str(
            ipaddress.IPv6Network((int(parsed) >> host_bits << host_bits, IPV6_CLIENT_PREFIX))
        )
    return str(parsed)


def security_middleware(limiter: TokenBucket, trusted: Networks = LOOPBACK) -> Middleware:
    """Headers on every answer (errors included) and a 429 past the address's rate."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        wait = limiter.take(rate_key(client_address(request, trusted)))
        if wait > 0:
            response: web.StreamResponse = plain_page(
                429, "429 Too Many Requests", "Slow down a little and try again."
            )
            response.headers["Retry-After"] = str(max(1, int(wait + 0.999)))
        else:
            try:
                response = await handler(request)
            except web.HTTPException as exc:
                if exc.status >= 400:
                    response = plain_page(exc.status, f"{exc.status} {exc.reason}", exc.reason)
                else:  # redirects: keep the Location header, add ours below
                    response = web.Response(status=exc.status, headers=exc.headers)
            except Exception:
                # Never log the path: it holds the link's token.
                route = request.match_info.route.name if request.match_info.route else None
                logger.exception("gallery request %s %s failed", request.method, route)
                response = plain_page(500, "500 Server Error", "Something went wrong on our side.")
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    return middleware
