"""The extensions ``setup_hook`` loads: one cog per feature area, each module (or feature
package: ``bot.edit``, ``bot.gallery``, ``bot.history``) with an async ``setup(bot)``."""

EXTENSIONS: tuple[str, ...] = (
    "bot.cogs.imagine",
    "bot.edit",
    "bot.history",
    "bot.cogs.quota",
    "bot.cogs.status",
    "bot.cogs.styles",
    "bot.cogs.admin",
    "bot.gallery",
    "bot.cogs.privacy",
)
