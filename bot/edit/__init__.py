"""Editing images (Qwen-Image-Edit), one feature in one folder: ``cog`` (/edit), ``views`` (the
Edit button under every finished image and its form) and ``service`` (the checks, the uploads
and the job)."""

from discord.ext import commands


async def setup(bot: commands.Bot) -> None:
    """The extension: /edit (the Edit button is registered with the other result buttons)."""
    from bot.edit.cog import setup as setup_cog

    await setup_cog(bot)
