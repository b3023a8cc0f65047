"""A log filter that keeps Redis passwords out of every log line of a process.

``redact_url`` hides the password of a URL that code logs on purpose; this filter covers what
nobody chose to log: a library's message, an exception's text in a traceback. It rewrites every
``redis://``, ``rediss://``, ``valkey://`` or ``unix://`` URL it finds through ``redact_url``, and
replaces the configured password wherever it appears on its own.

``install_log_redaction(url)`` puts it on every handler of the root logger (a filter on a
logger does not see its children's records; one on a handler sees them all).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from urllib.parse import unquote

from engine.redis.settings import redact_url

REDACTED = "[REDACTED]"
# Shorter values are not replaced on their own: "a" or "12" would shred every line.
MIN_SECRET_CHARS = 6
_URL = re.compile(r"\b(?:rediss?|valkeys?|unix)://[^\s'\"<>]+", re.IGNORECASE)
_PASSWORD_ITEM = re.compile(r"(?:^|[&;])[^&;=]*pass[^&;=]*=([^&;#]*)", re.IGNORECASE)


def url_secrets(url: str | None) -> list[str]:
    """The passwords a Redis URL carries (userinfo and ``?password=``), as written and decoded."""
    if not url:
        return []
    _, _, rest = url.partition("://")
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    netloc = rest[:cut]
    found: list[str] = []
    if "@" in netloc:
        userinfo = netloc.rsplit("@", 1)[0]
        if ":" in userinfo:
            found.append(userinfo.split(":", 1)[1])
    query = rest[cut:].partition("?")[2].partition("#")[0]
    found.extend(match[1] for match in _PASSWORD_ITEM.finditer(query))
    secrets: list[str] = []
    for value in found:
        for form in (value, unquote(value)):
            if form and form not in secrets:
                secrets.append(form)
    return secrets


class RedactRedis(logging.Filter):
    """Redis URLs redacted, and ``secrets`` replaced, in the message, traceback and stack of
    every record. Never drops a record."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = sorted(
            {s for s in secrets if len(s) >= MIN_SECRET_CHARS}, key=len, reverse=True
        )

    def clean(self, text: str) -> str:
        text = _URL.sub(lambda match: redact_url(match[0]), text)
        for secret in self.secrets:
            text = text.replace(secret, REDACTED)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: still no secret in what gets written
            message = str(record.msg)
        cleaned = self.clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.clean(record.exc_text)
        if record.stack_info:
            record.stack_info = self.clean(record.stack_info)
        return True


def install_log_redaction(redis_url: str | None) -> RedactRedis:
    """Put one ``RedactRedis`` for this URL on every root handler (replacing an earlier one)."""
    redactor = RedactRedis(url_secrets(redis_url))
    for handler in logging.getLogger().handlers:
        for old in [f for f in handler.filters if isinstance(f, RedactRedis)]:
            handler.removeFilter(old)
        handler.addFilter(redactor)
    return redactor
