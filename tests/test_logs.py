"""Logging set-up (indexer/logs.py)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import structlog

from indexer.logs import configure_logging


@pytest.fixture
def root_logger() -> Iterator[logging.Logger]:
    """The root logger, put back as it was afterwards (and structlog to its defaults: the
    configuration binds this test's stderr)."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield root
    root.setLevel(level)
    root.handlers[:] = handlers
    structlog.reset_defaults()


def test_each_configuration_sets_the_library_log_level(root_logger: logging.Logger) -> None:
    """The CLI configures logging before a command has its settings, then again with them:
    the second call's level must hold for the libraries' (stdlib) loggers too, and no second
    handler is added (a line printed twice)."""
    configure_logging()
    handlers = len(root_logger.handlers)
    configure_logging("json", "error")
    assert root_logger.level == logging.ERROR
    assert len(root_logger.handlers) == handlers
    configure_logging("console", "debug")
    assert root_logger.level == logging.WARNING  # libraries never below warning
