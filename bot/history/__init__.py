"""/history, one feature in one folder: ``cog`` (the command) and ``views`` (its pages and their
restart-proof paging buttons, with a link to the web gallery)."""

from discord.ext import commands


async def setup(bot: commands.Bot) -> None:
    """The extension: /history and its paging buttons."""
    from bot.history.cog import setup as setup_cog

    await setup_cog(bot)
