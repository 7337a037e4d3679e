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
