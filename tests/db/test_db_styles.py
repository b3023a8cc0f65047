"""Styles: built-ins under guild 0, guild styles that shadow them, case-insensitive names."""

from __future__ import annotations

import pytest

from db import (
    BUILTIN_GUILD_ID,
    Database,
    StyleExists,
    StyleNotFound,
    add_style,
    edit_style,
    get_style,
    list_styles,
    remove_style,
    sync_builtin_styles,
)
from engine.presets import BUILTIN_STYLES

GUILD = 111_111_111_111_111_111
OTHER_GUILD = 222_222_222_222_222_222
ADMIN = 555

BUILTINS = [
    ("none", "{prompt}", "", "no style"),
    ("anime", "{prompt}, anime style", "photo", "cel shaded"),
    ("Photorealistic", "{prompt}, photo", "cartoon", "like a camera"),
]


@pytest.fixture
async def styled(database: Database) -> Database:
    await sync_builtin_styles(database, BUILTINS)
    return database


async def test_builtins_are_listed_sorted_for_every_guild_and_dms(styled: Database) -> None:
    for guild_id in (GUILD, None):
        styles = await list_styles(styled, guild_id)
        assert [s.name for s in styles] == ["anime", "none", "Photorealistic"]
        assert all(s.builtin and s.guild_id == BUILTIN_GUILD_ID for s in styles)


async def test_sync_builtin_styles_updates_adds_and_drops(styled: Database) -> None:
    await sync_builtin_styles(
        styled,
        [
            ("none", "{prompt}", "", "no style"),
            ("anime", "{prompt}, anime key visual", "photo, 3d", "updated"),
            ("watercolor", "{prompt}, watercolor", "", "soft"),
        ],
    )
    styles = {s.name: s for s in await list_styles(styled, GUILD)}
    assert set(styles) == {"none", "anime", "watercolor"}
    assert styles["anime"].template == "{prompt}, anime key visual"
    assert styles["anime"].negative == "photo, 3d"
    assert styles["anime"].description == "updated"


async def test_sync_is_idempotent_and_takes_the_engine_presets(database: Database) -> None:
    rows = [(s.name, s.template, s.negative, "") for s in BUILTIN_STYLES.values()]
    await sync_builtin_styles(database, rows)
    await sync_builtin_styles(database, rows)
    names = [s.name for s in await list_styles(database, GUILD)]
    assert names == sorted(BUILTIN_STYLES, key=str.casefold)


async def test_add_style_and_find_it_case_insensitively(styled: Database) -> None:
    created = await add_style(
        styled, GUILD, "Neon Noir", "{prompt}, neon noir", "daylight", "rainy city", ADMIN
    )
    assert created.id and created.guild_id == GUILD and not created.builtin
    found = await get_style(styled, GUILD, "  neon NOIR ")
    assert found is not None
    assert (found.name, found.template, found.negative, found.description, found.created_by) == (
        "Neon Noir",
        "{prompt}, neon noir",
        "daylight",
        "rainy city",
        ADMIN,
    )
    # Other guilds and DMs do not see it.
    assert await get_style(styled, OTHER_GUILD, "neon noir") is None
    assert await get_style(styled, None, "neon noir") is None
    assert [s.name for s in await list_styles(styled, GUILD)] == [
        "anime",
        "Neon Noir",
        "none",
        "Photorealistic",
    ]


async def test_duplicate_names_are_refused_case_insensitively(styled: Database) -> None:
    await add_style(styled, GUILD, "Retro", "{prompt}, retro", "", "", ADMIN)
    with pytest.raises(StyleExists):
        await add_style(styled, GUILD, "RETRO", "{prompt}, other", "", "", ADMIN)
    # The same name in another guild is fine.
    await add_style(styled, OTHER_GUILD, "retro", "{prompt}, theirs", "", "", ADMIN)
    mine = await get_style(styled, GUILD, "retro")
    assert mine is not None and mine.template == "{prompt}, retro"


async def test_guild_style_shadows_a_builtin_only_in_that_guild(styled: Database) -> None:
    await add_style(styled, GUILD, "Anime", "{prompt}, our anime", "blurry", "house style", ADMIN)

    ours = await get_style(styled, GUILD, "anime")
    theirs = await get_style(styled, OTHER_GUILD, "anime")
    assert ours is not None and ours.template == "{prompt}, our anime" and not ours.builtin
    assert theirs is not None and theirs.builtin

    listed = await list_styles(styled, GUILD)
    anime = [s for s in listed if s.name.casefold() == "anime"]
    assert len(anime) == 1 and anime[0].guild_id == GUILD
    assert len(listed) == 3

    # Removing the guild's style brings the built-in back.
    assert await remove_style(styled, GUILD, "ANIME")
    back = await get_style(styled, GUILD, "anime")
    assert back is not None and back.builtin


async def test_edit_style_changes_only_given_fields(styled: Database) -> None:
    await add_style(styled, GUILD, "sketch", "{prompt}, sketch", "color", "pencil", ADMIN)
    edited = await edit_style(styled, GUILD, "SKETCH", template="{prompt}, charcoal sketch")
    assert (edited.template, edited.negative, edited.description) == (
        "{prompt}, charcoal sketch",
        "color",
        "pencil",
    )
    assert edited.updated_at >= edited.created_at
    stored = await get_style(styled, GUILD, "sketch")
    assert stored is not None and stored.template == "{prompt}, charcoal sketch"

    edited = await edit_style(styled, GUILD, "sketch", negative="", description="charcoal")
    assert (edited.negative, edited.description) == ("", "charcoal")


async def test_builtins_cannot_be_edited_or_removed_through_a_guild(styled: Database) -> None:
    with pytest.raises(StyleNotFound):
        await edit_style(styled, GUILD, "anime", template="{prompt}, hacked")
    with pytest.raises(StyleNotFound):
        await edit_style(styled, BUILTIN_GUILD_ID, "anime", template="{prompt}, hacked")
    assert not await remove_style(styled, GUILD, "anime")
    assert not await remove_style(styled, BUILTIN_GUILD_ID, "anime")
    anime = await get_style(styled, GUILD, "anime")
    assert anime is not None and anime.template == "{prompt}, anime style"


async def test_remove_unknown_style_returns_false(styled: Database) -> None:
    assert not await remove_style(styled, GUILD, "nope")


@pytest.mark.parametrize("bad", ["", "   ", "x" * 65])
async def test_bad_style_names_are_refused(styled: Database, bad: str) -> None:
    with pytest.raises(ValueError, match="style name"):
        await add_style(styled, GUILD, bad, "{prompt}", "", "", ADMIN)


async def test_guild_zero_is_reserved(styled: Database) -> None:
    with pytest.raises(ValueError, match="reserved"):
        await add_style(styled, BUILTIN_GUILD_ID, "mine", "{prompt}", "", "", ADMIN)
