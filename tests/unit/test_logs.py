"""The JSON log line: one object, extras included, parseable."""

from __future__ import annotations

import json
import logging

from rlsproxy.logs import JsonFormatter


def test_json_line_carries_extras() -> None:
    record = logging.LogRecord(
        "rlsproxy.server", logging.INFO, __file__, 1, "client %s", ("connected",), None
    )
    record.peer = "127.0.0.1:5000"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "client connected"
    assert line["level"] == "INFO" and line["logger"] == "rlsproxy.server"
    assert line["peer"] == "127.0.0.1:5000"
    assert line["ts"].endswith("+00:00")


def test_text_line_carries_extras_before_a_traceback() -> None:
    from rlsproxy.logs import TextFormatter

    record = logging.LogRecord("rlsproxy.server", logging.INFO, __file__, 1, "client connected", None, None)
    record.peer = "127.0.0.1:5000"
    record.role = "authenticated"
    line = TextFormatter().format(record)
    assert line.endswith("INFO rlsproxy.server: client connected peer=127.0.0.1:5000 role=authenticated")
    try:
        raise ValueError("boom")
    except ValueError:
        import sys

        failed = logging.LogRecord("rlsproxy", logging.ERROR, __file__, 1, "bug", None, sys.exc_info())
    failed.peer = "x"
    first, *rest = TextFormatter().format(failed).splitlines()
    assert first.endswith("ERROR rlsproxy: bug peer=x")
    assert rest[-1] == "ValueError: boom"


def test_reconfigure_replaces_the_handler_only_when_level_or_format_changed() -> None:
    from rlsproxy.logs import TextFormatter, reconfigure

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    marker = logging.NullHandler()
    try:
        root.handlers[:] = [marker]
        reconfigure("INFO", "json", was=("INFO", "json"))
        assert root.handlers == [marker]  # nothing changed: the running handlers stay
        reconfigure("WARNING", "text", was=("INFO", "json"))
        assert root.level == logging.WARNING
        assert len(root.handlers) == 1 and isinstance(root.handlers[0].formatter, TextFormatter)
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)


def test_timestamps_read_as_the_logging_module_and_datetime_write_them() -> None:
    """Each formatter keeps its formatted second: a new second must still be written anew."""
    from datetime import UTC, datetime

    from rlsproxy.logs import TextFormatter

    text, json_formatter = TextFormatter(), JsonFormatter()
    for created in (1764000000.25, 1764000000.999, 1764000001.0, 1764003600.5):
        record = logging.LogRecord("rlsproxy", logging.INFO, __file__, 1, "m", None, None)
        record.created, record.msecs = created, (created - int(created)) * 1000 // 1
        asctime = logging.Formatter("%(asctime)s").format(record)
        assert text.format(record) == f"{asctime} INFO rlsproxy: m"
        iso = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        assert json.loads(json_formatter.format(record))["ts"] == iso
