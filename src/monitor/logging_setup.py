"""Logging: everything (Prefect's loggers included) goes to a log file; the terminal stays clean."""

from __future__ import annotations

import logging
import os
from pathlib import Path

_configured = False


def configure(log_file: Path) -> None:
    """Route Prefect and our loggers to `log_file`; must run before Prefect is imported."""
    global _configured
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    # no phoning home: this tool runs offline and a failed telemetry call logs an ERROR
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # the temporary server can take a while on a busy 2-core machine
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ["PREFECT_LOGGING_TO_API_ENABLED"] = os.environ.get("PREFECT_LOGGING_TO_API_ENABLED", "true")
    os.environ["PREFECT_LOGGING_CONFIG_PATH"] = str(Path(__file__).with_name("logging.yml"))
    os.environ["PREFECT_LOGGING_HANDLERS_FILE_FILENAME"] = str(log_file)
    if _configured:
        return
    _configured = True
    handler = logging.FileHandler(log_file, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
