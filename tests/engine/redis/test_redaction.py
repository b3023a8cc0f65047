"""A Redis password never reaches a log line: ``redact_url`` hides it wherever a URL may carry
it (userinfo, query string), and the log filter hides URLs and the configured password in any
record, tracebacks included. issue 20 item 5."""

from __future__ import annotations

import logging

import pytest

from engine.redis.redaction import RedactRedis, install_log_redaction, url_secrets
from engine.redis.settings import redact_url

PASSWORD = "s3cret-Pa55word"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://:s3cret@host:6379/0", "redis://:***@host:6379/0"),
        ("rediss://user:s3cret@host/1", "rediss://user:***@host/1"),
        ("redis://host:6379", "redis://host:6379"),
        ("redis://h:6379/0?password=s3cret", "redis://h:6379/0?password=***"),
        (
            "redis://h/0?socket_timeout=5&Password=s3cret&health_check_interval=3",
            "redis://h/0?socket_timeout=5&Password=***&health_check_interval=3",
        ),
        (
            "rediss://u:a@b@h:1/0?password=c&ssl_password=d",
            "rediss://u:***@h:1/0?password=***&ssl_password=***",
        ),
        ("unix:///run/redis.sock?db=0&password=s3cret", "unix:///run/redis.sock?db=0&password=***"),
        ("redis://:s3cret@host:notaport/0", "redis://:***@host:notaport/0"),
        ("redis://user@host/0", "redis://user@host/0"),  # a user name alone is no secret
    ],
)
def test_redact_url_hides_the_password_in_userinfo_and_query(url: str, shown: str) -> None:
    """issue 20 item 5: ``?password=`` came back unchanged."""
    assert redact_url(url) == shown


def test_the_secrets_of_a_url_are_its_passwords_raw_and_decoded() -> None:
    """issue 20 item 5."""
    secrets = url_secrets("redis://:p%40ss-word-1@h/0?password=other-secret-2")
    assert {"p%40ss-word-1", "p@ss-word-1", "other-secret-2"} <= set(secrets)
    assert url_secrets("redis://h:6379/0") == []
    assert url_secrets(None) == []


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_the_log_filter_hides_redis_urls_and_the_password_everywhere() -> None:
    """issue 20 item 5: the worker logged its URL at INFO and had no redaction filter."""
    url = f"redis://h:6379/0?password={PASSWORD}"
    logger = logging.getLogger("test.redis.redaction")
    collect = Collect()
    collect.addFilter(RedactRedis(url_secrets(url)))
    logger.addHandler(collect)
    try:
        logger.warning("connecting to %s", url)
        logger.warning("auth failed for :%s@h", PASSWORD)
        logger.warning("elsewhere: %s", "rediss://:another-one@cache:6380/2")
        try:
            raise ConnectionError(f"Error connecting to {url}")
        except ConnectionError:
            logger.exception("boom")
    finally:
        logger.removeHandler(collect)
    joined = "\n".join(collect.lines)
    assert PASSWORD not in joined and "another-one" not in joined
    assert "redis://h:6379/0?password=***" in joined
    assert "rediss://:***@cache:6380/2" in joined
    assert "Error connecting to redis://h:6379/0?password=***" in joined  # the traceback too


def test_install_puts_the_filter_on_every_root_handler() -> None:
    """issue 20 item 5: the one call the worker's ``main`` makes after ``basicConfig``."""
    root = logging.getLogger()
    collect = Collect()
    root.addHandler(collect)
    try:
        installed = install_log_redaction(f"redis://:{PASSWORD}@h/0")
        assert installed in collect.filters
        install_log_redaction(f"redis://:{PASSWORD}@h/0")  # twice: still one filter
        assert sum(isinstance(f, RedactRedis) for f in collect.filters) == 1
        logging.getLogger("taskiq.somewhere").error("password %s", PASSWORD)
    finally:
        root.removeHandler(collect)
    assert collect.lines == ["password [REDACTED]"]


def test_a_record_that_cannot_be_formatted_still_passes() -> None:
    """issue 20 item 5: a filter must never lose a record, nor raise."""
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "%d items", ("many",), None)
    assert RedactRedis([PASSWORD]).filter(record) is True
