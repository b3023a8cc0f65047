"""Logging for ``python -m bot``: one format, and the token can never reach a log line."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str, redaction: logging.Filter) -> logging.Handler:
    """Log to stderr with ``redaction`` (``engine.backends.log_redaction``: the token and the
    Redis password) on the handler, so every logger is covered."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    handler.addFilter(redaction)
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # discord.py's gateway chatter is useful only when debugging the connection.
    logging.getLogger("discord.gateway").setLevel(max(logging.INFO, root.level))
    logging.getLogger("discord.http").setLevel(max(logging.INFO, root.level))
    return handler
