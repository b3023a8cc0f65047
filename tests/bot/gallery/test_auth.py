"""The gallery's link key on disk: made once, reused, and never silently replaced, since a new
key ends every link given out. issue 20 item 10."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.gallery.auth import LinkSigner, SecretFileError, load_or_create_secret
from bot.gallery.links import GalleryLinks
from bot.settings import BotSettings


def test_a_missing_key_file_is_made_owner_only_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "data" / "gallery_secret"
    key = load_or_create_secret(path)
    assert load_or_create_secret(path) == key and len(key) >= 32
    assert path.stat().st_mode & 0o077 == 0


def test_a_short_key_file_stops_the_start_and_says_what_to_do(tmp_path: Path) -> None:
    """issue 20 item 10: a short key was replaced by a new one, ending every link."""
    path = tmp_path / "gallery_secret"
    path.write_bytes(b"too-short\n")
    with pytest.raises(SecretFileError) as refused:
        load_or_create_secret(path)
    message = str(refused.value)
    assert str(path) in message and "too short (9 bytes" in message
    assert "IMAGINE_GALLERY_SECRET" in message and "delete it" in message
    assert path.read_bytes() == b"too-short\n"  # nothing replaced


def test_an_unreadable_key_file_stops_the_start_and_says_why(tmp_path: Path) -> None:
    """issue 20 item 10: an unreadable key was replaced by a new one, ending every link. (A
    folder in its place: root reads any file, whatever its mode.)"""
    path = tmp_path / "gallery_secret"
    path.mkdir()
    with pytest.raises(SecretFileError) as refused:
        load_or_create_secret(path)
    message = str(refused.value)
    assert str(path) in message and "cannot read" in message and "Is a directory" in message
    assert path.is_dir()


def test_the_bot_refuses_to_build_its_links_from_a_bad_key_file(tmp_path: Path) -> None:
    """issue 20 item 10: the start (the web server's setup) fails with that message."""
    (tmp_path / "gallery_secret").write_bytes(b"x" * 31)
    settings = BotSettings(
        discord_token="x" * 60, database_url=f"sqlite+aiosqlite:///{tmp_path}/imagine.db"
    )
    with pytest.raises(SecretFileError, match="too short"):
        GalleryLinks.from_settings(settings)


def test_a_csrf_value_beyond_ascii_is_simply_wrong() -> None:
    """issue 20 item 15 (b), found by the fuzz test: ``hmac.compare_digest`` raises TypeError
    for a str with a character beyond ASCII, which made the delete form answer 500."""
    signer = LinkSigner(b"k" * 32)
    token = signer.sign(guild_id=1, user_id=2, admin=False, ttl_s=60)
    assert signer.check_csrf(token, signer.csrf_token(token))
    for value in ("\x80", "é" * 64, signer.csrf_token(token)[:-1] + "é"):
        assert signer.check_csrf(token, value) is False
