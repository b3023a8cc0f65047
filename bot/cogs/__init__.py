"""One cog per feature area; each module has an async ``setup(bot)`` and is loaded as an
extension in ``setup_hook``."""

EXTENSIONS: tuple[str, ...] = (
    "bot.cogs.imagine",
    "bot.edit",
    "bot.cogs.history",
    "bot.cogs.quota",
    "bot.cogs.status",
    "bot.cogs.styles",
    "bot.cogs.admin",
    "bot.gallery",
    "bot.cogs.privacy",
)
