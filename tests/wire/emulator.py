"""A Discord emulator for wire-level tests: the REST API and the gateway websocket on loopback.

SimCord swaps out discord.py's HTTP layer, so it cannot show what reaches the wire. This
emulator is the other side of the wire instead: the real, unmodified discord.py client logs in
against it (``discord.http.Route.BASE`` and ``DiscordWebSocket.DEFAULT_GATEWAY`` point here),
receives interactions over a real websocket and answers them with real HTTP requests, multipart
uploads included. It keeps what a user would see (messages, embeds, buttons, attachment bytes)
in memory so tests assert on that, and it does what real Discord does to bots: 429s that must
be honoured, 5xx that must be retried, the 3-second acknowledgement window, interaction tokens
that die, ``op 7`` reconnect requests and sockets that drop mid-job.

Every behaviour here follows Discord's documented API (and ``/work/shared/DISCORD-WIRE.md``);
where Discord would reject a request (too-long content, an embed over its limits, a duplicate
``custom_id``, a second acknowledgement), the emulator rejects it the same way, so a bot that
passes here does not fail on the real thing for those reasons.

Nothing in this module imports discord.py: it is a black box on purpose.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import mimetypes
import re
import secrets
import struct
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import WSMsgType, web

logger = logging.getLogger(__name__)

DISCORD_EPOCH_MS = 1420070400000
API_PREFIX = "/api/v10"

# Gateway opcodes.
OP_DISPATCH = 0
OP_HEARTBEAT = 1
OP_IDENTIFY = 2
OP_PRESENCE = 3
OP_VOICE_STATE = 4
OP_RESUME = 6
OP_RECONNECT = 7
OP_REQUEST_MEMBERS = 8
OP_INVALID_SESSION = 9
OP_HELLO = 10
OP_HEARTBEAT_ACK = 11

# Interaction types.
IT_PING = 1
IT_COMMAND = 2
IT_COMPONENT = 3
IT_AUTOCOMPLETE = 4
IT_MODAL_SUBMIT = 5

# Interaction callback types.
CB_PONG = 1
CB_MESSAGE = 4
CB_DEFERRED_MESSAGE = 5
CB_DEFERRED_UPDATE = 6
CB_UPDATE_MESSAGE = 7
CB_AUTOCOMPLETE = 8
CB_MODAL = 9

# Message flags.
FLAG_SUPPRESS_EMBEDS = 1 << 2
FLAG_EPHEMERAL = 1 << 6
FLAG_LOADING = 1 << 7
FLAG_SUPPRESS_NOTIFICATIONS = 1 << 12
FLAG_COMPONENTS_V2 = 1 << 15
SENDABLE_FLAGS = (
    FLAG_SUPPRESS_EMBEDS | FLAG_EPHEMERAL | FLAG_SUPPRESS_NOTIFICATIONS | FLAG_COMPONENTS_V2
)

# Message types.
MT_DEFAULT = 0
MT_REPLY = 19
MT_CHAT_INPUT_COMMAND = 20

# Intents the emulator honours when dispatching message events.
INTENT_GUILD_MESSAGES = 1 << 9
INTENT_DIRECT_MESSAGES = 1 << 12
INTENT_MESSAGE_CONTENT = 1 << 15

# Permission bits.
P_ADMINISTRATOR = 1 << 3
P_MANAGE_GUILD = 1 << 5
P_ADD_REACTIONS = 1 << 6
P_VIEW_CHANNEL = 1 << 10
P_SEND_MESSAGES = 1 << 11
P_MANAGE_MESSAGES = 1 << 13
P_EMBED_LINKS = 1 << 14
P_ATTACH_FILES = 1 << 15
P_READ_HISTORY = 1 << 16
P_USE_APP_COMMANDS = 1 << 31
EVERYONE_PERMISSIONS = (
    P_ADD_REACTIONS
    | P_VIEW_CHANNEL
    | P_SEND_MESSAGES
    | P_EMBED_LINKS
    | P_ATTACH_FILES
    | P_READ_HISTORY
    | P_USE_APP_COMMANDS
)
ALL_PERMISSIONS = (1 << 50) - 1

# Application command option types.
OPT_SUB_COMMAND = 1
OPT_SUB_COMMAND_GROUP = 2
OPT_STRING = 3
OPT_INTEGER = 4
OPT_BOOLEAN = 5
OPT_USER = 6
OPT_CHANNEL = 7
OPT_ROLE = 8
OPT_MENTIONABLE = 9
OPT_NUMBER = 10
OPT_ATTACHMENT = 11

# Discord's documented limits.
MAX_CONTENT = 2000
MAX_EMBEDS = 10
MAX_EMBED_TOTAL = 6000
MAX_ROWS = 5
MAX_BUTTONS_PER_ROW = 5
MAX_CUSTOM_ID = 100
MAX_BUTTON_LABEL = 80
DEFAULT_ATTACHMENT_LIMIT = 10 * 1024 * 1024
ACK_WINDOW_S = 3.0
TOKEN_TTL_S = 15 * 60.0
COMMAND_NAME_RE = re.compile(r"^[-_\w]{1,32}$")
MENTION_RE = re.compile(r"<@(!?|&)(\d{15,21})>")
EVERYONE_RE = re.compile(r"@(everyone|here)")


class Snowflakes:
    """Real-format snowflakes (time-based, increasing): ids sort and decode like Discord's."""

    def __init__(self) -> None:
        self._last = 0

    def next(self) -> int:
        candidate = (int(time.time() * 1000) - DISCORD_EPOCH_MS) << 22
        if candidate <= self._last:
            candidate = self._last + 1
        self._last = candidate
        return candidate


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat()


def png_size(data: bytes) -> tuple[int, int] | None:
    """Width and height from a PNG's IHDR chunk (what Discord reports for image attachments)."""
    if len(data) >= 24 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR":
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    return None


class APIError(Exception):
    """A Discord error response: HTTP status plus the JSON error body Discord sends."""

    def __init__(
        self, status: int, code: int, message: str, errors: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{status} {code} {message}")
        self.status = status
        self.body: dict[str, Any] = {"message": message, "code": code}
        if errors is not None:
            self.body["errors"] = errors


def form_error(path: str, code: str, message: str) -> APIError:
    """Discord's 50035 "Invalid Form Body" with the nested error tree for one field."""
    tree: dict[str, Any] = {"_errors": [{"code": code, "message": message}]}
    for key in reversed(path.split(".")):
        tree = {key: tree}
    return APIError(400, 50035, "Invalid Form Body", tree)


# --------------------------------------------------------------------------------------------
# The in-memory world
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class User:
    id: int
    username: str
    bot: bool = False
    global_name: str | None = None

    @property
    def mention(self) -> str:
        return f"<@{self.id}>"

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "username": self.username,
            "discriminator": "0",
            "global_name": self.global_name,
            "avatar": None,
            "bot": self.bot,
            "public_flags": 0,
            "flags": 0,
        }


@dataclasses.dataclass
class Role:
    id: int
    name: str
    permissions: int
    position: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "permissions": str(self.permissions),
            "position": self.position,
            "color": 0,
            "hoist": False,
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }


@dataclasses.dataclass
class Member:
    user: User
    role_ids: list[int]
    joined_at: float

    def payload(self) -> dict[str, Any]:
        return {
            "user": self.user.payload(),
            "roles": [str(r) for r in self.role_ids],
            "joined_at": _iso(self.joined_at),
            "deaf": False,
            "mute": False,
            "flags": 0,
            "nick": None,
            "avatar": None,
            "pending": False,
        }


@dataclasses.dataclass
class Channel:
    id: int
    name: str
    type: int = 0  # 0 guild text, 1 DM
    guild_id: int | None = None
    position: int = 0
    recipient: User | None = None
    # Permissions the bot lacks here (to emulate a channel the bot may not post in).
    bot_denied: int = 0

    def payload(self) -> dict[str, Any]:
        data: dict[str, Any] = {"id": str(self.id), "type": self.type}
        if self.type == 1:
            data["recipients"] = [self.recipient.payload()] if self.recipient else []
            data["last_message_id"] = None
            return data
        data.update(
            {
                "name": self.name,
                "position": self.position,
                "permission_overwrites": [],
                "nsfw": False,
                "parent_id": None,
                "topic": None,
                "rate_limit_per_user": 0,
                "last_message_id": None,
            }
        )
        if self.guild_id is not None:
            data["guild_id"] = str(self.guild_id)
        return data


@dataclasses.dataclass
class Guild:
    id: int
    name: str
    owner_id: int
    roles: dict[int, Role]
    channels: dict[int, Channel]
    members: dict[int, Member]

    def permissions_of(self, user_id: int) -> int:
        member = self.members.get(user_id)
        if member is None:
            return 0
        if user_id == self.owner_id:
            return ALL_PERMISSIONS
        perms = self.roles[self.id].permissions
        for role_id in member.role_ids:
            perms |= self.roles[role_id].permissions
        return ALL_PERMISSIONS if perms & P_ADMINISTRATOR else perms

    def payload(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "name": self.name,
            "icon": None,
            "owner_id": str(self.owner_id),
            "roles": [r.payload() for r in self.roles.values()],
            "channels": [c.payload() for c in self.channels.values()],
            "members": [m.payload() for m in self.members.values()],
            "member_count": len(self.members),
            "large": False,
            "unavailable": False,
            "features": [],
            "emojis": [],
            "stickers": [],
            "threads": [],
            "voice_states": [],
            "presences": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "preferred_locale": "en-US",
            "premium_tier": 0,
            "mfa_level": 0,
            "verification_level": 0,
            "explicit_content_filter": 0,
            "default_message_notifications": 0,
            "system_channel_id": None,
            "afk_channel_id": None,
            "afk_timeout": 300,
            "nsfw_level": 0,
            "joined_at": _iso(time.time()),
        }


@dataclasses.dataclass
class Attachment:
    id: int
    filename: str
    data: bytes
    content_type: str | None = None
    description: str | None = None
    # What the attachment's metadata claims when it is not the truth (a crafted upload whose
    # declared size is smaller than what the CDN serves); None: the real length.
    declared_size: int | None = None

    @property
    def size(self) -> int:
        return len(self.data) if self.declared_size is None else self.declared_size

    @property
    def image_size(self) -> tuple[int, int] | None:
        return png_size(self.data)

    def payload(self, cdn_base: str) -> dict[str, Any]:
        url = f"{cdn_base}/attachments/{self.id}/{self.filename}"
        data: dict[str, Any] = {
            "id": str(self.id),
            "filename": self.filename,
            "size": self.size,
            "url": url,
            "proxy_url": url,
        }
        if self.content_type:
            data["content_type"] = self.content_type
        if self.description is not None:
            data["description"] = self.description
        dims = self.image_size
        if dims is not None:
            data["width"], data["height"] = dims
            data.setdefault("content_type", "image/png")
        return data


@dataclasses.dataclass
class MessageVersion:
    """One state of a message, kept for every create and edit so tests can see progress edits."""

    at: float
    content: str
    embeds: list[dict[str, Any]]
    components: list[dict[str, Any]]
    attachment_ids: list[int]
    flags: int


@dataclasses.dataclass
class Message:
    id: int
    channel_id: int
    guild_id: int | None
    author: User
    created_at: float
    content: str = ""
    embeds: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    components: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    attachments: list[Attachment] = dataclasses.field(default_factory=list)
    flags: int = 0
    type: int = MT_DEFAULT
    edited_at: float | None = None
    webhook_id: int | None = None
    application_id: int | None = None
    interaction_id: int | None = None
    interaction_user: User | None = None
    interaction_type: int | None = None
    message_reference: dict[str, Any] | None = None
    allowed_mentions: dict[str, Any] | None = None
    mentions: list[int] = dataclasses.field(default_factory=list)
    mention_roles: list[int] = dataclasses.field(default_factory=list)
    mention_everyone: bool = False
    nonce: str | None = None
    deleted: bool = False
    history: list[MessageVersion] = dataclasses.field(default_factory=list)

    @property
    def ephemeral(self) -> bool:
        return bool(self.flags & FLAG_EPHEMERAL)

    @property
    def loading(self) -> bool:
        return bool(self.flags & FLAG_LOADING)

    @property
    def edits(self) -> int:
        return len(self.history) - 1

    def snapshot(self, at: float) -> None:
        self.history.append(
            MessageVersion(
                at=at,
                content=self.content,
                embeds=json.loads(json.dumps(self.embeds)),
                components=json.loads(json.dumps(self.components)),
                attachment_ids=[a.id for a in self.attachments],
                flags=self.flags,
            )
        )

    def buttons(self) -> list[dict[str, Any]]:
        """Every button on the message, in display order."""
        found: list[dict[str, Any]] = []

        def walk(items: Iterable[dict[str, Any]]) -> None:
            for item in items:
                if item.get("type") == 2:
                    found.append(item)
                walk(item.get("components", []))
                if "accessory" in item:
                    walk([item["accessory"]])

        walk(self.components)
        return found

    def text(self) -> str:
        """Everything a reader sees as text: content, embed titles, descriptions, fields, footer."""
        parts = [self.content]
        for embed in self.embeds:
            parts.append(embed.get("title", ""))
            parts.append(embed.get("description", ""))
            for field in embed.get("fields", []):
                parts.append(field.get("name", ""))
                parts.append(field.get("value", ""))
            parts.append((embed.get("footer") or {}).get("text", ""))
            parts.append((embed.get("author") or {}).get("name", ""))
        return "\n".join(p for p in parts if p)

    def payload(self, cdn_base: str, *, with_content: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": str(self.id),
            "channel_id": str(self.channel_id),
            "author": self.author.payload(),
            "content": self.content if with_content else "",
            "timestamp": _iso(self.created_at),
            "edited_timestamp": _iso(self.edited_at),
            "tts": False,
            "mention_everyone": self.mention_everyone,
            "mentions": [],
            "mention_roles": [str(r) for r in self.mention_roles],
            "attachments": [a.payload(cdn_base) for a in self.attachments],
            "embeds": self.embeds if with_content else [],
            "components": self.components if with_content else [],
            "pinned": False,
            "type": self.type,
            "flags": self.flags,
        }
        if self.webhook_id is not None:
            data["webhook_id"] = str(self.webhook_id)
        if self.application_id is not None:
            data["application_id"] = str(self.application_id)
        if self.message_reference is not None:
            data["message_reference"] = self.message_reference
        if self.nonce is not None:
            data["nonce"] = self.nonce
        if self.interaction_id is not None and self.interaction_user is not None:
            data["interaction_metadata"] = {
                "id": str(self.interaction_id),
                "type": self.interaction_type or IT_COMMAND,
                "user": self.interaction_user.payload(),
                "authorizing_integration_owners": {"0": str(self.guild_id or 0)},
            }
        return data


@dataclasses.dataclass
class Interaction:
    """One interaction as Discord tracks it: its token, its acknowledgement and its messages."""

    id: int
    token: str
    type: int
    user: User
    channel_id: int
    guild_id: int | None
    data: dict[str, Any]
    created_at: float
    message_id: int | None = None  # the message a component sits on
    dispatched_at: float | None = None
    acked_at: float | None = None
    ack_status: int | None = None
    callback_type: int | None = None
    callback_data: dict[str, Any] | None = None
    response_message_id: int | None = None
    followup_ids: list[int] = dataclasses.field(default_factory=list)
    expired_code: int | None = None
    autocomplete_choices: list[dict[str, Any]] | None = None
    modal: dict[str, Any] | None = None
    acked: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    @property
    def ack_latency(self) -> float | None:
        """Seconds from the INTERACTION_CREATE frame leaving here to the callback arriving."""
        if self.acked_at is None or self.dispatched_at is None:
            return None
        return self.acked_at - self.dispatched_at

    @property
    def answered(self) -> bool:
        """Discord accepted an acknowledgement (the user does not see "interaction failed")."""
        return self.ack_status is not None and 200 <= self.ack_status < 300


@dataclasses.dataclass
class RecordedRequest:
    at: float
    method: str
    path: str
    query: dict[str, str]
    status: int = 0
    json: Any = None
    files: list[tuple[str, str, bytes]] = dataclasses.field(default_factory=list)
    fault: str | None = None


@dataclasses.dataclass
class Fault:
    """Answer the next ``times`` requests matching ``method`` and ``path`` with an error.

    ``after_commit`` applies the request first and then answers the error, which is what a
    real 5xx can look like (the message was created, the response was lost): only idempotent
    requests, or messages sent with ``enforce_nonce``, survive that without duplicates.
    """

    method: str
    path: re.Pattern[str]
    status: int
    times: int = 1
    retry_after: float = 0.25
    is_global: bool = False
    after_commit: bool = False
    via: bool = True
    # None: any request; True: only multipart uploads (a final edit with the image); False: only
    # requests without files (progress edits).
    multipart: bool | None = None
    # For a 2xx "fault": apply the request, then hold the answer this long (a slow network, or
    # a response still in flight when the bot is stopped).
    hold_s: float = 0.0
    hits: int = 0

    def matches(self, method: str, path: str, content_type: str) -> bool:
        is_multipart = content_type.startswith("multipart/")
        return (
            self.hits < self.times
            and self.method in ("*", method)
            and self.path.search(path) is not None
            and (self.multipart is None or self.multipart == is_multipart)
        )


@dataclasses.dataclass
class GatewaySession:
    id: str
    intents: int
    seq: int = 0
    events: list[tuple[int, str]] = dataclasses.field(default_factory=list)
    ws: web.WebSocketResponse | None = None
    resumable: bool = True
    connections: int = 1
    resumes: int = 0
    send_lock: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)


@dataclasses.dataclass
class Stored:
    """What ``_parse_body`` reads from a request: the JSON payload and any uploaded files."""

    payload: dict[str, Any]
    files: dict[int, tuple[str, bytes, str | None]]


RECORD = web.RequestKey("record", RecordedRequest)
STORED = web.RequestKey("stored", Stored)


# --------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------


class DiscordEmulator:
    """Discord's REST API and gateway for one application, one guild and a few users.

    Start it with ``await emu.start()``; point discord.py at ``emu.api_base`` and
    ``emu.gateway_url``; drive it from the user's side with :meth:`slash`, :meth:`click`,
    :meth:`autocomplete` and :meth:`submit_modal`; break it with :meth:`fail_next`,
    :meth:`expire_interaction`, :meth:`request_reconnect` and :meth:`drop_gateway`.
    """

    def __init__(
        self, *, token: str = "emulator-bot-token", guild_name: str = "Test Server"
    ) -> None:
        self.token = token
        self.ids = Snowflakes()
        self.bot_user = User(self.ids.next(), "ImagineBot", bot=True)
        self.application_id = self.bot_user.id
        self.owner = User(self.ids.next(), "server-owner", global_name="Owner")
        self.users: dict[int, User] = {self.bot_user.id: self.bot_user, self.owner.id: self.owner}
        guild_id = self.ids.next()
        admin_role = Role(self.ids.next(), "Admin", P_ADMINISTRATOR | P_MANAGE_GUILD, 2)
        bot_role = Role(
            self.ids.next(),
            "ImagineBot",
            EVERYONE_PERMISSIONS | P_MANAGE_MESSAGES,
            1,
        )
        self.admin_role_id = admin_role.id
        now = time.time()
        self.guild = Guild(
            id=guild_id,
            name=guild_name,
            owner_id=self.owner.id,
            roles={
                guild_id: Role(guild_id, "@everyone", EVERYONE_PERMISSIONS, 0),
                admin_role.id: admin_role,
                bot_role.id: bot_role,
            },
            channels={},
            members={
                self.bot_user.id: Member(self.bot_user, [bot_role.id], now),
                self.owner.id: Member(self.owner, [], now),
            },
        )
        general = Channel(self.ids.next(), "general", 0, guild_id, 0)
        art = Channel(self.ids.next(), "art", 0, guild_id, 1)
        self.guild.channels = {general.id: general, art.id: art}
        self.channel = general
        self.dm_channels: dict[int, Channel] = {}
        self.messages: dict[int, Message] = {}
        self.interactions: dict[int, Interaction] = {}
        # Files members attached to slash commands (attachment options), served by the CDN.
        self.uploads: dict[int, Attachment] = {}
        self.cdn_downloads: list[int] = []  # attachment ids the bot downloaded, in order
        self._by_token: dict[str, Interaction] = {}
        self.global_commands: list[dict[str, Any]] = []
        self.guild_commands: dict[int, list[dict[str, Any]]] = {}
        self.requests: list[RecordedRequest] = []
        self.unknown_routes: list[str] = []
        self.faults: list[Fault] = []
        self.sessions: dict[str, GatewaySession] = {}
        self.identifies = 0
        self.ack_window_s = ACK_WINDOW_S
        self.token_ttl_s = TOKEN_TTL_S
        self.attachment_size_limit = DEFAULT_ATTACHMENT_LIMIT
        self.heartbeat_interval_ms = 41250
        self.heartbeat_ack_delay_s = 0.02
        self._tasks: set[asyncio.Future[None]] = set()
        self._nonces: dict[tuple[int, str], int] = {}
        self._runner: web.AppRunner | None = None
        self._changed: asyncio.Event | None = None
        self._user_names = itertools.count(1)
        self.port = 0
        self.host = "127.0.0.1"

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._changed = asyncio.Event()
        app = web.Application(middlewares=[self._middleware], client_max_size=64 * 1024 * 1024)
        self._add_routes(app)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        server = site._server
        assert server is not None and server.sockets  # type: ignore[attr-defined]
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        logger.info("Discord emulator listening on %s", self.base_url)

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for session in self.sessions.values():
            if session.ws is not None and not session.ws.closed:
                with contextlib.suppress(Exception):
                    await session.ws.close(code=1001)
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> DiscordEmulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def api_base(self) -> str:
        """What ``discord.http.Route.BASE`` must be set to."""
        return self.base_url + API_PREFIX

    @property
    def gateway_url(self) -> str:
        """What ``discord.gateway.DiscordWebSocket.DEFAULT_GATEWAY`` must be set to."""
        return f"ws://{self.host}:{self.port}/gateway"

    # ---- people and places -------------------------------------------------------------------

    def add_user(self, name: str | None = None, *, admin: bool = False) -> User:
        """A new guild member (an admin has the Administrator permission through a role)."""
        user = User(self.ids.next(), name or f"user{next(self._user_names)}")
        self.users[user.id] = user
        roles = [self.admin_role_id] if admin else []
        self.guild.members[user.id] = Member(user, roles, time.time())
        return user

    def add_channel(self, name: str) -> Channel:
        channel = Channel(self.ids.next(), name, 0, self.guild.id, len(self.guild.channels))
        self.guild.channels[channel.id] = channel
        return channel

    def _channel(self, channel_id: int) -> Channel | None:
        return self.guild.channels.get(channel_id) or self.dm_channels.get(channel_id)

    # ---- waiting -----------------------------------------------------------------------------

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    async def wait_until(
        self, predicate: Callable[[], Any], *, within: float = 15.0, what: str = "condition"
    ) -> Any:
        """Wait until ``predicate()`` is truthy (re-checked on every state change) and return it."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            result = predicate()
            if result:
                return result
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"timed out after {within}s waiting for {what}")
            assert self._changed is not None
            event = self._changed
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), min(remaining, 0.5))

    # ---- what a user sees --------------------------------------------------------------------

    def visible_messages(
        self, channel_id: int | None = None, *, viewer: User | None = None
    ) -> list[Message]:
        """A channel as ``viewer`` sees it, oldest first (ephemerals only to their own user)."""
        channel_id = channel_id or self.channel.id
        out = []
        for message in self.messages.values():
            if message.channel_id != channel_id or message.deleted:
                continue
            if message.ephemeral and (
                viewer is None
                or message.interaction_user is None
                or message.interaction_user.id != viewer.id
            ):
                continue
            out.append(message)
        return sorted(out, key=lambda m: m.id)

    def messages_for(self, interaction: Interaction) -> list[Message]:
        """The interaction's response message and its followups (including ephemeral ones)."""
        ids = [interaction.response_message_id, *interaction.followup_ids]
        return [self.messages[i] for i in ids if i is not None and i in self.messages]

    def response_message(self, interaction: Interaction) -> Message | None:
        if interaction.response_message_id is None:
            return None
        return self.messages.get(interaction.response_message_id)

    def requests_matching(self, method: str, pattern: str) -> list[RecordedRequest]:
        regex = re.compile(pattern)
        return [r for r in self.requests if r.method == method and regex.search(r.path)]

    # ---- fault injection ---------------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        path_pattern: str,
        *,
        status: int = 429,
        times: int = 1,
        retry_after: float = 0.25,
        is_global: bool = False,
        after_commit: bool = False,
        via: bool = True,
        multipart: bool | None = None,
    ) -> Fault:
        """Make the next ``times`` matching requests fail (429 with ``retry_after``, or a 5xx)."""
        fault = Fault(
            method.upper(),
            re.compile(path_pattern),
            status,
            times,
            retry_after,
            is_global,
            after_commit,
            via,
            multipart,
        )
        self.faults.append(fault)
        return fault

    def hold_next(
        self,
        method: str,
        path_pattern: str,
        seconds: float,
        *,
        times: int = 1,
        multipart: bool | None = None,
    ) -> Fault:
        """Apply the next matching requests at once but answer them ``seconds`` later."""
        fault = Fault(
            method.upper(),
            re.compile(path_pattern),
            200,
            times,
            multipart=multipart,
            hold_s=seconds,
        )
        self.faults.append(fault)
        return fault

    def expire_interaction(self, interaction: Interaction, code: int = 50027) -> None:
        """Kill the interaction's token as if its 15 minutes had passed.

        ``code`` picks the error later webhook calls get: 50027 (401 Invalid Webhook Token, what
        Discord answers for a dead interaction token), 10015 (404 Unknown Webhook) or 10062
        (404 Unknown interaction).
        """
        interaction.expired_code = code

    async def request_reconnect(self) -> None:
        """Send ``op 7`` (RECONNECT) on every live gateway socket, as Discord does at times."""
        for session in list(self.sessions.values()):
            if session.ws is not None and not session.ws.closed:
                await self._send(session, {"op": OP_RECONNECT, "d": None})

    async def drop_gateway(self, *, code: int | None = None) -> None:
        """Close every live gateway socket: with a close frame ``code``, or (None) by cutting the
        TCP connection with no close frame at all, like a network failure."""
        for session in list(self.sessions.values()):
            ws = session.ws
            if ws is None or ws.closed:
                continue
            session.ws = None
            if code is None:
                transport = ws._req.transport if ws._req is not None else None  # type: ignore[attr-defined]
                if transport is not None:
                    transport.abort()
            else:
                with contextlib.suppress(Exception):
                    await ws.close(code=code)
        self._notify()

    async def invalidate_sessions(self, resumable: bool = False) -> None:
        """Send ``op 9``; a non-resumable invalidation makes the client IDENTIFY again."""
        for session in list(self.sessions.values()):
            if session.ws is not None and not session.ws.closed:
                session.resumable = resumable
                await self._send(session, {"op": OP_INVALID_SESSION, "d": resumable})

    @property
    def live_sessions(self) -> list[GatewaySession]:
        return [s for s in self.sessions.values() if s.ws is not None and not s.ws.closed]

    @property
    def resumes(self) -> int:
        return sum(s.resumes for s in self.sessions.values())

    # ---- the user's side: interactions -------------------------------------------------------

    def _new_interaction(
        self,
        itype: int,
        user: User,
        data: dict[str, Any],
        channel_id: int | None,
        message_id: int | None = None,
    ) -> Interaction:
        channel_id = channel_id or self.channel.id
        interaction = Interaction(
            id=self.ids.next(),
            token="aW50ZXJhY3Rpb246" + secrets.token_urlsafe(48),
            type=itype,
            user=user,
            channel_id=channel_id,
            guild_id=self.guild.id if channel_id in self.guild.channels else None,
            data=data,
            created_at=time.monotonic(),
            message_id=message_id,
        )
        self.interactions[interaction.id] = interaction
        self._by_token[interaction.token] = interaction
        return interaction

    def _interaction_payload(self, interaction: Interaction) -> dict[str, Any]:
        channel = self._channel(interaction.channel_id)
        assert channel is not None
        payload: dict[str, Any] = {
            "id": str(interaction.id),
            "application_id": str(self.application_id),
            "type": interaction.type,
            "token": interaction.token,
            "version": 1,
            "data": interaction.data,
            "channel_id": str(channel.id),
            "channel": channel.payload(),
            "locale": "en-US",
            "entitlements": [],
            "authorizing_integration_owners": {"0": str(self.guild.id)},
            "attachment_size_limit": self.attachment_size_limit,
        }
        if interaction.guild_id is not None:
            member = self.guild.members[interaction.user.id]
            perms = self.guild.permissions_of(interaction.user.id)
            payload["guild_id"] = str(self.guild.id)
            payload["guild"] = {"id": str(self.guild.id), "locale": "en-US", "features": []}
            payload["guild_locale"] = "en-US"
            payload["context"] = 0
            payload["member"] = {**member.payload(), "permissions": str(perms)}
            payload["app_permissions"] = str(
                self.guild.permissions_of(self.bot_user.id) & ~channel.bot_denied
            )
        else:
            payload["user"] = interaction.user.payload()
            payload["context"] = 1
            payload["app_permissions"] = str(ALL_PERMISSIONS)
        if interaction.message_id is not None:
            message = self.messages[interaction.message_id]
            payload["message"] = message.payload(self.base_url)
        return payload

    async def _dispatch_interaction(self, interaction: Interaction) -> Interaction:
        await self.dispatch("INTERACTION_CREATE", self._interaction_payload(interaction))
        interaction.dispatched_at = time.monotonic()
        if not self.live_sessions:
            # Buffered for a resume: Discord's clock still runs from creation.
            interaction.dispatched_at = interaction.created_at
        return interaction

    def find_command(self, name: str) -> tuple[dict[str, Any], bool] | None:
        """A synced command by name: guild commands first (as Discord's client lists them)."""
        for command in self.guild_commands.get(self.guild.id, []):
            if command["name"] == name and command.get("type", 1) == 1:
                return command, True
        for command in self.global_commands:
            if command["name"] == name and command.get("type", 1) == 1:
                return command, False
        return None

    def _build_options(
        self,
        spec_options: list[dict[str, Any]],
        values: dict[str, Any],
        *,
        validate: bool,
        focused: str | None = None,
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        resolved: dict[str, Any] = {}
        options: list[dict[str, Any]] = []
        by_name = {o["name"]: o for o in spec_options}
        for name in values:
            if name not in by_name:
                raise ValueError(f"command has no option {name!r} (has {sorted(by_name)})")
        for spec in spec_options:
            name = spec["name"]
            if name not in values:
                if spec.get("required") and validate and focused is None:
                    raise ValueError(f"option {name!r} is required")
                continue
            value = values[name]
            otype = spec["type"]
            option: dict[str, Any] = {"name": name, "type": otype}
            if otype in (OPT_USER, OPT_MENTIONABLE) and isinstance(value, User):
                resolved.setdefault("users", {})[str(value.id)] = value.payload()
                member = self.guild.members.get(value.id)
                if member is not None:
                    mp = member.payload()
                    mp.pop("user")
                    mp["permissions"] = str(self.guild.permissions_of(value.id))
                    resolved.setdefault("members", {})[str(value.id)] = mp
                value = str(value.id)
            elif otype == OPT_CHANNEL and isinstance(value, Channel):
                resolved.setdefault("channels", {})[str(value.id)] = {
                    **value.payload(),
                    "permissions": str(ALL_PERMISSIONS),
                }
                value = str(value.id)
            elif otype == OPT_ROLE and isinstance(value, Role):
                resolved.setdefault("roles", {})[str(value.id)] = value.payload()
                value = str(value.id)
            elif otype == OPT_ATTACHMENT and isinstance(value, Attachment | tuple):
                upload = self.upload(*value) if isinstance(value, tuple) else value
                self.uploads[upload.id] = upload
                # resolved.attachments[id]: id, filename, size, url, proxy_url, content_type,
                # width and height, as discord.py's attachment transformer reads them.
                resolved.setdefault("attachments", {})[str(upload.id)] = upload.payload(
                    self.base_url
                )
                value = str(upload.id)
            elif validate and focused != name:
                self._check_option_value(spec, value)
            option["value"] = value
            if focused == name:
                option["focused"] = True
            options.append(option)
        return options, resolved

    @staticmethod
    def _check_option_value(spec: dict[str, Any], value: Any) -> None:
        """What Discord's client guarantees before it sends an option (type and choices).

        Ranges and lengths (``min_value``, ``max_length``…) are left to the bot on purpose:
        tests use this to send values a bot must refuse politely.
        """
        otype = spec["type"]
        name = spec["name"]
        ok = {
            OPT_STRING: isinstance(value, str),
            OPT_INTEGER: isinstance(value, int) and not isinstance(value, bool),
            OPT_BOOLEAN: isinstance(value, bool),
            OPT_NUMBER: isinstance(value, int | float) and not isinstance(value, bool),
        }.get(otype, True)
        if not ok:
            raise ValueError(f"option {name!r} of type {otype} cannot carry {value!r}")
        choices = spec.get("choices")
        if choices and value not in [c["value"] for c in choices]:
            raise ValueError(f"option {name!r} must be one of its choices, not {value!r}")

    def _command_data(
        self,
        name: str,
        options: dict[str, Any],
        *,
        subcommand: str | None,
        validate: bool,
        focused: str | None = None,
    ) -> dict[str, Any]:
        found = self.find_command(name)
        if found is None:
            raise ValueError(f"no synced command /{name}; did the bot sync its command tree?")
        command, is_guild = found
        data: dict[str, Any] = {"id": command["id"], "name": name, "type": 1}
        if is_guild:
            data["guild_id"] = str(self.guild.id)
        spec_options = command.get("options", [])
        if subcommand is not None:
            parts = subcommand.split()
            container = spec_options
            nested: list[dict[str, Any]] = []
            top = nested
            for part in parts:
                spec = next((o for o in container if o["name"] == part), None)
                if spec is None or spec["type"] not in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP):
                    raise ValueError(f"/{name} has no subcommand {part!r}")
                entry = {"name": part, "type": spec["type"], "options": []}
                nested.append(entry)
                nested = entry["options"]
                container = spec.get("options", [])
            built, resolved = self._build_options(
                container, options, validate=validate, focused=focused
            )
            nested.extend(built)
            data["options"] = top
        else:
            built, resolved = self._build_options(
                spec_options, options, validate=validate, focused=focused
            )
            data["options"] = built
        if resolved:
            data["resolved"] = resolved
        return data

    async def slash(
        self,
        user: User,
        command: str,
        /,
        *,
        sub: str | None = None,
        in_channel: Channel | None = None,
        validate: bool = True,
        options: dict[str, Any] | None = None,
        **values: Any,
    ) -> Interaction:
        """The user runs ``/command option:value…`` (``sub`` like ``"add"`` or ``"group add"``).

        Option values come as keywords, or in ``options`` for names that clash with the
        keywords here. Their types come from the commands the bot synced, as in Discord.
        """
        merged = {**(options or {}), **values}
        data = self._command_data(command, merged, subcommand=sub, validate=validate)
        channel_id = in_channel.id if in_channel else None
        interaction = self._new_interaction(IT_COMMAND, user, data, channel_id)
        return await self._dispatch_interaction(interaction)

    async def autocomplete(
        self,
        user: User,
        command: str,
        focused: str,
        /,
        *,
        sub: str | None = None,
        within: float = 5.0,
        options: dict[str, Any] | None = None,
        **values: Any,
    ) -> list[dict[str, Any]]:
        """The user types into option ``focused``; returns the choices the bot offered."""
        merged = {**(options or {}), **values}
        data = self._command_data(command, merged, subcommand=sub, validate=True, focused=focused)
        interaction = self._new_interaction(IT_AUTOCOMPLETE, user, data, None)
        await self._dispatch_interaction(interaction)
        await asyncio.wait_for(interaction.acked.wait(), within)
        return interaction.autocomplete_choices or []

    async def click(
        self,
        user: User,
        message: Message,
        *,
        label: str | None = None,
        custom_id: str | None = None,
        channel: Channel | None = None,
    ) -> Interaction:
        """The user clicks a button (by label or custom_id) on a message they can see."""
        message = self.messages[message.id]
        if message.deleted:
            raise ValueError("the message is gone")
        for button in message.buttons():
            if (custom_id is not None and button.get("custom_id") == custom_id) or (
                custom_id is None and label is not None and button.get("label") == label
            ):
                break
        else:
            raise ValueError(
                f"no button {label or custom_id!r} on message {message.id}; it has "
                f"{[b.get('label') for b in message.buttons()]}"
            )
        if button.get("disabled"):
            raise ValueError(f"button {button.get('label')!r} is disabled")
        if button.get("style") == 5:
            raise ValueError("link buttons open a URL and send no interaction")
        data = {"custom_id": button["custom_id"], "component_type": 2}
        interaction = self._new_interaction(
            IT_COMPONENT, user, data, message.channel_id, message_id=message.id
        )
        return await self._dispatch_interaction(interaction)

    async def select(
        self, user: User, message: Message, custom_id: str, values: list[str]
    ) -> Interaction:
        """The user picks ``values`` in a string select menu."""
        data = {"custom_id": custom_id, "component_type": 3, "values": values}
        interaction = self._new_interaction(
            IT_COMPONENT, user, data, message.channel_id, message_id=message.id
        )
        return await self._dispatch_interaction(interaction)

    async def submit_modal(self, opened_by: Interaction, values: dict[str, str]) -> Interaction:
        """The user fills in the modal the bot opened in answer to ``opened_by`` and submits it."""
        modal = opened_by.modal
        if modal is None:
            raise ValueError("the bot did not open a modal for this interaction")
        rows = []
        known: set[str] = set()

        def inputs(items: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
            for item in items:
                if item.get("type") == 4:
                    yield item
                yield from inputs(item.get("components", []))
                if "component" in item:
                    yield from inputs([item["component"]])

        for text_input in inputs(modal.get("components", [])):
            cid = text_input["custom_id"]
            known.add(cid)
            rows.append(
                {
                    "type": 1,
                    "components": [{"type": 4, "custom_id": cid, "value": values.get(cid, "")}],
                }
            )
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"the modal has no inputs {sorted(unknown)}")
        data = {"custom_id": modal["custom_id"], "components": rows}
        interaction = self._new_interaction(
            IT_MODAL_SUBMIT,
            opened_by.user,
            data,
            opened_by.channel_id,
            message_id=opened_by.message_id,
        )
        return await self._dispatch_interaction(interaction)

    async def wait_acked(self, interaction: Interaction, within: float = 5.0) -> Interaction:
        await asyncio.wait_for(interaction.acked.wait(), within)
        return interaction

    # ---- gateway -----------------------------------------------------------------------------

    async def dispatch(
        self, event: str, data: dict[str, Any], *, intent: int | None = None
    ) -> None:
        """Send a DISPATCH to every session (buffered for sessions whose socket is down)."""
        for session in list(self.sessions.values()):
            if not session.resumable and (session.ws is None or session.ws.closed):
                continue
            if intent is not None and not session.intents & intent:
                continue
            session.seq += 1
            frame = json.dumps({"op": OP_DISPATCH, "t": event, "s": session.seq, "d": data})
            session.events.append((session.seq, frame))
            if session.ws is not None and not session.ws.closed:
                async with session.send_lock:
                    with contextlib.suppress(ConnectionError, RuntimeError):
                        await session.ws.send_str(frame)

    async def _send(self, session: GatewaySession, payload: dict[str, Any]) -> None:
        ws = session.ws
        if ws is None or ws.closed:
            return
        async with session.send_lock:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps(payload))

    async def _gateway(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True, max_msg_size=0)
        await ws.prepare(request)
        await ws.send_str(
            json.dumps({"op": OP_HELLO, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        )
        session: GatewaySession | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                op = frame.get("op")
                data = frame.get("d")
                if op == OP_HEARTBEAT:
                    # After a real round trip: an instant ack on loopback can beat discord.py's
                    # heartbeat thread to recording its send, which it then reports as a
                    # heartbeat "41 s behind".
                    asyncio.get_running_loop().call_later(
                        self.heartbeat_ack_delay_s,
                        lambda ws=ws: self._spawn(self._ack_heartbeat(ws)),
                    )
                elif op == OP_IDENTIFY:
                    if data.get("token") != self.token:
                        await ws.close(code=4004, message=b"Authentication failed.")
                        break
                    session = await self._identify(ws, data)
                elif op == OP_RESUME:
                    session = await self._resume(ws, data)
                elif op == OP_REQUEST_MEMBERS and session is not None:
                    await self._send(
                        session,
                        {
                            "op": OP_DISPATCH,
                            "t": "GUILD_MEMBERS_CHUNK",
                            "s": None,
                            "d": {
                                "guild_id": str(self.guild.id),
                                "members": [m.payload() for m in self.guild.members.values()],
                                "chunk_index": 0,
                                "chunk_count": 1,
                                "nonce": data.get("nonce"),
                            },
                        },
                    )
                elif op in (OP_PRESENCE, OP_VOICE_STATE):
                    pass
                else:
                    await ws.close(code=4001, message=b"Unknown opcode.")
                    break
        finally:
            if session is not None and session.ws is ws:
                session.ws = None
                # A client that closes with 1000/1001 ends its session; anything else (4000 from
                # discord.py's reconnect, a dropped socket) leaves it resumable.
                if ws.close_code in (1000, 1001):
                    session.resumable = False
            self._notify()
        return ws

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _ack_heartbeat(ws: web.WebSocketResponse) -> None:
        if not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.send_str(json.dumps({"op": OP_HEARTBEAT_ACK}))

    async def _identify(self, ws: web.WebSocketResponse, data: dict[str, Any]) -> GatewaySession:
        self.identifies += 1
        session = GatewaySession(id=secrets.token_hex(16), intents=int(data.get("intents", 0)))
        session.ws = ws
        self.sessions[session.id] = session
        ready = {
            "v": 10,
            "user": self.bot_user.payload(),
            "guilds": [{"id": str(self.guild.id), "unavailable": True}],
            "session_id": session.id,
            "resume_gateway_url": self.gateway_url,
            "session_type": "normal",
            "private_channels": [],
            "relationships": [],
            "application": {"id": str(self.application_id), "flags": 0},
            "shard": [0, 1],
        }
        for event, payload in (("READY", ready), ("GUILD_CREATE", self.guild.payload())):
            session.seq += 1
            frame = json.dumps({"op": OP_DISPATCH, "t": event, "s": session.seq, "d": payload})
            session.events.append((session.seq, frame))
            async with session.send_lock:
                await ws.send_str(frame)
        self._notify()
        return session

    async def _resume(
        self, ws: web.WebSocketResponse, data: dict[str, Any]
    ) -> GatewaySession | None:
        session = self.sessions.get(data.get("session_id", ""))
        if session is None or not session.resumable or data.get("token") != self.token:
            await ws.send_str(json.dumps({"op": OP_INVALID_SESSION, "d": False}))
            return None
        old = session.ws
        session.ws = ws
        session.resumes += 1
        session.connections += 1
        if old is not None and not old.closed:
            with contextlib.suppress(Exception):
                await old.close(code=4000)
        last = data.get("seq") or 0
        async with session.send_lock:
            for seq, frame in session.events:
                if seq > last:
                    await ws.send_str(frame)
            session.seq += 1
            resumed = {"op": OP_DISPATCH, "t": "RESUMED", "s": session.seq, "d": {}}
            await ws.send_str(json.dumps(resumed))
        self._notify()
        return session

    # ---- REST plumbing -----------------------------------------------------------------------

    @staticmethod
    def _json(status: int, body: Any) -> web.Response:
        # Exactly "application/json": discord.py treats anything else (even "; charset=utf-8")
        # as text and then cannot read error codes or retry_after.
        return web.Response(
            status=status,
            body=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )

    @web.middleware
    async def _middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if request.path == "/gateway" or request.path.startswith("/attachments/"):
            return await handler(request)
        record = RecordedRequest(
            at=time.monotonic(),
            method=request.method,
            path=request.path,
            query=dict(request.query),
        )
        self.requests.append(record)
        path = request.path.removeprefix(API_PREFIX)
        ctype = request.headers.get("Content-Type", "")
        fault = next((f for f in self.faults if f.matches(request.method, path, ctype)), None)
        response: web.StreamResponse
        try:
            if fault is not None and fault.status < 300:
                fault.hits += 1
                record.fault = f"held {fault.hold_s}s"
                request[RECORD] = record
                response = await handler(request)
                self._notify()
                await asyncio.sleep(fault.hold_s)
            elif fault is not None:
                fault.hits += 1
                record.fault = f"{fault.status}"
                if fault.after_commit:
                    request[RECORD] = record
                    await handler(request)
                    record.fault = f"{fault.status} after commit"
                else:
                    await self._read_body(request, record)
                response = self._fault_response(fault)
            else:
                request[RECORD] = record
                response = await handler(request)
        except APIError as exc:
            response = self._json(exc.status, exc.body)
        except web.HTTPException as exc:
            response = self._json(exc.status, {"message": f"{exc.status}: {exc.reason}", "code": 0})
        record.status = response.status
        self._notify()
        return response

    def _fault_response(self, fault: Fault) -> web.Response:
        if fault.status == 429:
            response = self._json(
                429,
                {
                    "message": "You are being rate limited.",
                    "retry_after": fault.retry_after,
                    "global": fault.is_global,
                },
            )
            if fault.via:  # Discord's own 429s come through its proxy; a bare 429 is a ban
                response.headers["Via"] = "1.1 google"
            response.headers["Retry-After"] = str(max(1, round(fault.retry_after)))
            response.headers["X-RateLimit-Scope"] = "global" if fault.is_global else "user"
            if fault.is_global:
                response.headers["X-RateLimit-Global"] = "true"
            return response
        return self._json(fault.status, {"message": f"{fault.status}: Server Error", "code": 0})

    async def _read_body(self, request: web.Request, record: RecordedRequest) -> Stored:
        """Read a JSON or multipart (``payload_json`` + ``files[n]``) body the way Discord does."""
        if STORED in request:
            return request[STORED]  # type: ignore[no-any-return]
        payload: dict[str, Any] = {}
        files: dict[int, tuple[str, bytes, str | None]] = {}
        ctype = request.headers.get("Content-Type", "")
        if ctype.startswith("multipart/form-data"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                name = part.name or ""  # type: ignore[union-attr]
                raw = await part.read()  # type: ignore[union-attr]
                if name == "payload_json":
                    payload = json.loads(raw)
                else:
                    match = re.fullmatch(r"files\[(\d+)\]|file(\d*)", name)
                    if match is None:
                        raise form_error(name, "UNKNOWN_FIELD", "Unknown multipart field.")
                    index = int(match.group(1) or match.group(2) or 0)
                    filename = part.filename or f"file{index}"  # type: ignore[union-attr]
                    part_type = part.headers.get("Content-Type")  # type: ignore[union-attr]
                    files[index] = (filename, bytes(raw), part_type)
                    record.files.append((name, filename, bytes(raw)))
        else:
            raw = await request.read()
            if raw:
                if ctype != "application/json":
                    raise APIError(400, 50109, "The request body contains invalid JSON.")
                try:
                    payload = json.loads(raw)
                except ValueError as exc:
                    raise APIError(400, 50109, "The request body contains invalid JSON.") from exc
        record.json = payload
        stored = Stored(payload, files)
        request[STORED] = stored
        return stored

    def _check_bot_auth(self, request: web.Request) -> None:
        if request.headers.get("Authorization") != f"Bot {self.token}":
            raise APIError(401, 0, "401: Unauthorized")

    def _add_routes(self, app: web.Application) -> None:
        p = API_PREFIX
        r = app.router
        r.add_get("/gateway", self._gateway)
        r.add_get("/attachments/{attachment_id}/{filename}", self._cdn)
        r.add_get(p + "/gateway", self._get_gateway)
        r.add_get(p + "/gateway/bot", self._get_gateway)
        r.add_get(p + "/users/@me", self._get_me)
        r.add_get(p + "/oauth2/applications/@me", self._get_application)
        r.add_get(p + "/applications/@me", self._get_application)
        r.add_get(p + "/users/{user_id}", self._get_user)
        r.add_post(p + "/users/@me/channels", self._create_dm)
        r.add_get(p + "/applications/{app_id}/commands", self._get_commands)
        r.add_put(p + "/applications/{app_id}/commands", self._put_commands)
        r.add_get(p + "/applications/{app_id}/guilds/{guild_id}/commands", self._get_commands)
        r.add_put(p + "/applications/{app_id}/guilds/{guild_id}/commands", self._put_commands)
        r.add_post(p + "/interactions/{interaction_id}/{token}/callback", self._callback)
        hook = p + "/webhooks/{app_id}/{token}"
        r.add_post(hook, self._webhook_execute)
        r.add_get(hook + "/messages/{message_id}", self._webhook_get)
        r.add_patch(hook + "/messages/{message_id}", self._webhook_edit)
        r.add_delete(hook + "/messages/{message_id}", self._webhook_delete)
        r.add_get(p + "/channels/{channel_id}", self._get_channel)
        r.add_get(p + "/channels/{channel_id}/messages", self._get_messages)
        r.add_post(p + "/channels/{channel_id}/messages", self._channel_send)
        r.add_get(p + "/channels/{channel_id}/messages/{message_id}", self._channel_get)
        r.add_patch(p + "/channels/{channel_id}/messages/{message_id}", self._channel_edit)
        r.add_delete(p + "/channels/{channel_id}/messages/{message_id}", self._channel_delete)
        r.add_post(p + "/channels/{channel_id}/typing", self._typing)
        r.add_get(p + "/guilds/{guild_id}", self._get_guild)
        r.add_get(p + "/guilds/{guild_id}/channels", self._get_guild_channels)
        r.add_get(p + "/guilds/{guild_id}/roles", self._get_roles)
        r.add_get(p + "/guilds/{guild_id}/members/{user_id}", self._get_member)
        r.add_route("*", "/{tail:.*}", self._unknown)

    async def _unknown(self, request: web.Request) -> web.Response:
        self.unknown_routes.append(f"{request.method} {request.path}")
        logger.warning("emulator: unknown route %s %s", request.method, request.path)
        return self._json(404, {"message": "404: Not Found", "code": 0})

    # ---- REST: identity and guild ------------------------------------------------------------

    async def _get_gateway(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        return self._json(
            200,
            {
                "url": self.gateway_url,
                "shards": 1,
                "session_start_limit": {
                    "total": 1000,
                    "remaining": 1000,
                    "reset_after": 0,
                    "max_concurrency": 1,
                },
            },
        )

    async def _get_me(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        return self._json(200, {**self.bot_user.payload(), "verified": True, "mfa_enabled": False})

    async def _get_application(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        return self._json(
            200,
            {
                "id": str(self.application_id),
                "name": self.bot_user.username,
                "description": "",
                "icon": None,
                "bot_public": True,
                "bot_require_code_grant": False,
                "owner": self.owner.payload(),
                "verify_key": "0" * 64,
                "flags": 0,
                "team": None,
                "bot": self.bot_user.payload(),
                "summary": "",
                "approximate_guild_count": 1,
            },
        )

    async def _get_user(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        user = self.users.get(int(request.match_info["user_id"]))
        if user is None:
            raise APIError(404, 10013, "Unknown User")
        return self._json(200, user.payload())

    async def _create_dm(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        stored = await self._read_body(request, request[RECORD])
        user = self.users.get(int(stored.payload.get("recipient_id", 0)))
        if user is None:
            raise form_error("recipient_id", "USER_NOT_FOUND", "Unknown User")
        channel = next((c for c in self.dm_channels.values() if c.recipient is user), None)
        if channel is None:
            channel = Channel(self.ids.next(), "", 1, None, 0, recipient=user)
            self.dm_channels[channel.id] = channel
        return self._json(200, channel.payload())

    def _guild_or_404(self, request: web.Request) -> Guild:
        if int(request.match_info["guild_id"]) != self.guild.id:
            raise APIError(404, 10004, "Unknown Guild")
        return self.guild

    async def _get_guild(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        guild = self._guild_or_404(request)
        data = guild.payload()
        for key in ("channels", "members", "threads", "voice_states", "presences"):
            data.pop(key, None)
        return self._json(200, data)

    async def _get_guild_channels(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        guild = self._guild_or_404(request)
        return self._json(200, [c.payload() for c in guild.channels.values()])

    async def _get_roles(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        guild = self._guild_or_404(request)
        return self._json(200, [r.payload() for r in guild.roles.values()])

    async def _get_member(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        guild = self._guild_or_404(request)
        member = guild.members.get(int(request.match_info["user_id"]))
        if member is None:
            raise APIError(404, 10007, "Unknown Member")
        return self._json(200, member.payload())

    # ---- REST: application commands ----------------------------------------------------------

    def _app_or_404(self, request: web.Request) -> None:
        if int(request.match_info["app_id"]) != self.application_id:
            raise APIError(404, 10002, "Unknown Application")

    async def _get_commands(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        self._app_or_404(request)
        if "guild_id" in request.match_info:
            guild = self._guild_or_404(request)
            return self._json(200, self.guild_commands.get(guild.id, []))
        return self._json(200, self.global_commands)

    async def _put_commands(self, request: web.Request) -> web.Response:
        self._check_bot_auth(request)
        self._app_or_404(request)
        stored = await self._read_body(request, request[RECORD])
        commands = stored.payload
        if not isinstance(commands, list):
            raise form_error("_root", "BASE_TYPE_ARRAY", "Must be an array.")
        guild_id = self._guild_or_404(request).id if "guild_id" in request.match_info else None
        existing = self.guild_commands.get(guild_id, []) if guild_id else self.global_commands
        ids = {(c["name"], c.get("type", 1)): c["id"] for c in existing}
        seen: set[tuple[str, int]] = set()
        out = []
        for index, command in enumerate(commands):
            self._validate_command(command, f"{index}")
            key = (command["name"], command.get("type", 1))
            if key in seen:
                raise form_error(
                    f"{index}.name", "APPLICATION_COMMANDS_DUPLICATE_NAME", "Duplicate name"
                )
            seen.add(key)
            saved = {
                **command,
                "id": ids.get(key) or str(self.ids.next()),
                "application_id": str(self.application_id),
                "version": str(self.ids.next()),
                "type": command.get("type", 1),
            }
            if guild_id:
                saved["guild_id"] = str(guild_id)
            out.append(saved)
        if guild_id:
            self.guild_commands[guild_id] = out
        else:
            self.global_commands = out
        return self._json(200, out)

    def _validate_command(self, command: dict[str, Any], path: str) -> None:
        """Discord's checks on a command definition (names, lengths, counts, option order)."""
        ctype = command.get("type", 1)
        name = command.get("name", "")
        if ctype == 1 and (not COMMAND_NAME_RE.fullmatch(name) or name != name.lower()):
            raise form_error(f"{path}.name", "APPLICATION_COMMAND_INVALID_NAME", "Invalid name")
        if ctype == 1 and not 1 <= len(command.get("description", "")) <= 100:
            raise form_error(
                f"{path}.description",
                "BASE_TYPE_BAD_LENGTH",
                "Must be between 1 and 100 in length.",
            )
        self._validate_options(command.get("options") or [], f"{path}.options")

    def _validate_options(self, options: list[dict[str, Any]], path: str) -> None:
        if len(options) > 25:
            raise form_error(path, "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length.")
        names: set[str] = set()
        seen_optional = False
        for index, option in enumerate(options):
            where = f"{path}.{index}"
            name = option.get("name", "")
            if not COMMAND_NAME_RE.fullmatch(name) or name != name.lower():
                raise form_error(
                    f"{where}.name", "APPLICATION_COMMAND_INVALID_NAME", "Invalid name"
                )
            if name in names:
                raise form_error(
                    f"{where}.name", "APPLICATION_COMMAND_OPTIONS_NAME_ALREADY_EXISTS", "Duplicate"
                )
            names.add(name)
            if not 1 <= len(option.get("description", "")) <= 100:
                raise form_error(
                    f"{where}.description",
                    "BASE_TYPE_BAD_LENGTH",
                    "Must be between 1 and 100 in length.",
                )
            if option.get("type") in (OPT_SUB_COMMAND, OPT_SUB_COMMAND_GROUP):
                self._validate_options(option.get("options") or [], f"{where}.options")
                continue
            if option.get("required"):
                if seen_optional:
                    raise form_error(
                        f"{where}.required",
                        "APPLICATION_COMMAND_OPTIONS_REQUIRED_INVALID",
                        "Required options must be placed before non-required options",
                    )
            else:
                seen_optional = True
            choices = option.get("choices") or []
            if len(choices) > 25:
                raise form_error(
                    f"{where}.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            if choices and option.get("autocomplete"):
                raise form_error(
                    f"{where}.autocomplete",
                    "APPLICATION_COMMAND_OPTION_AUTOCOMPLETE_CHOICES",
                    "Autocomplete cannot be used with choices",
                )
            for cindex, choice in enumerate(choices):
                if not 1 <= len(choice.get("name", "")) <= 100:
                    raise form_error(
                        f"{where}.choices.{cindex}.name",
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 100 in length.",
                    )

    # ---- message validation and storage ------------------------------------------------------

    def _validate_message_body(self, payload: dict[str, Any], files: dict[int, Any]) -> None:
        """Discord's limits on a message body; violating any is a 400, and the edit is lost."""
        content = payload.get("content")
        if content is not None and not isinstance(content, str):
            raise form_error("content", "BASE_TYPE_STRING", "Must be a string.")
        if content and len(content) > MAX_CONTENT:
            raise form_error(
                "content", "BASE_TYPE_MAX_LENGTH", f"Must be {MAX_CONTENT} or fewer in length."
            )
        embeds = payload.get("embeds") or []
        if len(embeds) > MAX_EMBEDS:
            raise form_error("embeds", "BASE_TYPE_MAX_LENGTH", "Must be 10 or fewer in length.")
        total = 0
        for index, embed in enumerate(embeds):
            total += self._validate_embed(embed, f"embeds.{index}")
        if total > MAX_EMBED_TOTAL:
            raise form_error(
                "embeds", "MAX_EMBED_SIZE_EXCEEDED", "Embed size exceeds maximum size of 6000"
            )
        self._validate_components(
            payload.get("components") or [], bool(payload.get("flags", 0) & FLAG_COMPONENTS_V2)
        )
        flags = payload.get("flags")
        if flags is not None and flags & ~SENDABLE_FLAGS:
            raise form_error("flags", "MESSAGE_FLAGS_INVALID", "Invalid flags")
        for index, (_, data, _) in files.items():
            if len(data) > self.attachment_size_limit:
                raise APIError(413, 40005, "Request entity too large")
            del index
        allowed = payload.get("allowed_mentions")
        if allowed is not None:
            parse = allowed.get("parse", [])
            for kind in ("users", "roles"):
                if kind in parse and allowed.get(kind):
                    raise form_error(
                        f"allowed_mentions.{kind}",
                        "MESSAGE_ALLOWED_MENTIONS_PARSE_EXCLUSIVE",
                        f'parse:["{kind}"] and {kind}: [ids...] are mutually exclusive.',
                    )
            if len(allowed.get("users", [])) > 100 or len(allowed.get("roles", [])) > 100:
                raise form_error("allowed_mentions", "BASE_TYPE_MAX_LENGTH", "Too many ids")
        for index, item in enumerate(payload.get("attachments") or []):
            if "id" not in item:
                raise form_error(
                    f"attachments.{index}.id", "BASE_TYPE_REQUIRED", "This field is required"
                )

    @staticmethod
    def _validate_embed(embed: dict[str, Any], path: str) -> int:
        limits = {"title": 256, "description": 4096}
        size = 0
        for key, limit in limits.items():
            value = embed.get(key)
            if value is None:
                continue
            if len(value) > limit:
                raise form_error(
                    f"{path}.{key}", "BASE_TYPE_MAX_LENGTH", f"Must be {limit} or fewer in length."
                )
            size += len(value)
        fields = embed.get("fields") or []
        if len(fields) > 25:
            raise form_error(
                f"{path}.fields", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
            )
        for index, field in enumerate(fields):
            for key, limit in (("name", 256), ("value", 1024)):
                value = field.get(key)
                if not value or not str(value).strip():
                    raise form_error(
                        f"{path}.fields.{index}.{key}",
                        "BASE_TYPE_REQUIRED",
                        "This field is required",
                    )
                if len(value) > limit:
                    raise form_error(
                        f"{path}.fields.{index}.{key}",
                        "BASE_TYPE_MAX_LENGTH",
                        f"Must be {limit} or fewer in length.",
                    )
                size += len(value)
        footer = (embed.get("footer") or {}).get("text")
        if footer is not None:
            if len(footer) > 2048:
                raise form_error(
                    f"{path}.footer.text",
                    "BASE_TYPE_MAX_LENGTH",
                    "Must be 2048 or fewer in length.",
                )
            size += len(footer)
        author = (embed.get("author") or {}).get("name")
        if author is not None:
            if len(author) > 256:
                raise form_error(
                    f"{path}.author.name", "BASE_TYPE_MAX_LENGTH", "Must be 256 or fewer in length."
                )
            size += len(author)
        for key in ("url",):
            value = embed.get(key)
            if value is not None and not re.match(r"^https?://", value):
                raise form_error(f"{path}.{key}", "URL_TYPE_INVALID_URL", "Not a well formed URL.")
        for key in ("image", "thumbnail"):
            url = (embed.get(key) or {}).get("url")
            if url is not None and not re.match(r"^(https?|attachment)://", url):
                raise form_error(
                    f"{path}.{key}.url", "URL_TYPE_INVALID_URL", "Not a well formed URL."
                )
        return size

    @staticmethod
    def _validate_components(components: list[dict[str, Any]], v2: bool) -> None:
        if not v2 and len(components) > MAX_ROWS:
            raise form_error("components", "BASE_TYPE_MAX_LENGTH", "Must be 5 or fewer in length.")
        custom_ids: set[str] = set()

        def check_interactive(item: dict[str, Any], where: str) -> None:
            ctype = item.get("type")
            if ctype == 2:
                label = item.get("label")
                if label is not None and len(label) > MAX_BUTTON_LABEL:
                    raise form_error(
                        f"{where}.label", "BASE_TYPE_MAX_LENGTH", "Must be 80 or fewer in length."
                    )
                if not label and not item.get("emoji"):
                    raise form_error(
                        where, "COMPONENT_BUTTON_LABEL_OR_EMOJI", "A label or emoji is required"
                    )
                if item.get("style") == 5:
                    if not item.get("url") or "custom_id" in item:
                        raise form_error(
                            where,
                            "BUTTON_COMPONENT_URL_REQUIRED",
                            "Link buttons need a url and no custom_id",
                        )
                    return
            cid = item.get("custom_id")
            if ctype in (2, 3, 5, 6, 7, 8):
                if not cid:
                    raise form_error(
                        f"{where}.custom_id", "BASE_TYPE_REQUIRED", "This field is required"
                    )
                if len(cid) > MAX_CUSTOM_ID:
                    raise form_error(
                        f"{where}.custom_id",
                        "BASE_TYPE_MAX_LENGTH",
                        "Must be 100 or fewer in length.",
                    )
                if cid in custom_ids:
                    raise form_error(
                        f"{where}.custom_id",
                        "COMPONENT_CUSTOM_ID_DUPLICATED",
                        "Component custom id cannot be duplicated",
                    )
                custom_ids.add(cid)
            if ctype == 3 and len(item.get("options") or []) > 25:
                raise form_error(
                    f"{where}.options", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )

        def walk(items: list[dict[str, Any]], where: str) -> None:
            for index, item in enumerate(items):
                here = f"{where}.{index}"
                if item.get("type") == 1:
                    children = item.get("components") or []
                    if not children:
                        raise form_error(
                            f"{here}.components",
                            "BASE_TYPE_MIN_LENGTH",
                            "Must be 1 or more in length.",
                        )
                    buttons = [c for c in children if c.get("type") == 2]
                    if len(children) > MAX_BUTTONS_PER_ROW or (
                        buttons and len(buttons) != len(children)
                    ):
                        raise form_error(
                            f"{here}.components",
                            "BASE_TYPE_MAX_LENGTH",
                            "Must be 5 or fewer in length.",
                        )
                    walk(children, f"{here}.components")
                else:
                    check_interactive(item, here)
                    if "components" in item:
                        walk(item["components"], f"{here}.components")
                    if "accessory" in item:
                        walk([item["accessory"]], f"{here}.accessory")

        walk(components, "components")

    def _mentions(self, message: Message, allowed: dict[str, Any] | None) -> None:
        """Who the content would ping, after ``allowed_mentions`` (embeds never ping)."""
        content = message.content or ""
        parse = {"users", "roles", "everyone"} if allowed is None else set(allowed.get("parse", []))
        allowed_users = {int(u) for u in (allowed or {}).get("users", [])}
        allowed_roles = {int(r) for r in (allowed or {}).get("roles", [])}
        users: list[int] = []
        roles: list[int] = []
        for kind, raw_id in MENTION_RE.findall(content):
            target = int(raw_id)
            if kind == "&":
                if ("roles" in parse or target in allowed_roles) and target in self.guild.roles:
                    roles.append(target)
            elif ("users" in parse or target in allowed_users) and target in self.users:
                users.append(target)
        message.mentions = list(dict.fromkeys(users))
        message.mention_roles = list(dict.fromkeys(roles))
        message.mention_everyone = "everyone" in parse and bool(EVERYONE_RE.search(content))

    def _apply_body(self, message: Message, stored: Stored, *, creating: bool, now: float) -> None:
        payload = stored.payload
        if "content" in payload:
            message.content = payload["content"] or ""
        if "embeds" in payload:
            message.embeds = payload["embeds"] or []
        elif "embed" in payload:
            message.embeds = [payload["embed"]] if payload["embed"] else []
        if "components" in payload:
            message.components = payload["components"] or []
        if payload.get("flags") is not None:
            # Ephemerality is fixed when a message is created; an edit cannot change it.
            fixed = FLAG_LOADING if creating else FLAG_LOADING | FLAG_EPHEMERAL
            settable = SENDABLE_FLAGS if creating else SENDABLE_FLAGS & ~FLAG_EPHEMERAL
            message.flags = (message.flags & fixed) | (payload["flags"] & settable)
        new_files = dict(stored.files)
        if "attachments" in payload and payload["attachments"] is not None:
            existing = {a.id: a for a in message.attachments}
            kept: list[Attachment] = []
            for index, item in enumerate(payload["attachments"]):
                ident = int(item["id"])
                if ident in new_files:
                    filename, data, part_type = new_files.pop(ident)
                    kept.append(
                        Attachment(
                            self.ids.next(),
                            item.get("filename") or filename,
                            data,
                            part_type if part_type != "application/octet-stream" else None,
                            item.get("description"),
                        )
                    )
                elif ident in existing:
                    kept.append(existing[ident])
                else:
                    raise form_error(
                        f"attachments.{index}.id", "ATTACHMENT_NOT_FOUND", "Unknown attachment"
                    )
            message.attachments = kept
        for filename, data, part_type in new_files.values():
            # Files with no entry in ``attachments`` are added as they are.
            message.attachments.append(Attachment(self.ids.next(), filename, data, part_type))
        if "allowed_mentions" in payload:
            message.allowed_mentions = payload["allowed_mentions"]
        if creating or "content" in payload or "allowed_mentions" in payload:
            self._mentions(message, message.allowed_mentions)
        if not creating:
            message.flags &= ~FLAG_LOADING
            message.edited_at = time.time()
        if (
            not message.content
            and not message.embeds
            and not message.attachments
            and not message.components
            and not message.loading
        ):
            raise APIError(400, 50006, "Cannot send an empty message")
        message.snapshot(now)

    async def _store_new(
        self,
        channel: Channel,
        stored: Stored,
        *,
        interaction: Interaction | None = None,
        mtype: int = MT_DEFAULT,
        loading: bool = False,
    ) -> Message:
        payload = stored.payload
        self._validate_message_body(payload, stored.files)
        message = Message(
            id=self.ids.next(),
            channel_id=channel.id,
            guild_id=channel.guild_id,
            author=self.bot_user,
            created_at=time.time(),
            type=mtype,
        )
        if interaction is not None:
            message.webhook_id = self.application_id
            message.application_id = self.application_id
            message.interaction_id = interaction.id
            message.interaction_user = interaction.user
            message.interaction_type = interaction.type
        if loading:
            message.flags |= FLAG_LOADING
        reference = payload.get("message_reference")
        if reference is not None:
            ref_id = int(reference.get("message_id", 0))
            target = self.messages.get(ref_id)
            if target is None or target.deleted or target.channel_id != channel.id:
                if reference.get("fail_if_not_exists", True):
                    raise form_error(
                        "message_reference", "MESSAGE_REFERENCE_UNKNOWN_MESSAGE", "Unknown message"
                    )
            else:
                message.message_reference = {
                    "type": reference.get("type", 0),
                    "message_id": str(ref_id),
                    "channel_id": str(channel.id),
                    "guild_id": str(channel.guild_id) if channel.guild_id else None,
                }
                message.type = MT_REPLY
        self._apply_body(message, stored, creating=True, now=time.monotonic())
        if message.ephemeral and interaction is None:
            raise form_error("flags", "MESSAGE_FLAGS_INVALID", "Ephemeral needs an interaction")
        self.messages[message.id] = message
        await self._message_event("MESSAGE_CREATE", message)
        return message

    async def _edit(self, message: Message, stored: Stored) -> Message:
        self._validate_message_body(stored.payload, stored.files)
        self._apply_body(message, stored, creating=False, now=time.monotonic())
        await self._message_event("MESSAGE_UPDATE", message)
        return message

    async def _message_event(self, event: str, message: Message) -> None:
        if message.ephemeral:
            return
        intent = INTENT_DIRECT_MESSAGES if message.guild_id is None else INTENT_GUILD_MESSAGES
        data = message.payload(self.base_url)
        if message.guild_id is not None:
            data["guild_id"] = str(message.guild_id)
        await self.dispatch(event, data, intent=intent)

    def upload(
        self,
        filename: str,
        data: bytes,
        content_type: str | None = None,
        *,
        declared_size: int | None = None,
    ) -> Attachment:
        """A file a member attaches to a slash command (pass it, or ``(filename, data)``, as
        the value of an attachment option). The content type is what Discord guesses from the
        file name unless given; ``declared_size`` makes the metadata lie about the size."""
        if content_type is None:
            content_type = mimetypes.guess_type(filename)[0]
        return Attachment(
            self.ids.next(), filename, data, content_type, declared_size=declared_size
        )

    async def _cdn(self, request: web.Request) -> web.Response:
        ident = int(request.match_info["attachment_id"])
        upload = self.uploads.get(ident)
        if upload is not None:
            self.cdn_downloads.append(ident)
            return web.Response(
                body=upload.data,
                headers={"Content-Type": upload.content_type or "application/octet-stream"},
            )
        for message in self.messages.values():
            for attachment in message.attachments:
                if attachment.id == ident and not message.deleted:
                    return web.Response(
                        body=attachment.data,
                        headers={
                            "Content-Type": attachment.content_type or "application/octet-stream"
                        },
                    )
        return web.Response(status=404, text="Not Found")

    # ---- REST: interactions ------------------------------------------------------------------

    async def _callback(self, request: web.Request) -> web.Response:
        arrived = time.monotonic()
        record: RecordedRequest = request[RECORD]
        interaction = self.interactions.get(int(request.match_info["interaction_id"]))
        if interaction is None or interaction.token != request.match_info["token"]:
            raise APIError(404, 10062, "Unknown interaction")
        if interaction.callback_type is not None:
            raise APIError(400, 40060, "Interaction has already been acknowledged.")
        if arrived - interaction.created_at > self.ack_window_s:
            interaction.acked_at = arrived
            interaction.ack_status = 404
            interaction.acked.set()
            raise APIError(404, 10062, "Unknown interaction")
        stored = await self._read_body(request, record)
        ctype = stored.payload.get("type")
        data = stored.payload.get("data") or {}
        allowed_types = {
            IT_COMMAND: {CB_MESSAGE, CB_DEFERRED_MESSAGE, CB_MODAL},
            IT_COMPONENT: {
                CB_MESSAGE,
                CB_DEFERRED_MESSAGE,
                CB_DEFERRED_UPDATE,
                CB_UPDATE_MESSAGE,
                CB_MODAL,
            },
            IT_AUTOCOMPLETE: {CB_AUTOCOMPLETE},
            IT_MODAL_SUBMIT: {
                CB_MESSAGE,
                CB_DEFERRED_MESSAGE,
                CB_DEFERRED_UPDATE,
                CB_UPDATE_MESSAGE,
            },
        }[interaction.type]
        if ctype not in allowed_types:
            raise APIError(
                400, 40043, "Interaction callback type is not valid for this interaction"
            )
        if ctype == CB_UPDATE_MESSAGE and interaction.message_id is None:
            raise APIError(
                400, 40043, "Interaction callback type is not valid for this interaction"
            )
        channel = self._channel(interaction.channel_id)
        assert channel is not None
        response: dict[str, Any] = {
            "interaction": {
                "id": str(interaction.id),
                "type": interaction.type,
                "activity_instance_id": None,
                "response_message_id": None,
                "response_message_loading": False,
                "response_message_ephemeral": False,
            }
        }
        message: Message | None = None
        if ctype == CB_MESSAGE:
            message = await self._store_new(
                channel,
                Stored(data, stored.files),
                interaction=interaction,
                mtype=MT_CHAT_INPUT_COMMAND if interaction.type == IT_COMMAND else MT_DEFAULT,
            )
        elif ctype == CB_DEFERRED_MESSAGE:
            message = await self._store_new(
                channel,
                Stored({"flags": data.get("flags", 0) & FLAG_EPHEMERAL}, {}),
                interaction=interaction,
                mtype=MT_CHAT_INPUT_COMMAND if interaction.type == IT_COMMAND else MT_DEFAULT,
                loading=True,
            )
            response["interaction"]["response_message_loading"] = True
        elif ctype == CB_UPDATE_MESSAGE:
            assert interaction.message_id is not None
            message = await self._edit(
                self.messages[interaction.message_id], Stored(data, stored.files)
            )
        elif ctype == CB_DEFERRED_UPDATE:
            if interaction.message_id is not None:
                interaction.response_message_id = interaction.message_id
        elif ctype == CB_AUTOCOMPLETE:
            choices = data.get("choices") or []
            if len(choices) > 25:
                raise form_error(
                    "data.choices", "BASE_TYPE_MAX_LENGTH", "Must be 25 or fewer in length."
                )
            for index, choice in enumerate(choices):
                if not 1 <= len(choice.get("name", "")) <= 100:
                    raise form_error(
                        f"data.choices.{index}.name",
                        "BASE_TYPE_BAD_LENGTH",
                        "Must be between 1 and 100 in length.",
                    )
            interaction.autocomplete_choices = choices
        elif ctype == CB_MODAL:
            if not data.get("custom_id") or not data.get("title") or not data.get("components"):
                raise form_error(
                    "data", "BASE_TYPE_REQUIRED", "custom_id, title and components are required"
                )
            interaction.modal = data
        interaction.acked_at = arrived
        interaction.ack_status = 200
        interaction.callback_type = ctype
        interaction.callback_data = data
        if message is not None:
            interaction.response_message_id = message.id
            response["interaction"]["response_message_id"] = str(message.id)
            response["interaction"]["response_message_ephemeral"] = message.ephemeral
            response["resource"] = {"type": ctype, "message": message.payload(self.base_url)}
        interaction.acked.set()
        return self._json(200, response)

    def _webhook_interaction(self, request: web.Request) -> Interaction:
        if int(request.match_info["app_id"]) != self.application_id:
            raise APIError(404, 10015, "Unknown Webhook")
        interaction = self._by_token.get(request.match_info["token"])
        if interaction is None:
            raise APIError(401, 50027, "Invalid Webhook Token")
        code = interaction.expired_code
        if code is None and time.monotonic() - interaction.created_at > self.token_ttl_s:
            code = 50027
        if code == 50027:
            raise APIError(401, 50027, "Invalid Webhook Token")
        if code == 10015:
            raise APIError(404, 10015, "Unknown Webhook")
        if code is not None:
            raise APIError(404, 10062, "Unknown interaction")
        if interaction.callback_type is None:
            raise APIError(404, 10015, "Unknown Webhook")
        return interaction

    def _webhook_message(self, interaction: Interaction, raw_id: str) -> Message:
        if raw_id == "@original":
            message_id = interaction.response_message_id
        else:
            message_id = int(raw_id)
            if message_id not in (interaction.response_message_id, *interaction.followup_ids):
                raise APIError(404, 10008, "Unknown Message")
        message = self.messages.get(message_id or 0)
        if message is None or message.deleted:
            raise APIError(404, 10008, "Unknown Message")
        return message

    async def _webhook_execute(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        stored = await self._read_body(request, request[RECORD])
        channel = self._channel(interaction.channel_id)
        assert channel is not None
        original = self.response_message(interaction)
        if (
            interaction.callback_type == CB_DEFERRED_MESSAGE
            and original is not None
            and original.loading
            and not interaction.followup_ids
        ):
            # Documented: the first followup after a deferred response edits the loading message.
            message = await self._edit(original, stored)
        else:
            message = await self._store_new(channel, stored, interaction=interaction)
            interaction.followup_ids.append(message.id)
        if request.query.get("wait") in ("1", "true", "True"):
            return self._json(200, message.payload(self.base_url))
        return web.Response(status=204)

    async def _webhook_get(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = self._webhook_message(interaction, request.match_info["message_id"])
        return self._json(200, message.payload(self.base_url))

    async def _webhook_edit(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = self._webhook_message(interaction, request.match_info["message_id"])
        stored = await self._read_body(request, request[RECORD])
        await self._edit(message, stored)
        return self._json(200, message.payload(self.base_url))

    async def _webhook_delete(self, request: web.Request) -> web.Response:
        interaction = self._webhook_interaction(request)
        message = self._webhook_message(interaction, request.match_info["message_id"])
        await self._delete(message)
        return web.Response(status=204)

    async def _delete(self, message: Message) -> None:
        message.deleted = True
        if not message.ephemeral:
            data: dict[str, Any] = {"id": str(message.id), "channel_id": str(message.channel_id)}
            intent = INTENT_DIRECT_MESSAGES
            if message.guild_id is not None:
                data["guild_id"] = str(message.guild_id)
                intent = INTENT_GUILD_MESSAGES
            await self.dispatch("MESSAGE_DELETE", data, intent=intent)

    # ---- REST: channels ----------------------------------------------------------------------

    def _bot_channel(self, request: web.Request, needed: int = P_VIEW_CHANNEL) -> Channel:
        self._check_bot_auth(request)
        channel = self._channel(int(request.match_info["channel_id"]))
        if channel is None:
            raise APIError(404, 10003, "Unknown Channel")
        if channel.guild_id is not None:
            perms = self.guild.permissions_of(self.bot_user.id) & ~channel.bot_denied
            if not perms & P_VIEW_CHANNEL:
                raise APIError(403, 50001, "Missing Access")
            if perms & needed != needed and not perms & P_ADMINISTRATOR:
                raise APIError(403, 50013, "Missing Permissions")
        return channel

    def _channel_message(self, channel: Channel, request: web.Request) -> Message:
        message = self.messages.get(int(request.match_info["message_id"]))
        if (
            message is None
            or message.deleted
            or message.channel_id != channel.id
            or message.ephemeral
        ):
            raise APIError(404, 10008, "Unknown Message")
        return message

    async def _get_channel(self, request: web.Request) -> web.Response:
        channel = self._bot_channel(request)
        return self._json(200, channel.payload())

    async def _get_messages(self, request: web.Request) -> web.Response:
        channel = self._bot_channel(request, P_VIEW_CHANNEL | P_READ_HISTORY)
        limit = min(100, int(request.query.get("limit", 50)))
        before = int(request.query.get("before", 1 << 63))
        after = int(request.query.get("after", 0))
        found = [
            m
            for m in self.messages.values()
            if m.channel_id == channel.id
            and not m.deleted
            and not m.ephemeral
            and after < m.id < before
        ]
        found.sort(key=lambda m: m.id, reverse="after" not in request.query)
        return self._json(200, [m.payload(self.base_url) for m in found[:limit]])

    async def _channel_send(self, request: web.Request) -> web.Response:
        channel = self._bot_channel(request, P_VIEW_CHANNEL | P_SEND_MESSAGES)
        stored = await self._read_body(request, request[RECORD])
        if stored.files and channel.guild_id is not None:
            perms = self.guild.permissions_of(self.bot_user.id) & ~channel.bot_denied
            if not perms & P_ATTACH_FILES:
                raise APIError(403, 50013, "Missing Permissions")
        nonce = stored.payload.get("nonce")
        if nonce is not None and stored.payload.get("enforce_nonce"):
            # Discord returns the message already created with this nonce instead of a second one.
            previous = self._nonces.get((channel.id, str(nonce)))
            if previous is not None and previous in self.messages:
                return self._json(200, self.messages[previous].payload(self.base_url))
        message = await self._store_new(channel, stored)
        if nonce is not None:
            message.nonce = str(nonce)
            self._nonces[(channel.id, str(nonce))] = message.id
        return self._json(200, message.payload(self.base_url))

    async def _channel_get(self, request: web.Request) -> web.Response:
        channel = self._bot_channel(request, P_VIEW_CHANNEL | P_READ_HISTORY)
        message = self._channel_message(channel, request)
        return self._json(200, message.payload(self.base_url))

    async def _channel_edit(self, request: web.Request) -> web.Response:
        channel = self._bot_channel(request)
        message = self._channel_message(channel, request)
        if message.author.id != self.bot_user.id:
            raise APIError(403, 50005, "Cannot edit a message authored by another user")
        stored = await self._read_body(request, request[RECORD])
        await self._edit(message, stored)
        return self._json(200, message.payload(self.base_url))

    async def _channel_delete(self, request: web.Request) -> web.Response:
        channel = self._bot_channel(request)
        message = self._channel_message(channel, request)
        if message.author.id != self.bot_user.id:
            perms = self.guild.permissions_of(self.bot_user.id) & ~channel.bot_denied
            if not perms & P_MANAGE_MESSAGES:
                raise APIError(403, 50013, "Missing Permissions")
        await self._delete(message)
        return web.Response(status=204)

    async def _typing(self, request: web.Request) -> web.Response:
        self._bot_channel(request, P_VIEW_CHANNEL | P_SEND_MESSAGES)
        return web.Response(status=204)
