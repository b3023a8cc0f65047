"""Guild settings: defaults until an admin changes something, then the guild's own values."""

from __future__ import annotations

import pytest

from db import (
    Database,
    GuildConfig,
    add_blocked_word,
    get_guild_config,
    remove_blocked_word,
    reset_guild_limits,
    update_guild_config,
)

GUILD = 111_111_111_111_111_111
DEFAULTS = {"default_quota": 20, "default_max_queued": 3}


async def test_unknown_guild_and_dms_get_the_defaults(database: Database) -> None:
    for guild_id in (GUILD, None):
        config = await get_guild_config(database, guild_id, **DEFAULTS)
        assert config == GuildConfig(guild_id=guild_id, daily_quota=20, max_queued=3)
        assert config.blocked_words == () and config.allowed_channels == ()
        assert config.exempt_roles == ()


async def test_update_changes_given_fields_and_persists(database: Database) -> None:
    config = await update_guild_config(
        database, GUILD, **DEFAULTS, daily_quota=5, allowed_channels=[10, 11, 10]
    )
    assert (config.daily_quota, config.max_queued) == (5, 3)
    assert config.allowed_channels == (10, 11)
    assert config.custom_quota and not config.custom_max_queued

    config = await update_guild_config(
        database, GUILD, **DEFAULTS, max_queued=1, exempt_roles=[7, 2**62]
    )
    assert (config.daily_quota, config.max_queued) == (5, 1)
    assert config.allowed_channels == (10, 11)
    assert config.exempt_roles == (7, 2**62)

    stored = await get_guild_config(database, GUILD, **DEFAULTS)
    assert stored == config
    # Clearing a list: an empty sequence, not None.
    cleared = await update_guild_config(database, GUILD, **DEFAULTS, allowed_channels=[])
    assert cleared.allowed_channels == ()


async def test_guild_without_own_limits_follows_changed_defaults(database: Database) -> None:
    await update_guild_config(database, GUILD, **DEFAULTS, allowed_channels=[1])
    config = await get_guild_config(database, GUILD, default_quota=50, default_max_queued=9)
    assert (config.daily_quota, config.max_queued) == (50, 9)
    assert config.allowed_channels == (1,)


async def test_reset_limits_returns_to_defaults(database: Database) -> None:
    await update_guild_config(
        database, GUILD, **DEFAULTS, daily_quota=0, max_queued=8, exempt_roles=[4]
    )
    config = await reset_guild_limits(database, GUILD, **DEFAULTS)
    assert (config.daily_quota, config.max_queued, config.exempt_roles) == (20, 3, (4,))
    assert not config.custom_quota
    assert await get_guild_config(database, GUILD, **DEFAULTS) == config


async def test_negative_limits_are_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="daily_quota"):
        await update_guild_config(database, GUILD, **DEFAULTS, daily_quota=-1)
    assert await get_guild_config(database, GUILD, **DEFAULTS) == GuildConfig(GUILD, 20, 3)


async def test_blocked_words_are_case_insensitive(database: Database) -> None:
    assert await add_blocked_word(database, GUILD, "  Gore ")
    assert not await add_blocked_word(database, GUILD, "GORE")
    assert await add_blocked_word(database, GUILD, "bad   phrase")
    config = await get_guild_config(database, GUILD, **DEFAULTS)
    assert config.blocked_words == ("Gore", "bad phrase")

    assert await remove_blocked_word(database, GUILD, "gore")
    assert not await remove_blocked_word(database, GUILD, "gore")
    assert not await remove_blocked_word(database, 999, "gore")
    config = await get_guild_config(database, GUILD, **DEFAULTS)
    assert config.blocked_words == ("bad phrase",)


async def test_empty_blocked_word_is_refused(database: Database) -> None:
    with pytest.raises(ValueError, match="empty"):
        await add_blocked_word(database, GUILD, "   ")


async def test_blocked_words_survive_limit_updates(database: Database) -> None:
    await add_blocked_word(database, GUILD, "spoiler")
    config = await update_guild_config(database, GUILD, **DEFAULTS, daily_quota=2)
    assert config.blocked_words == ("spoiler",)


def test_config_helpers() -> None:
    config = GuildConfig(
        guild_id=GUILD,
        daily_quota=5,
        max_queued=0,
        blocked_words=("Gore", "bad phrase"),
        allowed_channels=(10, 11),
        exempt_roles=(7,),
    )
    assert config.quota_for([1, 2]) == 5
    assert config.quota_for([1, 7]) is None
    assert config.is_exempt([7]) and not config.is_exempt([])
    assert config.queued_limit is None
    assert config.channel_allowed(10) and not config.channel_allowed(12)
    assert config.find_blocked("some GORE here") == "Gore"
    assert config.find_blocked("a Bad Phrase indeed") == "bad phrase"
    assert config.find_blocked("a nice cat") is None

    open_config = GuildConfig(guild_id=None, daily_quota=0, max_queued=2)
    assert open_config.quota_for([]) is None
    assert open_config.queued_limit == 2
    assert open_config.channel_allowed(12345) and open_config.channel_allowed(None)
